package daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/config"
)

type testNode struct {
	t      testing.TB
	srv    *Server
	client *http.Client
	logs   *bytes.Buffer
	// logsWriter guards logs (logString).
	logsWriter *syncWriter
	cfg        *config.Config
	cancel     context.CancelFunc
	done       chan struct{}
}

// startNode runs a Server on a real unix socket in a temp dir.
func startNode(t testing.TB, dataDir string, mutate func(*config.Config)) *testNode {
	t.Helper()
	return startNodeOpts(t, dataDir, mutate, nil)
}

// startNodeOpts is startNode with a hook to change the Server's Options.
func startNodeOpts(t testing.TB, dataDir string, mutate func(*config.Config), opt func(*Options)) *testNode {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "coffer-t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg := config.DefaultConfig()
	cfg.NodeID = "n1"
	cfg.DataDir = dataDir
	cfg.Listener.Path = filepath.Join(sockDir, "s.sock")
	cfg.LogLevel = "trace"
	if mutate != nil {
		mutate(cfg)
	}
	logs := &bytes.Buffer{}
	sw := &syncWriter{w: logs, mu: make(chan struct{}, 1)}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: sw})
	opts := Options{Config: cfg, Logger: log, Version: "test", SchedulerInterval: 50 * time.Millisecond}
	if opt != nil {
		opt(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{t: t, srv: srv, logs: logs, logsWriter: sw, cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		if err := srv.Serve(ctx); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	n.client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.Listener.Path)
	}}}
	// Wait until the socket accepts, not merely exists: the file appears at
	// bind(), a moment before listen(), and a dial in between is refused.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", cfg.Listener.Path); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket never accepted a connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(n.stop)
	return n
}

func (n *testNode) stop() {
	n.cancel()
	<-n.done
}

type syncWriter struct {
	mu chan struct{}
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	if s.mu == nil {
		s.mu = make(chan struct{}, 1)
	}
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.w.Write(p)
}

// do sends a request and decodes the answer into out (if non-nil); it
// returns the status and, for errors, the error code.
func (n *testNode) do(method, path string, body any, out any) (int, string) {
	n.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, "http://coffer"+path, rd)
	resp, err := n.client.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get(api.HeaderRequestID) == "" {
		n.t.Errorf("%s %s: no X-Request-Id", method, path)
	}
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 && !strings.HasPrefix(path, "/v1/sys/health") {
		var eb api.ErrorBody
		if err := json.Unmarshal(data, &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
			n.t.Fatalf("%s %s: %d with a body that is not the error shape: %s", method, path, resp.StatusCode, data)
		}
		if out != nil {
			json.Unmarshal(data, out)
		}
		return resp.StatusCode, eb.Error.Code
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			n.t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode, ""
}

func (n *testNode) must(method, path string, body any, out any, want int) {
	n.t.Helper()
	if st, code := n.do(method, path, body, out); st != want {
		n.t.Fatalf("%s %s: status %d (%s), want %d", method, path, st, code, want)
	}
}

func (n *testNode) expect(method, path string, body any, wantStatus int, wantCode string) {
	n.t.Helper()
	st, code := n.do(method, path, body, nil)
	if st != wantStatus || code != wantCode {
		n.t.Errorf("%s %s: %d %q, want %d %q", method, path, st, code, wantStatus, wantCode)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func (n *testNode) init(shares, threshold int) []string {
	n.t.Helper()
	var resp api.InitResponse
	n.must("POST", "/v1/sys/init", api.InitRequest{Shares: shares, Threshold: threshold}, &resp, 200)
	if len(resp.Shares) != shares {
		n.t.Fatalf("got %d shares", len(resp.Shares))
	}
	return resp.Shares
}

func TestServer_Lifecycle(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir, nil)
	var st api.Status
	n.must("GET", "/v1/sys/status", nil, &st, 200)
	if st.Initialized || !st.Sealed || st.SealType != "shamir" || st.NodeID != "n1" {
		t.Fatalf("status = %+v", st)
	}
	n.expect("GET", "/v1/sys/health", nil, 501, "")
	n.expect("POST", "/v1/keys/k/wrap", map[string]string{"plaintext": b64("x")}, 503, api.CodeSealed)
	n.expect("GET", "/v1/keys", nil, 503, api.CodeSealed)

	shares := n.init(5, 3)
	n.expect("POST", "/v1/sys/init", api.InitRequest{Shares: 5, Threshold: 3}, 409, api.CodeAlreadyExists)
	n.must("GET", "/v1/sys/health", nil, nil, 200)
	var k api.Key
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, &k, 201)
	var w api.WrapResult
	n.must("POST", "/v1/keys/app/wrap", map[string]string{"plaintext": b64("hello"), "aad": b64("ctx")}, &w, 200)

	// Seal, then unseal with shares: a mistyped one is refused and keeps
	// progress; a repeated one too.
	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	n.expect("POST", "/v1/keys/app/unwrap", map[string]string{"ciphertext": w.Ciphertext}, 503, api.CodeSealed)
	n.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: shares[0]}, &st, 200)
	if st.Progress != 1 || !st.Sealed {
		t.Fatalf("after one share: %+v", st)
	}
	typo := []byte(shares[1])
	typo[20] ^= 1
	if typo[20] == '-' {
		typo[20] = 'a'
	}
	n.expect("POST", "/v1/sys/unseal", api.UnsealRequest{Share: string(typo)}, 400, api.CodeInvalidShare)
	n.expect("POST", "/v1/sys/unseal", api.UnsealRequest{Share: shares[0]}, 400, api.CodeInvalidShare)
	n.must("GET", "/v1/sys/status", nil, &st, 200)
	if st.Progress != 1 {
		t.Fatalf("progress after bad shares = %d, want 1", st.Progress)
	}
	n.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: shares[3]}, &st, 200)
	n.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: shares[4]}, &st, 200)
	if st.Sealed || st.Progress != 0 {
		t.Fatalf("after threshold: %+v", st)
	}
	var u api.UnwrapResult
	n.must("POST", "/v1/keys/app/unwrap", map[string]string{"ciphertext": w.Ciphertext, "aad": b64("ctx")}, &u, 200)
	if string(u.Plaintext) != "hello" {
		t.Fatalf("plaintext %q", u.Plaintext)
	}
	// Unseal on an unsealed node is a no-op returning status.
	n.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: shares[0]}, &st, 200)

	// Restart: sealed (Shamir only), shares again.
	n.stop()
	n2 := startNode(t, dir, nil)
	n2.must("GET", "/v1/sys/status", nil, &st, 200)
	if !st.Initialized || !st.Sealed || st.Threshold != 3 || st.Shares != 5 {
		t.Fatalf("after restart: %+v", st)
	}
	for _, s := range shares[1:4] {
		n2.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: s}, &st, 200)
	}
	n2.must("POST", "/v1/keys/app/unwrap", map[string]string{"ciphertext": w.Ciphertext, "aad": b64("ctx")}, &u, 200)
	if string(u.Plaintext) != "hello" {
		t.Fatal("unwrap after restart")
	}
	var rot api.RotateResponse
	n2.must("POST", "/v1/sys/rotate", nil, &rot, 200)
	if rot.Term != 2 {
		t.Fatalf("term = %d", rot.Term)
	}
}

func TestServer_SharesFromAnotherInit(t *testing.T) {
	a := startNode(t, t.TempDir(), nil)
	b := startNode(t, t.TempDir(), nil)
	sa := a.init(3, 2)
	sb := b.init(3, 2)
	a.must("POST", "/v1/sys/seal", nil, nil, 204)
	var st api.Status
	a.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: sa[0]}, &st, 200)
	a.expect("POST", "/v1/sys/unseal", api.UnsealRequest{Share: sb[1]}, 400, api.CodeInvalidShare)
	a.must("GET", "/v1/sys/status", nil, &st, 200)
	if !st.Sealed || st.Progress != 0 {
		t.Fatalf("after mixed shares: %+v (progress must be reset)", st)
	}
	a.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: sa[2]}, &st, 200)
	a.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: sa[1]}, &st, 200)
	if st.Sealed {
		t.Fatal("right shares did not unseal")
	}
	// Reset.
	a.must("POST", "/v1/sys/seal", nil, nil, 204)
	a.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: sa[0]}, &st, 200)
	a.must("POST", "/v1/sys/unseal", api.UnsealRequest{Reset: true}, &st, 200)
	if st.Progress != 0 {
		t.Fatal("reset kept progress")
	}
}

func TestServer_BadInput(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "a"}, nil, 201)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "b", Type: "chacha20-poly1305"}, nil, 201)
	var w api.WrapResult
	n.must("POST", "/v1/keys/a/wrap", map[string]string{"plaintext": b64("p"), "aad": b64("x")}, &w, 200)
	tampered := []byte(w.Ciphertext)
	tampered[len(tampered)-5] ^= 2
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"malformed json", "POST", "/v1/keys/a/wrap", `{"plaintext":`, 400, api.CodeBadRequest},
		{"not json", "POST", "/v1/keys/a/wrap", `hello`, 400, api.CodeBadRequest},
		{"empty body", "POST", "/v1/keys/a/wrap", ``, 400, api.CodeBadRequest},
		{"trailing data", "POST", "/v1/keys/a/wrap", `{"plaintext":"cA=="} {}`, 400, api.CodeBadRequest},
		{"unknown field", "POST", "/v1/keys/a/wrap", `{"plaintext":"cA==","extra":1}`, 400, api.CodeBadRequest},
		{"wrong type", "POST", "/v1/keys/a/wrap", `{"plaintext":5}`, 400, api.CodeBadRequest},
		{"bad base64", "POST", "/v1/keys/a/wrap", `{"plaintext":"!!!"}`, 400, api.CodeBadRequest},
		{"missing plaintext", "POST", "/v1/keys/a/wrap", `{}`, 400, api.CodeBadRequest},
		{"bad key name", "POST", "/v1/keys/bad$name/wrap", `{"plaintext":"cA=="}`, 400, api.CodeBadRequest},
		{"bad key name create", "POST", "/v1/keys", `{"name":"-x"}`, 400, api.CodeBadRequest},
		{"bad key type", "POST", "/v1/keys", `{"name":"x","type":"rsa"}`, 400, api.CodeBadRequest},
		{"exists", "POST", "/v1/keys", `{"name":"a"}`, 409, api.CodeAlreadyExists},
		{"oversized body", "POST", "/v1/keys/a/wrap", `{"plaintext":"` + strings.Repeat("A", api.MaxBody) + `"}`, 413, api.CodeTooLarge},
		{"plaintext too large", "POST", "/v1/keys/a/wrap", map[string][]byte{"plaintext": make([]byte, api.MaxPlaintext+1)}, 413, api.CodeTooLarge},
		{"batch too large", "POST", "/v1/keys/a/wrap", map[string]any{"batch": make([]api.WrapItem, api.MaxBatch+1)}, 413, api.CodeTooLarge},
		{"tampered", "POST", "/v1/keys/a/unwrap", map[string]string{"ciphertext": string(tampered), "aad": b64("x")}, 400, api.CodeDecryptFailed},
		{"wrong aad", "POST", "/v1/keys/a/unwrap", map[string]string{"ciphertext": w.Ciphertext, "aad": b64("y")}, 400, api.CodeDecryptFailed},
		{"other key", "POST", "/v1/keys/b/unwrap", map[string]string{"ciphertext": w.Ciphertext, "aad": b64("x")}, 400, api.CodeDecryptFailed},
		{"garbage ciphertext", "POST", "/v1/keys/a/unwrap", map[string]string{"ciphertext": "coffer:v1:xx"}, 400, api.CodeDecryptFailed},
		{"unknown key", "POST", "/v1/keys/nope/wrap", `{"plaintext":"cA=="}`, 404, api.CodeNotFound},
		{"unknown path", "GET", "/v1/nothing", nil, 404, api.CodeNotFound},
		{"unknown key action", "POST", "/v1/keys/a/explode", `{}`, 404, api.CodeNotFound},
		{"wrong method", "GET", "/v1/keys/a/wrap", nil, 405, api.CodeMethodNotAllowed},
		{"wrong method sys", "GET", "/v1/sys/seal", nil, 405, api.CodeMethodNotAllowed},
		{"min version out of range", "PATCH", "/v1/keys/a", `{"min_decryption_version":5}`, 400, api.CodeBadRequest},
		{"bad rotation period", "PATCH", "/v1/keys/a", `{"rotation_period":"soon"}`, 400, api.CodeBadRequest},
		{"pending window too short", "DELETE", "/v1/keys/a?pending_window=1h", nil, 400, api.CodeBadRequest},
		{"datakey bytes", "POST", "/v1/keys/a/datakey", `{"bytes":8}`, 400, api.CodeBadRequest},
		{"bad policy", "PUT", "/v1/policies/p", `{"keys":["a"],"operations":["fly"],"subjects":{"uids":[1]}}`, 400, api.CodeBadRequest},
		{"unknown policy", "GET", "/v1/policies/nope", nil, 404, api.CodeNotFound},
		{"init twice", "POST", "/v1/sys/init", `{"shares":1,"threshold":1}`, 409, api.CodeAlreadyExists},
		{"origin header", "GET", "/v1/keys", nil, 0, ""}, // checked below
	} {
		if c.status == 0 {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			n.t = t
			n.expect(c.method, c.path, c.body, c.status, c.code)
		})
	}
	n.t = t
	// Still serving, and nothing changed.
	var u api.UnwrapResult
	n.must("POST", "/v1/keys/a/unwrap", map[string]string{"ciphertext": w.Ciphertext, "aad": b64("x")}, &u, 200)
	var k api.Key
	n.must("GET", "/v1/keys/a", nil, &k, 200)
	if k.LatestVersion != 1 || k.MinDecryptionVersion != 1 || k.DeletionDate != nil {
		t.Fatalf("bad input changed the key: %+v", k)
	}
}

func TestServer_KeyLifecycleAndBatch(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "k", RotationPeriod: "720h"}, nil, 201)
	var list api.KeyList
	n.must("GET", "/v1/keys", nil, &list, 200)
	if len(list.Keys) != 1 || list.Keys[0] != "k" {
		t.Fatalf("keys = %v", list.Keys)
	}
	var wb api.WrapBatchResponse
	n.must("POST", "/v1/keys/k/wrap", map[string]any{"batch": []map[string]string{{"plaintext": b64("a")}, {"plaintext": b64("b"), "aad": b64("x")}}}, &wb, 200)
	if len(wb.Batch) != 2 || wb.Batch[1].Ciphertext == "" {
		t.Fatalf("batch = %+v", wb)
	}
	var k api.Key
	n.must("POST", "/v1/keys/k/rotate", nil, &k, 200)
	if k.LatestVersion != 2 || k.RotationPeriod != "720h" {
		t.Fatalf("rotate: %+v", k)
	}
	var ub api.UnwrapBatchResponse
	n.must("POST", "/v1/keys/k/unwrap", map[string]any{"batch": []map[string]string{
		{"ciphertext": wb.Batch[0].Ciphertext}, {"ciphertext": wb.Batch[1].Ciphertext}, {"ciphertext": "junk"}}}, &ub, 200)
	if string(ub.Batch[0].Plaintext) != "a" || string(ub.Batch[1].Plaintext) != "" || ub.Batch[1].Error == nil || ub.Batch[2].Error.Code != api.CodeDecryptFailed {
		t.Fatalf("unwrap batch = %+v", ub)
	}
	var rw api.WrapResult
	n.must("POST", "/v1/keys/k/rewrap", map[string]string{"ciphertext": wb.Batch[0].Ciphertext}, &rw, 200)
	if rw.KeyVersion != 2 {
		t.Fatalf("rewrap version %d", rw.KeyVersion)
	}
	n.must("PATCH", "/v1/keys/k", map[string]int{"min_decryption_version": 2}, &k, 200)
	n.expect("POST", "/v1/keys/k/unwrap", map[string]string{"ciphertext": wb.Batch[0].Ciphertext}, 409, api.CodeVersionDisabled)
	var dk api.DataKeyResponse
	n.must("POST", "/v1/keys/k/datakey", nil, &dk, 200)
	if len(dk.Plaintext) != 32 || dk.KeyVersion != 2 {
		t.Fatalf("datakey = %+v", dk)
	}
	var dk2 api.DataKeyResponse
	n.must("POST", "/v1/keys/k/datakey", map[string]any{"bytes": 16, "include_plaintext": false}, &dk2, 200)
	if dk2.Plaintext != nil || dk2.Ciphertext == "" {
		t.Fatal("include_plaintext=false returned the plaintext")
	}
	n.must("DELETE", "/v1/keys/k", nil, &k, 202)
	if k.DeletionDate == nil || time.Until(*k.DeletionDate) < 167*time.Hour {
		t.Fatalf("deletion date %v", k.DeletionDate)
	}
	n.expect("POST", "/v1/keys/k/wrap", map[string]string{"plaintext": b64("a")}, 409, api.CodeKeyPendingDeletion)
	n.must("POST", "/v1/keys/k/restore", nil, &k, 200)
	if k.DeletionDate != nil {
		t.Fatal("restore kept the deletion date")
	}
	n.must("POST", "/v1/keys/k/wrap", map[string]string{"plaintext": b64("a")}, nil, 200)
}

// TestServer_Authorization drives the handler with injected callers: the
// policy engine end to end (a real second uid is in the e2e test).
func TestServer_Authorization(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	for _, name := range []string{"billing-db", "billing-cache", "other"} {
		n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: name}, nil, 201)
	}
	n.must("PUT", "/v1/policies/billing", api.Policy{
		Subjects:   api.Subjects{UIDs: []uint32{1001}, Units: []string{"billing.service"}},
		Keys:       []string{"billing-*"},
		Operations: []string{"wrap", "unwrap", "read"},
	}, nil, 200)
	var w api.WrapResult
	n.must("POST", "/v1/keys/billing-db/wrap", map[string]string{"plaintext": b64("x")}, &w, 200)

	call := func(c *auth.Caller, method, path, body string) (int, string) {
		req := httptest.NewRequest(method, "http://coffer"+path, strings.NewReader(body))
		if c != nil {
			req = req.WithContext(context.WithValue(req.Context(), callerKey, c))
		}
		rec := httptest.NewRecorder()
		n.srv.Handler().ServeHTTP(rec, req)
		var eb api.ErrorBody
		json.Unmarshal(rec.Body.Bytes(), &eb)
		return rec.Code, eb.Error.Code
	}
	granted := &auth.Caller{UID: 1001, GID: 1001, Groups: []uint32{1001}}
	byUnit := &auth.Caller{UID: 2002, GID: 2002, Groups: []uint32{2002}, Unit: "billing.service"}
	stranger := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}}
	wrap := `{"plaintext":"eA=="}`
	unwrap := `{"ciphertext":"` + w.Ciphertext + `"}`
	for _, c := range []struct {
		who          *auth.Caller
		method, path string
		body         string
		status       int
	}{
		{granted, "POST", "/v1/keys/billing-db/wrap", wrap, 200},
		{granted, "POST", "/v1/keys/billing-db/unwrap", unwrap, 200},
		{granted, "GET", "/v1/keys/billing-cache", "", 200},
		{granted, "POST", "/v1/keys/billing-db/datakey", "", 403},
		{granted, "POST", "/v1/keys/billing-db/rotate", "", 403},
		{granted, "POST", "/v1/keys/other/wrap", wrap, 403},
		{granted, "POST", "/v1/keys", `{"name":"billing-new"}`, 403},
		{granted, "GET", "/v1/policies", "", 403},
		{granted, "POST", "/v1/sys/seal", "", 403},
		{byUnit, "POST", "/v1/keys/billing-cache/wrap", wrap, 200},
		{stranger, "POST", "/v1/keys/billing-db/wrap", wrap, 403},
		{stranger, "GET", "/v1/sys/status", "", 200},
		{nil, "POST", "/v1/keys/billing-db/wrap", wrap, 403},
	} {
		if st, code := call(c.who, c.method, c.path, c.body); st != c.status {
			t.Errorf("%v %s %s = %d %s, want %d", c.who, c.method, c.path, st, code, c.status)
		} else if st == 403 && code != api.CodePermissionDenied {
			t.Errorf("403 with code %q", code)
		}
	}
	// Listing shows only readable keys.
	req := httptest.NewRequest("GET", "http://coffer/v1/keys", nil)
	req = req.WithContext(context.WithValue(req.Context(), callerKey, granted))
	rec := httptest.NewRecorder()
	n.srv.Handler().ServeHTTP(rec, req)
	var list api.KeyList
	json.Unmarshal(rec.Body.Bytes(), &list)
	if len(list.Keys) != 2 {
		t.Fatalf("granted caller sees %v", list.Keys)
	}
	// Deleting the policy revokes at once.
	n.must("DELETE", "/v1/policies/billing", nil, nil, 204)
	if st, _ := call(granted, "POST", "/v1/keys/billing-db/wrap", wrap); st != 403 {
		t.Fatalf("after policy delete: %d", st)
	}
}

func TestServer_ScheduledPurge(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "k"}, nil, 201)
	// Drive the scheduler with a keystore clock far in the future.
	n.must("DELETE", "/v1/keys/k?pending_window=24h", nil, nil, 202)
	if due := n.srv.ks.DuePurges(time.Now().Add(25 * time.Hour)); len(due) != 1 {
		t.Fatalf("due purges = %v", due)
	}
}

func TestServer_DevSoftDeviceAutoUnseal(t *testing.T) {
	dir := t.TempDir()
	soft := func(c *config.Config) {
		c.Dev = true
		c.Seal = &config.SealConfig{Type: "soft", Soft: &config.SoftSealConfig{KeyFile: filepath.Join(dir, "dev-seal.key")}}
	}
	n := startNode(t, dir, soft)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "k"}, nil, 201)
	n.stop()
	n2 := startNode(t, dir, soft)
	var st api.Status
	n2.must("GET", "/v1/sys/status", nil, &st, 200)
	if st.Sealed || st.SealType != "soft" {
		t.Fatalf("restart with a device should auto-unseal: %+v", st)
	}
	n2.stop()
	// Device key gone: sealed with a reason that says what to do.
	os.Remove(filepath.Join(dir, "dev-seal.key"))
	n3 := startNode(t, dir, soft)
	n3.must("GET", "/v1/sys/status", nil, &st, 200)
	if !st.Sealed || !strings.Contains(st.SealedReason, "reseal") {
		t.Fatalf("device lost: %+v", st)
	}
}

// FuzzDecodeRequest: request decoding never panics, and every failure is a
// 400 or 413 with the error shape.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"plaintext":"aGk="}`, `{"batch":[{"plaintext":"aGk=","aad":"eA=="}]}`, `{"ciphertext":"coffer:v1:AAAA"}`,
		`{"bytes":32,"include_plaintext":false}`, `{"share":"coffer-share-1-x"}`, `{"subjects":{"uids":[1]},"keys":["*"],"operations":["wrap"]}`,
		`{"value":"aGk=","cas":0}`, `{"max_versions":3}`, `{"versions":[1,2]}`,
		`{`, `[]`, `null`, `{"plaintext":"!!"}`, `{"a":1}`, ``} {
		f.Add([]byte(s))
	}
	targets := []func() any{
		func() any { return &api.WrapRequest{} }, func() any { return &api.CiphertextRequest{} },
		func() any { return &api.DataKeyRequest{} }, func() any { return &api.UnsealRequest{} },
		func() any { return &api.Policy{} }, func() any { return &api.InitRequest{} },
		func() any { return &api.CreateKeyRequest{} }, func() any { return &api.UpdateKeyRequest{} },
		func() any { return &api.PutSecretRequest{} }, func() any { return &api.UpdateSecretMetadataRequest{} },
		func() any { return &api.DestroySecretRequest{} },
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for i, mk := range targets {
			rec := httptest.NewRecorder()
			rc := &reqCtx{w: rec, r: httptest.NewRequest("POST", "/", bytes.NewReader(body))}
			if i%2 == 0 {
				rc.grantBody() // both body limits: before and after the grant check
			}
			err := decode(rc, mk())
			if err == nil {
				continue
			}
			status, d, known := toAPIError(err)
			if !known || (status != 400 && status != 413) || d.Code == "" || d.Message == "" {
				t.Fatalf("decode error %v → %d %+v", err, status, d)
			}
		}
	})
}
