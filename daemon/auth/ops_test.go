package auth

import (
	"testing"

	"github.com/coffer-kms/coffer/api"
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
