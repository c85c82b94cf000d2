package keystore

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"
)

// TestSecretsScale loads 10,000 secrets × 3 versions (32-byte values) into
// a keystore and reports the heap they take, the snapshot size and the
// time to unseal (decrypt every record's metadata). Set COFFER_BENCH=1.
func TestSecretsScale(t *testing.T) {
	if os.Getenv("COFFER_BENCH") != "1" {
		t.Skip("a benchmark: COFFER_BENCH=1")
	}
	ks := newKS(t, nil)
	root := mustInit(t, ks)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	ctx := context.Background()
	val := make([]byte, 32)
	start := time.Now()
	for i := 0; i < 10000; i++ {
		for v := 0; v < 3; v++ {
			val[0], val[1], val[2] = byte(i), byte(i>>8), byte(v)
			if _, err := ks.PutSecret(ctx, fmt.Sprintf("secret-%05d", i), val, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	writes := time.Since(start)
	after := heap()
	n, err := ks.Snapshot().WriteTo(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ks.Seal()
	start = time.Now()
	if err := ks.Unseal(root); err != nil {
		t.Fatal(err)
	}
	t.Logf("10,000 secrets × 3 versions: %d writes in %v (in process, no raft); heap +%.1f MiB (replicated records and the unsealed view); snapshot %.1f MiB; unseal %v",
		30000, writes.Round(time.Millisecond), float64(after-before)/(1<<20), float64(n)/(1<<20), time.Since(start).Round(time.Millisecond))
}
