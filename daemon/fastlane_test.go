package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
)

// rawConn is a test client speaking HTTP/1.1 by hand on the API socket.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, n *testNode) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", n.cfg.Listener.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func rawRequest(method, path, body string, extra ...string) string {
	var b strings.Builder
	b.WriteString(method + " " + path + " HTTP/1.1\r\nHost: coffer\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
	return b.String()
}

// roundTrip sends req and reads one answer.
func (rc *rawConn) roundTrip(req string) *http.Response {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, req); err != nil {
		rc.t.Fatal(err)
	}
	return rc.read()
}

func (rc *rawConn) read() *http.Response {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		rc.t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatal(err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
}

func bodyOf(r *http.Response) string {
	b, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(b))
	return string(b)
}

// errorCode returns the error code of an error answer ("" if none).
func errorCode(body string) string {
	var eb api.ErrorBody
	json.Unmarshal([]byte(body), &eb)
	return eb.Error.Code
}

// TestFastLane_SameAnswers sends each request once as the fast lane serves
// it and once with a header the lane does not take (so net/http serves
// it), and compares the answers: status, error body, headers.
func TestFastLane_SameAnswers(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	var wr api.WrapResult
	n.must("POST", "/v1/keys/app/wrap", api.WrapRequest{Plaintext: []byte("hello")}, &wr, 200)
	big := `{"plaintext":"eA=="}` + strings.Repeat(" ", api.MaxBody)
	for _, c := range []struct {
		what, path, body string
		status           int
		field, code      string
	}{
		{"wrap", "/v1/keys/app/wrap", `{"plaintext":"aGVsbG8="}`, 200, "ciphertext", ""},
		{"wrap batch", "/v1/keys/app/wrap", `{"batch":[{"plaintext":"aGVsbG8="},{"plaintext":"eA=="}]}`, 200, "batch", ""},
		{"unwrap", "/v1/keys/app/unwrap", `{"ciphertext":"` + wr.Ciphertext + `"}`, 200, "plaintext", ""},
		{"rewrap", "/v1/keys/app/rewrap", `{"ciphertext":"` + wr.Ciphertext + `"}`, 200, "ciphertext", ""},
		{"datakey", "/v1/keys/app/datakey", `{"bytes":16}`, 200, "ciphertext", ""},
		{"datakey, empty body", "/v1/keys/app/datakey", ``, 200, "ciphertext", ""},
		{"malformed JSON", "/v1/keys/app/wrap", `{"plaintext":`, 400, "", api.CodeBadRequest},
		{"unknown field", "/v1/keys/app/wrap", `{"plaintext":"eA==","x":1}`, 400, "", api.CodeBadRequest},
		{"unknown key", "/v1/keys/nope/wrap", `{"plaintext":"eA=="}`, 404, "", api.CodeNotFound},
		{"bad ciphertext", "/v1/keys/app/unwrap", `{"ciphertext":"coffer:v1:AAAA"}`, 400, "", api.CodeDecryptFailed},
		{"invalid name", "/v1/keys/-x/wrap", `{"plaintext":"eA=="}`, 400, "", api.CodeBadRequest},
		{"body over the limit", "/v1/keys/app/wrap", big, 413, "", api.CodeTooLarge},
	} {
		var answers [2]*http.Response
		for i, extra := range [][]string{nil, {"X-Not-In-The-Lane: 1"}} {
			rc := dialRaw(t, n)
			answers[i] = rc.roundTrip(rawRequest("POST", c.path, c.body, extra...))
		}
		for i, r := range answers {
			lane := [2]string{"fast lane", "net/http"}[i]
			body := bodyOf(r)
			if r.StatusCode != c.status || errorCode(body) != c.code {
				t.Errorf("%s (%s): %d %s, want %d %q", c.what, lane, r.StatusCode, body, c.status, c.code)
			}
			if c.field != "" && !strings.Contains(body, `"`+c.field+`":`) {
				t.Errorf("%s (%s): answer %s has no %s", c.what, lane, body, c.field)
			}
			if r.Header.Get(api.HeaderRequestID) == "" || r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Date") == "" {
				t.Errorf("%s (%s): headers %v", c.what, lane, r.Header)
			}
			if r.ContentLength != int64(len(body)) {
				t.Errorf("%s (%s): Content-Length %d for %d bytes", c.what, lane, r.ContentLength, len(body))
			}
		}
		if c.code != "" && bodyOf(answers[0]) != bodyOf(answers[1]) {
			t.Errorf("%s: the lanes answer differently:\n%s\n%s", c.what, bodyOf(answers[0]), bodyOf(answers[1]))
		}
		if answers[0].Close != answers[1].Close {
			t.Errorf("%s: the fast lane closes %v, net/http %v", c.what, answers[0].Close, answers[1].Close)
		}
	}
}

// TestFastLane_KeepAliveAndHandoff: one connection carries fast requests,
// then one the lane hands to net/http (with a head split over writes),
// then more, which net/http serves from then on; Connection: close is
// honoured.
func TestFastLane_KeepAliveAndHandoff(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	rc := dialRaw(t, n)
	wrap := rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`)
	for i := 0; i < 3; i++ {
		if r := rc.roundTrip(wrap); r.StatusCode != 200 {
			t.Fatalf("wrap %d: %d", i, r.StatusCode)
		}
	}
	// Two pipelined requests in one write: both answered, in order.
	if _, err := io.WriteString(rc.c, wrap+wrap); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if r := rc.read(); r.StatusCode != 200 {
			t.Fatalf("pipelined wrap %d: %d", i, r.StatusCode)
		}
	}
	// A head in pieces.
	for _, part := range []string{"POST /v1/keys/app/wr", "ap HTTP/1.1\r\nHost: coffer\r\nContent-Le", "ngth: 20\r\n\r\n", `{"plaintext":"eA=="}`} {
		io.WriteString(rc.c, part)
		time.Sleep(20 * time.Millisecond)
	}
	if r := rc.read(); r.StatusCode != 200 {
		t.Fatalf("split wrap: %d", r.StatusCode)
	}
	// Bare LF line ends (net/http takes them; the lane hands them over
	// at once rather than wait for a CRLF blank line).
	if r := rc.roundTrip("POST /v1/keys/app/wrap HTTP/1.1\nHost: coffer\nContent-Length: 20\n\n" + `{"plaintext":"eA=="}`); r.StatusCode != 200 {
		t.Fatalf("wrap with bare LF line ends: %d", r.StatusCode)
	}
	status := "GET /v1/sys/status HTTP/1.1\r\nHost: coffer\r\n\r\n"
	if r := rc.roundTrip(status); r.StatusCode != 200 || !strings.Contains(bodyOf(r), `"initialized":true`) {
		t.Fatalf("status after fast requests: %d %s", r.StatusCode, bodyOf(r))
	}
	if r := rc.roundTrip(wrap); r.StatusCode != 200 {
		t.Fatalf("wrap after the handoff: %d", r.StatusCode)
	}
	// A browser page is refused whatever the lane.
	if r := rc.roundTrip(rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`, "Origin: http://evil.example")); r.StatusCode != 403 {
		t.Fatalf("request with Origin: %d", r.StatusCode)
	}

	rc = dialRaw(t, n)
	r := rc.roundTrip(rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`, "Connection: close"))
	if r.StatusCode != 200 || !r.Close {
		t.Fatalf("Connection: close: %d, close %v", r.StatusCode, r.Close)
	}
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.br.ReadByte(); err != io.EOF {
		t.Fatalf("after Connection: close the connection is still open (%v)", err)
	}
}

// trickle writes s to c every 100 ms (a slowloris client) until the
// returned stop is called or a write fails.
func trickle(c net.Conn, s string) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if _, err := io.WriteString(c, s); err != nil {
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// waitClosed fails unless the server closes c between min and max from
// start (reading and discarding whatever it sends).
func waitClosed(t *testing.T, c net.Conn, start time.Time, min, max time.Duration, what string) {
	t.Helper()
	c.SetReadDeadline(start.Add(max))
	_, err := io.Copy(io.Discard, c)
	d := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the connection is still open after %v", what, d.Round(time.Millisecond))
	}
	if d < min {
		t.Fatalf("%s: the connection was closed after %v, before its limit %v", what, d.Round(time.Millisecond), min)
	}
	t.Logf("%s: closed after %v", what, d.Round(time.Millisecond))
}

// TestFastLane_Limits: the issue-10 time limits hold on the fast lane: a
// head that trickles in (slowloris), a connection that never sends a
// request, an idle keep-alive connection, a trickling body, a caller that
// does not read its answers.
func TestFastLane_Limits(t *testing.T) {
	const (
		header = 700 * time.Millisecond
		read   = 1500 * time.Millisecond
		write  = time.Second
		idle   = 1200 * time.Millisecond
		slack  = 3 * time.Second
		// early: the server's clock starts a limit at accept or after its
		// write, a moment before or after the test's own start.
		early = 50 * time.Millisecond
	)
	n := startNodeOpts(t, t.TempDir(), nil, func(o *Options) {
		o.ReadTimeout, o.headerTimeout, o.writeTimeout, o.idleTimeout = read, header, write, idle
	})
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)

	t.Run("slow head", func(t *testing.T) {
		rc := dialRaw(t, n)
		start := time.Now()
		io.WriteString(rc.c, "POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\n")
		defer trickle(rc.c, "X")()
		waitClosed(t, rc.c, start, header-early, header+slack, "head trickling a byte every 100ms")
	})
	t.Run("no request", func(t *testing.T) {
		start := time.Now()
		rc := dialRaw(t, n)
		waitClosed(t, rc.c, start, header-early, header+slack, "connection without a request")
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		rc := dialRaw(t, n)
		if r := rc.roundTrip(rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`)); r.StatusCode != 200 {
			t.Fatalf("wrap: %d", r.StatusCode)
		}
		// The idle time starts once the answer is written, before the
		// client has read it.
		start := time.Now()
		waitClosed(t, rc.c, start, idle-early, idle+slack, "idle keep-alive connection")
	})
	t.Run("slow body", func(t *testing.T) {
		rc := dialRaw(t, n)
		start := time.Now()
		io.WriteString(rc.c, "POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 1000\r\n\r\n{")
		defer trickle(rc.c, " ")()
		waitClosed(t, rc.c, start, read-early, read+slack, "body trickling a byte every 100ms")
	})
	t.Run("answers not read", func(t *testing.T) {
		rc := dialRaw(t, n)
		rc.c.(*net.UnixConn).SetReadBuffer(4096)
		// Batch answers of ~60 KB each: the socket buffers fill after a
		// few, and the server's write blocks.
		var items []string
		for i := 0; i < 800; i++ {
			items = append(items, `{"plaintext":"eA=="}`)
		}
		req := rawRequest("POST", "/v1/keys/app/wrap", `{"batch":[`+strings.Join(items, ",")+`]}`)
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			rc.c.SetWriteDeadline(start.Add(write + slack))
			for i := 0; i < 200; i++ {
				if _, err := io.WriteString(rc.c, req); err != nil {
					return
				}
			}
		}()
		time.Sleep(write + slack/2)
		<-done
		// The server gave up on the connection: what it had written is
		// there to read, then EOF.
		waitClosed(t, rc.c, start, write, write+2*slack, "caller not reading its answers")
	})
}

// TestFastHead_Accepts: the heads real clients send are in the lane.
func TestFastHead_Accepts(t *testing.T) {
	for _, head := range []string{
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 20\r\n\r\n",
		// Go's net/http client.
		"POST /v1/keys/app/unwrap HTTP/1.1\r\nHost: coffer\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 5\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n",
		// curl --unix-socket.
		"POST /v1/keys/a.b_c-1/datakey HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
		"POST /v1/keys/k/rewrap HTTP/1.1\r\nhost: unix\r\ncontent-length: 0\r\nconnection: Keep-Alive\r\n\r\n",
	} {
		var h fastHead
		if !parseFastHead([]byte(head), &h) {
			t.Errorf("not in the lane: %q", head)
		}
	}
	for _, head := range []string{
		"GET /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.0\r\nHost: coffer\r\nContent-Length: 0\r\n\r\n",
		"POST /v1/keys/app/wrap?x=1 HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\n\r\n",
		"POST /v1/keys/a%70p/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: +1\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\nReferer: x\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\n folded\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\nHost: coffer\nContent-Length: 0\n\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length : 0\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\nConnection: upgrade\r\n\r\n",
		"POST /v1/keys/app/list HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\n\r\n",
		"POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 0\r\n",
	} {
		var h fastHead
		if parseFastHead([]byte(head), &h) {
			t.Errorf("in the lane: %q", head)
		}
	}
}

// FuzzFastHead: whatever the lane accepts, net/http reads as the same
// request (method, path, host, body length, connection close), so the
// lane never serves a request net/http would have refused or read
// otherwise. Seeds: testdata/fuzz/FuzzFastHead.
func FuzzFastHead(f *testing.F) {
	f.Add([]byte("POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 20\r\n\r\n"))
	f.Add([]byte("POST /v1/keys/k/datakey HTTP/1.1\r\nhost: unix\r\ncontent-length: 0\r\nconnection: close\r\nUser-Agent: x\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nContent-Type: application/json\r\n\r\n"))
	f.Add([]byte("POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		var h fastHead
		if !parseFastHead(head, &h) {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("the lane accepts %q, net/http refuses it: %v", head, err)
		}
		if r.Method != http.MethodPost || r.URL.Path != string(h.path) || r.RequestURI != string(h.path) || r.Host != string(h.host) ||
			r.ContentLength != h.contentLength || r.Close != h.close || len(r.TransferEncoding) != 0 || r.URL.RawQuery != "" {
			t.Fatalf("%q: lane %+v, net/http %s %s host %q length %d close %v", head, h, r.Method, r.URL.Path, r.Host, r.ContentLength, r.Close)
		}
		if !cryptoPath(string(h.path)) {
			t.Fatalf("%q: the lane serves %s, not a crypto path", head, h.path)
		}
	})
}

const helperWrapSockEnv = "COFFER_TEST_KEEPALIVE_WRAP_SOCK"

// TestHelperKeepAliveWraps is not a test: run by
// TestFastLane_RevokedGrantNextRequest as another uid, it sends a wrap on
// one connection for each line read from stdin and prints its status,
// always on the same keep-alive connection.
func TestHelperKeepAliveWraps(t *testing.T) {
	sock := os.Getenv(helperWrapSockEnv)
	if sock == "" {
		t.Skip("helper process for TestFastLane_RevokedGrantNextRequest")
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Println("RESULT dial-error")
		return
	}
	defer c.Close()
	br := bufio.NewReader(c)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		io.WriteString(c, rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			fmt.Println("RESULT eof")
			return
		}
		data, _ := io.ReadAll(resp.Body)
		fmt.Printf("RESULT %d/%s\n", resp.StatusCode, errorCode(string(data)))
	}
}

// TestFastLane_RevokedGrantNextRequest: the grant is checked against the
// current policies on every request, also on the fast lane, which keeps
// per-connection state: once a policy is deleted, the very next request
// on the same keep-alive connection is refused; a new grant lets the next
// one through again.
func TestFastLane_RevokedGrantNextRequest(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	n := startNode(t, t.TempDir(), func(c *config.Config) { c.Listener.Mode = 0o666 })
	os.Chmod(filepath.Dir(n.cfg.Listener.Path), 0o755)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	grant := api.Policy{Subjects: api.Subjects{UIDs: []uint32{65534}}, Keys: []string{"app"}, Operations: []string{"wrap"}}
	n.must("PUT", "/v1/policies/p", grant, nil, 200)

	cmd := exec.Command(copyTestBinary(t), "-test.run=^TestHelperKeepAliveWraps$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperWrapSockEnv+"="+n.cfg.Listener.Path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	out := bufio.NewScanner(stdout)
	wrap := func() string {
		t.Helper()
		io.WriteString(stdin, "wrap\n")
		for out.Scan() {
			if r, ok := strings.CutPrefix(out.Text(), "RESULT "); ok {
				return r
			}
		}
		t.Fatal("the helper printed no result")
		return ""
	}
	if got := wrap(); got != "200/" {
		t.Fatalf("granted wrap: %s", got)
	}
	if got := wrap(); got != "200/" {
		t.Fatalf("second granted wrap on the connection: %s", got)
	}
	n.must("DELETE", "/v1/policies/p", nil, nil, 204)
	if got := wrap(); got != "403/"+api.CodePermissionDenied {
		t.Fatalf("wrap right after the grant was deleted, same connection: %s, want 403", got)
	}
	n.must("PUT", "/v1/policies/p", grant, nil, 200)
	if got := wrap(); got != "200/" {
		t.Fatalf("wrap after the grant was restored, same connection: %s", got)
	}
}

// TestLaneReader_Wipes: the lane's read buffer keeps no byte of a served
// request: what was consumed is zeroed, a pipelined request is kept.
func TestLaneReader_Wipes(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	secret := `{"plaintext":"c2VjcmV0IHNlY3JldCBzZWNyZXQ="}`
	first := rawRequest("POST", "/v1/keys/app/wrap", secret)
	second := rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`)
	go io.WriteString(b, first+second)
	lr := newLaneReader(a, 4096)
	if _, err := lr.Peek(len(first) + len(second)); err != nil {
		t.Fatal(err)
	}
	head := len(first) - len(secret)
	lr.Discard(head)
	body := make([]byte, len(secret))
	if _, err := io.ReadFull(lr, body); err != nil || string(body) != secret {
		t.Fatalf("body %q, %v", body, err)
	}
	lr.wipeConsumed()
	if got := string(lr.buf[:lr.w]); got != second {
		t.Fatalf("kept %q, want the pipelined request", got)
	}
	if bytes.Contains(lr.buf, []byte("c2VjcmV0")) || !bytes.Equal(lr.buf[lr.w:], make([]byte, len(lr.buf)-lr.w)) {
		t.Fatal("the served request's bytes are still in the buffer")
	}
	lr.Discard(len(second))
	go io.WriteString(b, "x")
	if _, err := lr.Peek(1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(lr.buf[1:], make([]byte, len(lr.buf)-1)) {
		t.Fatal("refilling an empty buffer left old bytes behind")
	}
	lr.wipe()
	if !bytes.Equal(lr.buf, make([]byte, len(lr.buf))) {
		t.Fatal("wipe left bytes")
	}
}

// TestFastLane_MalformedInput: broken, truncated and hostile inputs get an
// answer or a closed connection (never a hang or a panic), and the node
// serves the next caller.
func TestFastLane_MalformedInput(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	head := "POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\n"
	for _, in := range []string{
		"\x00\x01\x02\xff\r\n\r\n",
		head + strings.Repeat("A", 6000),
		head + "Content-Length: 5000\r\n\r\n{\"plaintext\":",                             // body cut short
		head + "Content-Length: 99999999999999999\r\n\r\n{}",                             // over every limit
		head + "Content-Length: 2\r\n\r\n{}",                                             // empty object
		head + "Content-Length: 20\r\n\r\n" + `{"plaintext":"eA=="}` + "GARBAGE\r\n\r\n", // junk pipelined after
		"POST /v1/keys/app/wrap HTTP/1.1\r\n\r\n",
		head + "Content-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
		head + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pla\r\n0\r\n\r\n",
		"\r\n\r\n\r\n",
	} {
		c, err := net.Dial("unix", n.cfg.Listener.Path)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, in)
		c.(*net.UnixConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("input %.40q: neither answered nor closed within 5s", in)
		}
		c.Close()
	}
	n.must("POST", "/v1/keys/app/wrap", api.WrapRequest{Plaintext: []byte("x")}, nil, 200)
	if strings.Contains(n.logString(), "panic") {
		t.Fatalf("a panic was logged:\n%s", n.logString())
	}
}

// flakyListener fails its first Accept with a temporary error (as accept
// does with EMFILE), then accepts from ln.
type flakyListener struct {
	net.Listener
	calls atomic.Int32
}

type temporaryError struct{}

func (temporaryError) Error() string   { return "accept: too many open files" }
func (temporaryError) Timeout() bool   { return false }
func (temporaryError) Temporary() bool { return true }

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.calls.Add(1) == 1 {
		return nil, temporaryError{}
	}
	return l.Listener.Accept()
}

// TestFastLane_TemporaryAcceptError: a temporary accept error (out of file
// descriptors) makes the lane wait and accept again, as net/http does; it
// must not stop serving the socket.
func TestFastLane_TemporaryAcceptError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	fl := newFastLane(&Server{headerTimeout: time.Second, readTimeout: time.Second, writeTimeout: time.Second, idleTimeout: time.Second}, &flakyListener{Listener: ln})
	done := make(chan struct{})
	go func() { fl.run(); close(done) }()
	defer func() { fl.shutdown(context.Background()); <-done }()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close() // the lane's connection ends at once: nothing to serve
	// Accept number 1 failed, 2 took c, 3 waits for the next: the loop
	// went on.
	deadline := time.Now().Add(5 * time.Second)
	for fl.handoff.ln.(*flakyListener).calls.Load() < 3 {
		select {
		case <-fl.handoff.done:
			t.Fatal("the lane stopped serving after a temporary accept error")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the lane did not accept again after a temporary error")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
