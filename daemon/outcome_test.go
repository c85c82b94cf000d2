package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
)

// TestToAPIError_OutcomeUnknown: a write whose outcome the cluster does not
// know is answered outcome_unknown, never no_leader, which tells clients
// that the write was not applied and may be retried (docs/api.md).
func TestToAPIError_OutcomeUnknown(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code string
	}{
		{cluster.ErrOutcomeUnknown, api.CodeOutcomeUnknown},
		{fmt.Errorf("%w (the leader 10.0.0.1:8201 did not answer)", cluster.ErrOutcomeUnknown), api.CodeOutcomeUnknown},
		{fmt.Errorf("rotate key: %w", fmt.Errorf("%w (leadership lost)", cluster.ErrOutcomeUnknown)), api.CodeOutcomeUnknown},
		{cluster.ErrNoLeader, api.CodeNoLeader},
		{fmt.Errorf("%w: this node did not catch up", cluster.ErrNoLeader), api.CodeNoLeader},
	} {
		status, d, known := toAPIError(tt.err)
		if !known || status != http.StatusServiceUnavailable || d.Code != tt.code || d.Message == "" {
			t.Errorf("%v → %d %+v, want 503 %s", tt.err, status, d, tt.code)
		}
	}
	// Callers that only know ErrNoLeader (init keeps its staged blob on
	// it) still see an unknown outcome as one.
	if !errors.Is(fmt.Errorf("x: %w", cluster.ErrOutcomeUnknown), cluster.ErrNoLeader) {
		t.Fatal("ErrOutcomeUnknown does not match ErrNoLeader")
	}
	if errors.Is(cluster.ErrNoLeader, cluster.ErrOutcomeUnknown) {
		t.Fatal("ErrNoLeader matches ErrOutcomeUnknown")
	}
}
