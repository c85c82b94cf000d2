package cli

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/coffer-kms/coffer/api"
)

func TestClient_Methods(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name         string
		call         func(c *Client) error
		method, path string
		query        string
		status       int
		resp         string
		wantBody     string
	}{
		{"Status", func(c *Client) error { _, err := c.Status(ctx); return err }, "GET", "/v1/sys/status", "", 200, statusUnsealed, ""},
		{"Init", func(c *Client) error {
			_, err := c.Init(ctx, api.InitRequest{Shares: 1, Threshold: 1})
			return err
		}, "POST", "/v1/sys/init", "", 200, `{"shares":["s"],"encrypted":false}`, `{"shares":1,"threshold":1}`},
		{"Unseal", func(c *Client) error { _, err := c.Unseal(ctx, []byte("s1")); return err }, "POST", "/v1/sys/unseal", "", 200, statusUnsealed, `{"share":"s1"}`},
		{"UnsealReset", func(c *Client) error { _, err := c.UnsealReset(ctx); return err }, "POST", "/v1/sys/unseal", "", 200, statusUnsealed, `{"reset":true}`},
		{"Seal", func(c *Client) error { return c.Seal(ctx) }, "POST", "/v1/sys/seal", "", 204, "", ""},
		{"Reseal", func(c *Client) error { return c.Reseal(ctx) }, "POST", "/v1/sys/reseal", "", 204, "", ""},
		{"Rotate", func(c *Client) error { _, err := c.Rotate(ctx); return err }, "POST", "/v1/sys/rotate", "", 200, `{"term":2}`, ""},
		{"CreateKey", func(c *Client) error {
			_, err := c.CreateKey(ctx, api.CreateKeyRequest{Name: "k"})
			return err
		}, "POST", "/v1/keys", "", 201, keyBody, `{"name":"k"}`},
		{"ListKeys", func(c *Client) error { _, err := c.ListKeys(ctx); return err }, "GET", "/v1/keys", "", 200, `{"keys":[]}`, ""},
		{"GetKey", func(c *Client) error { _, err := c.GetKey(ctx, "k"); return err }, "GET", "/v1/keys/k", "", 200, keyBody, ""},
		{"UpdateKey", func(c *Client) error {
			v := 2
			_, err := c.UpdateKey(ctx, "k", api.UpdateKeyRequest{MinDecryptionVersion: &v})
			return err
		}, "PATCH", "/v1/keys/k", "", 200, keyBody, `{"min_decryption_version":2}`},
		{"RotateKey", func(c *Client) error { _, err := c.RotateKey(ctx, "k"); return err }, "POST", "/v1/keys/k/rotate", "", 200, keyBody, ""},
		{"DeleteKey", func(c *Client) error { _, err := c.DeleteKey(ctx, "k", "72h"); return err }, "DELETE", "/v1/keys/k", "pending_window=72h", 202, keyDeleted, ""},
		{"RestoreKey", func(c *Client) error { _, err := c.RestoreKey(ctx, "k"); return err }, "POST", "/v1/keys/k/restore", "", 200, keyBody, ""},
		{"Wrap", func(c *Client) error {
			_, err := c.Wrap(ctx, "k", []byte("hi"), []byte("a"))
			return err
		}, "POST", "/v1/keys/k/wrap", "", 200, `{"ciphertext":"coffer:v1:x","key_version":1}`, `{"plaintext":"aGk=","aad":"YQ=="}`},
		{"WrapBatch", func(c *Client) error {
			_, err := c.WrapBatch(ctx, "k", []api.WrapItem{{Plaintext: []byte("hi")}})
			return err
		}, "POST", "/v1/keys/k/wrap", "", 200, `{"batch":[{"ciphertext":"coffer:v1:x","key_version":1}]}`, `{"batch":[{"plaintext":"aGk="}]}`},
		{"Unwrap", func(c *Client) error {
			pt, err := c.Unwrap(ctx, "k", "coffer:v1:x", nil)
			if err == nil && string(pt) != "hi" {
				return errors.New("wrong plaintext " + string(pt))
			}
			return err
		}, "POST", "/v1/keys/k/unwrap", "", 200, `{"plaintext":"aGk="}`, `{"ciphertext":"coffer:v1:x"}`},
		{"UnwrapBatch", func(c *Client) error {
			_, err := c.UnwrapBatch(ctx, "k", []api.CiphertextItem{{Ciphertext: "c1"}, {Ciphertext: "c2"}})
			return err
		}, "POST", "/v1/keys/k/unwrap", "", 200, `{"batch":[{"plaintext":"aGk="},{"error":{"code":"decrypt_failed","message":"x"}}]}`, `{"batch":[{"ciphertext":"c1"},{"ciphertext":"c2"}]}`},
		{"Rewrap", func(c *Client) error { _, err := c.Rewrap(ctx, "k", "c1", nil); return err }, "POST", "/v1/keys/k/rewrap", "", 200, `{"ciphertext":"c2","key_version":2}`, `{"ciphertext":"c1"}`},
		{"RewrapBatch", func(c *Client) error {
			_, err := c.RewrapBatch(ctx, "k", []api.CiphertextItem{{Ciphertext: "c1"}})
			return err
		}, "POST", "/v1/keys/k/rewrap", "", 200, `{"batch":[{"ciphertext":"c2","key_version":2}]}`, `{"batch":[{"ciphertext":"c1"}]}`},
		{"DataKey", func(c *Client) error {
			n := 16
			_, err := c.DataKey(ctx, "k", api.DataKeyRequest{Bytes: &n})
			return err
		}, "POST", "/v1/keys/k/datakey", "", 200, `{"ciphertext":"c","key_version":1}`, `{"bytes":16}`},
		{"PutPolicy", func(c *Client) error {
			_, err := c.PutPolicy(ctx, "p", api.Policy{Keys: []string{"a"}, Operations: []string{"wrap"}})
			return err
		}, "PUT", "/v1/policies/p", "", 200, policyBody, `{"subjects":{"uids":null,"gids":null,"users":null,"groups":null,"units":null},"keys":["a"],"operations":["wrap"]}`},
		{"ListPolicies", func(c *Client) error { _, err := c.ListPolicies(ctx); return err }, "GET", "/v1/policies", "", 200, `{"policies":["p"]}`, ""},
		{"GetPolicy", func(c *Client) error { _, err := c.GetPolicy(ctx, "p"); return err }, "GET", "/v1/policies/p", "", 200, policyBody, ""},
		{"DeletePolicy", func(c *Client) error { return c.DeletePolicy(ctx, "p") }, "DELETE", "/v1/policies/p", "", 204, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.on(tt.method, tt.path, tt.status, tt.resp)
			c := NewClient(f.socket)
			defer c.Close()
			if err := tt.call(c); err != nil {
				t.Fatal(err)
			}
			req := f.only()
			if req.Method != tt.method || req.Path != tt.path || req.Query != tt.query {
				t.Fatalf("request %s %s?%s", req.Method, req.Path, req.Query)
			}
			if (tt.wantBody == "") != (len(req.Body) == 0) || (tt.wantBody != "" && !jsonEqual(t, string(req.Body), tt.wantBody)) {
				t.Fatalf("body %s, want %s", req.Body, tt.wantBody)
			}
		})
	}
}

func TestClient_Errors(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		body      string
		wantCode  string
		wantInMsg string
	}{
		{"api error", 403, `{"error":{"code":"permission_denied","message":"uid 1001 may not wrap with billing-db"}}`, api.CodePermissionDenied, "uid 1001 may not wrap"},
		{"plain text", 502, "bad gateway", api.CodeInternal, `answered "502 Bad Gateway" without a Coffer error body ("bad gateway")`},
		{"other json", 400, `{"error":"bad ciphertext"}`, api.CodeInternal, "without a Coffer error body"},
		{"empty", 500, "", api.CodeInternal, "without a Coffer error body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.on("GET", "/v1/keys/k", tt.status, tt.body)
			c := NewClient(f.socket)
			defer c.Close()
			_, err := c.GetKey(context.Background(), "k")
			var ae *api.Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %v is not *api.Error", err)
			}
			if ae.Status != tt.status || ae.Code != tt.wantCode || ae.RequestID != fakeRequestID || !strings.Contains(ae.Message, tt.wantInMsg) {
				t.Fatalf("got %+v", ae)
			}
		})
	}
	t.Run("bad success body", func(t *testing.T) {
		f := newFake(t)
		f.on("GET", "/v1/keys/k", 200, "not json")
		_, err := NewClient(f.socket).GetKey(context.Background(), "k")
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeInternal || !strings.Contains(ae.Message, "cannot read cofferd's answer") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestClient_Health(t *testing.T) {
	sealed := `{"initialized":true,"sealed":true,"threshold":3,"progress":1}`
	tests := []struct {
		name     string
		status   int
		body     string
		wantSt   bool
		wantCode string
	}{
		{"healthy", 200, statusUnsealed, true, ""},
		{"sealed", 503, sealed, true, api.CodeSealed},
		{"uninitialised", 501, `{"initialized":false,"sealed":true}`, true, api.CodeSealed},
		{"error body", 503, `{"error":{"code":"no_leader","message":"no leader"}}`, false, api.CodeNoLeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.on("GET", "/v1/sys/health", tt.status, tt.body)
			st, err := NewClient(f.socket).Health(context.Background())
			if (st != nil) != tt.wantSt {
				t.Fatalf("status %v", st)
			}
			var ae *api.Error
			if tt.wantCode == "" && err != nil || tt.wantCode != "" && (!errors.As(err, &ae) || ae.Code != tt.wantCode) {
				t.Fatalf("err %v", err)
			}
		})
	}
}

func TestConnError_Messages(t *testing.T) {
	dir := socketDir(t)
	refused := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", refused)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	notSock := filepath.Join(dir, "file")
	os.WriteFile(notSock, nil, 0o600)

	tests := []struct {
		name, socket string
		want         string
	}{
		{"missing", filepath.Join(dir, "none.sock"), "no such file; is cofferd running? set --socket or COFFER_SOCKET"},
		{"refused", refused, "connection refused (the socket file exists but nothing listens on it); is cofferd running?"},
		{"not a socket", notSock, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient(tt.socket).Status(context.Background())
			var ce *ConnError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "cannot reach cofferd at "+tt.socket) {
				t.Fatalf("got %v", err)
			}
		})
	}
	// Permission checks do not apply to root, so build the error the dialer
	// returns for a socket of another group.
	perm := &ConnError{Socket: "/run/coffer/coffer.sock", Err: &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}}
	if got := perm.Error(); !strings.Contains(got, "permission denied; your user must be in the socket's group") {
		t.Fatalf("got %q", got)
	}
}

func TestClient_Cancelled(t *testing.T) {
	f := newFake(t)
	started := make(chan struct{}, 1)
	f.handle("GET", "/v1/sys/status", func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	if _, err := NewClient(f.socket).Status(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

// TestDeps checks that the coffer binary links no daemon, device, cluster
// or keystore code (only keystore/shamir, for unseal --identity, and
// cluster/tlsutil, pure Go, for coffer tls; daemon/audit, standard library
// only, for coffer audit verify) and no package that needs cgo.
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const mod = "github.com/coffer-kms/coffer"
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "list", "-deps",
		"-f", "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", mod+"/cmd/coffer")
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	var sawCLI bool
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("unexpected go list line %q", line)
		}
		pkg, std, cgo := f[0], f[1] == "true", f[2] != "0"
		sawCLI = sawCLI || pkg == mod+"/cli"
		for _, bad := range []string{"/hsm", "/daemon", "/keystore", "/cluster"} {
			p := mod + bad
			if (pkg == p || strings.HasPrefix(pkg, p+"/")) && pkg != mod+"/keystore/shamir" && pkg != mod+"/cluster/tlsutil" && pkg != mod+"/daemon/audit" {
				t.Errorf("coffer depends on %s", pkg)
			}
		}
		if cgo && !std {
			t.Errorf("coffer depends on %s, which uses cgo", pkg)
		}
	}
	if !sawCLI {
		t.Fatalf("go list output does not include the cli package:\n%s", out)
	}
}
