package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The fast lane serves the hot requests of the API socket — single and
// batch POSTs to a key's wrap, unwrap, rewrap and datakey — without
// net/http's per-request machinery, and hands every other connection to
// net/http unchanged.
//
// Why: with the audit entry, the policy check and the AEAD built per
// request, net/http's own work was most of what cofferd cost above the
// bare server it is measured against (issue 15, docs/benchmarks/issue15-wrap.md):
// per request it parses headers into maps, clones the answer's header map,
// starts a goroutine that reads the connection in the background and stops
// it again, and moves three timers (read, write and idle deadlines). The
// lane parses a request head in place, writes an answer with one write(2),
// and bounds a connection's time with a deadline per phase (a clock read
// and an atomic store) checked by a sweeper (below) instead of timers.
//
// What it accepts is deliberately narrow, so that it never decides
// anything net/http would decide differently: an HTTP/1.1 POST whose path
// is /v1/keys/{name}/{wrap|unwrap|rewrap|datakey} and holds only
// unreserved characters, a Content-Length body, and no header but Host,
// Content-Length, Content-Type, User-Agent, Accept, Accept-Encoding and
// Connection (keep-alive or close), each at most once, every line ending in
// CRLF, the head within the lane's read buffer. Anything else — another
// method, path or version, a query, Transfer-Encoding, Expect, Origin or
// Referer (refused by dispatch), an unknown or repeated header, an
// obs-fold, a bare LF, control characters — and the connection, with every
// byte already read, goes to net/http for good (handoffListener), which
// answers it as it always did. The request itself is served by the same
// serveHTTP as net/http's: routing, connection caps, identity, grant,
// body limits, audit (entry written before the answer) are shared.
// FuzzFastHead checks that whatever the lane accepts, net/http reads as
// the same request.
//
// Time limits (issue 10) are those of the http.Server, enforced by the
// sweeper: a connection waiting for its first request or reading a head
// has readHeaderTimeout, an idle keep-alive connection idleTimeout, a
// request from the start of its head until its body is read readTimeout,
// and until its answer is written writeTimeout. The sweeper closes a
// connection past its deadline (every sweepInterval), which ends any read
// or write blocked on it. A deadline never comes early and is enforced at
// most one sweep late.

// sweepInterval is how often the sweeper checks deadlines (and renews the
// Date header): a limit is enforced within it.
const sweepInterval = 100 * time.Millisecond

// maxDiscard is how much of a body the handler did not read is skipped to
// keep the connection (net/http's figure); beyond it, the connection
// closes after the answer.
const maxDiscard = 256 << 10

// fastReadBuf is the lane's read buffer per connection (net/http's too): a
// head that does not fit goes to net/http, which allows up to
// maxHeaderBytes.
const fastReadBuf = 4 << 10

type fastLane struct {
	s       *Server
	ln      net.Listener // the counting listener (limits.go)
	handoff *handoffListener

	// base is the lane's epoch: deadlines are monotonic nanoseconds since
	// it (clock), so that a wall-clock step neither closes connections
	// early nor keeps them late.
	base time.Time
	date atomic.Pointer[[]byte] // "Date: …\r\n" of the current second, advanced by the sweeper

	mu       sync.Mutex
	conns    map[*fastConn]struct{}
	closing  atomic.Bool
	wg       sync.WaitGroup
	stop     chan struct{}
	stopOnce sync.Once

	headerTimeout, readTimeout, writeTimeout, idleTimeout time.Duration
}

func newFastLane(s *Server, ln net.Listener) *fastLane {
	fl := &fastLane{
		s: s, ln: ln, conns: map[*fastConn]struct{}{}, stop: make(chan struct{}),
		headerTimeout: s.headerTimeout, readTimeout: s.readTimeout, writeTimeout: s.writeTimeout, idleTimeout: s.idleTimeout,
	}
	fl.handoff = &handoffListener{ln: ln, ch: make(chan net.Conn), done: make(chan struct{})}
	fl.base = time.Now()
	fl.tick(fl.base)
	return fl
}

// run accepts connections until the listener closes, and sweeps.
func (fl *fastLane) run() {
	go fl.sweep()
	var backoff time.Duration
	for {
		c, err := fl.ln.Accept()
		if err != nil {
			// Out of file descriptors (EMFILE) and the like are temporary:
			// wait and accept again, as net/http does, rather than stop
			// serving.
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			fl.handoff.fail(err)
			return
		}
		backoff = 0
		fc := fl.newConn(c)
		if fc == nil {
			c.Close()
			continue
		}
		go fl.serve(fc)
	}
}

// clock is the lane's time: exact (a deadline never comes early), read a
// few times per request (as cheap as time.Now).
func (fl *fastLane) clock() int64 { return int64(time.Since(fl.base)) }

func (fl *fastLane) tick(t time.Time) {
	d := fl.date.Load()
	if d == nil || string((*d)[6:35]) != t.UTC().Format(http.TimeFormat) {
		b := []byte("Date: " + t.UTC().Format(http.TimeFormat) + "\r\n")
		fl.date.Store(&b)
	}
}

// sweep advances the clock and closes connections past their deadline.
func (fl *fastLane) sweep() {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	var late []*fastConn
	for {
		select {
		case <-fl.stop:
			return
		case now := <-t.C:
			fl.tick(now)
			n := fl.clock()
			late = late[:0]
			fl.mu.Lock()
			for fc := range fl.conns {
				if d := fc.deadline.Load(); d != 0 && n > d {
					late = append(late, fc)
				}
			}
			fl.mu.Unlock()
			for _, fc := range late {
				fc.c.Close()
			}
		}
	}
}

// shutdown stops accepting, closes idle connections at once and waits
// (until ctx ends) for the others to finish their request; then closes
// whatever is left.
func (fl *fastLane) shutdown(ctx context.Context) {
	fl.handoff.Close()
	fl.mu.Lock()
	fl.closing.Store(true)
	for fc := range fl.conns {
		if fc.idle.Load() {
			fc.c.Close()
		}
	}
	fl.mu.Unlock()
	done := make(chan struct{})
	go func() { fl.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		// As http.Server.Shutdown: what is still running is cut off,
		// not waited for.
		fl.mu.Lock()
		for fc := range fl.conns {
			fc.c.Close()
		}
		fl.mu.Unlock()
	}
	fl.stopOnce.Do(func() { close(fl.stop) })
}

// fastConn is one connection served by the lane.
type fastConn struct {
	fl  *fastLane
	c   net.Conn
	cs  *connState
	br  *laneReader
	req http.Request
	url url.URL
	w   fastWriter
	// body reads the request body from br: Content-Length bytes.
	body fastBody
	// deadline (fastLane.clock, 0: none) is checked by the sweeper.
	deadline atomic.Int64
	start    int64 // fastLane.clock at accept
	idle     atomic.Bool
	cancel   context.CancelFunc
}

func (fl *fastLane) newConn(c net.Conn) *fastConn {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.closing.Load() {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	ctx = connContext(ctx, c)
	fc := &fastConn{fl: fl, c: c, cs: ctx.Value(connKey).(*connState), br: newLaneReader(c, fastReadBuf), cancel: cancel}
	fc.req = http.Request{Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
	fc.req = *fc.req.WithContext(ctx)
	fc.req.URL = &fc.url
	fc.body.fc = fc
	fc.w.fc = fc
	fc.w.header = http.Header{}
	// A new connection must send its first head within the header timeout,
	// as with net/http.
	fc.start = fl.clock()
	fc.deadline.Store(fc.start + int64(fl.headerTimeout))
	fl.conns[fc] = struct{}{}
	fl.wg.Add(1)
	return fc
}

func (fl *fastLane) serve(fc *fastConn) {
	handedOff := false
	defer func() {
		// As net/http: a handler's panic ends its connection, not the
		// daemon. The stack is logged, not the panic's value (it could
		// quote a request).
		if v := recover(); v != nil {
			// What the handler had written (plaintext, for an unwrap)
			// is zeroed: flush, which does it otherwise, will not run.
			fc.w.discard()
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				fl.s.log.Error("panic serving a request: closing its connection", "stack", string(buf))
			}
		}
		fl.mu.Lock()
		delete(fl.conns, fc)
		fl.mu.Unlock()
		if !handedOff {
			fc.c.Close()
			fc.cancel()
			fc.br.wipe()
		}
		fl.wg.Done()
	}()
	// The first head counts from the connection's start, as with
	// net/http: the wait for its first byte is not free time.
	t0, first := fc.start, true
	for {
		if fc.br.Buffered() == 0 {
			if !first {
				fc.deadline.Store(fl.clock() + int64(fl.idleTimeout))
			}
			fc.idle.Store(true)
			if fl.closing.Load() {
				return
			}
			if _, err := fc.br.Peek(1); err != nil {
				return
			}
			fc.idle.Store(false)
		}
		if !first {
			t0 = fl.clock()
			fc.deadline.Store(t0 + int64(fl.headerTimeout))
		}
		first = false
		head, err := fc.readHead()
		if err != nil {
			return
		}
		var h fastHead
		if !parseFastHead(head, &h) {
			// Out of the sweeper's sight first: net/http's deadlines
			// govern the connection from now on.
			fl.mu.Lock()
			delete(fl.conns, fc)
			fl.mu.Unlock()
			// The head's deadline goes with it: net/http starts its
			// own header timeout, so a head trickled to the lane up to
			// its limit would otherwise get the limit again there.
			rp := &replayConn{Conn: fc.c, r: fc.br, cs: fc.cs, cancel: fc.cancel,
				headDeadline: fl.base.Add(time.Duration(fc.deadline.Load())),
				reqDeadline:  fl.base.Add(time.Duration(t0 + int64(fl.readTimeout)))}
			rp.Conn.SetReadDeadline(rp.headDeadline)
			handedOff = fl.handoff.give(rp)
			return
		}
		fc.br.Discard(len(head))
		// The body is read under the read timeout, the answer written
		// under the write timeout, both from the start of the head.
		fc.deadline.Store(t0 + int64(fl.readTimeout))
		fc.body.n = h.contentLength
		fc.body.writeDeadline = t0 + int64(fl.writeTimeout)
		if h.contentLength == 0 {
			fc.deadline.Store(fc.body.writeDeadline)
		}
		// A connection sends the same path and host again and again:
		// keep the strings rather than allocate them per request.
		if string(h.path) != fc.url.Path {
			fc.url.Path = string(h.path)
		}
		if string(h.host) != fc.req.Host {
			fc.req.Host = string(h.host)
		}
		r := &fc.req
		r.Method, r.RequestURI, r.ContentLength, r.Close = http.MethodPost, fc.url.Path, h.contentLength, h.close
		r.Body = &fc.body
		fc.w.reset()
		fl.s.serveHTTP(&fc.w, r)
		closeAfter := h.close || fc.w.wantsClose()
		if fc.body.n > 0 {
			if fc.body.n > maxDiscard {
				closeAfter = true
			} else {
				fc.deadline.Store(t0 + int64(fl.readTimeout))
				if _, err := fc.br.Discard(int(fc.body.n)); err != nil {
					closeAfter = true
				}
				fc.body.n = 0
			}
		}
		fc.br.wipeConsumed()
		fc.deadline.Store(fc.body.writeDeadline)
		if err := fc.w.flush(closeAfter); err != nil || closeAfter {
			return
		}
	}
}

// readHead returns the request head (through the blank line) at the start
// of br without consuming it. A head that does not fit br comes back
// as is, unterminated: parseFastHead refuses it and net/http reads it.
// A blank line of a bare LF ends a head too (net/http accepts them): the
// head is then refused, not waited on.
func (fc *fastConn) readHead() ([]byte, error) {
	for {
		b, _ := fc.br.Peek(fc.br.Buffered())
		if i := headEnd(b); i >= 0 {
			return b[:i], nil
		}
		if len(b) >= fc.br.Size() {
			return b, nil
		}
		if _, err := fc.br.Peek(len(b) + 1); err != nil {
			return nil, err
		}
	}
}

// headEnd returns the length of the head at the start of b, through its
// first blank line ("\n\n" or "\n\r\n"), or -1.
func headEnd(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return -1
}

// fastBody is a request's body: the next n bytes of the connection.
type fastBody struct {
	fc            *fastConn
	n             int64
	writeDeadline int64
}

func (b *fastBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.fc.br.Read(p)
	b.n -= int64(n)
	if b.n == 0 {
		// Read: from now on the write deadline bounds the request.
		b.fc.deadline.Store(b.writeDeadline)
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *fastBody) Close() error { return nil }

// fastWriter collects an answer and writes it, head and body, in one
// write(2) once the handler is done.
type fastWriter struct {
	fc     *fastConn
	header http.Header
	status int
	body   *[]byte // from answerPool; zeroed before it goes back
	head   []byte
}

// answerPool recycles answer bodies. They may hold plaintext (unwrap,
// datakey), so they are zeroed before they go back.
var answerPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

const maxPooledAnswer = 64 << 10

func (w *fastWriter) reset() {
	clear(w.header)
	w.status = 0
}

func (w *fastWriter) Header() http.Header { return w.header }

func (w *fastWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.body == nil {
		w.body = answerPool.Get().(*[]byte)
	}
	*w.body = append(*w.body, p...)
	return len(p), nil
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

func (w *fastWriter) wantsClose() bool {
	for _, v := range w.header["Connection"] {
		if asciiEqualFold(v, "close") {
			return true
		}
	}
	return false
}

// flush writes the answer: status line, the handler's headers, Content-
// Length, Date, Connection: close if the connection ends, then the body.
func (w *fastWriter) flush(closeAfter bool) error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var body []byte
	if w.body != nil {
		body = *w.body
	}
	h := append(w.head[:0], "HTTP/1.1 "...)
	h = strconv.AppendInt(h, int64(w.status), 10)
	h = append(h, ' ')
	h = append(h, http.StatusText(w.status)...)
	h = append(h, "\r\n"...)
	for k, vs := range w.header {
		switch k {
		case "Content-Length", "Connection", "Date", "Transfer-Encoding":
			continue // the lane's own
		}
		for _, v := range vs {
			h = append(h, k...)
			h = append(h, ": "...)
			h = appendHeaderValue(h, v)
			h = append(h, "\r\n"...)
		}
	}
	if bodyAllowed(w.status) {
		h = append(h, "Content-Length: "...)
		h = strconv.AppendInt(h, int64(len(body)), 10)
		h = append(h, "\r\n"...)
	}
	h = append(h, *w.fc.fl.date.Load()...)
	if closeAfter {
		h = append(h, "Connection: close\r\n"...)
	}
	h = append(h, "\r\n"...)
	var err error
	if len(h)+len(body) <= cap(h) || len(body) <= 2048 {
		h = append(h, body...)
		_, err = w.fc.c.Write(h)
		clear(h[len(h)-len(body):])
	} else {
		bufs := net.Buffers{h, body}
		_, err = bufs.WriteTo(w.fc.c)
	}
	if cap(h) <= 8<<10 {
		w.head = h[:0]
	} else {
		w.head = nil
	}
	if w.body != nil {
		clear(body)
		if cap(body) <= maxPooledAnswer {
			*w.body = body[:0]
			answerPool.Put(w.body)
		}
		w.body = nil
	}
	return err
}

// discard zeroes an answer that will not be written and gives its buffer
// back.
func (w *fastWriter) discard() {
	if w.body == nil {
		return
	}
	body := *w.body
	clear(body)
	if cap(body) <= maxPooledAnswer {
		*w.body = body[:0]
		answerPool.Put(w.body)
	}
	w.body = nil
}

// laneAnswer reports whether w (a handler's writer) answers on the fast
// lane, which sets Content-Length itself.
func laneAnswer(w http.ResponseWriter) bool {
	aw, ok := w.(*auditWriter)
	if !ok {
		return false
	}
	_, ok = aw.ResponseWriter.(*fastWriter)
	return ok
}

// appendHeaderValue appends v with CR and LF replaced by spaces, as
// net/http writes header values (no answer splitting whatever a handler
// sets).
func appendHeaderValue(b []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// fastHead is what the lane reads from a request head (path and host are
// slices of the head).
type fastHead struct {
	path          []byte
	host          []byte
	contentLength int64
	close         bool
}

// parseFastHead parses a request head (through its blank line) of the
// narrow form the lane serves (see the top of this file); false means
// net/http must read it.
func parseFastHead(head []byte, h *fastHead) bool {
	*h = fastHead{contentLength: -1}
	if !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		return false
	}
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	p, ok := bytes.CutPrefix(line, []byte("POST "))
	if !ok {
		return false
	}
	p, ok = bytes.CutSuffix(p, []byte(" HTTP/1.1"))
	if !ok || !fastPath(p) {
		return false
	}
	var seen uint8
	for {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 {
			return false
		}
		value = bytes.Trim(value, " \t")
		for _, c := range value {
			if c < 0x20 && c != '\t' || c == 0x7f {
				return false
			}
		}
		var bit uint8
		switch {
		case asciiEqualFoldBytes(name, "host"):
			bit = 1
			if len(value) == 0 || !validHost(value) {
				return false
			}
			h.host = value
		case asciiEqualFoldBytes(name, "content-length"):
			bit = 2
			if len(value) == 0 || len(value) > 18 {
				return false
			}
			var n int64
			for _, c := range value {
				if c < '0' || c > '9' {
					return false
				}
				n = n*10 + int64(c-'0')
			}
			h.contentLength = n
		case asciiEqualFoldBytes(name, "connection"):
			bit = 4
			switch {
			case asciiEqualFoldBytes(value, "close"):
				h.close = true
			case asciiEqualFoldBytes(value, "keep-alive"):
			default:
				return false
			}
		case asciiEqualFoldBytes(name, "content-type"):
			bit = 8
		case asciiEqualFoldBytes(name, "user-agent"):
			bit = 16
		case asciiEqualFoldBytes(name, "accept"):
			bit = 32
		case asciiEqualFoldBytes(name, "accept-encoding"):
			bit = 64
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	if len(rest) != 0 || seen&3 != 3 {
		return false // something after the blank line, or no Host or Content-Length
	}
	h.path = p
	return true
}

// fastPath reports whether p is /v1/keys/{name}/{op} for one of the lane's
// operations, with a name of the characters api.ValidName allows.
func fastPath(p []byte) bool {
	rest, ok := bytes.CutPrefix(p, []byte("/v1/keys/"))
	if !ok {
		return false
	}
	i := bytes.IndexByte(rest, '/')
	if i <= 0 {
		return false
	}
	for _, c := range rest[:i] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	switch string(rest[i+1:]) {
	case "wrap", "unwrap", "rewrap", "datakey":
		return true
	}
	return false
}

// validHost accepts the host names clients put on a unix socket request
// (letters, digits, . - _ and a port): anything else goes to net/http.
func validHost(v []byte) bool {
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == ':') {
			return false
		}
	}
	return true
}

func asciiEqualFoldBytes(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func asciiEqualFold(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// replayConn is a connection handed to net/http: what the lane read and
// did not consume is read again first.
type replayConn struct {
	net.Conn
	r      *laneReader // nil once drained (and wiped)
	cs     *connState
	cancel context.CancelFunc
	// headDeadline is the lane's deadline for the head it hands over:
	// until that head has been read (headDone), no read deadline net/http
	// sets goes past it. reqDeadline bounds the request's body the same
	// way: net/http sets its read timeout once it has read a head (the
	// first deadline set after it, reqDone), counting from then, not from
	// the head's start on the lane. mu: net/http sets deadlines from other
	// goroutines than its reads.
	mu           sync.Mutex
	headDeadline time.Time
	reqDeadline  time.Time
	headDone     bool
	scanned      atomic.Bool // headDone, read without mu
	reqDone      bool
	lf           bool // the last byte read was LF
	cr           bool // ... and the bytes since it a single CR
}

func (c *replayConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.r != nil {
		if c.r.Buffered() > 0 {
			n, err = c.r.Read(p)
			// Drained: zeroed now, as net/http may never read again
			// (it reads 4 KiB at once, the whole buffer).
			if c.r.Buffered() == 0 {
				c.r.wipe()
				c.r = nil
			}
			c.scanHead(p[:n])
			return n, err
		}
		c.r.wipe()
		c.r = nil
	}
	n, err = c.Conn.Read(p)
	c.scanHead(p[:n])
	return n, err
}

// scanHead follows the first head through its blank line (LF LF or LF CR
// LF, the line ends net/http reads), after which the head deadline no
// longer applies.
func (c *replayConn) scanHead(b []byte) {
	if c.scanned.Load() {
		return // every read after the first head: no lock
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.headDone {
		return
	}
	for _, x := range b {
		switch {
		case x == '\n' && c.lf:
			c.headDone = true
			c.scanned.Store(true)
			return
		case x == '\n':
			c.lf, c.cr = true, false
		case x == '\r' && c.lf && !c.cr:
			c.cr = true
		default:
			c.lf, c.cr = false, false
		}
	}
}

// SetReadDeadline keeps net/http's deadlines within the head's until the
// head handed over has been read, and its request's within the read
// timeout from the head's start.
func (c *replayConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	switch {
	case !c.headDone:
		if t.IsZero() || t.After(c.headDeadline) {
			t = c.headDeadline
		}
	case !c.reqDone && !t.IsZero():
		c.reqDone = true
		if t.After(c.reqDeadline) {
			t = c.reqDeadline
		}
	}
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *replayConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *replayConn) Close() error {
	c.cancel()
	return c.Conn.Close()
}

// handoffListener is the listener net/http serves: the connections the
// lane gives up.
type handoffListener struct {
	ln   net.Listener
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	mu   sync.Mutex
	err  error
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// give hands c to net/http; false if the listener is closed (the caller
// closes c).
func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

// fail ends Accept with err (the real listener failed).
func (l *handoffListener) fail(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
	l.once.Do(func() { close(l.done) })
}

// Close closes the real listener too, which ends the lane's accept loop.
func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.ln.Close()
}

func (l *handoffListener) Addr() net.Addr { return l.ln.Addr() }
