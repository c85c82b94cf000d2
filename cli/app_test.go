package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/coffer-kms/coffer/api"
	ucli "github.com/urfave/cli/v2"
)

const (
	statusUnsealed = `{"initialized":true,"sealed":false,"seal_type":"pkcs11","threshold":3,"shares":5,"progress":0,"cluster_id":"c-1","node_id":"node1","leader_id":"node1","is_leader":true,"version":"0.1.0","sealed_reason":"","audit_seq":42,"audit_hash":"sha256:abc"}`
	keyBody        = `{"name":"billing-db","type":"aes256-gcm","latest_version":2,"min_decryption_version":1,"versions":[{"version":1,"created_at":"2026-11-01T10:00:00Z"},{"version":2,"created_at":"2026-11-20T10:00:00Z"}],"rotation_period":"720h","deletion_date":null,"created_at":"2026-11-01T10:00:00Z"}`
	keyDeleted     = `{"name":"billing-db","type":"aes256-gcm","latest_version":2,"min_decryption_version":1,"versions":[],"rotation_period":"","deletion_date":"2026-12-01T10:00:00Z","created_at":"2026-11-01T10:00:00Z"}`
	policyBody     = `{"name":"billing","subjects":{"uids":[1001],"gids":[],"users":["billing"],"groups":[],"units":["billing.service"]},"keys":["billing-*"],"operations":["wrap","unwrap"]}`
)

// TestCommands_RequestAndOutput checks, for every command that maps to one
// request, the request it sends and its output in both formats. The json
// run puts --format after the command, so it also covers global flags in
// that position.
func TestCommands_RequestAndOutput(t *testing.T) {
	tests := []struct {
		name         string
		args         []string
		stdin        string
		method, path string
		status       int
		resp         string
		wantQuery    string
		wantBody     string // JSON; "" means no body
		wantContains []string
		wantExact    *string // exact table output, when it matters
	}{
		{name: "status", args: []string{"status"}, method: "GET", path: "/v1/sys/status", status: 200, resp: statusUnsealed,
			wantContains: []string{"Sealed        no\n", "Seal type     pkcs11\n", "Leader        node1 (this node)\n", "Cluster       c-1\n", "Audit         seq 42, sha256:abc\n"}},
		{name: "init", args: []string{"operator", "init", "--shares", "3", "--threshold", "2"}, method: "POST", path: "/v1/sys/init", status: 200,
			resp: `{"shares":["coffer-share-1-aaa","coffer-share-1-bbb","coffer-share-1-ccc"],"encrypted":false}`, wantBody: `{"shares":3,"threshold":2}`,
			wantContains: []string{"Share 1: coffer-share-1-aaa\n", "Share 3: coffer-share-1-ccc\n", "shown only this once", "Store each share apart", "any 2 shares unseal"}},
		{name: "seal", args: []string{"operator", "seal"}, method: "POST", path: "/v1/sys/seal", status: 204, wantContains: []string{"Sealed"}},
		{name: "enrol token create", args: []string{"operator", "enrol", "token", "create", "--node", "node4", "--ttl", "30m"}, method: "POST", path: "/v1/sys/enrol/tokens", status: 200,
			resp: `{"token":"coffer-enrol-0011223344556677-abc","node_id":"node4","expires_at":"2026-12-01T10:30:00Z"}`, wantBody: `{"node_id":"node4","ttl":"30m"}`,
			wantContains: []string{"coffer-enrol-0011223344556677-abc"}},
		{name: "enrol token list", args: []string{"operator", "enrol", "token", "list"}, method: "GET", path: "/v1/sys/enrol/tokens", status: 200,
			resp:      `{"tokens":[{"id":"0011223344556677","node_id":"node4","expires_at":"2026-12-01T10:30:00Z","used_at":null}]}`,
			wantExact: ptr("ID                 NODE    EXPIRES                USED\n0011223344556677   node4   2026-12-01T10:30:00Z   -\n")},
		{name: "enrol token revoke", args: []string{"operator", "enrol", "token", "revoke", "0011223344556677"}, method: "DELETE", path: "/v1/sys/enrol/tokens/0011223344556677", status: 204,
			wantContains: []string{"Revoked"}},
		{name: "raft join with token", args: []string{"operator", "raft", "join", "10.0.0.1:8201", "--token", "-"}, stdin: "coffer-enrol-0011223344556677-abc\n", method: "POST", path: "/v1/sys/raft/join", status: 200, resp: `{}`,
			wantBody: `{"leader_address":"10.0.0.1:8201","token":"coffer-enrol-0011223344556677-abc"}`, wantContains: []string{"Joined"}},
		{name: "reseal", args: []string{"operator", "reseal"}, method: "POST", path: "/v1/sys/reseal", status: 204, wantContains: []string{"Resealed"}},
		{name: "rotate", args: []string{"operator", "rotate"}, method: "POST", path: "/v1/sys/rotate", status: 200, resp: `{"term":3}`,
			wantExact: ptr("New keyring term: 3\n")},
		{name: "key create", args: []string{"key", "create", "billing-db", "--rotation-period", "720h"}, method: "POST", path: "/v1/keys", status: 201, resp: keyBody,
			wantBody: `{"name":"billing-db","type":"aes256-gcm","rotation_period":"720h"}`, wantContains: []string{"Name                     billing-db", "Rotation period          720h", "VERSION   CREATED", "2         2026-11-20T10:00:00Z"}},
		{name: "key create chacha", args: []string{"key", "create", "--type", "chacha20-poly1305", "k1"}, method: "POST", path: "/v1/keys", status: 201, resp: keyBody,
			wantBody: `{"name":"k1","type":"chacha20-poly1305"}`},
		{name: "key create xaes", args: []string{"key", "create", "--type", "xaes256-gcm", "k1"}, method: "POST", path: "/v1/keys", status: 201, resp: keyBody,
			wantBody: `{"name":"k1","type":"xaes256-gcm"}`},
		{name: "key list", args: []string{"key", "list"}, method: "GET", path: "/v1/keys", status: 200, resp: `{"keys":["a","billing-db"]}`,
			wantExact: ptr("NAME\na\nbilling-db\n")},
		{name: "key list empty", args: []string{"key", "list"}, method: "GET", path: "/v1/keys", status: 200, resp: `{"keys":[]}`,
			wantExact: ptr("No keys.\n")},
		{name: "key show", args: []string{"key", "show", "billing-db"}, method: "GET", path: "/v1/keys/billing-db", status: 200, resp: keyBody,
			wantContains: []string{"Latest version           2", "Min decryption version   1", "Created                  2026-11-01T10:00:00Z"}},
		{name: "key rotate", args: []string{"key", "rotate", "billing-db"}, method: "POST", path: "/v1/keys/billing-db/rotate", status: 200, resp: keyBody,
			wantContains: []string{"billing-db"}},
		{name: "key update", args: []string{"key", "update", "billing-db", "--min-decryption-version", "2", "--rotation-period", "0"}, method: "PATCH", path: "/v1/keys/billing-db", status: 200, resp: keyBody,
			wantBody: `{"min_decryption_version":2,"rotation_period":"0"}`},
		{name: "key delete", args: []string{"key", "delete", "billing-db", "--pending-window", "48h"}, method: "DELETE", path: "/v1/keys/billing-db", status: 202, resp: keyDeleted,
			wantQuery: "pending_window=48h", wantContains: []string{"Deletion date            2026-12-01T10:00:00Z (pending; cancel with: coffer key restore billing-db)", "Rotation period          none"}},
		{name: "key delete default window", args: []string{"key", "delete", "billing-db"}, method: "DELETE", path: "/v1/keys/billing-db", status: 202, resp: keyDeleted},
		{name: "key restore", args: []string{"key", "restore", "billing-db"}, method: "POST", path: "/v1/keys/billing-db/restore", status: 200, resp: keyBody},
		{name: "wrap stdin", args: []string{"wrap", "--key", "billing-db"}, stdin: "hello", method: "POST", path: "/v1/keys/billing-db/wrap", status: 200,
			resp: `{"ciphertext":"coffer:v2:abc","key_version":2}`, wantBody: `{"plaintext":"aGVsbG8="}`, wantExact: ptr("coffer:v2:abc\n")},
		{name: "wrap aad dash", args: []string{"wrap", "--key", "billing-db", "--aad", "ctx", "-"}, stdin: "hello", method: "POST", path: "/v1/keys/billing-db/wrap", status: 200,
			resp: `{"ciphertext":"coffer:v2:abc","key_version":2}`, wantBody: `{"plaintext":"aGVsbG8=","aad":"Y3R4"}`, wantExact: ptr("coffer:v2:abc\n")},
		{name: "unwrap arg", args: []string{"unwrap", "--key", "billing-db", "coffer:v2:abc"}, method: "POST", path: "/v1/keys/billing-db/unwrap", status: 200,
			resp: `{"plaintext":"aGVsbG8="}`, wantBody: `{"ciphertext":"coffer:v2:abc"}`, wantExact: ptr("hello")},
		{name: "unwrap stdin trimmed", args: []string{"unwrap", "--key", "billing-db"}, stdin: "  coffer:v2:abc \n\n", method: "POST", path: "/v1/keys/billing-db/unwrap", status: 200,
			resp: `{"plaintext":"AAEC/w=="}`, wantBody: `{"ciphertext":"coffer:v2:abc"}`, wantExact: ptr("\x00\x01\x02\xff")},
		{name: "rewrap dash", args: []string{"rewrap", "--key", "billing-db", "--aad", "ctx", "-"}, stdin: "coffer:v1:old\n", method: "POST", path: "/v1/keys/billing-db/rewrap", status: 200,
			resp: `{"ciphertext":"coffer:v2:new","key_version":2}`, wantBody: `{"ciphertext":"coffer:v1:old","aad":"Y3R4"}`, wantExact: ptr("coffer:v2:new\n")},
		{name: "datakey", args: []string{"datakey", "--key", "billing-db"}, method: "POST", path: "/v1/keys/billing-db/datakey", status: 200,
			resp: `{"plaintext":"AAECAwQFBgcICQoLDA0ODw==","ciphertext":"coffer:v2:dk","key_version":2}`, wantBody: `{"bytes":32,"include_plaintext":true}`,
			wantExact: ptr("plaintext: AAECAwQFBgcICQoLDA0ODw==\nciphertext: coffer:v2:dk\n")},
		{name: "datakey no plaintext", args: []string{"datakey", "--key", "billing-db", "--bytes", "16", "--no-plaintext"}, method: "POST", path: "/v1/keys/billing-db/datakey", status: 200,
			resp: `{"ciphertext":"coffer:v2:dk","key_version":2}`, wantBody: `{"bytes":16,"include_plaintext":false}`, wantExact: ptr("ciphertext: coffer:v2:dk\n")},
		{name: "policy list", args: []string{"policy", "list"}, method: "GET", path: "/v1/policies", status: 200, resp: `{"policies":["billing"]}`,
			wantExact: ptr("NAME\nbilling\n")},
		{name: "policy show", args: []string{"policy", "show", "billing"}, method: "GET", path: "/v1/policies/billing", status: 200, resp: policyBody,
			wantContains: []string{"Keys         billing-*", "Operations   wrap, unwrap", "UIDs         1001", "GIDs         -", "Units        billing.service"}},
		{name: "policy delete", args: []string{"policy", "delete", "billing"}, method: "DELETE", path: "/v1/policies/billing", status: 204,
			wantExact: ptr("Deleted policy billing.\n")},
	}
	for _, tt := range tests {
		for _, format := range []string{"table", "json"} {
			t.Run(tt.name+"/"+format, func(t *testing.T) {
				f := newFake(t)
				f.on(tt.method, tt.path, tt.status, tt.resp)
				args := tt.args
				if format == "json" {
					args = append(append([]string(nil), args...), "--format", "json")
				}
				r := run(t, f, tt.stdin, args...)
				if r.code != 0 {
					t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
				}
				req := f.only()
				if req.Method != tt.method || req.Path != tt.path || req.Query != tt.wantQuery {
					t.Fatalf("request %s %s?%s, want %s %s?%s", req.Method, req.Path, req.Query, tt.method, tt.path, tt.wantQuery)
				}
				if tt.wantBody == "" {
					if len(req.Body) != 0 {
						t.Fatalf("request body %s, want none", req.Body)
					}
				} else if !jsonEqual(t, string(req.Body), tt.wantBody) {
					t.Fatalf("request body %s, want %s", req.Body, tt.wantBody)
				}
				if format == "json" {
					oneJSONDocument(t, r.stdout)
					want := tt.resp
					if want == "" {
						want = "{}"
					}
					if !jsonEqual(t, r.stdout, want) {
						t.Fatalf("json output %s, want %s", r.stdout, want)
					}
					return
				}
				if tt.wantExact != nil && r.stdout != *tt.wantExact {
					t.Fatalf("output %q, want %q", r.stdout, *tt.wantExact)
				}
				for _, s := range tt.wantContains {
					if !strings.Contains(r.stdout, s) {
						t.Errorf("output lacks %q:\n%s", s, r.stdout)
					}
				}
			})
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		want       int
		wantStderr string
		requests   int
	}{
		{"unknown command", []string{"frobnicate"}, ExitUsage, `unknown command "frobnicate"`, 0},
		{"unknown subcommand", []string{"key", "frob"}, ExitUsage, `unknown command "frob" for "coffer key"`, 0},
		{"missing subcommand", []string{"operator"}, ExitUsage, "missing command (one of: init, unseal, seal, reseal, rotate, rekey, raft, enrol)", 0},
		{"no command", nil, ExitUsage, "missing command", 0},
		{"unknown flag", []string{"status", "--bogus"}, ExitUsage, "flag provided but not defined: -bogus", 0},
		{"missing argument", []string{"key", "show"}, ExitUsage, "missing argument: coffer key show NAME", 0},
		{"extra argument", []string{"key", "show", "a", "b"}, ExitUsage, `unexpected argument "b"`, 0},
		{"bad int", []string{"operator", "init", "--shares", "many"}, ExitUsage, "invalid value \"many\" for flag -shares", 0},
		{"threshold above shares", []string{"operator", "init", "--shares", "2", "--threshold", "3"}, ExitUsage, "invalid --threshold 3", 0},
		{"recipients count", []string{"operator", "init", "--shares", "2", "--threshold", "2", "--recipient", "age1x"}, ExitUsage, "one --recipient per share", 0},
		{"bad format", []string{"status", "--format", "xml"}, ExitUsage, `invalid --format "xml"`, 0},
		{"bad duration", []string{"key", "create", "k", "--rotation-period", "a month"}, ExitUsage, `invalid --rotation-period "a month"`, 0},
		{"window too short", []string{"key", "delete", "k", "--pending-window", "1h"}, ExitUsage, "the minimum is 24h0m0s", 0},
		{"invalid name", []string{"key", "show", "bad/name"}, ExitUsage, `invalid key name "bad/name"`, 0},
		{"missing key flag", []string{"wrap"}, ExitUsage, "missing --key NAME", 0},
		{"bad bytes", []string{"datakey", "--key", "k", "--bytes", "8"}, ExitUsage, "invalid --bytes 8", 0},
		{"nothing to update", []string{"key", "update", "k"}, ExitUsage, "nothing to update", 0},
		{"bad type", []string{"key", "create", "k", "--type", "des"}, ExitUsage, `invalid --type "des"`, 0},
		{"daemon error", []string{"key", "show", "nope"}, ExitError, "coffer: not_found: no route GET /v1/keys/nope (request " + fakeRequestID + ")", 1},
		{"help", []string{"key", "show", "--help"}, ExitOK, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			r := run(t, f, "", tt.args...)
			if r.code != tt.want {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, tt.want, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.wantStderr) {
				t.Fatalf("stderr %q lacks %q", r.stderr, tt.wantStderr)
			}
			if n := len(f.requests()); n != tt.requests {
				t.Fatalf("%d requests, want %d", n, tt.requests)
			}
		})
	}
}

func TestStatus_ExitCode(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   int
		stderr string
	}{
		{"unsealed", 200, statusUnsealed, ExitOK, ""},
		{"sealed", 200, `{"initialized":true,"sealed":true,"seal_type":"tpm","threshold":3,"shares":5,"progress":1,"sealed_reason":"TPM PCR policy changed"}`, ExitUsage, "cofferd is sealed"},
		{"not initialised", 200, `{"initialized":false,"sealed":true}`, ExitUsage, "not initialised"},
		{"error", 500, mustJSONString(apiErr(api.CodeInternal, "boom")), ExitError, "coffer: internal: boom"},
	}
	for _, tt := range tests {
		for _, format := range []string{"table", "json"} {
			t.Run(tt.name+"/"+format, func(t *testing.T) {
				f := newFake(t)
				f.on("GET", "/v1/sys/status", tt.status, tt.body)
				r := run(t, f, "", "--format", format, "status")
				if r.code != tt.want {
					t.Fatalf("exit %d, want %d; stderr %s", r.code, tt.want, r.stderr)
				}
				if format == "table" && !strings.Contains(r.stderr, tt.stderr) {
					t.Fatalf("stderr %q lacks %q", r.stderr, tt.stderr)
				}
				if format == "json" && tt.want != ExitError {
					oneJSONDocument(t, r.stdout)
				}
			})
		}
	}
}

func TestStatus_SealedTable(t *testing.T) {
	f := newFake(t)
	f.on("GET", "/v1/sys/status", 200, `{"initialized":true,"sealed":true,"seal_type":"tpm","threshold":3,"shares":5,"progress":1,"node_id":"n2","sealed_reason":"TPM PCR policy changed"}`)
	r := run(t, f, "", "status")
	for _, s := range []string{"Unseal progress   1/3", "Sealed reason     TPM PCR policy changed", "Shares            5 (threshold 3)", "Leader            -"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("status lacks %q:\n%s", s, r.stdout)
		}
	}
}

func mustJSONString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestGlobalFlags_Positions(t *testing.T) {
	f := newFake(t)
	f.on("GET", "/v1/keys/billing-db", 200, keyBody)
	tests := []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"before", []string{"coffer", "--socket", f.socket, "--format", "json", "key", "show", "billing-db"}, nil},
		{"between", []string{"coffer", "key", "--socket", f.socket, "show", "--format=json", "billing-db"}, nil},
		{"after", []string{"coffer", "key", "show", "billing-db", "--socket", f.socket, "--format", "json"}, nil},
		{"single dash", []string{"coffer", "key", "show", "billing-db", "-socket", f.socket, "-format=json"}, nil},
		{"env", []string{"coffer", "key", "show", "billing-db"}, map[string]string{EnvSocket: f.socket, EnvFormat: "json"}},
		{"flag beats env", []string{"coffer", "key", "show", "billing-db", "--socket", f.socket}, map[string]string{EnvSocket: "/nonexistent.sock", EnvFormat: "json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			r := runArgs(t, "", tt.args...)
			if r.code != 0 {
				t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
			}
			if !jsonEqual(t, r.stdout, keyBody) {
				t.Fatalf("output %s", r.stdout)
			}
		})
	}
}

func TestNormalizeArgs(t *testing.T) {
	app := (&env{}).newApp()
	tests := []struct{ in, want string }{
		{"coffer status", "coffer status"},
		{"coffer status --format json", "coffer --format json status"},
		{"coffer key show k --format json --socket s", "coffer --format json --socket s key show k"},
		{"coffer wrap --key k file --aad x", "coffer wrap --key k --aad x file"},
		{"coffer wrap --aad --format --key k", "coffer wrap --aad --format --key k"},
		{"coffer unwrap --key k -", "coffer unwrap --key k -"},
		{"coffer unwrap --key k -- -odd", "coffer unwrap --key k -- -odd"},
		{"coffer --help key", "coffer key --help"},
		{"coffer key show --bogus k", "coffer key show --bogus k"},
		{"coffer nope --format json x", "coffer --format json nope x"},
		{"coffer key --generate-bash-completion", "coffer key --generate-bash-completion"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := strings.Join(normalizeArgs(app, strings.Fields(tt.in)), " ")
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestWrap_File(t *testing.T) {
	f := newFake(t)
	f.on("POST", "/v1/keys/k/wrap", 200, `{"ciphertext":"coffer:v1:zz","key_version":1}`)
	path := filepath.Join(t.TempDir(), "secret.bin")
	if err := os.WriteFile(path, []byte{0, 1, 2, 3}, 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, f, "ignored", "wrap", "--key", "k", path)
	if r.code != 0 || r.stdout != "coffer:v1:zz\n" {
		t.Fatalf("exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	if got := string(f.only().Body); !jsonEqual(t, got, `{"plaintext":"AAECAw=="}`) {
		t.Fatalf("body %s", got)
	}
}

func TestWrap_TooLarge(t *testing.T) {
	big := strings.Repeat("x", api.MaxPlaintext+1)
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		stdin string
		args  []string
	}{
		{"stdin", big, []string{"wrap", "--key", "k"}},
		{"file", "", []string{"wrap", "--key", "k", path}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			r := run(t, f, tt.stdin, tt.args...)
			if r.code != ExitError {
				t.Fatalf("exit %d, want 1", r.code)
			}
			if !strings.Contains(r.stderr, "larger than 64 KiB") || !strings.Contains(r.stderr, "coffer encrypt") {
				t.Fatalf("stderr %q", r.stderr)
			}
			if len(f.requests()) != 0 {
				t.Fatal("a request was sent")
			}
		})
	}
	// Exactly 64 KiB is allowed.
	f := newFake(t)
	f.on("POST", "/v1/keys/k/wrap", 200, `{"ciphertext":"coffer:v1:zz","key_version":1}`)
	if r := run(t, f, big[:api.MaxPlaintext], "wrap", "--key", "k"); r.code != 0 {
		t.Fatalf("64 KiB refused: %s", r.stderr)
	}
}

func TestPolicyWrite(t *testing.T) {
	const wantBody = `{"subjects":{"uids":[1001],"gids":[],"users":["billing"],"groups":[],"units":["billing.service"]},"keys":["billing-*"],"operations":["wrap","unwrap"]}`
	hclPolicy := `# billing may wrap and unwrap its own keys
subjects {
  uids   = [1001]
  users  = ["billing"]
  units  = ["billing.service"]
}
keys       = ["billing-*"]
operations = ["wrap", "unwrap"]
`
	jsonPolicy := `{"subjects":{"uids":[1001],"users":["billing"],"units":["billing.service"]},"keys":["billing-*"],"operations":["wrap","unwrap"]}`
	tests := []struct {
		name, file, content, stdin string
	}{
		{"json file", "p.json", jsonPolicy, ""},
		{"hcl by extension", "p.hcl", hclPolicy, ""},
		{"hcl by content", "policy", hclPolicy, ""},
		{"json on stdin", "-", "", "\n  " + jsonPolicy},
		{"hcl on stdin", "-", "", hclPolicy},
		{"json with name", "p.json", `{"name":"billing",` + jsonPolicy[1:], ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.on("PUT", "/v1/policies/billing", 200, policyBody)
			file := tt.file
			if file != "-" {
				file = filepath.Join(t.TempDir(), tt.file)
				if err := os.WriteFile(file, []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			r := run(t, f, tt.stdin, "policy", "write", "billing", file)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			body := string(f.only().Body)
			want := wantBody
			if strings.Contains(tt.content, `"name"`) {
				want = `{"name":"billing",` + wantBody[1:]
			}
			if !jsonEqual(t, body, want) {
				t.Fatalf("body %s, want %s", body, want)
			}
			if !strings.Contains(r.stdout, "Operations   wrap, unwrap") {
				t.Fatalf("output %s", r.stdout)
			}
		})
	}
}

func TestPolicyWrite_Errors(t *testing.T) {
	tests := []struct {
		name, file, content, want string
	}{
		{"hcl unknown attribute", "p.hcl", "subjects {\n  uids = [1]\n}\nkeys = [\"a\"]\noperations = [\"wrap\"]\nverbs = [\"x\"]\n", `p.hcl:6,1: Unsupported argument; An argument named "verbs" is not expected here.`},
		{"hcl unknown subject", "p.hcl", "subjects {\n  uids = [1]\n  hosts = [\"a\"]\n}\nkeys = [\"a\"]\noperations = [\"wrap\"]\n", `p.hcl:3,3: Unsupported argument`},
		{"hcl syntax", "p.hcl", "subjects {\n  uids = [1\n}\n", "p.hcl:"},
		{"hcl negative uid", "p.hcl", "subjects {\n  uids = [-1]\n}\nkeys = [\"a\"]\noperations = [\"wrap\"]\n", "p.hcl:2,"},
		{"hcl missing keys", "p.hcl", "subjects {\n}\noperations = [\"wrap\"]\n", `a policy needs keys (or secrets) and operations`},
		{"json unknown field", "p.json", "{\n  \"subjects\": {},\n  \"keys\": [\"a\"],\n  \"verbs\": []\n}", `p.json:4: unknown field "verbs"`},
		{"json syntax", "p.json", "{\n  \"keys\": [\"a\",]\n}", "p.json:2: invalid character"},
		{"json trailing", "p.json", `{"subjects":{},"keys":["a"],"operations":["wrap"]} {}`, "unexpected data after the policy object"},
		{"unknown operation", "p.json", `{"subjects":{},"keys":["a"],"operations":["wrap","fly"]}`, `unknown operation "fly"`},
		{"name mismatch", "p.json", `{"name":"other","subjects":{},"keys":["a"],"operations":["wrap"]}`, `names the policy "other"`},
		{"empty", "p.json", "  \n", "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			dir := t.TempDir()
			file := filepath.Join(dir, tt.file)
			if err := os.WriteFile(file, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			r := run(t, f, "", "policy", "write", "billing", file)
			if r.code != ExitError {
				t.Fatalf("exit %d, want 1; stderr %s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("stderr %q lacks %q", r.stderr, tt.want)
			}
			if len(f.requests()) != 0 {
				t.Fatal("a request was sent")
			}
		})
	}
}

func TestConnError_SocketMissing(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nothing.sock")
	r := runArgs(t, "", "coffer", "--socket", sock, "status")
	want := "coffer: cannot reach cofferd at " + sock + ": no such file; is cofferd running? set --socket or COFFER_SOCKET\n"
	if r.code != ExitError || r.stderr != want {
		t.Fatalf("exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
}

func TestHelp_EveryCommand(t *testing.T) {
	app := (&env{}).newApp()
	var walk func(path []string, cmds []*ucli.Command)
	walk = func(path []string, cmds []*ucli.Command) {
		for _, c := range cmds {
			p := append(append([]string(nil), path...), c.Name)
			t.Run(strings.Join(p, " "), func(t *testing.T) {
				r := runArgs(t, "", append(append([]string{"coffer"}, p...), "--help")...)
				if r.code != 0 {
					t.Fatalf("exit %d: %s", r.code, r.stderr)
				}
				for _, s := range []string{"USAGE:\n   coffer " + strings.Join(p, " "), "DESCRIPTION:", "EXAMPLES:\n   ", "GLOBAL OPTIONS"} {
					if !strings.Contains(r.stdout, s) {
						t.Errorf("help lacks %q:\n%s", s, r.stdout)
					}
				}
			})
			walk(p, c.Subcommands)
		}
	}
	walk(nil, app.Commands)
	r := runArgs(t, "", "coffer", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "EXAMPLES:") || !strings.Contains(r.stdout, "EXIT CODES:") {
		t.Fatalf("app help: exit %d\n%s", r.code, r.stdout)
	}
}

func TestCompletion(t *testing.T) {
	tests := []struct {
		shell string
		want  []string
	}{
		{"bash", []string{"complete -o bashdefault -o default -F _coffer_bash_autocomplete coffer", "--generate-bash-completion"}},
		{"zsh", []string{"#compdef coffer", "compdef _coffer_zsh_autocomplete coffer"}},
		{"fish", []string{"complete -c coffer", "-a 'unseal'", "-l socket", "-l concurrency"}},
	}
	for _, tt := range tests {
		t.Run(tt.shell, func(t *testing.T) {
			r := runArgs(t, "", "coffer", "completion", tt.shell)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			for _, s := range tt.want {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("%s script lacks %q:\n%s", tt.shell, s, r.stdout)
				}
			}
		})
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"key"}, "create\nlist\nshow\nrotate\nupdate\ndelete\nrestore\n"},
		{[]string{"wrap", "--k"}, "--key\n"},
		{[]string{"bench", "wrap", "--so"}, "--socket\n"},
	} {
		args := append(append([]string{"coffer"}, tt.args...), "--generate-bash-completion")
		if r := runArgs(t, "", args...); r.code != 0 || r.stdout != tt.want {
			t.Errorf("completion of %q: exit %d, %q, want %q", tt.args, r.code, r.stdout, tt.want)
		}
	}
}

func TestVersion(t *testing.T) {
	r := runArgs(t, "", "coffer", "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "coffer dev (commit unknown, go") {
		t.Fatalf("exit %d, %q", r.code, r.stdout)
	}
	r = runArgs(t, "", "coffer", "version", "--format", "json")
	oneJSONDocument(t, r.stdout)
}

func TestInit_Encrypted(t *testing.T) {
	f := newFake(t)
	armored := "-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"
	f.on("POST", "/v1/sys/init", 200, mustJSON(t, api.InitResponse{Shares: []string{armored, armored}, Encrypted: true}))
	r := run(t, f, "", "operator", "init", "--shares", "2", "--threshold", "2", "--recipient", "age1alice", "--recipient", "age1bob")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if !jsonEqual(t, string(f.only().Body), `{"shares":2,"threshold":2,"recipients":["age1alice","age1bob"]}`) {
		t.Fatalf("body %s", f.only().Body)
	}
	for _, s := range []string{"Share 1 (age-encrypted to age1alice):\n-----BEGIN AGE", "Share 2 (age-encrypted to age1bob):", "shown only this once"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("output lacks %q:\n%s", s, r.stdout)
		}
	}
}

// TestMain_Concurrent runs Main from several goroutines; with -race it
// shows that no command run mutates shared state (urfave's help flag and
// help command are globals, see newApp).
func TestMain_Concurrent(t *testing.T) {
	f := newFake(t)
	f.on("GET", "/v1/sys/status", 200, statusUnsealed)
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := [][]string{{"status"}, {"key", "show", "--help"}, {"bogus"}, {"--help"}}[i%4]
			var out, errb bytes.Buffer
			code := Main(context.Background(), append([]string{"coffer", "--socket", f.socket}, args...), strings.NewReader(""), &out, &errb)
			if want := []int{0, 0, 2, 0}[i%4]; code != want {
				errs <- fmt.Sprintf("%v: exit %d, want %d: %s", args, code, want, errb.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
