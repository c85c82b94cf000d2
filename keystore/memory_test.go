package keystore

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/internal/lockedmem"
	"github.com/coffer-kms/coffer/internal/memtune"
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

// TestMemory_GCCost is a measurement for docs (issue 15, goal 5): the CPU
// per wrap with 100,000 keys × 3 versions loaded, at GOGC=100 (Go's
// default) and at the GOGC internal/memtune picks for that live heap,
// alternating, 3 rounds each (process CPU time, so other load on the
// machine matters little). COFFER_BENCH=1 to run it.
func TestMemory_GCCost(t *testing.T) {
	if os.Getenv("COFFER_BENCH") != "1" {
		t.Skip("a measurement: set COFFER_BENCH=1 to run it")
	}
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("COFFER_BENCH_KEYS")); err == nil {
		n = v
	}
	ks := newKS(t, nil)
	mustInit(t, ks)
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
	live := liveHeap()
	tuned := memtune.Percent(live)
	// COFFER_BENCH_GOGC compares another GOGC with 100 (a candidate
	// headroom policy for this many keys).
	if v, err := strconv.Atoi(os.Getenv("COFFER_BENCH_GOGC")); err == nil {
		tuned = v
	}
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	items := []Item{{Plaintext: make([]byte, 32)}}
	const ops = 300000
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	res := map[int][]time.Duration{}
	for round := 0; round < 3; round++ {
		for _, p := range []int{100, tuned} {
			debug.SetGCPercent(p)
			runtime.GC()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			c0 := cpu()
			for i := 0; i < ops; i++ {
				if _, err := ks.Wrap(fmt.Sprintf("k%d", i%n), items); err != nil {
					t.Fatal(err)
				}
			}
			per := (cpu() - c0) / ops
			runtime.ReadMemStats(&ms1)
			res[p] = append(res[p], per)
			t.Logf("GOGC=%d: %v CPU per wrap, %d collections in %d wraps", p, per, ms1.NumGC-ms0.NumGC, ops)
		}
	}
	for _, p := range []int{100, tuned} {
		slices.Sort(res[p])
		t.Logf("live heap %.1f MB, GOGC=%d: median %v CPU per wrap", float64(live)/1e6, p, res[p][1])
	}
}
