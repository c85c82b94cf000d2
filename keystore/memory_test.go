package keystore

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"

	"github.com/coffer-kms/coffer/internal/lockedmem"
)

// liveHeap is the heap still in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestMemory_PerKey is a measurement for docs (issue 15, goal 5): the live
// Go heap and locked memory of the keystore per key of 3 versions, and the
// garbage a snapshot write and restore make. It runs only with
// COFFER_BENCH=1 (COFFER_BENCH_KEYS keys, default 100,000);
// COFFER_HEAPPROFILE=FILE writes a heap profile of the loaded keystore.
func TestMemory_PerKey(t *testing.T) {
	if os.Getenv("COFFER_BENCH") != "1" {
		t.Skip("a measurement: set COFFER_BENCH=1 to run it")
	}
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("COFFER_BENCH_KEYS")); err == nil {
		n = v
	}
	ks := newKS(t, nil)
	mustInit(t, ks)
	base := liveHeap()
	lockedBase := lockedmem.InUse()
	ctx := context.Background()
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("k%d", i)
		mustCreate(t, ks, name, "")
		for r := 0; r < 2; r++ {
			if _, err := ks.RotateKey(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	loaded := liveHeap()
	t.Logf("%d keys × 3 versions: live heap %.1f MB (%d B per key), %d locked buffers",
		n, float64(loaded-base)/1e6, (loaded-base)/uint64(n), lockedmem.InUse()-lockedBase)
	if f := os.Getenv("COFFER_HEAPPROFILE"); f != "" {
		w, err := os.Create(f)
		if err != nil {
			t.Fatal(err)
		}
		pprof.WriteHeapProfile(w)
		w.Close()
	}

	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	write := ks.SnapshotTo()
	cw := &countWriter{w: io.Discard}
	if err := write(cw); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&ms1)
	t.Logf("snapshot: %.1f MB written, %.1f MB allocated to write it", float64(cw.n)/1e6, float64(ms1.TotalAlloc-ms0.TotalAlloc)/1e6)
}
