package daemon

import (
	"fmt"
	"strings"
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

// TestServer_DeniedMetricUserUnits: coffer_denied_requests_total labels a
// denied caller by uid and unit, with at most maxDeniedCallers label sets.
// A user who names a new per-user unit per request must not use up those
// sets (later callers would all become "other"): such units count as
// their uid, as in the alert rules and audit coalescing.
func TestServer_DeniedMetricUserUnits(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	for i := 0; i < 20; i++ {
		probe := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}, Unit: fmt.Sprintf("probe-%d.service", i), UserUnit: true}
		if st, _, _ := n.raw(probe, "POST", "/v1/keys/app/unwrap", `{"ciphertext":"x"}`); st != 403 {
			t.Fatalf("probe %d: %d, want 403", i, st)
		}
	}
	_, _, body := n.raw(nil, "GET", "/v1/sys/metrics", "")
	var series []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "coffer_denied_requests_total{") && strings.Contains(l, `uid="3003"`) {
			series = append(series, l)
		}
	}
	if len(series) != 1 || strings.Contains(series[0], "probe-") {
		t.Fatalf("denied requests of uid 3003 under 20 user units: %d series, want 1 without the unit names:\n%s", len(series), strings.Join(series, "\n"))
	}
}
