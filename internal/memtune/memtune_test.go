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
