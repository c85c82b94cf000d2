package memtune

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 100}, {4 << 20, 100}, {32 << 20, 100}, {64 << 20, 50},
		{80 << 20, 40}, {128 << 20, 25}, {1 << 30, 25},
	} {
		if got := Percent(c.live); got != c.want {
			t.Errorf("Percent(%d MB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}

// TestTune: with about 96 MB live, Tune lowers GOGC to what Percent says;
// when the environment sets GOGC, it leaves it alone.
func TestTune(t *testing.T) {
	var set atomic.Int64
	setGCPercent = func(p int) int { set.Store(int64(p)); return 100 }
	defer func() { setGCPercent = defaultSetGCPercent }()

	live := make([][]byte, 0, 96)
	for i := 0; i < 96; i++ {
		live = append(live, make([]byte, 1<<20))
	}
	runtime.GC() // the live-heap figure is the last collection's
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Tune(ctx, 5*time.Millisecond); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for set.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Tune did not lower GOGC with ~96 MB live")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if p := set.Load(); p < 30 || p > 40 {
		t.Fatalf("GOGC set to %d with ~96 MB live, want ~33", p)
	}
	runtime.KeepAlive(live)

	t.Setenv("GOGC", "100")
	set.Store(0)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	returned := make(chan struct{})
	go func() { Tune(ctx, time.Millisecond); close(returned) }()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Tune ran although GOGC is set in the environment")
	}
	if set.Load() != 0 {
		t.Fatal("Tune changed GOGC although the environment sets it")
	}
}

func TestShouldRelease(t *testing.T) {
	for _, c := range []struct {
		free, live uint64
		want       bool
	}{
		{0, 0, false}, {4 << 20, 1 << 20, false}, {5 << 20, 1 << 20, true},
		{5 << 20, 40 << 20, false}, {11 << 20, 40 << 20, true},
	} {
		if got := ShouldRelease(c.free, c.live); got != c.want {
			t.Errorf("ShouldRelease(%d MB free, %d MB live) = %v, want %v", c.free>>20, c.live>>20, got, c.want)
		}
	}
}

// TestTune_ReleasesFreeHeap: after a burst of garbage, Tune returns the
// free heap to the system (once), and not again within releaseEvery.
func TestTune_ReleasesFreeHeap(t *testing.T) {
	var calls atomic.Int64
	orig := freeOSMemory
	freeOSMemory = func() { calls.Add(1); orig() }
	defer func() { freeOSMemory = orig }()
	setGCPercent = func(p int) int { return 100 }
	defer func() { setGCPercent = defaultSetGCPercent }()

	var sink [][]byte
	for i := 0; i < 64; i++ {
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil
	runtime.GC() // 64 MB now free, not yet returned
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Tune(ctx, 5*time.Millisecond); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	if n := calls.Load(); n != 1 {
		t.Fatalf("FreeOSMemory called %d times, want once (then not within %v)", n, releaseEvery)
	}
	_ = sink
}
