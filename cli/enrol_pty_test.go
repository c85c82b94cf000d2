//go:build linux

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/coffer-kms/coffer/api"
)

// TestEnrol_PromptHidesToken: `coffer operator enrol` on a terminal asks
// for the token without echo, posts it, and reports the node unsealed; the
// token is never echoed or printed.
func TestEnrol_PromptHidesToken(t *testing.T) {
	const token = "coffer-enrol-0123456789abcdef-SECRETSECRETSECRETSECRETSECRETSECRETSECR"
	f := newFake(t)
	var mu sync.Mutex
	sealed := true
	var got string
	f.handle("GET", "/v1/sys/status", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		writeJSON(w, 200, api.Status{Initialized: true, Sealed: sealed, NodeID: "node2", SealType: "pkcs11"})
	})
	f.handle("POST", "/v1/sys/enrol", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		var req api.EnrolRequest
		json.NewDecoder(r.Body).Decode(&req)
		got, sealed = req.Token, false
		writeJSON(w, 200, api.Status{Initialized: true, Sealed: false, NodeID: "node2", SealType: "pkcs11"})
	})
	master, tty := openPTY(t)
	out, errb, done := &syncBuffer{}, &syncBuffer{}, make(chan int, 1)
	go func() {
		done <- Main(context.Background(), []string{"coffer", "--socket", f.socket, "operator", "enrol"}, tty, out, errb)
	}()
	waitFor(t, errb, "Enrolment token (will be hidden): ", 1)
	waitEchoOff(t, tty)
	if _, err := master.WriteString(token + "\n"); err != nil {
		t.Fatal(err)
	}
	if code := wait(t, done); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if got != token {
		t.Fatalf("the daemon got a different token (%d bytes)", len(got))
	}
	if o := out.String(); !strings.Contains(o, "Node node2 is enrolled") || strings.Contains(o+errb.String(), "SECRET") {
		t.Fatalf("stdout %q stderr %q", o, errb.String())
	}
	echo := make([]byte, 4096)
	fds := []unix.PollFd{{Fd: int32(master.Fd()), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, 50); n > 0 {
		n, _ := unix.Read(int(master.Fd()), echo)
		if n > 0 && bytes.Contains(echo[:n], []byte("SECRET")) {
			t.Fatal("the terminal echoed the token")
		}
	}
}

// TestEnrol_AlreadyUnsealedSendsNothing: on an unsealed node the token is
// not sent (it stays valid).
func TestEnrol_AlreadyUnsealedSendsNothing(t *testing.T) {
	f := newFake(t)
	f.on("GET", "/v1/sys/status", 200, `{"initialized":true,"sealed":false,"node_id":"node2"}`)
	var out, errb bytes.Buffer
	code := Main(context.Background(), []string{"coffer", "--socket", f.socket, "operator", "enrol", "-"}, strings.NewReader("coffer-enrol-x\n"), &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "already unsealed") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	for _, r := range f.requests() {
		if r.Method == "POST" {
			t.Fatalf("sent %s %s", r.Method, r.Path)
		}
	}
}
