package cluster

import (
	"testing"

	"github.com/hashicorp/go-hclog"
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
