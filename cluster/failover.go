package cluster

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
)

// Electing a new leader soon after the old one's process died.
//
// A follower starts an election only when its heartbeat timer fires and it
// has not heard from the leader for HeartbeatTimeout (500 ms); raft draws
// the timer from [HeartbeatTimeout, 2×HeartbeatTimeout), so a follower
// notices 0.5–1.5 s after the leader's last heartbeat. And with pre-vote a
// candidate needs the votes of followers that have given up on the leader
// themselves: the election waits for the slowest of a quorum of followers.
// That made the time from SIGKILL of the leader to the first acknowledged
// write 0.7–1.5 s (docs/benchmarks.md).
//
// When the leader's process is gone, its host closes its connections: the
// followers read EOF on the raft connections the leader had opened to them
// at once, and a connection attempt to its cluster address is refused. A
// follower that sees both (expediteElection) shortens its heartbeat and
// election timeouts to LeaderLeaseTimeout (the least raft allows) through
// raft.ReloadConfig, and then checks again once the leader has been silent
// for that long, so that it becomes a candidate 250–375 ms after the
// leader's last heartbeat (at a random point: followers that became
// candidates at the same moment would split the vote). Every follower sees
// the same, so by the time the last of them stands, the others have given
// up on the dead leader and grant its pre-vote. Once a leader is known
// again, the usual timeouts come back. A leader that is
// merely slow or cut off (no refused connection) is left to the usual
// timeouts, so a busy machine does not start elections any sooner than
// before.

// fastTimeout is the heartbeat and election timeout while the leader is
// known to be dead: raft requires HeartbeatTimeout ≥ LeaderLeaseTimeout.
func (n *Node) fastTimeout() time.Duration { return n.lease }

// leaderConnLost is called when a raft connection from peer id ended.
func (n *Node) leaderConnLost(id string) {
	if n.raft == nil || n.raft.State() != raft.Follower {
		return
	}
	addr, leader := n.raft.LeaderWithID()
	if addr == "" || string(leader) != id {
		return
	}
	go n.probeLeader(addr, leader)
}

// probeLeader dials the leader's cluster address; a refused connection
// means its process is gone.
func (n *Node) probeLeader(addr raft.ServerAddress, id raft.ServerID) {
	if !n.probing.CompareAndSwap(false, true) {
		return
	}
	defer n.probing.Store(false)
	// A process being killed may still have its listening socket for a
	// moment: the connection is accepted, then reset. Ask again shortly.
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 && !sleepUntilClosed(n.closed, 20*time.Millisecond) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		c, err := dialTLSContext(ctx, string(addr), alpnRPC, n.cfg.Net.ClientTLS)
		cancel()
		switch {
		case err == nil:
			c.Close()
			return
		case errors.Is(err, syscall.ECONNREFUSED):
			n.expediteElection(addr, id)
			return
		case !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF):
			return // a timeout or anything else: not proof of death
		}
	}
}

// expediteElection shortens the timeouts until a leader other than the
// dead one (addr, id) is known (or a few seconds pass), as described above.
func (n *Node) expediteElection(addr raft.ServerAddress, id raft.ServerID) {
	if !n.expediting.CompareAndSwap(false, true) {
		return
	}
	fast := n.fastTimeout()
	normal := n.raft.ReloadableConfig()
	if normal.HeartbeatTimeout <= fast {
		n.expediting.Store(false)
		return
	}
	n.expedited.Add(1)
	n.log.Warn("the leader's cluster address refuses connections: starting an election without waiting for the heartbeat timeout", "leader", id, "address", addr)
	go func() {
		defer n.expediting.Store(false)
		set := func(hb, et time.Duration) bool {
			// Only the timeouts change: the other reloadable settings
			// (snapshots, trailing logs) are read back as they are.
			rc := n.raft.ReloadableConfig()
			rc.HeartbeatTimeout, rc.ElectionTimeout = hb, et
			if err := n.raft.ReloadConfig(rc); err != nil {
				n.log.Warn("cannot change the raft timeouts", "error", err)
				return false
			}
			return true
		}
		// A slightly longer timeout first, then the fast one just after
		// the leader has been silent for it: raft re-checks its heartbeat
		// timer only when the timeout shrinks (ReloadConfig).
		if !set(fast+fast/4, fast+fast/4) {
			return
		}
		defer set(normal.HeartbeatTimeout, normal.ElectionTimeout)
		// Followers last heard from the leader at about the same time
		// (within its CommitTimeout): a random delay keeps them from
		// becoming candidates at the same moment and splitting the vote.
		// The last to give up on the leader gets the others' pre-votes.
		jitter := rand.N(fast / 2)
		wake := time.Until(n.raft.LastContact().Add(fast + 5*time.Millisecond + jitter))
		if wake > 0 && !sleepUntilClosed(n.closed, wake) {
			return
		}
		if !set(fast, fast) {
			return
		}
		deadline := time.Now().Add(4 * normal.ElectionTimeout)
		for time.Now().Before(deadline) {
			if a, _ := n.raft.LeaderWithID(); a != "" && a != addr {
				return
			}
			if !sleepUntilClosed(n.closed, 10*time.Millisecond) {
				return
			}
		}
	}()
}

// sleepUntilClosed sleeps d; false if closed closes first.
func sleepUntilClosed(closed chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-closed:
		return false
	case <-t.C:
		return true
	}
}
