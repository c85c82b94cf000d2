package cluster

import (
	"time"
)

// Small states snapshot as soon as snapshotThreshold entries accrued
// (issue 15, memory round 2). raft checks for a snapshot only every
// snapshotInterval–2×snapshotInterval (5–10 s), so during a bulk load the
// log runs that far ahead of the threshold: at 300 writes/s, 3,000 entries
// more, and raft.db — which bbolt never shrinks, and whose pages stay
// resident in its mmap — ends twice the size it needs (8.4 MB, 4.8 MB of
// it resident, after 10,000 writes). A snapshot costs CPU in proportion to
// the state, so the wait between two of them here is the state's size at
// snapshotRate (1 s for up to 10 MB, ~3,000 keys × 3 versions per MB),
// capped at snapshotInterval: a large state keeps raft's own cadence, and
// a node whose log does not grow (idle, or serving only crypto requests)
// takes none.
const (
	snapSoonEvery = time.Second
	snapshotRate  = 10 << 20 // bytes of snapshot a second of waiting allows
)

// snapshotWait is the least time between two snapshots of a state whose
// last snapshot was size bytes.
func snapshotWait(size int64) time.Duration {
	d := time.Duration(float64(size) / snapshotRate * float64(time.Second))
	return min(max(d, snapSoonEvery), snapshotInterval)
}

// snapSoonLoop asks raft for a snapshot once snapshotThreshold entries
// accrued since the last one and snapshotWait has passed, until Close.
func (n *Node) snapSoonLoop() {
	t := time.NewTicker(snapSoonEvery)
	defer t.Stop()
	var asked time.Time
	for {
		select {
		case <-n.closed:
			return
		case <-t.C:
		}
		metas, err := n.snaps.List()
		if err != nil || len(metas) == 0 {
			continue // none yet: raft's own check takes the first
		}
		last := metas[0] // newest first
		if n.raft.LastIndex() < last.Index+snapshotThreshold {
			continue
		}
		wait := snapshotWait(last.Size)
		if wait >= snapshotInterval || time.Since(asked) < wait {
			continue // raft's own cadence, or too soon for this size
		}
		asked = time.Now()
		if err := n.raft.Snapshot().Error(); err != nil {
			// A sealed node takes none; raft may be taking one itself.
			n.log.Trace("early snapshot not taken", "error", err)
		}
	}
}
