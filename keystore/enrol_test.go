package keystore

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestEnrolTokens: a token works once, for its node id, before it expires;
// only its hash is in the replicated state; a revoked token is gone.
func TestEnrolTokens(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ks := newKS(t, clk)
	ctx := context.Background()
	if _, _, err := ks.IssueEnrolToken(ctx, "node4", time.Hour); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("token before init: %v", err)
	}
	mustInit(t, ks)
	for _, ttl := range []time.Duration{0, 59 * time.Second, 25 * time.Hour} {
		if _, _, err := ks.IssueEnrolToken(ctx, "node4", ttl); !errors.Is(err, ErrInvalid) {
			t.Errorf("ttl %v: %v", ttl, err)
		}
	}
	if _, _, err := ks.IssueEnrolToken(ctx, "bad id!", time.Hour); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad node id: %v", err)
	}
	tok, info, err := ks.IssueEnrolToken(ctx, "node4", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	ks.Snapshot().WriteTo(&snap)
	if strings.Contains(snap.String(), strings.TrimPrefix(tok, TokenPrefix+info.ID+"-")) {
		t.Fatal("the snapshot holds the token")
	}
	flipped := tok[:len(tok)-1] + "A"
	if tok[len(tok)-1] == 'A' {
		flipped = tok[:len(tok)-1] + "B"
	}
	for i, bad := range []struct{ node, token string }{
		{"node5", tok}, // another node's
		{"node4", flipped},
		{"node4", "coffer-enrol-nonsense"},
		{"node4", ""},
	} {
		if err := ks.UseEnrolToken(ctx, bad.node, bad.token); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("use %d (node %s): %v", i, bad.node, err)
		}
	}
	if err := ks.UseEnrolToken(ctx, "node4", tok); err != nil {
		t.Fatal(err)
	}
	if err := ks.UseEnrolToken(ctx, "node4", tok); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("second use: %v", err)
	}
	// Two uses proposed concurrently (both passed the local check): the
	// second to be applied loses.
	tok2, info2, _ := ks.IssueEnrolToken(ctx, "node6", time.Hour)
	use := signed(t, ks, &command{Op: opEnrol, Enrol: &enrolCmd{Do: "use", ID: info2.ID, Hash: tokenHash(tok2), NodeID: "node6", Now: clk.now()}})
	if r := ks.Apply(use); r != nil {
		t.Fatalf("first apply: %v", r)
	}
	if r := ks.Apply(use); !errors.Is(r.(error), ErrInvalidToken) {
		t.Errorf("replayed use: %v", r)
	}
	// Expiry, by the command's clock.
	tok3, _, _ := ks.IssueEnrolToken(ctx, "node7", time.Minute)
	clk.add(time.Minute)
	if err := ks.UseEnrolToken(ctx, "node7", tok3); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("expired token: %v", err)
	}
	// Revoke: gone; a used token cannot be revoked.
	tok4, info4, _ := ks.IssueEnrolToken(ctx, "node8", time.Hour)
	if err := ks.RevokeEnrolToken(ctx, info4.ID); err != nil {
		t.Fatal(err)
	}
	if err := ks.UseEnrolToken(ctx, "node8", tok4); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("revoked token: %v", err)
	}
	if err := ks.RevokeEnrolToken(ctx, info.ID); !errors.Is(err, ErrInvalid) {
		t.Errorf("revoke a used token: %v", err)
	}
	list := ks.ListEnrolTokens()
	if len(list) != 3 || list[0].UsedAt != nil || list[1].UsedAt == nil {
		t.Errorf("list: %+v", list)
	}
	// Pruned a day after expiry.
	clk.add(48 * time.Hour)
	ks.IssueEnrolToken(ctx, "node9", time.Hour)
	if list := ks.ListEnrolTokens(); len(list) != 1 || list[0].NodeID != "node9" {
		t.Errorf("after pruning: %+v", list)
	}
}

// TestNodeRevocation: a removed node's certificates issued up to the
// removal are revoked, later ones not; the state survives a snapshot.
func TestNodeRevocation(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ks := newKS(t, clk)
	ctx := context.Background()
	mustInit(t, ks)
	removed := clk.now()
	if err := ks.RevokeNode(ctx, "node3"); err != nil {
		t.Fatal(err)
	}
	if !ks.NodeRevoked("node3", removed.Add(-time.Hour)) || !ks.NodeRevoked("node3", removed) || ks.NodeRevoked("node3", removed.Add(time.Second)) || ks.NodeRevoked("node2", removed) {
		t.Error("revocation by issue time")
	}
	if !ks.RemovalCommitted("node3") {
		t.Error("removal not committed")
	}
	var snap bytes.Buffer
	ks.Snapshot().WriteTo(&snap)
	ks2 := newKS(t, clk)
	if err := ks2.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	if !ks2.NodeRevoked("node3", removed) {
		t.Error("revocation lost in a snapshot")
	}
	// Re-admitted with a token: the old removal no longer authorises a
	// removal.
	clk.add(time.Minute)
	tok, _, _ := ks.IssueEnrolToken(ctx, "node3", time.Hour)
	if err := ks.UseEnrolToken(ctx, "node3", tok); err != nil {
		t.Fatal(err)
	}
	if ks.RemovalCommitted("node3") {
		t.Error("an old removal authorises removing the re-admitted node")
	}
}
