package cluster

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
	"github.com/coffer-kms/coffer/keystore"
)

// TestEnrolAuditBounded: a member flooding bad tokens gets a bounded
// number of audit entries per minute; other members are not affected.
func TestEnrolAuditBounded(t *testing.T) {
	n := &Node{log: hclog.NewNullLogger()}
	allowed := 0
	for range 1000 {
		if n.enrolAuditAllowed("node2") {
			allowed++
		}
	}
	if allowed != enrolAuditEvery {
		t.Fatalf("%d of 1000 refusals audited in a minute, want %d", allowed, enrolAuditEvery)
	}
	if !n.enrolAuditAllowed("node3") {
		t.Fatal("another member's refusal was dropped")
	}
}

func TestTokenID(t *testing.T) {
	for tok, want := range map[string]string{
		"coffer-enrol-0123456789abcdef-" + "QQQQ": "0123456789abcdef",
		"coffer-enrol-0123456789abcdeg-QQQQ":      "",
		"coffer-enrol-0123456789abcdef":           "",
		"coffer-enrol-0123456789ABCDEF-QQ":        "",
		"":                                        "",
		"x-coffer-enrol-0123456789abcdef-QQ":      "",
	} {
		if got := tokenID(tok); got != want {
			t.Errorf("tokenID(%q) = %q, want %q", tok, got, want)
		}
	}
}

// TestEnrol_SealedLeaderPointsAtUnsealedMember: the enrolling node asks the
// leader, which is sealed; the leader points at the unsealed member, which
// uses the token (a raft write: the sealed leader hands leadership to it
// for that) and answers. The token then works no more, and with no member
// unsealed the enrolment fails with no_leader.
func TestEnrol_SealedLeaderPointsAtUnsealedMember(t *testing.T) {
	tlsDir := t.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"node1", "node2", "node3"} {
		newCert(t, tlsDir, id, now)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n1 := newTrustNode(t, tlsDir, "node1", true)
	if err := n1.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	n2 := newTrustNode(t, tlsDir, "node2", false)
	n3 := newTrustNode(t, tlsDir, "node3", false)
	for _, n := range []*trustNode{n2, n3} {
		if err := n.Join(ctx, n1.cfg.Net.AdvertiseAddr, ""); err != nil {
			t.Fatal(err)
		}
	}
	root := bytes.Repeat([]byte{7}, keystore.RootKeySize)
	if err := n1.ks.Init(ctx, root, "c1", 1, 1); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "node3 initialised", n3.ks.Initialized)
	waitTrue(t, "node2 initialised", n2.ks.Initialized)
	if err := n3.ks.Unseal(root); err != nil {
		t.Fatal(err)
	}
	tok, _, err := n1.ks.IssueEnrolToken(ctx, "node2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "the token on node3", func() bool { return len(n3.ks.ListEnrolTokens()) == 1 })
	n1.ks.Seal()
	if !n1.IsLeader() {
		t.Fatal("node1 is no longer the leader: the sealed-leader path would not be exercised")
	}
	pub := make([]byte, enrolKeyLen)
	ct, err := n2.Enrol(ctx, tok, pub)
	if err != nil {
		t.Fatal(err)
	}
	if string(ct) != "root-for-node2-from-node3" {
		t.Fatalf("answer %q, want node3's answer for node2", ct)
	}
	if _, err := n2.Enrol(ctx, tok, pub); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("the token used a second time: %v", err)
	}
	// Nobody unsealed: the sealed leader has nobody to point at.
	n3.ks.Seal()
	tok2 := "coffer-enrol-0011223344556677-" + strings.Repeat("A", 43)
	if _, err := n2.Enrol(ctx, tok2, pub); err == nil || !errors.Is(err, ErrNoLeader) {
		t.Fatalf("with no unsealed member: %v", err)
	}
}
