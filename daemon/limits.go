package daemon

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
)

// This file bounds what one local caller can make the daemon hold: how many
// connections (per uid and in total), for how long (timeouts), and how many
// bytes a request may make it buffer before the caller is known to be
// allowed (api.MaxOpenBody; api.MaxBody only after the grant check).
//
// The costs are paid once per connection, not per request: the uid comes
// from one SO_PEERCRED getsockopt at accept, the counts are a map update
// under a mutex at accept and at close. A request reads one bool.
//
// Memory bound under a flood of requests from callers without a grant (see
// docs/threat-model.md, "Local denial of service"): each connection holds a
// goroutine (a few KiB of stack), net/http's 4 KiB read and 4 KiB write
// buffers, at most maxHeaderBytes of headers plus net/http's 4 KiB slack,
// and at most api.MaxOpenBody of body that the JSON decoder buffers: under
// 64 KiB each. The listener holds at most max_conns + adminReserve
// connections, so with the defaults (4096) that is at most about 260 MiB in
// the worst case of every allowed connection mid-request, and one uid (256
// connections) can make the daemon hold at most about 16 MiB.

// Server timeouts (the http.Server's). readTimeout bounds reading one
// request, headers and body: a body that trickles in is cut off there. The
// write timeout bounds a request from its headers to the end of its answer,
// so a caller that stops reading answers cannot pin a goroutine forever;
// the snapshot endpoints, which may move a gigabyte, extend both for
// themselves (snapshotTimeout).
const (
	defaultReadTimeout = 30 * time.Second
	readHeaderTimeout  = 10 * time.Second
	writeTimeout       = 2 * time.Minute
	idleTimeout        = 5 * time.Minute
	snapshotTimeout    = 30 * time.Minute
	// maxHeaderBytes: real clients send a few hundred bytes of headers.
	maxHeaderBytes = 8 << 10
	// adminReserve connections beyond max_conns are accepted so that an
	// administrator can still reach a node that others have filled; the
	// non-admins among them are answered 429 at their first request.
	// Beyond it, connections are closed at accept without an answer.
	adminReserve = 64
	// retryAfter is the Retry-After of a 429, in seconds.
	retryAfter = "1"
)

// connLimiter counts open connections per uid and in total.
type connLimiter struct {
	maxPerUID, maxTotal int

	mu     sync.Mutex
	perUID map[uint32]int
	total  int

	// knownAdmin reports whether a uid is an admin by its uid alone (uid 0
	// and admin.uids), which is all that is known at accept.
	knownAdmin func(uid uint32) bool

	refusedAtAccept atomic.Uint64
	log             hclog.Logger
	lastWarn        atomic.Int64 // unix seconds of the last "connection cap" warning
}

func newConnLimiter(maxPerUID, maxTotal int, log hclog.Logger, knownAdmin func(uid uint32) bool) *connLimiter {
	// The caps only bound anything below the file descriptor limit (Go
	// raises the soft limit to the hard one at start): past it, accept
	// fails for everyone, admins included.
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < uint64(maxTotal+adminReserve+fdHeadroom) {
		log.Warn("listener max_conns is above what the file descriptor limit allows: lower max_conns or raise LimitNOFILE=",
			"max-conns", maxTotal, "fd-limit", rl.Cur, "needed", maxTotal+adminReserve+fdHeadroom)
	}
	return &connLimiter{maxPerUID: maxPerUID, maxTotal: maxTotal, perUID: map[uint32]int{}, log: log, knownAdmin: knownAdmin}
}

// fdHeadroom is what cofferd needs besides API connections: raft peers and
// its log and snapshot files, the audit log, the device, the telemetry
// listener.
const fdHeadroom = 256

// acquire counts a new connection of uid. over says the connection is
// beyond a cap (answer 429 unless the caller is an admin); drop says it is
// beyond even the admin reserve and must be closed at once (then it is not
// counted).
//
// A connection beyond max_conns_per_uid is kept until its first request
// only because its caller may be an admin by group, which accept cannot
// tell. Without a bound on those, a uid that opens connections and never
// sends a request held max_conns plus the whole reserve, and the node then
// closed everyone's new connections, root's too. So one uid keeps at most
// max_conns_per_uid plus the reserve, and the uids known to be admins at
// accept (0 and admin.uids) are never closed here.
func (l *connLimiter) acquire(uid uint32) (over, drop bool) {
	admin := l.knownAdmin != nil && l.knownAdmin(uid)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !admin && (l.total >= l.maxTotal+adminReserve || l.perUID[uid] >= l.maxPerUID+adminReserve) {
		return true, true
	}
	l.total++
	l.perUID[uid]++
	return l.total > l.maxTotal || l.perUID[uid] > l.maxPerUID, false
}

func (l *connLimiter) release(uid uint32) {
	l.mu.Lock()
	l.total--
	if n := l.perUID[uid] - 1; n > 0 {
		l.perUID[uid] = n
	} else {
		delete(l.perUID, uid)
	}
	l.mu.Unlock()
}

// warn logs that a cap was hit, at most once a second: a flood must not
// turn into a flood of log lines.
func (l *connLimiter) warn(msg string, kv ...any) {
	now := time.Now().Unix()
	if last := l.lastWarn.Load(); last == now || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	l.log.Warn(msg, kv...)
}

// limitListener counts each accepted unix connection against the caps.
type limitListener struct {
	net.Listener
	lim *connLimiter
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return c, nil // not a unix socket: no identity, open endpoints only
		}
		uid, err := auth.PeerUID(uc)
		if err != nil {
			c.Close() // the peer is gone
			continue
		}
		over, drop := ll.lim.acquire(uid)
		if drop {
			ll.lim.refusedAtAccept.Add(1)
			ll.lim.warn("connection refused: the node holds max_conns plus its admin reserve of connections", "uid", uid, "max-conns", ll.lim.maxTotal)
			c.Close()
			continue
		}
		return &limitedConn{UnixConn: uc, lim: ll.lim, uid: uid, over: over}, nil
	}
}

// limitedConn is a counted connection; Close releases its count once.
type limitedConn struct {
	*net.UnixConn
	lim       *connLimiter
	uid       uint32
	over      bool
	closeOnce sync.Once
}

func (c *limitedConn) Close() error {
	err := c.UnixConn.Close()
	c.closeOnce.Do(func() { c.lim.release(c.uid) })
	return err
}

// connState is what the server knows about one connection. The caller's
// identity is read at its first request, in the connection's own goroutine,
// not in the accept loop (identity reads /proc and may ask the user
// database, which can be slow: a slow name service must not stall every
// new connection).
type connState struct {
	conn   *net.UnixConn // nil: not a unix socket
	over   bool          // beyond a connection cap (limitedConn.over)
	uid    uint32
	once   sync.Once
	caller *auth.Caller
	// audit is caller as audit entries record it: built once for all the
	// connection's requests (the audit writer does not modify it).
	audit *audit.Caller
}

func (cs *connState) identify() *auth.Caller {
	cs.once.Do(func() {
		if cs.conn == nil {
			return
		}
		// An error leaves no identity: only the open endpoints answer.
		cs.caller, _ = auth.CallerFromConn(cs.conn)
		cs.audit = auditCaller(cs.caller)
	})
	return cs.caller
}

const connKey ctxKey = 1

// connContext attaches the connection's state to its requests. It runs in
// the accept loop, so it does nothing that can block.
func connContext(ctx context.Context, c net.Conn) context.Context {
	cs := &connState{}
	switch c := c.(type) {
	case *replayConn:
		// Handed over by the fast lane, which read the identity already
		// (or will have: connState reads it once).
		return context.WithValue(ctx, connKey, c.cs)
	case *limitedConn:
		cs.conn, cs.over, cs.uid = c.UnixConn, c.over, c.uid
	case *net.UnixConn:
		cs.conn = c
	}
	return context.WithValue(ctx, connKey, cs)
}

// callerOf returns the caller of a request: set directly by tests
// (callerKey), else read from the connection once.
func callerOf(r *http.Request) (*auth.Caller, *connState) {
	ctx := r.Context()
	if c, ok := ctx.Value(callerKey).(*auth.Caller); ok {
		return c, nil
	}
	cs, _ := ctx.Value(connKey).(*connState)
	if cs == nil {
		return nil, nil
	}
	return cs.identify(), cs
}

// overCap refuses a request on a connection beyond a cap, unless its
// caller administers the node (admins are exempt, so that an operator can
// always reach a flooded node). The answer closes the connection.
func (s *Server) overCap(rc *reqCtx, cs *connState) error {
	if cs == nil || !cs.over || s.isAdmin(rc.caller) {
		return nil
	}
	s.limiter.warn("too many connections: answering 429", "uid", cs.uid, "max-conns-per-uid", s.limiter.maxPerUID, "max-conns", s.limiter.maxTotal)
	h := rc.w.Header()
	h.Set("Retry-After", retryAfter)
	h.Set("Connection", "close")
	return &httpError{http.StatusTooManyRequests, api.CodeTooManyRequests,
		"too many open connections from this uid (or to this node): close idle connections or reuse them (HTTP keep-alive), then retry; the caps are max_conns_per_uid and max_conns in the listener block"}
}

// grantBody raises the request's body limit to api.MaxBody once the grant
// check passed. Before that, api.MaxOpenBody applies.
func (rc *reqCtx) grantBody() { rc.bodyLimit = api.MaxBody }

func (rc *reqCtx) maxBody() int64 {
	if rc.bodyLimit == 0 {
		return api.MaxOpenBody
	}
	return rc.bodyLimit
}

// extendDeadlines gives a long transfer (snapshot save or restore, admin
// only) more than the default read and write timeouts.
func extendDeadlines(rc *reqCtx) {
	rctl := http.NewResponseController(rc.w)
	d := time.Now().Add(snapshotTimeout)
	rctl.SetReadDeadline(d)
	rctl.SetWriteDeadline(d)
}
