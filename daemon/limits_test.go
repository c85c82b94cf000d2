package daemon

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/config"
)

// TestServer_SlowBodyClosed is the trickling-body attack: a request whose
// body arrives one byte at a time must not keep its connection (and
// goroutine) past the read timeout. Without a ReadTimeout the connection
// stays open as long as the bytes keep coming.
func TestServer_SlowBodyClosed(t *testing.T) {
	const readTimeout = time.Second
	n := startNodeOpts(t, t.TempDir(), nil, func(o *Options) { o.ReadTimeout = readTimeout })
	c, err := net.Dial("unix", n.cfg.Listener.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /v1/sys/unseal HTTP/1.1\r\nHost: coffer\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		// The server's answer (if any) and then EOF: the connection is gone.
		io.Copy(io.Discard, c)
		closed <- time.Since(start)
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(readTimeout + 5*time.Second)
	for {
		select {
		case d := <-closed:
			t.Logf("trickling connection closed after %v (read timeout %v)", d.Round(time.Millisecond), readTimeout)
			return
		case <-tick.C:
			c.Write([]byte(" ")) // one byte, well within any per-read timeout
		case <-deadline:
			t.Fatalf("a body trickling in a byte every 200ms kept its connection open for %v (read timeout %v)", time.Since(start).Round(time.Millisecond), readTimeout)
		}
	}
}

// TestServer_BodyLimitBeforeGrant: a request whose caller is not known to
// be allowed may send at most api.MaxOpenBody; the full api.MaxBody is
// only for callers that passed the grant check.
func TestServer_BodyLimitBeforeGrant(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	n.must("PUT", "/v1/policies/p", api.Policy{
		Subjects: api.Subjects{UIDs: []uint32{1001}}, Keys: []string{"app"}, Operations: []string{"wrap"},
	}, nil, 200)
	pad := strings.Repeat(" ", api.MaxOpenBody) // valid JSON whitespace
	granted := &auth.Caller{UID: 1001, GID: 1001, Groups: []uint32{1001}}
	stranger := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}}
	for _, c := range []struct {
		what         string
		who          *auth.Caller
		method, path string
		body         string
		status       int
		code         string
	}{
		// Unseal is for admins and unseal.groups only: anyone else is
		// refused before the body is read.
		{"unseal, anyone else", stranger, "POST", "/v1/sys/unseal", `{"reset":true}` + pad, 403, api.CodePermissionDenied},
		{"unseal, admin: still the small limit", nil, "POST", "/v1/sys/unseal", `{"reset":true}` + pad, 413, api.CodeTooLarge},
		{"create: name in the body, not yet granted", granted, "POST", "/v1/keys", `{"name":"x"}` + pad, 413, api.CodeTooLarge},
		{"denied caller: refused before its body is read", stranger, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}` + pad, 403, api.CodePermissionDenied},
		{"granted caller: the full limit", granted, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}` + pad, 200, ""},
		{"admin: the full limit", nil, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}` + pad + pad, 200, ""},
	} {
		st, _, body := n.raw(c.who, c.method, c.path, c.body)
		var eb api.ErrorBody
		json.Unmarshal(body, &eb)
		if st != c.status || eb.Error.Code != c.code {
			t.Errorf("%s: %d %s (%s), want %d %s", c.what, st, eb.Error.Code, eb.Error.Message, c.status, c.code)
		}
		if st == 413 && !strings.Contains(eb.Error.Message, strconv.Itoa(api.MaxOpenBody)) {
			t.Errorf("%s: 413 message %q does not name the %d-byte limit", c.what, eb.Error.Message, api.MaxOpenBody)
		}
	}
}

// The connection-cap test runs its non-admin callers in a helper process
// (this test binary, re-executed as another uid): SO_PEERCRED reports the
// uid of the process that connected, and the test itself runs as root,
// who is an admin and exempt from the per-uid cap.
const helperSockEnv = "COFFER_TEST_HOLD_CONNS_SOCK"

// TestHelperHoldConns is not a test: run by TestServer_ConnCaps as
// another uid, it opens COFFER_TEST_HOLD_CONNS_N connections, sends a
// status request on each (keeping all open), prints "status/code/retry"
// per connection on one line, and holds them until stdin closes.
func TestHelperHoldConns(t *testing.T) {
	sock := os.Getenv(helperSockEnv)
	if sock == "" {
		t.Skip("helper process for TestServer_ConnCaps")
	}
	n, _ := strconv.Atoi(os.Getenv("COFFER_TEST_HOLD_CONNS_N"))
	var out []string
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			out = append(out, "dial-error")
			continue
		}
		conns = append(conns, c)
		out = append(out, statusOn(c))
	}
	fmt.Println("RESULT " + strings.Join(out, " "))
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// statusOn sends GET /v1/sys/status on c and describes the answer as
// "status/code/retry-after" ("eof" if the connection was closed first).
func statusOn(c net.Conn) string {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET /v1/sys/status HTTP/1.1\r\nHost: coffer\r\n\r\n"); err != nil {
		return "eof"
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "eof"
	}
	defer resp.Body.Close()
	var eb api.ErrorBody
	data, _ := io.ReadAll(resp.Body)
	json.Unmarshal(data, &eb)
	return fmt.Sprintf("%d/%s/%s", resp.StatusCode, eb.Error.Code, resp.Header.Get("Retry-After"))
}

// holder is a helper process holding connections as uid.
type holder struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	result []string
}

func holdConns(t *testing.T, exe, sock string, uid uint32, n int) *holder {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^TestHelperHoldConns$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperSockEnv+"="+sock, "COFFER_TEST_HOLD_CONNS_N="+strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, stdin: stdin}
	t.Cleanup(h.release)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if r, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
			h.result = strings.Fields(r)
			go io.Copy(io.Discard, stdout)
			return h
		}
	}
	t.Fatalf("helper as uid %d printed no result", uid)
	return nil
}

func (h *holder) release() {
	if h.stdin != nil {
		h.stdin.Close()
		h.stdin = nil
		h.cmd.Wait()
	}
}

// TestServer_ConnCaps: one non-admin uid gets max_conns_per_uid
// connections, the next ones are answered 429 too_many_requests with
// Retry-After (and closed); an admin is exempt; beyond max_conns in total
// every non-admin is refused; closing connections frees the slots.
func TestServer_ConnCaps(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as other uids")
	}
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Listener.Mode = 0o666
		c.Listener.MaxConnsPerUID = 4
		c.Listener.MaxConns = 6
	})
	os.Chmod(filepath.Dir(n.cfg.Listener.Path), 0o755)
	exe := copyTestBinary(t)
	sock := n.cfg.Listener.Path

	a := holdConns(t, exe, sock, 65534, 6)
	want := []string{"200//", "200//", "200//", "200//", "429/too_many_requests/1", "429/too_many_requests/1"}
	if strings.Join(a.result, " ") != strings.Join(want, " ") {
		t.Fatalf("uid 65534 with 6 connections (cap 4): %v, want %v", a.result, want)
	}
	// The refused connections were closed by the server: 4 remain. root
	// (an admin) is exempt from both caps.
	var rootConns []net.Conn
	for i := 0; i < 4; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rootConns = append(rootConns, c)
		if got := statusOn(c); got != "200//" {
			t.Fatalf("admin connection %d with the node over max_conns: %s, want 200", i, got)
		}
	}
	// 8 open now, over max_conns = 6: another uid is refused at once.
	b := holdConns(t, exe, sock, 65533, 1)
	if got := strings.Join(b.result, " "); got != "429/too_many_requests/1" {
		t.Fatalf("uid 65533 with the node over max_conns: %s, want 429", got)
	}
	b.release()
	// Freed slots are reusable: close everything and try again.
	a.release()
	for _, c := range rootConns {
		c.Close()
	}
	waitFor(t, "connections released", 5*time.Second, func() bool {
		n.srv.limiter.mu.Lock()
		defer n.srv.limiter.mu.Unlock()
		return n.srv.limiter.total == 0
	})
	c := holdConns(t, exe, sock, 65534, 4)
	if got := strings.Join(c.result, " "); got != "200// 200// 200// 200//" {
		t.Fatalf("uid 65534 after its connections closed: %s, want 4 × 200", got)
	}
}

// copyTestBinary copies this test binary where another uid can run it.
func copyTestBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "coffer-helper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "helper.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHelperFlood is not a test: run by TestServer_DeniedFloodAuditSocket
// as another uid, it sends COFFER_TEST_FLOOD_N requests for PATH on one
// keep-alive connection and prints how many were answered 403.
func TestHelperFlood(t *testing.T) {
	sock := os.Getenv("COFFER_TEST_FLOOD_SOCK")
	if sock == "" {
		t.Skip("helper process for TestServer_DeniedFloodAuditSocket")
	}
	n, _ := strconv.Atoi(os.Getenv("COFFER_TEST_FLOOD_N"))
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Println("RESULT dial-error")
		return
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := "POST " + os.Getenv("COFFER_TEST_FLOOD_PATH") + " HTTP/1.1\r\nHost: coffer\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{\"ciphertext\":\"x\"}"
	want := 403
	if os.Getenv("COFFER_TEST_FLOOD_METHOD") == "GET" { // count 200s of a GET instead
		req, want = "GET "+os.Getenv("COFFER_TEST_FLOOD_PATH")+" HTTP/1.1\r\nHost: coffer\r\n\r\n", 200
	}
	if w, err := strconv.Atoi(os.Getenv("COFFER_TEST_FLOOD_WANT")); err == nil {
		want = w
	}
	denied := 0
	for i := 0; i < n; i++ {
		if _, err := io.WriteString(c, req); err != nil {
			break
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == want {
			denied++
		}
	}
	fmt.Printf("RESULT %d\n", denied)
}

// TestServer_ConnCapsDefaults: with the default caps, the load generators
// of the benchmarks (32 connections from one non-admin uid) are served.
func TestServer_ConnCapsDefaults(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	n := startNode(t, t.TempDir(), func(c *config.Config) { c.Listener.Mode = 0o666 })
	os.Chmod(filepath.Dir(n.cfg.Listener.Path), 0o755)
	h := holdConns(t, copyTestBinary(t), n.cfg.Listener.Path, 65534, 32)
	for i, r := range h.result {
		if r != "200//" {
			t.Fatalf("connection %d of 32 from one uid with the default caps: %s", i, r)
		}
	}
	if len(h.result) != 32 {
		t.Fatalf("%d results", len(h.result))
	}
}
