package cluster

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/keystore"
)

func openNode(t *testing.T, dir string) (*Node, *keystore.Keystore) {
	t.Helper()
	p := &lazyProposer{}
	ks := keystore.New(keystore.Config{Proposer: p})
	n, err := Open(Config{NodeID: "n1", DataDir: dir, FSM: ks})
	if err != nil {
		t.Fatal(err)
	}
	p.n = n
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// The log replays into the FSM after the election: wait for it, as the
	// daemon does.
	if err := n.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	return n, ks
}

type lazyProposer struct {
	n *Node
	// capture, if set, takes the next command instead of proposing it
	// (a test forwards it itself).
	capture chan []byte
}

var errCaptured = errors.New("captured by the test, not proposed")

func (p *lazyProposer) Propose(ctx context.Context, b []byte) (any, error) {
	if p.capture != nil {
		p.capture <- b
		return nil, errCaptured
	}
	return p.n.Propose(ctx, b)
}

// proposers maps a test node to its keystore's proposer (netNode).
var proposers sync.Map // *Node → *lazyProposer

// TestNode_ReplaysAfterRestart: writes committed through raft survive a
// restart, from the log and from a snapshot.
func TestNode_ReplaysAfterRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	n, ks := openNode(t, dir)
	if !n.IsLeader() || n.LeaderID() != "n1" {
		t.Fatalf("leader = %q", n.LeaderID())
	}
	root, _ := ks.NewRootKey()
	if err := ks.Init(ctx, root, "test-cluster", 1, 1); err != nil {
		t.Fatal(err)
	}
	defer clear(root)
	if _, err := ks.CreateKey(ctx, "a", "", ""); err != nil {
		t.Fatal(err)
	}
	r, _ := ks.Wrap("a", []keystore.Item{{Plaintext: []byte("x")}})
	ct := r[0].Ciphertext
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateKey(ctx, "b", "", ""); err != nil { // after the snapshot: from the log
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	n2, ks2 := openNode(t, dir)
	defer n2.Close()
	if !ks2.Initialized() || !ks2.Sealed() {
		t.Fatal("restarted node should be initialised and sealed")
	}
	if err := ks2.Unseal(root); err != nil {
		t.Fatal(err)
	}
	names, _ := ks2.ListKeys()
	if len(names) != 2 {
		t.Fatalf("keys after restart = %v", names)
	}
	out, _ := ks2.Unwrap("a", []keystore.Item{{Ciphertext: ct}})
	if out[0].Err != nil || string(out[0].Plaintext) != "x" {
		t.Fatalf("unwrap after restart: %v", out[0].Err)
	}
}
