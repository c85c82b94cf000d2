// Package memtune keeps the Go heap's headroom bounded as cofferd's state
// grows (issue 15, memory).
//
// The Go garbage collector lets the heap grow to (1 + GOGC/100) times the
// live heap before collecting: with the default GOGC=100, a node holding
// 100,000 keys of 3 versions (about 80 MB of live heap: encrypted records,
// the decrypted view, the maps) would grow to about 160 MB of heap, plus
// what the scavenger has not yet returned. Tune bounds the headroom to
// max(32 MB, a quarter of the live heap) by lowering GOGC as the live heap
// grows past 32 MB, never below 25.
//
// The trade-off is collection frequency: with a large state the collector
// runs more often for the same allocation rate (at 80 MB live, about 2.5×
// as often as with GOGC=100). A node with a small state (up to 32 MB live,
// about 30,000 keys) is unaffected: GOGC stays 100. GOMEMLIMIT is not used:
// a fixed limit below a grown live heap would make the collector run almost
// continuously. An operator who sets GOGC or GOMEMLIMIT in cofferd's
// environment keeps full control: Tune then does nothing.
//
// Tune also hands free heap back to the system after a burst (a bulk load
// of keys, a snapshot, a restore): Go's background scavenger returns free
// pages over minutes and keeps about a tenth over the heap goal, so a node
// that has just written 10,000 keys kept 5–6 MB of garbage-free but
// resident heap (docs/benchmarks.md, issue 15). When the free, unreturned
// heap exceeds max(4 MB, a quarter of the live heap), Tune calls
// debug.FreeOSMemory — one collection and a full scavenge — at most once
// every releaseEvery. Under steady crypto load the free heap stays under
// that (the live heap is small and reused), so nothing happens.
package memtune

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

const (
	minHeadroom = 32 << 20
	minPercent  = 25
	maxPercent  = 100

	minRelease   = 4 << 20
	releaseEvery = 10 * time.Second
)

// setGCPercent is debug.SetGCPercent (tests watch it).
var setGCPercent = defaultSetGCPercent

func defaultSetGCPercent(p int) int { return debug.SetGCPercent(p) }

// freeOSMemory is debug.FreeOSMemory (tests watch it).
var freeOSMemory = debug.FreeOSMemory

// ShouldRelease reports whether free (resident but unused) heap bytes are
// worth a collection to return, for a live heap of live bytes.
func ShouldRelease(free, live uint64) bool {
	return free > max(uint64(minRelease), live/4)
}

// Percent is the GOGC for a live heap of live bytes.
func Percent(live uint64) int {
	if live == 0 {
		return maxPercent
	}
	headroom := max(uint64(minHeadroom), live/4)
	p := headroom * 100 / live
	return int(min(max(p, minPercent), maxPercent))
}

// Tune adjusts GOGC to the live heap every interval until ctx ends. It
// returns at once if the environment sets GOGC or GOMEMLIMIT.
func Tune(ctx context.Context, every time.Duration) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	cur := maxPercent
	var released time.Time
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(s)
		if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
			return // not supported by this Go runtime
		}
		if ShouldRelease(s[1].Value.Uint64(), s[0].Value.Uint64()) && time.Since(released) >= releaseEvery {
			freeOSMemory()
			released = time.Now()
		}
		// Changing GOGC briefly stops the world: only on a real change.
		if p := Percent(s[0].Value.Uint64()); p < cur-4 || p > cur+4 || (p == maxPercent && cur != maxPercent) {
			setGCPercent(p)
			cur = p
		}
	}
}
