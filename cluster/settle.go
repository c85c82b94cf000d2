package cluster

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Settling a write whose leader lost leadership while it was in flight.
//
// raft answers ErrLeadershipLost for every entry the leader had appended
// but not yet seen committed when it stepped down — a leadership transfer
// does that to the writes in flight at the hand-over, which the new leader
// then commits, since the transfer waited for it to hold them. Answering
// outcome_unknown there makes every client read and decide (docs/api.md),
// although this node learns the outcome within a round trip: the entry at
// that index, once this node has applied that far, either is the command
// (committed: its response is what this node's FSM returned for it) or is
// another entry (never applied: sending it again is safe). A committed
// index cannot change any more, so either answer is final; while this node
// has not applied that far nothing is concluded (an entry overwritten here
// may still be committed by a later leader that holds it).

// settleWait bounds how long a write waits for its outcome after its
// leader stepped down, beyond which the caller gets outcome_unknown as
// before: a new leader commits within an election and a round trip.
const settleWait = 2 * time.Second

// errNotApplied: the entry of a write whose leader stepped down was not
// committed (another entry holds its index): it may be sent again.
var errNotApplied = errors.New("the write was not applied (leadership changed before it committed); sending it again")

// settleLost waits (bounded by ctx and settleWait) until this node has
// applied index, then reports whether the entry there is cmd and, if so,
// the FSM's response to it. known is false when that could not be decided
// in time or the entry is no longer in the log (compacted), or the
// response was not kept.
func (n *Node) settleLost(ctx context.Context, index uint64, cmd []byte) (resp any, applied, known bool) {
	if index == 0 {
		return nil, false, false
	}
	ctx, cancel := context.WithTimeout(ctx, settleWait)
	defer cancel()
	// raft's applied index passes index once the entry there committed
	// here and went to the FSM goroutine (no-ops and configuration
	// entries, which the FSM never sees, move it too).
	wait := func(done func() bool) bool {
		for {
			ch := n.fsm.appliedCh()
			if done() {
				return true
			}
			select {
			case <-ch:
			case <-time.After(5 * time.Millisecond):
			case <-ctx.Done():
				return false
			}
		}
	}
	if !wait(func() bool { return n.raft.AppliedIndex() >= index }) {
		return nil, false, false
	}
	var l raft.Log
	if err := n.logs.GetLog(index, &l); err != nil {
		return nil, false, false
	}
	if l.Type != raft.LogCommand || !bytes.Equal(l.Data, cmd) {
		return nil, false, true
	}
	// The command is ours: wait for the FSM to have applied it.
	if !wait(func() bool { return n.fsm.applied.Load() >= index }) {
		return nil, false, false
	}
	resp, ok := n.fsm.response(index)
	if !ok {
		return nil, false, false
	}
	return resp, true, true
}

// recentResponses keeps the FSM's responses to the last entries it
// applied, so that a write whose leader stepped down can be answered with
// what its entry did when the next leader committed it (settleLost).
type recentResponses struct {
	mu    sync.Mutex
	slots [256]struct {
		index uint64
		resp  any
	}
}

func (r *recentResponses) put(index uint64, resp any) {
	r.mu.Lock()
	s := &r.slots[index%uint64(len(r.slots))]
	s.index, s.resp = index, resp
	r.mu.Unlock()
}

func (r *recentResponses) get(index uint64) (any, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &r.slots[index%uint64(len(r.slots))]
	if s.index != index {
		return nil, false
	}
	return s.resp, true
}
