package cli

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestJSONErrors: with --format json every error goes to stderr as one
// JSON document shaped like the API's error body, and nothing to stdout.
func TestJSONErrors(t *testing.T) {
	f := newFake(t)
	f.on("GET", "/v1/keys/missing", http.StatusNotFound, mustJSON(t, apiErr("not_found", "no key \"missing\"")))
	f.on("POST", "/v1/keys/k/wrap", http.StatusServiceUnavailable, mustJSON(t, apiErr("sealed", "the node is sealed")))
	for _, tt := range []struct {
		name     string
		args     []string
		exit     int
		code     string
		msg      string
		socketOK bool
	}{
		{"api error", []string{"--format", "json", "key", "show", "missing"}, 1, "not_found", `no key "missing"`, true},
		{"flag after the command", []string{"key", "show", "missing", "--format=json"}, 1, "not_found", `no key "missing"`, true},
		{"sealed", []string{"--format", "json", "wrap", "--key", "k", "-"}, 1, "sealed", "the node is sealed", true},
		{"usage", []string{"--format", "json", "key", "frobnicate"}, 2, "usage", "unknown command", true},
		{"missing flag", []string{"--format", "json", "wrap", "-"}, 2, "usage", "missing --key", true},
		{"unreachable", []string{"--format", "json", "--socket", "/nonexistent/coffer.sock", "key", "list"}, 1, "unreachable", "cannot reach cofferd", false},
		{"not an envelope", []string{"--format", "json", "decrypt", "-"}, 1, "decrypt_failed", "not a coffer envelope", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var r result
			if tt.socketOK {
				r = run(t, f, "hello", tt.args...)
			} else {
				r = runArgs(t, "", append([]string{"coffer"}, tt.args...)...)
			}
			if r.code != tt.exit || r.stdout != "" {
				t.Fatalf("exit %d stdout %q stderr %q; want exit %d and no stdout", r.code, r.stdout, r.stderr, tt.exit)
			}
			var body struct {
				Error struct {
					Code, Message string
					RequestID     string `json:"request_id"`
				} `json:"error"`
			}
			if strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || json.Unmarshal([]byte(r.stderr), &body) != nil {
				t.Fatalf("stderr is not one JSON document: %q", r.stderr)
			}
			if body.Error.Code != tt.code || !strings.Contains(body.Error.Message, tt.msg) {
				t.Fatalf("got %+v, want code %s and a message with %q", body.Error, tt.code, tt.msg)
			}
			if tt.socketOK && tt.exit == 1 && tt.code != "decrypt_failed" && body.Error.RequestID != fakeRequestID {
				t.Errorf("request id %q, want %q", body.Error.RequestID, fakeRequestID)
			}
		})
	}
	// Table format keeps the plain line.
	r := run(t, f, "", "key", "show", "missing")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "coffer: not_found: ") {
		t.Fatalf("table format: %q", r.stderr)
	}
}
