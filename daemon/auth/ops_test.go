package auth

import (
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
)

// The operation mask is derived from api.Operations: every operation has
// its own bit below numOps, and nothing else has one.
func TestOpIndex_MatchesOperations(t *testing.T) {
	if got, exp := len(api.Operations), numOps; got != exp {
		t.Fatalf("api.Operations has %d operations, numOps is %d: update numOps", got, exp)
	}
	seen := map[int]string{}
	for _, op := range api.Operations {
		i := opIndex(op)
		if i < 0 || i >= numOps {
			t.Errorf("opIndex(%q) = %d, want 0..%d", op, i, numOps-1)
		}
		if prev, dup := seen[i]; dup {
			t.Errorf("%q and %q share bit %d", prev, op, i)
		}
		seen[i] = op
	}
	for _, op := range []string{"", "list", "policy-write", "WRAP"} {
		if i := opIndex(op); i != -1 {
			t.Errorf("opIndex(%q) = %d, want -1", op, i)
		}
	}
}

// NewUnsealers resolves unseal.groups like admin.groups: members are
// included, others not, and a group missing on the host is an error that
// names the unseal block.
func TestNewUnsealers(t *testing.T) {
	u, err := NewUnsealers(config.UnsealConfig{Groups: []string{"root"}})
	if err != nil {
		t.Fatal(err)
	}
	if !u.Includes(&Caller{UID: 1000, Groups: []uint32{0}}) {
		t.Error("a member of the unseal group is not included")
	}
	if u.Includes(&Caller{UID: 1000, GID: 1000, Groups: []uint32{1000}}) || u.Includes(nil) {
		t.Error("a caller outside the unseal group is included")
	}
	if _, err := NewUnsealers(config.UnsealConfig{Groups: []string{"no-such-group-coffer"}}); err == nil || !strings.Contains(err.Error(), "unseal.groups") {
		t.Errorf("missing group: %v, want an error naming unseal.groups", err)
	}
}
