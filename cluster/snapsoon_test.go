package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestSnapshotWait(t *testing.T) {
	for _, c := range []struct {
		size int64
		want time.Duration
	}{
		{0, time.Second}, {3 << 20, time.Second}, {10 << 20, time.Second},
		{20 << 20, 2 * time.Second}, {50 << 20, snapshotInterval}, {1 << 30, snapshotInterval},
	} {
		if got := snapshotWait(c.size); got != c.want {
			t.Errorf("snapshotWait(%d MB) = %v, want %v", c.size>>20, got, c.want)
		}
	}
}

// A small state is snapshotted (and its log compacted) within about a
// second of snapshotThreshold entries accruing, without waiting for raft's
// own check — here pushed out to an hour so that only snapSoonLoop can
// take it.
func TestCluster_SmallStateSnapshotsSoon(t *testing.T) {
	c := makeCluster(t, 1)
	l := c.leader()
	rc := l.n.raft.ReloadableConfig()
	rc.SnapshotInterval = time.Hour
	if err := l.n.raft.ReloadConfig(rc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	create := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := l.ks.CreateKey(ctx, fmt.Sprintf("k%d", i), "", ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	create(0, 10)
	// The first snapshot is raft's (snapSoonLoop needs one to size the
	// state); taken by hand here.
	if err := l.n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	metas, err := l.n.snaps.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("no first snapshot: %v", err)
	}
	first := metas[0].Index
	create(10, 10+snapshotThreshold-20)
	time.Sleep(2500 * time.Millisecond)
	if metas, _ := l.n.snaps.List(); metas[0].Index != first {
		t.Fatalf("snapshot taken before %d entries accrued", snapshotThreshold)
	}
	create(10+snapshotThreshold-20, 10+snapshotThreshold+20)
	waitFor(t, "a snapshot soon after the threshold", 5*time.Second, func() bool {
		metas, _ := l.n.snaps.List()
		return len(metas) > 0 && metas[0].Index >= first+snapshotThreshold
	})
}
