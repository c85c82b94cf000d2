package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/daemon/audit"
)

// writeLog writes a chain of n entries to dir/name (continuing prev, the
// hash of seq first-1) and returns the lines and the last hash.
func writeLog(t *testing.T, path string, first uint64, prev string, n int) ([][]byte, string) {
	t.Helper()
	var lines [][]byte
	for i := 0; i < n; i++ {
		e := &audit.Entry{Seq: first + uint64(i), Time: time.Date(2026, 11, 28, 18, 0, i, 0, time.UTC), NodeID: "n1",
			Type: audit.TypeRequest, RequestID: "r", Operation: "wrap", Caller: &audit.Caller{UID: 1}, Key: "k", KeyVersion: 1,
			Outcome: audit.OutcomeOK, PrevHash: prev}
		lines = append(lines, audit.Encode(e))
		prev = e.Hash
	}
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	return lines, prev
}

func TestAuditVerify(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "audit.log")
	lines, last := writeLog(t, good, 1, audit.GenesisHash, 5)
	next := filepath.Join(dir, "audit.log.next")
	_, last2 := writeLog(t, next, 6, last, 2)

	r := runArgs(t, "", "coffer", "audit", "verify", good)
	if r.code != 0 || r.stdout != "ok: 5 entries, last seq 5, last hash "+last+"\n" || r.stderr != "" {
		t.Fatalf("verify good: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runArgs(t, "", "coffer", "audit", "verify", good, next)
	if r.code != 0 || r.stdout != "ok: 7 entries, last seq 7, last hash "+last2+"\n" {
		t.Fatalf("verify two files: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runArgs(t, "", "coffer", "audit", "verify", next)
	if r.code != 0 || !strings.Contains(r.stderr, "first entry is seq 6") {
		t.Fatalf("verify a continuation: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// Tampered: a line deleted.
	bad := filepath.Join(dir, "bad.log")
	os.WriteFile(bad, bytes.Join(append(append([][]byte(nil), lines[:2]...), lines[3:]...), nil), 0o600)
	r = runArgs(t, "", "coffer", "audit", "verify", bad)
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, bad+":3: 1 entry (seq 3) is missing") {
		t.Fatalf("verify tampered: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runArgs(t, "", "coffer", "--format", "json", "audit", "verify", bad)
	var vr verifyResult
	if err := json.Unmarshal([]byte(r.stdout), &vr); err != nil || r.code != 1 || vr.OK || vr.Line != 3 || vr.Kind != audit.KindDeleted || vr.Entries != 2 {
		t.Fatalf("json verify tampered: exit %d %+v %v\n%s", r.code, vr, err, r.stderr)
	}
	r = runArgs(t, "", "coffer", "audit", "verify", good, "--format", "json")
	if err := json.Unmarshal([]byte(r.stdout), &vr); err != nil || r.code != 0 || !vr.OK || vr.LastSeq != 5 || vr.LastHash != last {
		t.Fatalf("json verify: exit %d %+v", r.code, vr)
	}

	// Missing file, missing argument.
	if r := runArgs(t, "", "coffer", "audit", "verify", filepath.Join(dir, "nope")); r.code != 1 || !strings.Contains(r.stderr, "cannot read the audit log") {
		t.Fatalf("missing file: exit %d %s", r.code, r.stderr)
	}
	if r := runArgs(t, "", "coffer", "audit", "verify"); r.code != 2 {
		t.Fatalf("no file: exit %d %s", r.code, r.stderr)
	}
}

func TestAuditHMAC(t *testing.T) {
	const hash = "hmac-sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, c := range []struct {
		name  string
		args  []string
		stdin string
		input string
	}{
		{"argument", []string{"audit", "hmac", "db=billing"}, "", "db=billing"},
		{"stdin", []string{"audit", "hmac"}, "db=billing\n", "db=billing"},
		{"dash, crlf", []string{"audit", "hmac", "-"}, "db=billing\r\n", "db=billing"},
		{"stdin keeps inner newlines", []string{"audit", "hmac"}, "a\nb\n\n", "a\nb\n"},
		{"empty argument", []string{"audit", "hmac", ""}, "ignored", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake(t)
			f.on("POST", "/v1/sys/audit-hash", 200, `{"hash":"`+hash+`"}`)
			r := run(t, f, c.stdin, c.args...)
			if r.code != 0 || r.stdout != hash+"\n" {
				t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			var body struct{ Input string }
			json.Unmarshal(f.only().Body, &body)
			if body.Input != c.input {
				t.Fatalf("sent input %q, want %q", body.Input, c.input)
			}
		})
	}
	f := newFake(t)
	f.on("POST", "/v1/sys/audit-hash", 403, `{"error":{"code":"permission_denied","message":"uid 1000 may not administer this node"}}`)
	if r := run(t, f, "", "audit", "hmac", "x"); r.code != 1 || !strings.Contains(r.stderr, "permission_denied") {
		t.Fatalf("denied: exit %d %s", r.code, r.stderr)
	}
}
