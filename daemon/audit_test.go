package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/config"
)

// auditLog verifies the node's audit log and returns its entries.
func auditLog(t *testing.T, n *testNode) (audit.Summary, []*audit.Entry) {
	t.Helper()
	path := n.cfg.AuditPath()
	sum, err := audit.VerifyFiles(path)
	if err != nil {
		t.Fatalf("audit log does not verify: %v", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Entry
	for _, l := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		e, err := audit.ParseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return sum, out
}

// byRequest finds the entry of a request id.
func byRequest(es []*audit.Entry, id string) *audit.Entry {
	for _, e := range es {
		if e.Type == audit.TypeRequest && e.RequestID == id {
			return e
		}
	}
	return nil
}

func findOp(es []*audit.Entry, typ, op string) *audit.Entry {
	for _, e := range es {
		if e.Type == typ && e.Operation == op {
			return e
		}
	}
	return nil
}

// raw sends a request as caller (nil: the test process over the socket)
// and returns status, request id and body.
func (n *testNode) raw(caller *auth.Caller, method, path, body string) (int, string, []byte) {
	n.t.Helper()
	if caller != nil {
		req := httptest.NewRequest(method, "http://coffer"+path, strings.NewReader(body))
		req = req.WithContext(context.WithValue(req.Context(), callerKey, caller))
		rec := httptest.NewRecorder()
		n.srv.Handler().ServeHTTP(rec, req)
		return rec.Code, rec.Header().Get(api.HeaderRequestID), rec.Body.Bytes()
	}
	req, _ := http.NewRequest(method, "http://coffer"+path, strings.NewReader(body))
	resp, err := n.client.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(api.HeaderRequestID), data
}

// TestServer_AuditTrail: every request but status/health/metrics leaves
// one entry with its request id, caller, operation, key, version, outcome
// and the HMAC of its aad; events have their own entries; the chain
// verifies and its head is in status.
func TestServer_AuditTrail(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.must("GET", "/v1/sys/status", nil, nil, 200)
	n.do("GET", "/v1/sys/health", nil, nil)
	n.must("GET", "/v1/sys/metrics", nil, nil, 200)
	// Sealed: refused, audited without hmac.
	st, sealedID, _ := n.raw(nil, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA==","aad":"eA=="}`)
	if st != 503 {
		t.Fatalf("wrap while uninitialised: %d", st)
	}
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	_, wrapID, body := n.raw(nil, "POST", "/v1/keys/app/wrap", `{"plaintext":"`+b64("secret")+`","aad":"`+b64("tenant=7")+`"}`)
	var w api.WrapResult
	json.Unmarshal(body, &w)
	n.must("POST", "/v1/keys/app/rotate", nil, nil, 200)
	_, unwrapID, _ := n.raw(nil, "POST", "/v1/keys/app/unwrap", `{"ciphertext":"`+w.Ciphertext+`","aad":"`+b64("tenant=7")+`"}`)
	_, badAADID, _ := n.raw(nil, "POST", "/v1/keys/app/unwrap", `{"ciphertext":"`+w.Ciphertext+`","aad":"`+b64("tenant=8")+`"}`)
	_, batchID, _ := n.raw(nil, "POST", "/v1/keys/app/wrap", `{"batch":[{"plaintext":"eA==","aad":"`+b64("a")+`"},{"plaintext":"eA==","aad":"`+b64("b")+`"},{"plaintext":"eA=="}]}`)
	_, sameID, _ := n.raw(nil, "POST", "/v1/keys/app/wrap", `{"batch":[{"plaintext":"eA==","aad":"`+b64("tenant=7")+`"},{"plaintext":"eA==","aad":"`+b64("tenant=7")+`"}]}`)
	_, rewrapID, _ := n.raw(nil, "POST", "/v1/keys/app/rewrap", `{"ciphertext":"`+w.Ciphertext+`","aad":"`+b64("tenant=7")+`"}`)
	_, dkID, _ := n.raw(nil, "POST", "/v1/keys/app/datakey", `{"include_plaintext":false}`)
	stranger := &auth.Caller{UID: 3003, GID: 3003, PID: 77, Groups: []uint32{3003}, Unit: "evil.service"}
	st, deniedID, _ := n.raw(stranger, "POST", "/v1/keys/app/unwrap", `{"ciphertext":"`+w.Ciphertext+`"}`)
	if st != 403 {
		t.Fatalf("stranger unwrap: %d", st)
	}
	n.must("PUT", "/v1/policies/p1", api.Policy{Subjects: api.Subjects{UIDs: []uint32{5}}, Keys: []string{"app"}, Operations: []string{"wrap"}}, nil, 200)
	_, notFoundID, _ := n.raw(nil, "GET", "/v1/nothing/here", "")
	var hr api.AuditHashResponse
	n.must("POST", "/v1/sys/audit-hash", api.AuditHashRequest{Input: "tenant=7"}, &hr, 200)
	_, keyringRotateID, _ := n.raw(nil, "POST", "/v1/sys/rotate", "")
	n.must("POST", "/v1/sys/seal", nil, nil, 204)

	sum, es := auditLog(t, n)
	var status api.Status
	n.must("GET", "/v1/sys/status", nil, &status, 200)
	if status.AuditSeq != sum.LastSeq || status.AuditHash != sum.LastHash || sum.FirstSeq != 1 {
		t.Fatalf("status audit %d %s, log %+v", status.AuditSeq, status.AuditHash, sum)
	}
	for _, e := range es {
		switch e.Operation {
		case "status", "health", "metrics":
			t.Errorf("%s was audited", e.Operation)
		}
		if e.NodeID != "n1" {
			t.Errorf("entry %d node %q", e.Seq, e.NodeID)
		}
	}
	if e := es[0]; e.Type != audit.TypeEvent || e.Operation != "start" || e.Caller != nil {
		t.Errorf("first entry %+v, want the start event", e)
	}
	tenant7 := hr.Hash
	if !strings.HasPrefix(tenant7, "hmac-sha256:") {
		t.Fatalf("audit-hash %q", tenant7)
	}
	for _, c := range []struct {
		name, id, op, key, outcome, code string
		version                          int
		hmac                             map[string]string
		detail                           map[string]string
	}{
		{"sealed", sealedID, "wrap", "app", "error", "sealed", 0, nil, nil},
		{"wrap", wrapID, "wrap", "app", "ok", "", 1, map[string]string{"aad": tenant7}, nil},
		{"unwrap: version from the ciphertext", unwrapID, "unwrap", "app", "ok", "", 1, map[string]string{"aad": tenant7}, nil},
		{"unwrap with the wrong aad", badAADID, "unwrap", "app", "error", "decrypt_failed", 1, nil, map[string]string{"failed_items": "1"}},
		{"batch of mixed aads", batchID, "wrap", "app", "ok", "", 2, nil, map[string]string{"items": "3"}},
		{"batch of one aad", sameID, "wrap", "app", "ok", "", 2, map[string]string{"aad": tenant7}, map[string]string{"items": "2"}},
		{"rewrap", rewrapID, "rewrap", "app", "ok", "", 1, map[string]string{"aad": tenant7}, map[string]string{"new_version": "2"}},
		{"datakey", dkID, "datakey", "app", "ok", "", 2, nil, nil},
		{"denied", deniedID, "unwrap", "app", "denied", "permission_denied", 0, nil, nil},
		{"unknown path", notFoundID, "unknown", "", "error", "not_found", 0, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := byRequest(es, c.id)
			if e == nil {
				t.Fatalf("no entry for request %s", c.id)
			}
			if e.Operation != c.op || e.Key != c.key || e.Outcome != c.outcome || e.ErrorCode != c.code || e.KeyVersion != c.version {
				t.Errorf("entry %+v\nwant op %s key %s outcome %s code %q version %d", e, c.op, c.key, c.outcome, c.code, c.version)
			}
			for k, v := range c.hmac {
				if e.HMAC[k] != v {
					t.Errorf("hmac %v, want %s=%s", e.HMAC, k, v)
				}
			}
			if c.hmac == nil && c.name == "sealed" && len(e.HMAC) != 0 {
				t.Errorf("hmac before the node has a keyring: %v", e.HMAC)
			}
			for k, v := range c.detail {
				if e.Detail[k] != v {
					t.Errorf("detail %v, want %s=%s", e.Detail, k, v)
				}
			}
		})
	}
	if e := byRequest(es, batchID); e.HMAC["aad_batch"] == "" || e.HMAC["aad"] != "" {
		t.Errorf("mixed batch hmac %v, want aad_batch", e.HMAC)
	}
	if e := byRequest(es, badAADID); e.HMAC["aad"] == tenant7 || e.HMAC["aad"] == "" {
		t.Errorf("wrong aad's hmac %v", e.HMAC)
	}
	if e := byRequest(es, deniedID); e.Caller == nil || e.Caller.UID != 3003 || e.Caller.PID != 77 || e.Caller.Unit != "evil.service" {
		t.Errorf("denied caller %+v", e.Caller)
	}
	for _, c := range []struct{ op, detailKey, detail string }{
		{"policy-write", "policy", "p1"},
		{"rotate", "term", "2"},
		{"init", "", ""},
		{"create", "", ""},
		{"seal", "", ""},
		{"audit-hash", "", ""},
	} {
		e := findOp(es, audit.TypeRequest, c.op)
		if c.op == "rotate" {
			e = byRequest(es, keyringRotateID)
		}
		if e == nil || e.Outcome != "ok" || e.Caller == nil || e.Caller.UID != uint32(os.Getuid()) {
			t.Errorf("request %s: %+v", c.op, e)
			continue
		}
		if c.detailKey != "" && e.Detail[c.detailKey] != c.detail {
			t.Errorf("%s detail %v, want %s=%s", c.op, e.Detail, c.detailKey, c.detail)
		}
	}
	if e := findOp(es, audit.TypeEvent, "init"); e == nil || e.Detail["cluster_id"] == "" || e.Detail["shares"] != "1" {
		t.Errorf("init event %+v", e)
	}
	if e := findOp(es, audit.TypeRequest, "create"); e.Key != "app" {
		t.Errorf("create entry key %q", e.Key)
	}
	// No secret anywhere in the log.
	data, _ := os.ReadFile(n.cfg.AuditPath())
	for _, s := range []string{"secret", b64("secret"), "tenant=7", b64("tenant=7"), w.Ciphertext} {
		if bytes.Contains(data, []byte(s)) {
			t.Errorf("audit log holds %q", s)
		}
	}

	// Restart: the chain continues with the next seq.
	n.stop()
	n2 := startNode(t, n.cfg.DataDir, nil)
	n2.must("POST", "/v1/sys/unseal", api.UnsealRequest{Reset: true}, nil, 200)
	n2.stop()
	sum2, es2 := auditLog(t, n2)
	if sum2.Entries < len(es)+3 || es2[len(es)].Operation != "stop" || es2[len(es)+1].Operation != "start" {
		t.Fatalf("after restart: %+v, ops %s %s", sum2, es2[len(es)].Operation, es2[len(es)+1].Operation)
	}
}

// TestServer_AuditUnsealEvents: unseal progress is in the unseal
// requests' entries; an unseal by shares on a node with a seal device is
// a break-glass event, and the device's auto-unseal an event of its own.
func TestServer_AuditUnsealEvents(t *testing.T) {
	dir := t.TempDir()
	soft := func(c *config.Config) {
		c.Dev = true
		c.Seal = &config.SealConfig{Type: "soft", Soft: &config.SoftSealConfig{KeyFile: filepath.Join(dir, "dev-seal.key")}}
	}
	n := startNode(t, dir, soft)
	shares := n.init(3, 2)
	n.stop()
	n = startNode(t, dir, soft)
	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	_, id1, _ := n.raw(nil, "POST", "/v1/sys/unseal", `{"share":"`+shares[0]+`"}`)
	_, id2, _ := n.raw(nil, "POST", "/v1/sys/unseal", `{"share":"`+shares[1]+`"}`)
	n.stop()
	_, es := auditLog(t, n)
	if e := findOp(es, audit.TypeEvent, "auto-unseal"); e == nil || e.Detail["seal_type"] != "soft" {
		t.Errorf("auto-unseal event %+v", e)
	}
	if e := byRequest(es, id1); e == nil || e.Detail["progress"] != "1/2" || e.Detail["unsealed"] != "" {
		t.Errorf("first unseal %+v", e)
	}
	if e := byRequest(es, id2); e == nil || e.Detail["progress"] != "2/2" || e.Detail["unsealed"] != "true" {
		t.Errorf("second unseal %+v", e)
	}
	if e := findOp(es, audit.TypeEvent, "break-glass-unseal"); e == nil || e.RequestID != id2 || e.Caller == nil {
		t.Errorf("break-glass event %+v", e)
	}
	// No share in the log.
	data, _ := os.ReadFile(n.cfg.AuditPath())
	for _, s := range shares {
		if bytes.Contains(data, []byte(s)) {
			t.Fatal("a share is in the audit log")
		}
	}
}

// failingFile is an audit log file whose writes fail while fail is set.
type failingFile struct {
	*os.File
	fail *atomic.Bool
}

func (f *failingFile) Write(p []byte) (int, error) {
	if f.fail.Load() {
		return 0, syscall.ENOSPC
	}
	return f.File.Write(p)
}

// TestServer_AuditFailClosed: while the audit log cannot be written every
// audited request is refused with 503 audit_unavailable (before doing
// anything, or in place of its answer), status and health say so, status,
// health and metrics still answer, and once the log is writable requests
// work again; every acknowledged request is in the log.
func TestServer_AuditFailClosed(t *testing.T) {
	var fail atomic.Bool
	auditOpenFile = func(p string) (audit.File, error) {
		os.MkdirAll(filepath.Dir(p), 0o700)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		return &failingFile{File: f, fail: &fail}, nil
	}
	auditRetryInterval = 10 * time.Millisecond
	t.Cleanup(func() { auditOpenFile, auditRetryInterval = nil, 0 })
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	var acked []string
	wrap := func() (int, string, []byte) {
		st, id, body := n.raw(nil, "POST", "/v1/keys/app/wrap", `{"plaintext":"`+b64("pt")+`"}`)
		if st == 200 {
			acked = append(acked, id)
		}
		return st, id, body
	}
	if st, _, _ := wrap(); st != 200 {
		t.Fatal(st)
	}
	fail.Store(true)
	st, failedID, body := wrap()
	var eb api.ErrorBody
	json.Unmarshal(body, &eb)
	if st != 503 || eb.Error.Code != api.CodeAuditUnavailable || bytes.Contains(body, []byte("coffer:v")) || !strings.Contains(eb.Error.Message, "audit log cannot be written") {
		t.Fatalf("wrap with a failing audit log: %d %s", st, body)
	}
	// Now refused up front, also for key changes.
	n.expect("POST", "/v1/keys", api.CreateKeyRequest{Name: "other"}, 503, api.CodeAuditUnavailable)
	n.expect("POST", "/v1/sys/seal", nil, 503, api.CodeAuditUnavailable)
	var status api.Status
	n.must("GET", "/v1/sys/status", nil, &status, 200)
	if !strings.Contains(status.AuditError, "no space left on device") || status.Sealed {
		t.Fatalf("status %+v", status)
	}
	n.expect("GET", "/v1/sys/health", nil, 503, "")
	_, _, metrics := n.raw(nil, "GET", "/v1/sys/metrics", "")
	if !bytes.Contains(metrics, []byte("coffer_audit_failing 1")) {
		t.Fatalf("metrics while failing:\n%s", metrics)
	}
	fail.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, _, _ := wrap(); st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node did not resume after the audit log became writable")
		}
		time.Sleep(5 * time.Millisecond)
	}
	status = api.Status{}
	n.must("GET", "/v1/sys/status", nil, &status, 200)
	if status.AuditError != "" {
		t.Fatalf("status after recovery %+v", status)
	}
	_, es := auditLog(t, n)
	for _, id := range acked {
		if byRequest(es, id) == nil {
			t.Errorf("acknowledged request %s is not in the audit log", id)
		}
	}
	// The refused wrap's entry is written late (the log over-reports).
	if byRequest(es, failedID) == nil {
		t.Error("the entry whose write failed was not written after recovery")
	}
	if e := findOp(es, audit.TypeEvent, "audit-recovered"); e == nil || e.Detail["refused_total"] == "0" {
		t.Errorf("recovery event %+v", e)
	}
	if findOp(es, audit.TypeRequest, "seal") != nil {
		t.Error("a request refused up front was recorded as done")
	}
}

func TestServer_ReopenAudit(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	path := n.cfg.AuditPath()
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := n.srv.ReopenAudit(); err != nil {
		t.Fatal(err)
	}
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "k"}, nil, 201)
	var st api.Status
	n.must("GET", "/v1/sys/status", nil, &st, 200)
	sum, err := audit.VerifyFiles(path+".1", path)
	if err != nil || sum.LastSeq != st.AuditSeq || sum.LastHash != st.AuditHash {
		t.Fatalf("rotated chain: %+v %v; status %d %s", sum, err, st.AuditSeq, st.AuditHash)
	}
	_, es := auditLog(t, n)
	if es[0].Operation != "audit-reopened" || es[0].Seq == 1 {
		t.Fatalf("new file starts with %+v", es[0])
	}
}

// TestServer_UnusualAccess: a caller over an alert rule's threshold makes
// one unusual-access event per window, a metric and a warning.
func TestServer_UnusualAccess(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Audit = &config.AuditConfig{Path: filepath.Join(c.DataDir, "audit.log"), Alerts: []config.AlertRule{
			{Name: "probing", Outcome: "denied", Threshold: 2, Window: time.Minute},
			{Name: "bulk-unwrap", Operations: []string{"unwrap"}, Threshold: 3, Window: time.Minute},
		}}
	})
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	stranger := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}}
	for i := 0; i < 6; i++ {
		if st, _, _ := n.raw(stranger, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`); st != 403 {
			t.Fatalf("stranger wrap: %d", st)
		}
	}
	for i := 0; i < 3; i++ {
		n.raw(nil, "POST", "/v1/keys/app/unwrap", `{"ciphertext":"coffer:v1:AAAA"}`)
	}
	_, es := auditLog(t, n)
	var events []*audit.Entry
	for _, e := range es {
		if e.Operation == "unusual-access" {
			events = append(events, e)
		}
	}
	if len(events) != 1 {
		t.Fatalf("%d unusual-access events, want 1 (once per caller per window, and 3 unwraps is not over 3)", len(events))
	}
	if e := events[0]; e.Caller == nil || e.Caller.UID != 3003 || e.Detail["rule"] != "probing" || e.Detail["count"] != "3" {
		t.Fatalf("event %+v", e)
	}
	n.raw(nil, "POST", "/v1/keys/app/unwrap", `{"ciphertext":"coffer:v1:AAAA"}`)
	_, _, metrics := n.raw(nil, "GET", "/v1/sys/metrics", "")
	for _, want := range []string{`coffer_unusual_access_total{rule="probing"} 1`, `coffer_unusual_access_total{rule="bulk-unwrap"} 1`} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	n.stop() // the log buffer is read once the daemon stopped writing it
	if !strings.Contains(n.logs.String(), "unusual access") {
		t.Error("no warning in the daemon log")
	}
}

func TestServer_Metrics(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	for i := 0; i < 3; i++ {
		n.must("POST", "/v1/keys/app/wrap", map[string]string{"plaintext": b64("x")}, nil, 200)
	}
	n.raw(&auth.Caller{UID: 4004, GID: 4004, Unit: "x.service"}, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`)
	resp, err := n.client.Get("http://coffer/v1/sys/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("content type %q", ct)
	}
	for _, want := range []string{
		`coffer_requests_total{operation="wrap",outcome="ok"} 3`,
		`coffer_requests_total{operation="wrap",outcome="denied"} 1`,
		`coffer_requests_total{operation="create",outcome="ok"} 1`,
		`coffer_request_duration_seconds_bucket{operation="wrap",le="0.001"}`,
		`coffer_denied_requests_total{uid="4004",unit="x.service"} 1`,
		"coffer_sealed 0", "coffer_initialized 1", "coffer_raft_leader 1", "coffer_raft_has_leader 1",
		"coffer_audit_failing 0", "coffer_audit_entries_total", "coffer_audit_seq", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if bytes.Contains(body, []byte(`"app"`)) {
		t.Error("a key name is in a metric label")
	}
}

func TestServer_AuditHash(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.expect("POST", "/v1/sys/audit-hash", api.AuditHashRequest{Input: "x"}, 503, api.CodeSealed)
	n.init(1, 1)
	var a, b api.AuditHashResponse
	n.must("POST", "/v1/sys/audit-hash", api.AuditHashRequest{Input: "x"}, &a, 200)
	n.must("POST", "/v1/sys/audit-hash", api.AuditHashRequest{Input: "x"}, &b, 200)
	if a.Hash != b.Hash || len(a.Hash) != len("hmac-sha256:")+64 {
		t.Fatalf("hashes %q %q", a.Hash, b.Hash)
	}
	if st, _, _ := n.raw(&auth.Caller{UID: 4004, GID: 4004}, "POST", "/v1/sys/audit-hash", `{"input":"x"}`); st != 403 {
		t.Fatalf("non-admin audit-hash: %d", st)
	}
	n.expect("POST", "/v1/sys/audit-hash", `{"input":1}`, 400, api.CodeBadRequest)
}

func TestOperationFor(t *testing.T) {
	for _, c := range []struct{ method, path, want string }{
		{"POST", "/v1/keys/a/wrap", "wrap"},
		{"GET", "/v1/keys/a/wrap", "wrap"},
		{"POST", "/v1/keys/a/restore", "restore"},
		{"POST", "/v1/keys/a/explode", "unknown"},
		{"GET", "/v1/keys", "list"},
		{"POST", "/v1/keys", "create"},
		{"PUT", "/v1/keys", "unknown"},
		{"GET", "/v1/keys/a", "read"},
		{"PATCH", "/v1/keys/a", "update"},
		{"DELETE", "/v1/keys/a", "delete"},
		{"GET", "/v1/policies", "policy-list"},
		{"PUT", "/v1/policies/p", "policy-write"},
		{"DELETE", "/v1/policies/p", "policy-delete"},
		{"POST", "/v1/sys/unseal", "unseal"},
		{"POST", "/v1/sys/rotate", "rotate"},
		{"POST", "/v1/sys/audit-hash", "audit-hash"},
		{"POST", "/v1/sys/bogus", "unknown"},
		{"GET", "/v1/sys/raft/peers", "raft-peers"},
		{"DELETE", "/v1/sys/raft/peers/n2", "raft-remove-peer"},
		{"POST", "/v1/sys/raft/join", "raft-join"},
		{"GET", "/v1/sys/raft/snapshot", "raft-snapshot-save"},
		{"POST", "/v1/sys/raft/snapshot", "raft-snapshot-restore"},
		{"POST", "/v1/sys/enrol/tokens", "enrol-token-create"},
		{"GET", "/v1/sys/enrol/tokens", "enrol-token-list"},
		{"DELETE", "/v1/sys/enrol/tokens/0011", "enrol-token-revoke"},
		{"DELETE", "/v1/sys/enrol/tokens/a/b", "unknown"},
		{"GET", "/other", "unknown"},
	} {
		if got := operationFor(c.method, c.path); got != c.want {
			t.Errorf("%s %s = %q, want %q", c.method, c.path, got, c.want)
		}
	}
	for _, op := range audit.RequestOperations {
		if op == "" || strings.ContainsAny(op, " \"") {
			t.Errorf("bad operation name %q", op)
		}
	}
}

func TestCiphertextVersion(t *testing.T) {
	for ct, want := range map[string]int{"coffer:v3:AAAA": 3, "coffer:v12:x": 12, "coffer:vx:AA": 0, "coffer:v3": 0, "other": 0, "coffer:v99999999999:A": 0} {
		if got := ciphertextVersion(ct); got != want {
			t.Errorf("%q: %d, want %d", ct, got, want)
		}
	}
}

func TestAnomaly_Window(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAnomaly([]config.AlertRule{{Name: "r", Outcome: "denied", Threshold: 3, Window: time.Minute}}, func() time.Time { return now })
	fire := func() bool { return len(a.observe(7, "", "wrap", "denied")) > 0 }
	for i := 0; i < 3; i++ {
		if fire() {
			t.Fatalf("fired at %d", i+1)
		}
	}
	if !fire() {
		t.Fatal("did not fire above the threshold")
	}
	if fire() {
		t.Fatal("fired twice in one window")
	}
	if len(a.observe(7, "", "wrap", "ok")) > 0 || len(a.observe(8, "", "wrap", "ok")) > 0 {
		t.Fatal("fired for another outcome")
	}
	// Half a window later, half the previous window still counts: 5*0.5
	// + 2 = 4.5 > 3, but the alert waits a full window since the last one.
	now = now.Add(90 * time.Second)
	if fire() {
		t.Fatal("fired again within a window of the last alert")
	}
	now = now.Add(35 * time.Second)
	for i := 0; i < 3; i++ {
		fire()
	}
	if !fire() {
		t.Fatal("did not fire in a later window")
	}
	// Another caller has its own count.
	if len(a.observe(9, "u.service", "wrap", "denied")) > 0 {
		t.Fatal("another caller fired at once")
	}
	// Idle callers are swept.
	now = now.Add(time.Hour)
	a.mu.Lock()
	a.sweepLocked(now)
	left := len(a.counts)
	a.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d callers left after an idle hour", left)
	}
}

func TestAuditEvent_KV(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	if err := n.srv.AuditEvent("leadership", "leader", "n2", "term"); err != nil {
		t.Fatal(err)
	}
	_, es := auditLog(t, n)
	e := findOp(es, audit.TypeEvent, "leadership")
	if e == nil || e.Detail["leader"] != "n2" || e.Detail["term"] != "(missing)" || e.Outcome != "ok" {
		t.Fatalf("event %+v", e)
	}
	if !errors.Is(n.srv.audit.w.Err(), nil) {
		t.Fatal(n.srv.audit.w.Err())
	}
}
