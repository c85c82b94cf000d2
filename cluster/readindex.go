package cluster

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
)

// Linearizable reads: the leader's commit index as a read point
// (/rpc/readindex), and waiting until this node has applied it.

// rpcReadIndex answers the leader's commit index after confirming it still
// leads (a heartbeat round), so a follower that waits for it reads
// linearizably.
func (n *Node) rpcReadIndex(w http.ResponseWriter, r *http.Request) {
	index, err := n.readIndex()
	if err != nil {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	writeRPC(w, http.StatusOK, applyResponse{Index: index})
}

// readIndex is the leader's commit index once it has confirmed that it
// still leads. A new leader's commit index may lag behind what the previous
// leader acknowledged until an entry of the new term commits (raft thesis
// §6.4), so the first read of a term waits for a barrier, which commits one.
func (n *Node) readIndex() (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, raft.ErrNotLeader
	}
	term := n.raft.CurrentTerm()
	if n.readTerm.Load() != term {
		if err := n.raft.Barrier(n.cfg.ApplyTimeout).Error(); err != nil {
			return 0, err
		}
		n.readTerm.Store(term)
	}
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return 0, err
	}
	return n.raft.CommitIndex(), nil
}

// Sync waits until this node has applied every write committed before the
// call, so that a read after it sees them (a linearizable read point). On a
// single node it returns at once: its writes are applied before they are
// acknowledged.
func (n *Node) Sync(ctx context.Context) error {
	if n.cfg.Net == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	for {
		if n.raft.State() == raft.Leader {
			index, err := n.readIndex()
			if err != nil {
				return ErrNoLeader
			}
			return n.waitApplied(ctx, index)
		}
		addr, _ := n.raft.LeaderWithID()
		if addr != "" {
			// Reads are idempotent: when the leader changes, ask the new one.
			callCtx, cancel := n.whileLeader(ctx, addr)
			out, status, err := n.call(callCtx, string(addr), "/rpc/read-index", nil)
			cancel()
			if err == nil && status == http.StatusOK {
				return n.waitApplied(ctx, out.Index)
			}
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ErrNoLeader
		}
	}
}

// waitApplied waits until this node's state machine has applied everything
// up to index. raft's AppliedIndex says entries were handed to the FSM
// goroutine; the FSM's own counter says the last command it applied. Not
// every entry reaches the FSM (no-ops, configuration changes), so the
// target for the FSM is the last command at or before index.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	// The FSM signals each apply (fsm.appliedCh): a forwarded write's
	// answer waits for its own apply, not for the next poll. Entries that
	// never reach the FSM (no-ops, configuration) are caught by the timer.
	t := time.NewTimer(2 * time.Millisecond)
	defer t.Stop()
	wait := func(ch <-chan struct{}) error {
		t.Reset(2 * time.Millisecond)
		select {
		case <-ch:
			return nil
		case <-t.C:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%w: this node did not catch up with the leader in time", ErrNoLeader)
		}
	}
	for {
		ch := n.fsm.appliedCh()
		if n.raft.AppliedIndex() >= index {
			break
		}
		if err := wait(ch); err != nil {
			return err
		}
	}
	target := n.lastCommandAtOrBefore(index)
	for {
		ch := n.fsm.appliedCh()
		if n.fsm.applied.Load() >= target {
			return nil
		}
		if err := wait(ch); err != nil {
			return err
		}
	}
}

// lastCommandAtOrBefore finds the newest command entry at or before index
// in the log (0 when the entries were compacted into a snapshot, which raft
// restores before it reports them applied).
func (n *Node) lastCommandAtOrBefore(index uint64) uint64 {
	for i := index; i > 0 && index-i < 256; i-- {
		var l raft.Log
		if err := n.store.GetLog(i, &l); err != nil {
			return 0
		}
		if l.Type == raft.LogCommand {
			return i
		}
	}
	return 0
}
