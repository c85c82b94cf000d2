package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
	"github.com/coffer-kms/coffer/keystore"
)

// A node that joins after the leader compacted its log past the writes
// (more than trailingLogs since a snapshot) receives the leader's snapshot
// (streamed, authenticated: keystore/snapenc.go), verifies it at unseal and
// holds every acknowledged write; the leader's log stays bounded.
func TestCluster_NewNodeCatchesUpFromSnapshot(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// A busy machine can cost the leader its lease: a write whose outcome
	// is unknown is retried (a repeat finds the key).
	create := func(name string) {
		for try := 0; ; try++ {
			_, err := c.leader().ks.CreateKey(ctx, name, "", "")
			if err == nil || errors.Is(err, keystore.ErrAlreadyExists) {
				return
			}
			if try == 20 || !errors.Is(err, ErrNoLeader) {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	n := trailingLogs + 200
	for i := 0; i < n; i++ {
		create(fmt.Sprintf("k%d", i))
	}
	l := c.leader()
	// Snapshot now rather than at the next check (snapshotInterval).
	if err := l.n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	first, err := l.n.store.FirstIndex()
	if err != nil || first <= 1 {
		t.Fatalf("the leader's log was not compacted (first index %d, %v)", first, err)
	}

	if _, _, err := tlsutil.CreateNodeCert(c.tlsDir, "node4", []net.IP{net.ParseIP("127.0.0.1")}, nil, c.tlsDir, 10, time.Now()); err != nil {
		t.Fatal(err)
	}
	n4 := netNode(t, c.tlsDir, "node4", "node4", false)
	ks4 := n4.cfg.FSM.(*keystore.Keystore)
	tok, _, err := l.ks.IssueEnrolToken(ctx, "node4", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := n4.Join(ctx, l.n.cfg.Net.AdvertiseAddr, tok); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node4 receives the state", 60*time.Second, ks4.Initialized)
	if err := n4.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := n4.store.FirstIndex(); err != nil || got <= 1 {
		t.Fatalf("node4 replayed the log from index %d instead of installing the snapshot (%v)", got, err)
	}
	if err := ks4.Unseal(c.root); err != nil {
		t.Fatalf("unseal after a snapshot install (its MAC is verified now): %v", err)
	}
	for i := 0; i < n; i++ {
		if !hasKey(ks4, fmt.Sprintf("k%d", i)) {
			t.Fatalf("node4 lacks k%d, acknowledged before it joined", i)
		}
	}
	// And it follows the log from there.
	create("after")
	waitFor(t, "node4 applies a write after the snapshot", 10*time.Second, func() bool { return hasKey(ks4, "after") })
}
