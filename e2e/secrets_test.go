package e2e

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

// TestE2E_Secrets drives `coffer secret` against a real cofferd: put from
// stdin and from a file, get as raw bytes and into a 0600 file, and uid
// 65534 allowed and denied exactly as a policy grants (list filtered to
// what it may read).
func TestE2E_Secrets(t *testing.T) {
	d := newDaemon(t, "")
	d.start()
	d.mustCoffer("", "operator", "init", "--shares", "1", "--threshold", "1")

	value := "s3cret\x00with\nNUL and newline\n"
	if out := d.mustCoffer(value, "secret", "put", "billing-db"); !strings.Contains(out, "version 1") {
		t.Fatalf("put: %q", out)
	}
	f := filepath.Join(t.TempDir(), "v2")
	os.WriteFile(f, []byte("second"), 0o600)
	d.mustCoffer("", "secret", "put", "billing-db", f, "--cas", "1")
	if r := d.coffer("x", -1, "secret", "put", "billing-db", "--cas", "1"); r.code != 1 || !strings.Contains(r.stderr, api.CodeVersionConflict) {
		t.Fatalf("stale cas: %d %q", r.code, r.stderr)
	}
	if r := d.coffer("", -1, "secret", "put", "billing-db", "--value", "x"); r.code != 2 {
		t.Fatalf("a value flag must be a usage error: %d %q", r.code, r.stderr)
	}
	if got := d.mustCoffer("", "secret", "get", "billing-db", "--version", "1"); got != value {
		t.Fatalf("get v1 = %q", got)
	}
	out := filepath.Join(t.TempDir(), "out")
	d.mustCoffer("", "secret", "get", "billing-db", "--out", out)
	fi, err := os.Stat(out)
	if b, _ := os.ReadFile(out); err != nil || string(b) != "second" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("--out file: %v %q %v", err, b, fi.Mode())
	}
	// With --format json the value still goes only to the file: stdout
	// gets name and version, never the API answer that holds the value.
	outJSON := filepath.Join(t.TempDir(), "out-json")
	got := d.mustCoffer("", "--format", "json", "secret", "get", "billing-db", "--out", outJSON)
	if b, _ := os.ReadFile(outJSON); string(b) != "second" || strings.Contains(got, base64.StdEncoding.EncodeToString([]byte("second"))) || !strings.Contains(got, `"version": 2`) {
		t.Fatalf("--format json --out: file %q, stdout %q", b, got)
	}
	d.mustCoffer("x", "secret", "put", "other-secret")
	var m api.SecretMetadata
	json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "secret", "show", "billing-db")), &m)
	if m.LatestVersion != 2 || m.MaxVersions != 10 || len(m.Versions) != 2 {
		t.Fatalf("show: %+v", m)
	}

	if os.Getuid() != 0 {
		t.Skip("the uid 65534 part needs root")
	}
	pol := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(pol, []byte(`{"subjects":{"uids":[65534]},"secrets":["billing-*"],"operations":["secret_read"]}`), 0o644)
	d.mustCoffer("", "policy", "write", "nobody-billing", pol)
	if r := d.coffer("", 65534, "secret", "get", "billing-db"); r.code != 0 || r.stdout != "second" {
		t.Fatalf("granted read: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := d.coffer("", 65534, "secret", "list"); r.code != 0 || !strings.Contains(r.stdout, "billing-db") || strings.Contains(r.stdout, "other-secret") {
		t.Fatalf("filtered list: %d %q", r.code, r.stdout)
	}
	for _, args := range [][]string{
		{"secret", "get", "other-secret"},
		{"secret", "put", "billing-db"},
		{"secret", "delete", "billing-db"},
		{"secret", "destroy", "billing-db", "--version", "1"},
		{"unwrap", "--key", "billing-db", "coffer:v1:AAAA"},
	} {
		if r := d.coffer("v", 65534, args...); r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) {
			t.Errorf("uid 65534 %v: %d %q", args, r.code, r.stderr)
		}
	}
	d.stop()
	_, es := readAudit(t, filepath.Join(d.dir, "data", "audit.log"))
	if !hasEntry(es, func(e *audit.Entry) bool {
		return e.Operation == api.OpSecretRead && e.Key == "billing-db" && e.KeyVersion == 2 && e.Caller != nil && e.Caller.UID == 65534 && e.Outcome == audit.OutcomeOK
	}) {
		t.Error("no audit entry for uid 65534's read of billing-db version 2")
	}
	if !hasEntry(es, func(e *audit.Entry) bool {
		return e.Operation == api.OpSecretWrite && e.Key == "billing-db" && e.Caller != nil && e.Caller.UID == 65534 && e.Outcome == audit.OutcomeDenied
	}) {
		t.Error("no denied audit entry for uid 65534's write")
	}
}
