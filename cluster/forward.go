package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
)

// Forwarding writes: a follower sends a command to the leader (/rpc/apply)
// and waits until it has applied it itself.

func (n *Node) rpcApply(w http.ResponseWriter, r *http.Request) {
	cmd, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRPCBody))
	if err != nil {
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: err.Error()})
		return
	}
	var prepared interface {
		Verify() error
		Describe() (op, path string)
	}
	if cp, ok := n.cfg.FSM.(CommandPreparer); ok {
		prepared, err = cp.PrepareCommand(cmd)
	} else {
		err = n.cfg.Codec.Validate(cmd)
	}
	if err != nil {
		n.log.Warn("refusing a forwarded command that cannot be applied", "error", err)
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: "invalid command: " + err.Error()})
		return
	}
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	// Only commands authenticated by the keyring enter the log (trust.go):
	// a sealed leader cannot tell, so it hands leadership over and the
	// follower retries with the next leader.
	if n.leaderSealed() {
		n.handOff()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader})
		return
	}
	verify := func() error { return nil }
	if prepared != nil {
		verify = prepared.Verify
	} else if v, ok := n.cfg.FSM.(CommandVerifier); ok {
		verify = func() error { return v.VerifyCommand(cmd) }
	}
	if err := verify(); err != nil {
		p, _ := peerOfRequest(r)
		n.refused(Refusal{Remote: r.RemoteAddr, NodeID: p.id, What: r.URL.Path, Reason: "command refused: " + err.Error()})
		writeRPC(w, http.StatusForbidden, applyResponse{Error: "command refused: " + err.Error()})
		return
	}
	term := n.raft.CurrentTerm()
	f := n.raft.Apply(cmd, n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		// Only ErrNotLeader means the entry was never appended, so that the
		// follower may send it again. After ErrLeadershipLost the entry may
		// still be committed by the next leader: sending it again could
		// apply it twice (a rotation would add two versions).
		// A leadership transfer refuses new entries without appending
		// them: the follower sends the command again to the next leader.
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			addr, _ := n.raft.LeaderWithID()
			if errors.Is(err, raft.ErrLeadershipTransferInProgress) {
				addr = "" // this node still leads, but not for long: wait
			}
			writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
			return
		}
		if !errors.Is(err, raft.ErrLeadershipLost) {
			writeRPC(w, http.StatusServiceUnavailable, applyResponse{Error: err.Error()})
			return
		}
		// Stepped down with the entry in flight (a leadership transfer
		// does that): wait for its outcome (settle.go).
		resp, applied, known := n.settleLost(r.Context(), f.Index(), cmd)
		switch {
		case known && applied:
			out := applyResponse{Index: f.Index(), Response: n.cfg.Codec.EncodeResponse(resp)}
			n.auditForwarded(r, cmd, prepared, out.Response)
			writeRPC(w, http.StatusOK, out)
		case known:
			addr, _ := n.raft.LeaderWithID()
			writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		default:
			writeRPC(w, http.StatusServiceUnavailable, applyResponse{Error: err.Error()})
		}
		return
	}
	out := applyResponse{Index: f.Index()}
	// The term did not change from before the entry was appended to its
	// commit, so it was appended in this term, which this node led: the
	// follower may tell its raft so (pushCommit, commithint.go).
	if n.raft.CurrentTerm() == term {
		out.Term = term
	}
	// A follower that pushes the commit index itself needs no barrier.
	if out.Term == 0 || r.Header.Get(hdrCommitHint) == "" {
		n.nudgeFollowers()
	}
	out.Response = n.cfg.Codec.EncodeResponse(f.Response())
	n.auditForwarded(r, cmd, prepared, out.Response)
	writeRPC(w, http.StatusOK, out)
}

// hdrCommitHint: the follower forwarding a write will pass the commit
// index to its raft itself (pushCommit) when the answer carries the term.
// Older followers do not send it and get the barrier.
const hdrCommitHint = "Coffer-Commit-Hint"

// A follower learns that an entry committed only from the leader's next
// AppendEntries, which an idle leader sends after CommitTimeout (5–10 ms
// here: raft randomises it). The follower that forwarded a write answers
// only once it applied the write itself, so it used to wait for that tick:
// 13 ms at p50 against 2 ms through the leader (docs/benchmarks.md). A
// follower of this version passes the commit index to its raft itself
// (pushCommit). For one that does not (an older version during a rolling
// upgrade), or when the leader cannot vouch for the entry's term, the
// leader appends a barrier entry at once after committing a forwarded
// write: replicating it carries the new commit index to every follower
// within a round trip (but costs an fsync on every node). nudgeLoop keeps
// at most one barrier in flight, so a burst of forwarded writes adds one
// entry per round trip, not one per write.

// nudgeFollowers asks for a barrier; it never blocks.
func (n *Node) nudgeFollowers() {
	select {
	case n.nudge <- struct{}{}:
	default:
	}
}

func (n *Node) nudgeLoop() {
	for {
		select {
		case <-n.closed:
			return
		case <-n.nudge:
			if n.raft.State() == raft.Leader {
				// The outcome does not matter: a failed barrier only
				// leaves the followers to the next tick.
				_ = n.raft.Barrier(n.cfg.ApplyTimeout).Error()
			}
		}
	}
}

// whileLeader returns a context that ends with ctx, or as soon as this node
// stops seeing addr as the leader (an election started or ended elsewhere):
// a call to a leader that froze or was cut off then gives up within about an
// election timeout instead of waiting for ctx's deadline.
func (n *Node) whileLeader(ctx context.Context, addr raft.ServerAddress) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-c.Done():
				return
			case <-t.C:
				if a, _ := n.raft.LeaderWithID(); a != addr {
					cancel()
					return
				}
			}
		}
	}()
	return c, cancel
}

// waitLeaderChange waits until this node no longer sees addr as the
// leader, or for d; false if ctx ended. During a failover the new leader is
// then tried as soon as it is known, not up to d later.
func (n *Node) waitLeaderChange(ctx context.Context, addr raft.ServerAddress, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if a, _ := n.raft.LeaderWithID(); a != addr {
			return true
		}
		if !sleepCtx(ctx, 5*time.Millisecond) {
			return false
		}
	}
	return ctx.Err() == nil
}

// forward sends a command to the leader and waits until this node has
// applied it too, so that a client reads its own write from any node.
func (n *Node) forward(ctx context.Context, cmd []byte) (any, error) {
	for {
		addr, id := n.raft.LeaderWithID()
		if addr == "" {
			if err := n.WaitLeader(ctx); err != nil {
				return nil, ErrNoLeader
			}
			continue
		}
		if n.raft.State() == raft.Leader {
			return n.applyLocal(ctx, cmd)
		}
		callCtx, cancel := n.whileLeader(ctx, addr)
		out, status, peer, err := n.callPeer(callCtx, string(addr), "/rpc/apply", cmd, hdrCommitHint)
		cancel()
		if err != nil {
			if notSent(err) && ctx.Err() == nil {
				n.log.Debug("cannot reach the leader; retrying", "leader", addr, "error", err)
				if errors.Is(err, syscall.ECONNREFUSED) {
					// Its process is gone (failover.go).
					n.expediteElection(addr, id)
				}
				if !n.waitLeaderChange(ctx, addr, 100*time.Millisecond) {
					return nil, ErrNoLeader
				}
				continue
			}
			// The leader may have received the command and committed it:
			// sending it again could apply it twice, so the outcome is
			// unknown to the caller.
			return nil, fmt.Errorf("%w (the leader %s did not answer)", ErrOutcomeUnknown, addr)
		}
		switch {
		case status == http.StatusMisdirectedRequest && out.Error == errNotLeader:
			if !sleepCtx(ctx, 50*time.Millisecond) {
				return nil, ErrNoLeader
			}
			continue
		case status == http.StatusBadRequest:
			// A bug on this side, not a cluster problem: say so.
			return nil, fmt.Errorf("the leader refused the command: %s", out.Error)
		case status == http.StatusForbidden:
			// Not a missing leader (clients retry no_leader): the leader
			// refused the command's authentication, or this node is no
			// longer a member. Retrying cannot help.
			return nil, fmt.Errorf("%w: the leader refused this node's write: %s", ErrForbidden, out.Error)
		case status == http.StatusServiceUnavailable && out.Error != "":
			// The leader's apply failed after the entry may have been
			// appended (leadership lost): the outcome is unknown.
			return nil, fmt.Errorf("%w (the leader answered: %s)", ErrOutcomeUnknown, out.Error)
		case out.Error != "":
			return nil, fmt.Errorf("%w: %s", ErrNoLeader, out.Error)
		}
		// The answer becomes a raft message only if it came from the
		// member this node follows, over a connection raft itself would
		// accept from it (a current, unrevoked member): a certificate of
		// the CA alone must not commit entries here.
		if out.Term != 0 && peer.id == string(id) && n.admit(peer, alpnRaft) == "" {
			n.pushCommit(ctx, id, addr, out.Index, out.Term)
		}
		if err := n.waitApplied(ctx, out.Index); err != nil {
			// Committed by the leader, not yet applied here: retrying
			// would apply it twice.
			return nil, fmt.Errorf("%w (the leader committed it; this node did not catch up in time)", ErrOutcomeUnknown)
		}
		return n.cfg.Codec.DecodeResponse(out.Response), nil
	}
}

// auditForwarded reports a forwarded write the leader committed.
func (n *Node) auditForwarded(r *http.Request, cmd []byte, prepared interface{ Describe() (op, path string) }, resp string) {
	if n.cfg.OnForwarded == nil {
		return
	}
	p, _ := peerOfRequest(r)
	fw := Forwarded{NodeID: p.id, Origin: originOf(r), Outcome: "ok"}
	if resp != "" {
		fw.Outcome = clip(resp)
	}
	if prepared != nil {
		fw.Op, fw.Path = prepared.Describe()
	} else if d, ok := n.cfg.FSM.(Describer); ok {
		fw.Op, fw.Path = d.Describe(cmd)
	}
	n.cfg.OnForwarded(fw)
}
