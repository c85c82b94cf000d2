package daemon

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/coffer-kms/coffer/api"
)

// TestFastLane_HandoffKeepsHeadDeadline: a head that outgrows the lane's
// 4 KiB buffer is handed to net/http, which used to start its own header
// timeout then: a caller trickling a large head just under the limit to
// the lane got the limit a second time from net/http (slowloris at twice
// the header timeout). The head's deadline now carries over the handoff.
func TestFastLane_HandoffKeepsHeadDeadline(t *testing.T) {
	const header = 2 * time.Second
	n := startNodeOpts(t, t.TempDir(), nil, func(o *Options) { o.headerTimeout = header })
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)

	rc := dialRaw(t, n)
	start := time.Now()
	// Most of the lane's buffer at once, the rest just before the head
	// deadline: the lane hands the head over at 1.8 s.
	first := "GET /v1/sys/status HTTP/1.1\r\nHost: coffer\r\nX-Pad: " + strings.Repeat("a", 4000)
	io.WriteString(rc.c, first)
	time.Sleep(header * 9 / 10)
	io.WriteString(rc.c, strings.Repeat("b", 200))
	defer trickle(rc.c, "c")()
	// net/http's fresh timeout would end it at 3.8 s.
	waitClosed(t, rc.c, start, header-50*time.Millisecond, header+time.Second, "large head trickled across the handoff")
}

// TestReplayConn_WipesOnceDrained: the bytes the lane read before a
// handoff (here an unseal share in a request net/http serves) are zeroed
// as soon as net/http has read them, not only at its next read: net/http
// reads them in one go, and a connection it closes then (an error answer,
// Connection: close) never reads again, so they stayed in the lane's
// buffer.
func TestReplayConn_WipesOnceDrained(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	req := rawRequest("POST", "/v1/sys/unseal", `{"share":"c2VjcmV0IHNoYXJlIHNlY3JldCBzaGFyZQ=="}`, "Connection: close")
	go io.WriteString(b, req)
	lr := newLaneReader(a, fastReadBuf)
	if _, err := lr.Peek(len(req)); err != nil {
		t.Fatal(err)
	}
	rc := &replayConn{Conn: a, r: lr, cancel: func() {}, headDone: true}
	p := make([]byte, 4096) // net/http's read buffer
	n, err := rc.Read(p)
	if err != nil || string(p[:n]) != req {
		t.Fatalf("read %q, %v", p[:n], err)
	}
	if !bytes.Equal(lr.buf, make([]byte, len(lr.buf))) {
		t.Fatal("the handed-over request is still in the lane's buffer after net/http read it")
	}
}

// laneFrames follows a byte stream as the lane's serve loop does: a head
// within the read buffer that parseFastHead accepts, then Content-Length
// bytes of body, again and again; it stops where the lane would hand the
// rest to net/http (or close: Connection: close, or the stream ends
// inside a body). It returns the heads served and where the lane stopped.
func laneFrames(stream []byte) (heads []fastHead, off int) {
	for off < len(stream) {
		window := stream[off:min(len(stream), off+fastReadBuf)]
		end := headEnd(window)
		if end < 0 {
			return heads, off
		}
		var h fastHead
		if !parseFastHead(window[:end], &h) {
			return heads, off
		}
		if int64(len(stream)-off-end) < h.contentLength {
			return heads, off
		}
		// The head is copied: h's slices point into the stream.
		h.path, h.host = bytes.Clone(h.path), bytes.Clone(h.host)
		heads = append(heads, h)
		off += end + int(h.contentLength)
		if h.close {
			return heads, off
		}
	}
	return heads, off
}

// FuzzFastStream: on a pipelined stream, every request the lane serves is
// the request net/http reads at the same place (method, path, host,
// length, close), the bodies end where net/http's end, and the lane hands
// over exactly where net/http's next request starts — no request is read
// differently by the two, and none is hidden in another's body (request
// smuggling between the lane and net/http). Seeds:
// testdata/fuzz/FuzzFastStream.
func FuzzFastStream(f *testing.F) {
	w := "POST /v1/keys/app/wrap HTTP/1.1\r\nHost: coffer\r\nContent-Length: 20\r\n\r\n" + `{"plaintext":"eA=="}`
	f.Add([]byte(w + w))
	f.Add([]byte(w + "GET /v1/sys/status HTTP/1.1\r\nHost: coffer\r\n\r\n" + w))
	f.Add([]byte("POST /v1/keys/a/unwrap HTTP/1.1\r\nHost: x\r\nContent-Length: 0005\r\n\r\nabcdePOST /v1/keys/a/wrap HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" + w))
	f.Add([]byte("POST /v1/keys/a/wrap HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n\r\n\r\nPOST /v1/keys/a/wrap HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("POST /v1/keys/a/wrap HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nPOST /v1/keys/a/wrap HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		heads, off := laneFrames(stream)
		if len(heads) == 0 {
			return
		}
		src := bytes.NewReader(stream)
		br := bufio.NewReader(src)
		for i, h := range heads {
			r, err := http.ReadRequest(br)
			if err != nil {
				t.Fatalf("%q: the lane serves request %d, net/http refuses it: %v", stream, i, err)
			}
			if r.Method != http.MethodPost || r.URL.Path != string(h.path) || r.Host != string(h.host) ||
				r.ContentLength != h.contentLength || r.Close != h.close || len(r.TransferEncoding) != 0 || r.URL.RawQuery != "" {
				t.Fatalf("%q: request %d: lane %+v, net/http %s %s host %q length %d close %v", stream, i, h, r.Method, r.URL.Path, r.Host, r.ContentLength, r.Close)
			}
			if n, err := io.Copy(io.Discard, r.Body); err != nil || n != h.contentLength {
				t.Fatalf("%q: request %d: net/http reads a body of %d bytes (%v), the lane %d", stream, i, n, err, h.contentLength)
			}
		}
		if used := len(stream) - src.Len() - br.Buffered(); used != off {
			t.Fatalf("%q: the lane stops at byte %d, net/http's next request starts at %d", stream, off, used)
		}
	})
}

// TestFastLane_ConnCountsReleased: every way a connection ends, on either
// lane (closed by the caller, by Connection: close, by a time limit of the
// lane's sweeper or of net/http after a handoff, by an answer to a
// malformed request), gives its count back to the per-uid and total caps:
// a leak would end with every caller refused at accept.
func TestFastLane_ConnCountsReleased(t *testing.T) {
	n := startNodeOpts(t, t.TempDir(), nil, func(o *Options) {
		o.ReadTimeout, o.headerTimeout, o.writeTimeout, o.idleTimeout = 700*time.Millisecond, 400*time.Millisecond, time.Second, 500*time.Millisecond
	})
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	wrap := rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`)
	status := "GET /v1/sys/status HTTP/1.1\r\nHost: coffer\r\n\r\n"
	for _, in := range []string{
		wrap,               // lane, closed by the caller
		status,             // handed off, closed by the caller
		wrap + status,      // both
		"",                 // no request: the lane's header timeout
		wrap[:30],          // a head cut short: the lane's header timeout
		wrap[:len(wrap)-5], // a body cut short: the lane's read timeout
		status[:20] + "X: " + strings.Repeat("a", 5000), // handed off unfinished: net/http's limit
		rawRequest("POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`, "Connection: close"),
		"GET / HTTP/1.1\r\nHost: coffer\r\nBad Header\r\n\r\n", // net/http answers 400 and closes
	} {
		for _, keep := range []bool{false, true} {
			c, err := net.Dial("unix", n.cfg.Listener.Path)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, in)
			if keep {
				// The server ends it (idle or other limit, or close).
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			c.Close()
		}
	}
	waitFor(t, "every connection's count released", 5*time.Second, func() bool {
		n.srv.limiter.mu.Lock()
		defer n.srv.limiter.mu.Unlock()
		return n.srv.limiter.total == 0 && len(n.srv.limiter.perUID) == 0
	})
}

// TestReadBody_OutgrownBufferZeroed: a hot request's body sent without a
// Content-Length (chunked, served by net/http) grows its buffer as it is
// read; each outgrown buffer held the start of the body (a wrap's
// plaintext) and was left to the garbage collector unzeroed.
func TestReadBody_OutgrownBufferZeroed(t *testing.T) {
	secret := bytes.Repeat([]byte("c2VjcmV0"), 2000) // 16,000 bytes: outgrows the pooled 4 KiB
	g := &growWatcher{data: secret}
	r := httptest.NewRequest("POST", "/v1/keys/app/wrap", g)
	r.ContentLength = -1
	rc := &reqCtx{w: httptest.NewRecorder(), r: r, bodyLimit: api.MaxBody}
	body, release, err := readBody(rc)
	if err != nil || !bytes.Equal(body, secret) {
		t.Fatalf("body %d bytes, %v", len(body), err)
	}
	defer release()
	start := uintptr(unsafe.Pointer(unsafe.SliceData(body)))
	end := start + uintptr(cap(body))
	outgrown := 0
	for _, w := range g.written {
		if a := uintptr(unsafe.Pointer(unsafe.SliceData(w))); a >= start && a < end {
			continue // in the buffer still in use
		}
		outgrown++
		if !bytes.Equal(w, make([]byte, len(w))) {
			t.Fatalf("%d bytes of the body are still in an outgrown buffer", len(w))
		}
	}
	if outgrown == 0 {
		t.Fatal("the body never outgrew its buffer: the test checks nothing")
	}
}

// growWatcher is a body that remembers where it was read into.
type growWatcher struct {
	data    []byte
	written [][]byte
}

func (g *growWatcher) Read(p []byte) (int, error) {
	if len(g.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.data[:min(len(g.data), 1000)])
	g.data = g.data[n:]
	g.written = append(g.written, p[:n:n])
	return n, nil
}

// TestFastLane_PanicZeroesAnswer: a handler that panics after writing
// (a bug, not an input: no route does) ends its connection; the answer it
// had written into the lane's buffer — plaintext, for an unwrap — was
// left unzeroed then.
func TestFastLane_PanicZeroesAnswer(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	writtenc := make(chan []byte, 1)
	orig := keyActionRoutes["unwrap"]["POST"]
	t.Cleanup(func() { keyActionRoutes["unwrap"]["POST"] = orig })
	rt := orig
	rt.handler = func(s *Server, rc *reqCtx) error {
		writeRaw(rc.w, 200, []byte(`{"plaintext":"c2VjcmV0IHBsYWludGV4dA=="}`))
		fw, ok := rc.aw.ResponseWriter.(*fastWriter)
		if !ok || fw.body == nil {
			t.Error("not answered on the fast lane")
			return nil
		}
		writtenc <- *fw.body
		panic("handler bug")
	}
	keyActionRoutes["unwrap"]["POST"] = rt
	c, err := net.Dial("unix", n.cfg.Listener.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, rawRequest("POST", "/v1/keys/app/unwrap", `{"ciphertext":"coffer:v1:AAAA"}`))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("answered %q after the handler panicked", b)
	}
	var written []byte
	select {
	case written = <-writtenc:
	default:
		t.Fatal("the handler did not run")
	}
	// The lane's goroutine is done with the connection (and, under its
	// lock, with the buffer).
	fl := n.srv.fast
	waitFor(t, "the lane let the connection go", 5*time.Second, func() bool {
		fl.mu.Lock()
		defer fl.mu.Unlock()
		return len(fl.conns) == 0
	})
	if bytes.Contains(written[:cap(written)], []byte("c2VjcmV0")) {
		t.Fatal("the answer written before the panic is still in the lane's buffer")
	}
}

// TestFastLane_HandoffKeepsRequestDeadline: the read timeout bounds a
// request from the start of its head. A head the lane read slowly (just
// under the header timeout) and handed over got net/http's whole read
// timeout again for its body.
func TestFastLane_HandoffKeepsRequestDeadline(t *testing.T) {
	const header, read = 2 * time.Second, 3 * time.Second
	n := startNodeOpts(t, t.TempDir(), nil, func(o *Options) { o.headerTimeout, o.ReadTimeout = header, read })
	n.init(1, 1)
	rc := dialRaw(t, n)
	start := time.Now()
	// Not for the lane (an unknown header); complete at 1.8 s.
	io.WriteString(rc.c, "POST /v1/keys HTTP/1.1\r\nHost: coffer\r\nX-Not-In-The-Lane: 1\r\n")
	time.Sleep(header * 9 / 10)
	io.WriteString(rc.c, "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
	defer trickle(rc.c, " ")()
	// net/http's own read timeout would end it at 4.8 s.
	waitClosed(t, rc.c, start, read-50*time.Millisecond, read+900*time.Millisecond, "body trickled after a slow head handed over")
}
