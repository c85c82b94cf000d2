package daemon

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/config"
)

// TestServer_MetricsPrivacy: the socket's metrics (which name callers)
// are refused to a non-admin and served to an admin with the caller
// labels; the telemetry TCP listener serves the same metrics with no
// caller label at all, and nothing but /metrics.
func TestServer_MetricsPrivacy(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Telemetry = &config.TelemetryConfig{PrometheusListen: "127.0.0.1:0"}
	})
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	stranger := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}, Unit: "nosy.service"}
	if st, _, _ := n.raw(stranger, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`); st != 403 {
		t.Fatalf("stranger wrap: %d", st)
	}
	st, _, body := n.raw(stranger, "GET", "/v1/sys/metrics", "")
	var eb api.ErrorBody
	json.Unmarshal(body, &eb)
	if st != 403 || eb.Error.Code != api.CodePermissionDenied || strings.Contains(string(body), "uid=\"3003\"") {
		t.Fatalf("non-admin metrics: %d %s", st, body)
	}
	st, _, body = n.raw(nil, "GET", "/v1/sys/metrics", "")
	if st != 200 || !strings.Contains(string(body), `coffer_denied_requests_total{uid="3003",unit="nosy.service"}`) {
		t.Fatalf("admin metrics: %d, without the caller labels:\n%s", st, body)
	}

	addr := n.srv.telemetryAddr
	if addr == "" {
		t.Fatal("no telemetry listener")
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, text := get("/metrics")
	if code != 200 {
		t.Fatalf("telemetry /metrics: %d", code)
	}
	// Only Coffer's own series: the Go runtime's numbers (e.g.
	// go_memstats_alloc_bytes_total 7.43003792e+08) may contain "3003".
	var ours []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "coffer_") {
			ours = append(ours, l)
		}
	}
	for _, bad := range []string{"uid=", "unit=", "3003", "nosy"} {
		if strings.Contains(strings.Join(ours, "\n"), bad) {
			t.Errorf("telemetry metrics contain %q:\n%s", bad, text)
		}
	}
	for _, want := range []string{"coffer_denied_requests_total 1\n", `coffer_requests_total{operation="wrap",outcome="denied"} 1`, "coffer_sealed 0\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("telemetry metrics lack %q:\n%s", want, text)
		}
	}
	for _, p := range []string{"/v1/sys/status", "/v1/sys/metrics", "/"} {
		if code, _ := get(p); code != 404 {
			t.Errorf("telemetry %s: %d, want 404", p, code)
		}
	}
}

// TestServer_StatusPrivacy: a non-admin's status shows generic texts where
// an admin's shows the device path, the library message or the uid of the
// operator who sealed the node.
func TestServer_StatusPrivacy(t *testing.T) {
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
	stranger := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}}
	status := func(c *auth.Caller, path string) api.Status {
		t.Helper()
		_, _, body := n.raw(c, "GET", path, "")
		var st api.Status
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("%s: %v: %s", path, err, body)
		}
		return st
	}
	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	if got := status(nil, "/v1/sys/status").SealedReason; !strings.Contains(got, "uid 0") {
		t.Fatalf("admin sealed_reason %q", got)
	}
	if got := status(stranger, "/v1/sys/status").SealedReason; got != genericOpSealed {
		t.Errorf("non-admin sealed_reason %q, want %q", got, genericOpSealed)
	}
	// A device failure's text (path, library message) is hidden too:
	// TestServer_StatusPrivacyDevice breaks a real device for that.
	fail.Store(true)
	n.raw(nil, "POST", "/v1/sys/seal", "") // fails to write its entry: the log is failing now
	if got := status(nil, "/v1/sys/status").AuditError; !strings.Contains(got, "no space left") {
		t.Fatalf("admin audit_error %q", got)
	}
	st := status(stranger, "/v1/sys/status")
	if st.AuditError != genericAuditError || strings.Contains(st.AuditError, "/") {
		t.Errorf("non-admin audit_error %q, want %q", st.AuditError, genericAuditError)
	}
}

// TestServer_StatusPrivacyDevice: a node whose seal device lost its key
// file is sealed with a reason (and device error) that names the file; a
// non-admin sees only the generic texts.
func TestServer_StatusPrivacyDevice(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "dev-seal.key")
	soft := func(c *config.Config) {
		c.Dev = true
		c.Seal = &config.SealConfig{Type: "soft", Soft: &config.SoftSealConfig{KeyFile: keyFile}}
	}
	n := startNode(t, dir, soft)
	n.init(1, 1)
	n.stop()
	os.Remove(keyFile)
	os.Mkdir(keyFile, 0o700) // the device cannot open its key: a device error
	n = startNode(t, dir, soft)
	var admin api.Status
	n.must("GET", "/v1/sys/status", nil, &admin, 200)
	if !admin.Sealed || !strings.Contains(admin.SealedReason+admin.SealDeviceError, dir) {
		t.Fatalf("admin status does not name the device's file: %+v", admin)
	}
	t.Logf("admin: sealed_reason %q, seal_device_error %q", admin.SealedReason, admin.SealDeviceError)
	stranger := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}}
	_, _, body := n.raw(stranger, "GET", "/v1/sys/status", "")
	if strings.Contains(string(body), dir) || strings.Contains(string(body), "dev-seal") {
		t.Fatalf("non-admin status names the device's file: %s", body)
	}
	var st api.Status
	json.Unmarshal(body, &st)
	if admin.SealDeviceError == "" {
		t.Fatal("no seal_device_error to hide: the test does not exercise it")
	}
	if st.SealedReason != genericSealed || st.SealDeviceError != genericDeviceError {
		t.Fatalf("non-admin status %+v", st)
	}
}
