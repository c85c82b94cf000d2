package daemon

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// TestServer_Secrets drives the whole /v1/secrets API as an admin:
// versions, cas, max_versions trimming, destroy (410), pending deletion
// (409) and restore, erasure by the scheduler once the window has passed
// (on a test clock), and the audit entries (name and version, never the
// value). The value never reaches the log or the audit log in clear.
func TestServer_Secrets(t *testing.T) {
	clk := &testClock{t: time.Now()}
	n := startNodeOpts(t, t.TempDir(), nil, func(o *Options) { o.Now = clk.now })
	n.init(1, 1)

	secret := "pa\x00ss\nMARKER-7f3a"
	var w api.SecretWriteResponse
	n.must("PUT", "/v1/secrets/db-password", map[string]any{"value": b64(secret), "cas": 0}, &w, 200)
	if w.Name != "db-password" || w.Version != 1 || w.CreatedAt.IsZero() {
		t.Fatalf("put = %+v", w)
	}
	n.expect("PUT", "/v1/secrets/db-password", map[string]any{"value": b64("x"), "cas": 0}, 409, api.CodeVersionConflict)
	n.must("PUT", "/v1/secrets/db-password", map[string]any{"value": b64("second"), "cas": 1}, &w, 200)
	n.expect("PUT", "/v1/secrets/db-password", map[string]any{"value": b64("x"), "cas": 1}, 409, api.CodeVersionConflict)

	var v api.SecretValue
	n.must("GET", "/v1/secrets/db-password?version=1", nil, &v, 200)
	if string(v.Value) != secret || v.Version != 1 {
		t.Fatalf("v1 = %+v", v)
	}
	n.must("GET", "/v1/secrets/db-password", nil, &v, 200)
	if string(v.Value) != "second" || v.Version != 2 {
		t.Fatalf("latest = %+v", v)
	}
	n.expect("GET", "/v1/secrets/db-password?version=0", nil, 400, api.CodeBadRequest)
	n.expect("GET", "/v1/secrets/db-password?version=9", nil, 404, api.CodeNotFound)
	n.expect("GET", "/v1/secrets/db-password?foo=1", nil, 400, api.CodeBadRequest)
	n.expect("GET", "/v1/secrets/nope", nil, 404, api.CodeNotFound)
	n.expect("PUT", "/v1/secrets/bad%2Fname", map[string]any{"value": b64("x")}, 404, api.CodeNotFound)
	n.expect("PUT", "/v1/secrets/-bad", map[string]any{"value": b64("x")}, 400, api.CodeBadRequest)
	n.expect("PUT", "/v1/secrets/e", map[string]any{"value": ""}, 400, api.CodeBadRequest)
	n.expect("PUT", "/v1/secrets/e", map[string]any{}, 400, api.CodeBadRequest)
	n.expect("PUT", "/v1/secrets/e", map[string]any{"value": "!!"}, 400, api.CodeBadRequest)
	n.expect("PUT", "/v1/secrets/e", map[string]any{"value": b64("x"), "other": 1}, 400, api.CodeBadRequest)
	n.expect("PUT", "/v1/secrets/e", map[string]any{"value": base64.StdEncoding.EncodeToString(make([]byte, 64<<10+1))}, 413, api.CodeTooLarge)
	n.expect("POST", "/v1/secrets/db-password", nil, 405, api.CodeMethodNotAllowed)
	n.expect("GET", "/v1/secrets/db-password/bogus", nil, 404, api.CodeNotFound)

	// max_versions: 2 keeps the last two; older reads are 410.
	var m api.SecretMetadata
	n.must("PATCH", "/v1/secrets/db-password/metadata", map[string]any{"max_versions": 2}, &m, 200)
	n.expect("PATCH", "/v1/secrets/db-password/metadata", map[string]any{"max_versions": 101}, 400, api.CodeBadRequest)
	n.must("PUT", "/v1/secrets/db-password", map[string]any{"value": b64("third")}, &w, 200)
	n.must("GET", "/v1/secrets/db-password/metadata", nil, &m, 200)
	if m.LatestVersion != 3 || m.MaxVersions != 2 || len(m.Versions) != 2 || m.Versions[0].Version != 2 || m.DeletionDate != nil {
		t.Fatalf("metadata = %+v", m)
	}
	n.expect("GET", "/v1/secrets/db-password?version=1", nil, 410, api.CodeVersionDestroyed)
	n.must("POST", "/v1/secrets/db-password/destroy", map[string]any{"versions": []int{2}}, &m, 200)
	if !m.Versions[0].Destroyed {
		t.Fatalf("after destroy: %+v", m)
	}
	n.expect("GET", "/v1/secrets/db-password?version=2", nil, 410, api.CodeVersionDestroyed)
	n.expect("POST", "/v1/secrets/db-password/destroy", map[string]any{"versions": []int{7}}, 400, api.CodeBadRequest)

	// Deletion: 24h minimum; reads and writes of the value 409, metadata and
	// restore answer.
	n.expect("DELETE", "/v1/secrets/db-password?pending_window=1h", nil, 400, api.CodeBadRequest)
	n.must("DELETE", "/v1/secrets/db-password?pending_window=24h", nil, &m, 202)
	if m.DeletionDate == nil {
		t.Fatal("no deletion_date")
	}
	n.expect("GET", "/v1/secrets/db-password", nil, 409, api.CodePendingDeletion)
	n.expect("PUT", "/v1/secrets/db-password", map[string]any{"value": b64("x")}, 409, api.CodePendingDeletion)
	n.must("GET", "/v1/secrets/db-password/metadata", nil, &m, 200)
	n.must("POST", "/v1/secrets/db-password/restore", nil, &m, 200)
	if m.DeletionDate != nil {
		t.Fatal("restore left the deletion date")
	}
	n.must("GET", "/v1/secrets/db-password", nil, &v, 200)

	// Erasure: once the clock passes the window, the leader's scheduler
	// erases the secret.
	n.must("DELETE", "/v1/secrets/db-password?pending_window=24h", nil, &m, 202)
	time.Sleep(200 * time.Millisecond) // a few scheduler rounds: nothing is due yet
	n.must("GET", "/v1/secrets/db-password/metadata", nil, &m, 200)
	clk.add(24*time.Hour + time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := n.do("GET", "/v1/secrets/db-password/metadata", nil, nil)
		if st == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("secret not erased after its deletion window")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var l api.SecretList
	n.must("GET", "/v1/secrets", nil, &l, 200)
	if len(l.Secrets) != 0 {
		t.Fatalf("list after erasure: %v", l.Secrets)
	}

	_, entries := auditLog(t, n)
	var sawWrite, sawRead, sawPurge bool
	for _, e := range entries {
		switch {
		case e.Operation == api.OpSecretWrite && e.Key == "db-password" && e.KeyVersion == 1 && e.Outcome == audit.OutcomeOK:
			sawWrite = true
		case e.Operation == api.OpSecretRead && e.Key == "db-password" && e.KeyVersion == 1 && e.Outcome == audit.OutcomeOK:
			sawRead = true
		case e.Type == audit.TypeEvent && e.Operation == "purge" && e.Key == "db-password":
			sawPurge = true
		}
	}
	if !sawWrite || !sawRead || !sawPurge {
		t.Errorf("audit entries missing: write %v read %v purge %v", sawWrite, sawRead, sawPurge)
	}
	data, _ := os.ReadFile(n.cfg.AuditPath())
	for _, leak := range []string{"MARKER-7f3a", b64(secret)} {
		if bytes.Contains(data, []byte(leak)) || bytes.Contains(n.logs.Bytes(), []byte(leak)) {
			t.Errorf("the secret value (%q form) is in the audit log or the daemon log", leak)
		}
	}
	// Nor in clear anywhere under data_dir (raft log, snapshots).
	filepath.Walk(n.cfg.DataDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("MARKER-7f3a")) || bytes.Contains(b, []byte(b64(secret))) {
				t.Errorf("the secret value is in clear in %s", p)
			}
		}
		return nil
	})
}

// A sealed node answers 503 sealed on every secret route.
func TestServer_SecretsSealed(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("PUT", "/v1/secrets/s", map[string]any{"value": b64("v")}, nil, 200)
	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	n.expect("GET", "/v1/secrets/s", nil, 503, api.CodeSealed)
	n.expect("GET", "/v1/secrets", nil, 503, api.CodeSealed)
	n.expect("PUT", "/v1/secrets/s", map[string]any{"value": b64("v")}, 503, api.CodeSealed)
}

func TestSecretOperationNames(t *testing.T) {
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/v1/secrets", "secret-list"},
		{"GET", "/v1/secrets/a", "secret_read"},
		{"GET", "/v1/secrets/a/metadata", "secret_read"},
		{"PUT", "/v1/secrets/a", "secret_write"},
		{"PATCH", "/v1/secrets/a/metadata", "secret_write"},
		{"DELETE", "/v1/secrets/a", "secret_delete"},
		{"POST", "/v1/secrets/a/destroy", "secret_delete"},
		{"POST", "/v1/secrets/a/restore", "secret_delete"},
		// A method the endpoint lacks takes the endpoint's operation
		// (operationFor): still a request about the secret list.
		{"POST", "/v1/secrets", "secret-list"},
		{"GET", "/v1/secrets/a/x", "unknown"},
	} {
		if got := operationFor(c.method, c.path); got != c.want {
			t.Errorf("%s %s = %q, want %q", c.method, c.path, got, c.want)
		}
	}
}
