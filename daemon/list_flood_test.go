package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/config"
)

// TestServer_EmptyListFloodAudit is the audit flood that needs no grant
// at all: GET /v1/secrets and GET /v1/keys are open to any identified
// caller and answer 200 with only what the caller may see. For uid 65534
// with no policy that is an empty list, yet each one was audited as a
// successful request, so coalescing (of 4xx answers) did not apply: 5,000
// of them wrote about 1.5 MB. A list that shows a non-admin nothing is now
// coalesced like a denial (every request still counted), and the log
// stays small; a list that shows something keeps its own entry.
func TestServer_EmptyListFloodAudit(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	n := startNode(t, t.TempDir(), func(c *config.Config) { c.Listener.Mode = 0o666 })
	os.Chmod(filepath.Dir(n.cfg.Listener.Path), 0o755)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	n.must("PUT", "/v1/secrets/db", map[string]any{"value": b64("v")}, nil, 200)
	st0, _ := os.Stat(n.cfg.AuditPath())
	exe := copyTestBinary(t)
	const flood = 2500
	for _, path := range []string{"/v1/secrets", "/v1/keys"} {
		cmd := exec.Command(exe, "-test.run=^TestHelperFlood$", "-test.count=1")
		cmd.Env = append(os.Environ(), "COFFER_TEST_FLOOD_SOCK="+n.cfg.Listener.Path, "COFFER_TEST_FLOOD_N=2500",
			"COFFER_TEST_FLOOD_PATH="+path, "COFFER_TEST_FLOOD_METHOD=GET")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("flood helper: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "RESULT 2500\n") {
			t.Fatalf("flood helper on %s: %s, want 2500 answered 200", path, out)
		}
	}
	var entries []*audit.Entry
	waitFor(t, "every list request accounted for", 5*time.Second, func() bool {
		_, entries = auditLog(t, n)
		return accounted(entries, 65534) == 2*flood
	})
	st1, _ := os.Stat(n.cfg.AuditPath())
	grew := st1.Size() - st0.Size()
	t.Logf("%d empty lists from uid 65534 (no policy): audit grew %d KB", 2*flood, grew/1000)
	if grew >= 300_000 {
		t.Fatalf("%d list requests of a caller with no grant wrote %d bytes of audit, want < 300 KB", 2*flood, grew)
	}
	// A list that shows something is audited on its own.
	_, id, _ := n.raw(nil, "GET", "/v1/secrets", "")
	waitFor(t, "the admin's list audited", 5*time.Second, func() bool {
		_, entries = auditLog(t, n)
		e := byRequest(entries, id)
		return e != nil && e.Outcome == audit.OutcomeOK && e.Detail["count"] == ""
	})
}

// TestServer_SealedFloodAudit: while a node is sealed (after a restart,
// until operators bring their shares) every key, secret and policy request
// is answered 503 sealed before any grant is checked (the policies are
// sealed too). 5xx answers were never coalesced, so any local user could
// write an audit entry per request for as long as the node stayed sealed.
// A sealed answer is now coalesced like a denial.
func TestServer_SealedFloodAudit(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	n := startNode(t, t.TempDir(), func(c *config.Config) { c.Listener.Mode = 0o666 })
	os.Chmod(filepath.Dir(n.cfg.Listener.Path), 0o755)
	n.init(1, 1)
	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	st0, _ := os.Stat(n.cfg.AuditPath())
	exe := copyTestBinary(t)
	cmd := exec.Command(exe, "-test.run=^TestHelperFlood$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COFFER_TEST_FLOOD_SOCK="+n.cfg.Listener.Path, "COFFER_TEST_FLOOD_N=5000",
		"COFFER_TEST_FLOOD_PATH=/v1/keys/app/unwrap", "COFFER_TEST_FLOOD_WANT=503")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("flood helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "RESULT 5000\n") {
		t.Fatalf("flood helper: %s, want 5000 answered 503", out)
	}
	var entries []*audit.Entry
	waitFor(t, "every sealed answer accounted for", 5*time.Second, func() bool {
		_, entries = auditLog(t, n)
		return accounted(entries, 65534) == 5000
	})
	st1, _ := os.Stat(n.cfg.AuditPath())
	grew := st1.Size() - st0.Size()
	t.Logf("5,000 requests from uid 65534 to a sealed node: audit grew %d KB", grew/1000)
	if grew >= 300_000 {
		t.Fatalf("5,000 requests to a sealed node wrote %d bytes of audit, want < 300 KB", grew)
	}
}
