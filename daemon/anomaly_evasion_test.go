package daemon

import (
	"fmt"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
)

// TestServer_UnusualAccessUserUnits: the unusual-access rules counted a
// caller per uid and unit, and a unit of a per-user service manager is
// named by the user (`systemd-run --user --unit=…`). A user probing from a
// new user unit for each request stayed under every threshold, so the
// default "denied-requests" alert never fired (and enough distinct names
// filled the tracker, after which nobody new was tracked). Coalescing
// already counts user units as their uid; the alert rules now do too.
func TestServer_UnusualAccessUserUnits(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	for i := 0; i < 30; i++ {
		probe := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}, Unit: fmt.Sprintf("probe-%d.service", i), UserUnit: true}
		if st, _, _ := n.raw(probe, "POST", "/v1/keys/app/unwrap", `{"ciphertext":"x"}`); st != 403 {
			t.Fatalf("probe %d: %d, want 403", i, st)
		}
	}
	var entries []*audit.Entry
	waitFor(t, "an unusual-access event", 5*time.Second, func() bool {
		_, entries = auditLog(t, n)
		return findOp(entries, audit.TypeEvent, "unusual-access") != nil
	})
}
