package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

// TestE2E_UnsealAuthorization: POST /v1/sys/unseal (shares and reset) is
// for admins and the config's unseal.groups only, so that a local user
// cannot reset or poison an operator's unseal; the status's unseal_nonce
// changes when an attempt is reset or a new one starts.
func TestE2E_UnsealAuthorization(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the client as uid 65534")
	}
	const nobody = 65534 // its primary group is nogroup (65534)

	// No unseal block: only admins.
	d := newDaemon(t, "")
	d.start()
	var ir api.InitResponse
	if err := json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "operator", "init", "--shares", "3", "--threshold", "2")), &ir); err != nil {
		t.Fatal(err)
	}
	d.mustCoffer("", "operator", "seal")
	d.mustCoffer(ir.Shares[0]+"\n", "operator", "unseal")
	st := d.status()
	if st.Progress != 1 || st.UnsealNonce == "" {
		t.Fatalf("after one share: %+v", st)
	}
	nonce := st.UnsealNonce
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
	}{
		{"reset", "", []string{"operator", "unseal", "--reset"}},
		{"share", ir.Shares[1] + "\n", []string{"operator", "unseal"}},
		{"garbage share", "not-a-share\n", []string{"operator", "unseal"}},
	} {
		r := d.coffer(tc.stdin, nobody, tc.args...)
		if r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) || !strings.Contains(r.stderr, "unseal") {
			t.Errorf("uid %d %s: exit %d stderr %q, want permission_denied", nobody, tc.name, r.code, r.stderr)
		}
	}
	if st := d.status(); !st.Sealed || st.Progress != 1 || st.UnsealNonce != nonce {
		t.Fatalf("a refused caller changed the unseal: progress %d nonce %q→%q sealed %v", st.Progress, nonce, st.UnsealNonce, st.Sealed)
	}
	// Status stays open to everyone.
	if r := d.coffer("", nobody, "status"); r.code != 2 {
		t.Fatalf("uid %d status of a sealed node: exit %d %q", nobody, r.code, r.stderr)
	}

	// An admin's reset changes the nonce; so does the first share of the
	// next attempt, and the shares of one attempt keep it.
	d.mustCoffer("", "operator", "unseal", "--reset")
	st = d.status()
	if st.Progress != 0 || st.UnsealNonce == nonce {
		t.Fatalf("after reset: progress %d, nonce %q (was %q): it must change", st.Progress, st.UnsealNonce, nonce)
	}
	nonce = st.UnsealNonce
	d.mustCoffer(ir.Shares[2]+"\n", "operator", "unseal")
	if st = d.status(); st.Progress != 1 || st.UnsealNonce == nonce {
		t.Fatalf("after a new first share: progress %d, nonce %q (was %q): it must change", st.Progress, st.UnsealNonce, nonce)
	}
	nonce = st.UnsealNonce
	d.mustCoffer(ir.Shares[0]+"\n", "operator", "unseal")
	if st = d.status(); st.Sealed {
		t.Fatalf("admin's shares did not unseal: %+v", st)
	}
	d.stop()
	// The refusals are audited as denied unseal requests of uid 65534, and
	// no share reaches the log.
	_, es := readAudit(t, filepath.Join(d.dir, "data", "audit.log"))
	denied := 0
	for _, e := range es {
		if e.Operation == "unseal" && e.Outcome == audit.OutcomeDenied && e.Caller != nil && e.Caller.UID == nobody && e.ErrorCode == api.CodePermissionDenied {
			denied++
		}
	}
	if denied != 3 {
		t.Errorf("%d denied unseal entries for uid %d in the audit log, want 3", denied, nobody)
	}
	logData, err := os.ReadFile(filepath.Join(d.dir, "data", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for i, sh := range ir.Shares {
		if strings.Contains(string(logData), sh) {
			t.Errorf("share %d is in the audit log", i+1)
		}
	}

	// unseal { groups = ["nogroup"] }: uid 65534 is a member and may
	// reset and enter shares; it still may not administer.
	g := newDaemon(t, `unseal { groups = ["nogroup"] }`)
	g.start()
	if err := json.Unmarshal([]byte(g.mustCoffer("", "--format", "json", "operator", "init", "--shares", "3", "--threshold", "2")), &ir); err != nil {
		t.Fatal(err)
	}
	g.mustCoffer("", "operator", "seal")
	if r := g.coffer(ir.Shares[0]+"\n", nobody, "operator", "unseal"); r.code != 0 {
		t.Fatalf("unseal group member, first share: exit %d stderr %q", r.code, r.stderr)
	}
	nonce = g.status().UnsealNonce
	if r := g.coffer("", nobody, "operator", "unseal", "--reset"); r.code != 0 {
		t.Fatalf("unseal group member, reset: exit %d stderr %q", r.code, r.stderr)
	}
	if st := g.status(); st.Progress != 0 || st.UnsealNonce == nonce {
		t.Fatalf("after the member's reset: %+v (nonce was %q)", st, nonce)
	}
	if r := g.coffer(ir.Shares[1]+"\n"+ir.Shares[2]+"\n", nobody, "operator", "unseal"); r.code != 0 {
		t.Fatalf("unseal group member, two shares: exit %d stderr %q", r.code, r.stderr)
	}
	if st := g.status(); st.Sealed {
		t.Fatalf("the member's shares did not unseal: %+v", st)
	}
	if r := g.coffer("", nobody, "operator", "seal"); r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) {
		t.Fatalf("unseal group member, seal: exit %d stderr %q, want permission_denied", r.code, r.stderr)
	}
}
