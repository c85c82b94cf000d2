package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// When the leader's process is gone (its address refuses connections), a
// follower does not wait out the heartbeat timeout: it shortens it, a new
// leader is elected, a write through the follower is acknowledged, and the
// usual timeouts come back.
func TestCluster_DeadLeaderElectionIsExpedited(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	old := c.leader()
	f := c.followers()[0]
	normal := f.n.raft.ReloadableConfig()
	c.stopNode(old) // closes its listener: connections to it are refused
	t0 := time.Now()
	for i := 0; ; i++ {
		_, err := f.ks.CreateKey(ctx, fmt.Sprintf("after-%d", i), "", "")
		if err == nil {
			break
		}
		// A write in flight when the leader went may have an unknown
		// outcome: the client retries, as the e2e benchmark does.
		if ctx.Err() != nil {
			t.Fatalf("no write acknowledged after the leader's loss: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("leader stopped → first acknowledged write through a follower: %v", time.Since(t0))
	expedited := uint64(0)
	for _, cn := range c.nodes {
		if cn != old {
			expedited += cn.n.expedited.Load()
		}
	}
	if expedited == 0 {
		t.Fatal("no survivor shortened its election timeout although the leader's address refused connections")
	}
	for _, cn := range c.nodes {
		if cn == old {
			continue
		}
		waitFor(t, cn.id+" restores its raft timeouts", 10*time.Second, func() bool {
			rc := cn.n.raft.ReloadableConfig()
			return rc.HeartbeatTimeout == normal.HeartbeatTimeout && rc.ElectionTimeout == normal.ElectionTimeout && !cn.n.expediting.Load()
		})
		if rc := cn.n.raft.ReloadableConfig(); rc.SnapshotThreshold != normal.SnapshotThreshold || rc.TrailingLogs != normal.TrailingLogs {
			t.Fatalf("%s: the other reloadable settings changed: %+v, was %+v", cn.id, rc, normal)
		}
	}
}

// A leader that is alive keeps its followers' timeouts as they are, even
// when one of its raft connections ends (pipelines are reopened, a
// leadership transfer closes them).
func TestCluster_LiveLeaderConnectionEndDoesNotExpedite(t *testing.T) {
	c := makeCluster(t, 3)
	l := c.leader()
	f := c.followers()[0]
	f.n.leaderConnLost(l.id)
	time.Sleep(500 * time.Millisecond)
	if f.n.expedited.Load() != 0 {
		t.Fatal("a live leader's closed connection shortened the election timeout")
	}
	if rc := f.n.raft.ReloadableConfig(); rc.HeartbeatTimeout != 500*time.Millisecond {
		t.Fatalf("heartbeat timeout %v", rc.HeartbeatTimeout)
	}
}
