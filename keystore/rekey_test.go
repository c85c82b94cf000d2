package keystore

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// replicated applies every proposal to all keystores, as raft would.
type replicated struct{ all []*Keystore }

func (r *replicated) Propose(_ context.Context, cmd []byte) (any, error) {
	var first any
	for i, ks := range r.all {
		resp := ks.Apply(cmd)
		if i == 0 {
			first = resp
		}
	}
	return first, nil
}

func TestKeystore_RekeyReplicated(t *testing.T) {
	rep := &replicated{}
	changed := make(chan struct{}, 1)
	leader := New(Config{Proposer: rep})
	follower := New(Config{Proposer: rep, OnRootChange: func() { changed <- struct{}{} }})
	sealedOne := New(Config{Proposer: rep})
	rep.all = []*Keystore{leader, follower, sealedOne}
	ctx := context.Background()
	oldRoot, _ := leader.NewRootKey()
	if err := leader.Init(ctx, oldRoot, "c1", 5, 3); err != nil {
		t.Fatal(err)
	}
	for _, ks := range []*Keystore{follower, sealedOne} {
		if err := ks.Unseal(oldRoot); err != nil {
			t.Fatal(err)
		}
	}
	sealedOne.Seal()
	mustCreate(t, leader, "k", "")
	ct, _ := wrap1(t, leader, "k", []byte("x"), nil)

	newRoot, _ := leader.NewRootKey()
	if err := leader.Rekey(ctx, newRoot, 3, 2); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("OnRootChange not called on the unsealed follower")
	}
	for _, ks := range []*Keystore{leader, follower} {
		if ks.Sealed() {
			t.Fatal("an unsealed node sealed itself on rekey")
		}
		ks.RootKey(func(r []byte) error {
			if !bytes.Equal(r, newRoot) {
				t.Error("node did not switch to the new root key")
			}
			return nil
		})
		if sc := ks.SealConfig(); sc.Shares != 3 || sc.Threshold != 2 {
			t.Fatalf("seal config after rekey: %+v", sc)
		}
		if pt, err := unwrap1(ks, "k", ct, nil); err != nil || string(pt) != "x" {
			t.Fatalf("unwrap after rekey: %v", err)
		}
	}
	// The old root key no longer opens anything; the new one does.
	if err := sealedOne.Unseal(oldRoot); !errors.Is(err, ErrRootKeyMismatch) {
		t.Fatalf("old root after rekey: %v", err)
	}
	if err := sealedOne.Unseal(newRoot); err != nil {
		t.Fatal(err)
	}
	if pt, err := unwrap1(sealedOne, "k", ct, nil); err != nil || string(pt) != "x" {
		t.Fatalf("unwrap on the node unsealed with the new root: %v", err)
	}
	// A stale rekey (lost race) changes nothing.
	if err := leader.Rekey(ctx, []byte("short"), 3, 2); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad root: %v", err)
	}
}
