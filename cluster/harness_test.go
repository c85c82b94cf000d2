package cluster

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
	"github.com/coffer-kms/coffer/keystore"
)

// The cluster test harness, in the style of hashicorp/raft's MakeCluster:
// n real nodes in this test process, over real loopback TCP with mutual TLS
// from a test CA, each with its own keystore as the state machine. The
// first node bootstraps, the others join it; makeCluster returns once the
// cluster is initialised and every node is unsealed. Forwarding, read index
// and leadership changes get fast unit tests here; the e2e suite runs the
// same behaviours through the real binaries.

type testCluster struct {
	t      *testing.T
	nodes  []*clusterNode
	root   []byte
	tlsDir string
}

type clusterNode struct {
	id   string
	n    *Node
	ks   *keystore.Keystore
	stop bool
}

func makeCluster(t *testing.T, size int) *testCluster {
	t.Helper()
	tlsDir := t.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, tlsDir: tlsDir}
	for i := 1; i <= size; i++ {
		id := fmt.Sprintf("node%d", i)
		if _, _, err := tlsutil.CreateNodeCert(tlsDir, id, []net.IP{net.ParseIP("127.0.0.1")}, nil, tlsDir, 10, now); err != nil {
			t.Fatal(err)
		}
		cn := &clusterNode{id: id}
		cn.n = netNode(t, tlsDir, id, id, i == 1)
		cn.ks = cn.n.cfg.FSM.(*keystore.Keystore)
		c.nodes = append(c.nodes, cn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := c.nodes[0]
	if err := first.n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for _, cn := range c.nodes[1:] {
		if err := cn.n.Join(ctx, first.n.cfg.Net.AdvertiseAddr, "" /* before init: no token */); err != nil {
			t.Fatalf("%s joins: %v", cn.id, err)
		}
	}
	root, err := first.ks.NewRootKey()
	if err != nil {
		t.Fatal(err)
	}
	c.root = root
	t.Cleanup(func() { clear(root) })
	if err := first.ks.Init(ctx, root, "test-cluster", 1, 1); err != nil {
		t.Fatal(err)
	}
	for _, cn := range c.nodes[1:] {
		waitFor(t, cn.id+" receives the cluster state", 10*time.Second, cn.ks.Initialized)
		if err := cn.ks.Unseal(root); err != nil {
			t.Fatalf("unseal %s: %v", cn.id, err)
		}
	}
	return c
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leader waits until exactly one running node leads and every running node
// agrees on it, and returns it.
func (c *testCluster) leader() *clusterNode {
	c.t.Helper()
	var l *clusterNode
	waitFor(c.t, "the running nodes agree on one leader", 15*time.Second, func() bool {
		l = nil
		for _, cn := range c.nodes {
			if cn.stop {
				continue
			}
			if cn.n.IsLeader() {
				if l != nil {
					return false
				}
				l = cn
			}
		}
		if l == nil {
			return false
		}
		for _, cn := range c.nodes {
			if !cn.stop && cn.n.LeaderID() != l.id {
				return false
			}
		}
		return true
	})
	return l
}

// followers returns the running nodes that do not lead.
func (c *testCluster) followers() []*clusterNode {
	l := c.leader()
	var out []*clusterNode
	for _, cn := range c.nodes {
		if cn != l && !cn.stop {
			out = append(out, cn)
		}
	}
	return out
}

// stopNode closes a node (raft, transport) as a crash would end it.
func (c *testCluster) stopNode(cn *clusterNode) {
	c.t.Helper()
	cn.stop = true
	if err := cn.n.Close(); err != nil {
		c.t.Logf("closing %s: %v", cn.id, err)
	}
}

func hasKey(ks *keystore.Keystore, name string) bool {
	_, err := ks.GetKey(name)
	return err == nil
}

// A write on a follower is forwarded to the leader, committed, and applied
// on the follower before the call returns: it reads its own write at once.
func TestCluster_ForwardedWriteReadsItsOwnWrite(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := c.followers()[0]
	if _, err := f.ks.CreateKey(ctx, "from-follower", "", ""); err != nil {
		t.Fatalf("write on follower %s: %v", f.id, err)
	}
	if !hasKey(f.ks, "from-follower") {
		t.Fatal("the follower does not read its own forwarded write")
	}
	if l := c.leader(); !hasKey(l.ks, "from-follower") {
		t.Fatal("the leader acknowledged a write it has not applied")
	}
}

// Sync is a linearizable read point: after it, a follower sees every write
// the leader acknowledged before the call.
func TestCluster_ReadIndexSeesAcknowledgedWrites(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := c.leader()
	for i := range 20 {
		name := fmt.Sprintf("k%d", i)
		if _, err := l.ks.CreateKey(ctx, name, "", ""); err != nil {
			t.Fatal(err)
		}
		for _, f := range c.followers() {
			if err := f.n.Sync(ctx); err != nil {
				t.Fatalf("Sync on %s: %v", f.id, err)
			}
			if !hasKey(f.ks, name) {
				t.Fatalf("%s after Sync does not see %s, acknowledged by the leader before", f.id, name)
			}
		}
	}
}

// When the leader is lost, the others elect a new one, and writes (also
// forwarded from the remaining follower) and read points work again; the
// state written before the loss is intact.
func TestCluster_LeadershipLoss(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	old := c.leader()
	if _, err := old.ks.CreateKey(ctx, "before", "", ""); err != nil {
		t.Fatal(err)
	}
	c.stopNode(old)
	l := c.leader()
	if l == old {
		t.Fatal("a stopped node still leads")
	}
	f := c.followers()[0]
	if _, err := f.ks.CreateKey(ctx, "after", "", ""); err != nil {
		t.Fatalf("write through %s after the leader was lost: %v", f.id, err)
	}
	for _, cn := range []*clusterNode{l, f} {
		if err := cn.n.Sync(ctx); err != nil {
			t.Fatalf("Sync on %s: %v", cn.id, err)
		}
		if !hasKey(cn.ks, "before") || !hasKey(cn.ks, "after") {
			t.Fatalf("%s lost state across the leadership change", cn.id)
		}
	}
	peers, err := l.n.Peers()
	if err != nil || len(peers) != 3 {
		t.Fatalf("peers after the loss: %+v %v (the stopped node stays a member until removed)", peers, err)
	}
}
