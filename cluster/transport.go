package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// ALPN protocols multiplexed on the cluster port: raft's own RPCs, and
// Coffer's node-to-node calls (write forwarding, join).
const (
	alpnRaft = "coffer-raft/1"
	alpnRPC  = "coffer-rpc/1"
)

// Pending handshakes: see mux.admitHandshake. Per address, above what a
// member opens at once (a follower forwarding a burst of writes dials the
// leader once per write in flight: the RPC client has no per-host cap).
const (
	maxPendingHandshakesPerIP = 128
	maxPendingHandshakes      = 1024
)

// mux accepts mutual-TLS connections on the cluster address and hands each
// to raft or to the RPC server by the ALPN protocol the peer asked for. A
// peer without a certificate signed by the cluster CA never gets past the
// handshake.
type mux struct {
	ln     net.Listener
	srvTLS *tls.Config
	log    hclog.Logger

	raft *chanListener
	rpc  *chanListener
	// gate admits an accepted connection for a protocol (trust.go): it
	// returns the connection to serve, or nil after refusing it.
	gate func(c *tls.Conn, proto string, hsErr error) net.Conn

	closeOnce sync.Once
	done      chan struct{}

	pendMu    sync.Mutex
	pending   map[string]int // pending handshakes by remote IP
	pendTotal int
	lastWarn  time.Time
}

// admitHandshake counts a pending handshake of c's remote IP, or reports
// that it must be closed at once. Before its handshake a connection is
// anyone's (no certificate yet) and is held for up to the 10 s handshake
// timeout: without a bound a silent flood took the node's file descriptors.
// Per address, so that one source cannot keep members' reconnections out;
// in all, for many sources. Established connections are not counted here.
func (m *mux) admitHandshake(c net.Conn) (ip string, ok bool) {
	ip = c.RemoteAddr().String()
	if h, _, err := net.SplitHostPort(ip); err == nil {
		ip = h
	}
	m.pendMu.Lock()
	defer m.pendMu.Unlock()
	if m.pending[ip] >= maxPendingHandshakesPerIP || m.pendTotal >= maxPendingHandshakes {
		if now := time.Now(); now.Sub(m.lastWarn) >= time.Second {
			m.lastWarn = now
			m.log.Warn("cluster port: too many pending handshakes, closing new connections", "remote", ip, "pending-from-remote", m.pending[ip], "pending", m.pendTotal)
		}
		return ip, false
	}
	if m.pending == nil {
		m.pending = map[string]int{}
	}
	m.pending[ip]++
	m.pendTotal++
	return ip, true
}

func (m *mux) handshakeDone(ip string) {
	m.pendMu.Lock()
	defer m.pendMu.Unlock()
	m.pendTotal--
	if m.pending[ip]--; m.pending[ip] <= 0 {
		delete(m.pending, ip)
	}
}

func newMux(bind string, srvTLS *tls.Config, log hclog.Logger, gate func(*tls.Conn, string, error) net.Conn) (*mux, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	cfg := srvTLS.Clone()
	cfg.NextProtos = []string{alpnRaft, alpnRPC}
	m := &mux{ln: ln, srvTLS: cfg, log: log, gate: gate, done: make(chan struct{})}
	m.raft = newChanListener(ln.Addr(), m.done)
	m.rpc = newChanListener(ln.Addr(), m.done)
	return m, nil
}

// start accepts connections (once the node can decide who is a member).
func (m *mux) start() { go m.serve() }

func (m *mux) serve() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			m.log.Error("cluster listener failed", "error", err)
			return
		}
		ip, ok := m.admitHandshake(c)
		if !ok {
			c.Close()
			continue
		}
		go m.handshake(c, ip)
	}
}

func (m *mux) handshake(c net.Conn, ip string) {
	tc := tls.Server(c, m.srvTLS)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := tc.HandshakeContext(ctx)
	m.handshakeDone(ip)
	if err != nil {
		m.gate(tc, "", err) // refused: reported there
		c.Close()
		return
	}
	var dst *chanListener
	proto := tc.ConnectionState().NegotiatedProtocol
	switch proto {
	case alpnRaft:
		dst = m.raft
	case alpnRPC:
		dst = m.rpc
	default:
		m.log.Warn("cluster connection without a known protocol", "remote", c.RemoteAddr().String())
		tc.Close()
		return
	}
	conn := m.gate(tc, proto, nil)
	if conn == nil {
		tc.Close()
		return
	}
	if proto == alpnRPC {
		// net/http would see the *tls.Conn, find no handler for our ALPN
		// protocol and hang up: hand it plain HTTP/1.1 over the
		// authenticated stream instead.
		conn = plainConn{conn}
	}
	select {
	case dst.ch <- conn:
	case <-m.done:
		conn.Close() // conn, not tc: a tracked connection leaves the tracking set
	}
}

// plainConn hides a *tls.Conn's type from net/http (see handshake).
type plainConn struct{ net.Conn }

func (m *mux) Close() error {
	m.closeOnce.Do(func() { close(m.done) })
	return m.ln.Close()
}

// chanListener is a net.Listener fed by the mux.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
}

func newChanListener(addr net.Addr, done chan struct{}) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn, 16), done: done}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil } // the mux owns the socket
func (l *chanListener) Addr() net.Addr { return l.addr }

// streamLayer is raft's view of the mux: accepted raft connections, and
// dialing peers with the raft ALPN protocol over mutual TLS.
type streamLayer struct {
	*chanListener
	advertise net.Addr
	client    *tls.Config
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return dialTLS(string(address), alpnRaft, s.client, timeout)
}

func dialTLS(addr, proto string, client *tls.Config, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return dialTLSContext(ctx, addr, proto, client)
}

// dialTLSContext is dialTLS bounded by ctx, so that a caller can give up on
// a peer that accepts TCP but never completes the handshake (a frozen or
// partitioned leader).
func dialTLSContext(ctx context.Context, addr, proto string, client *tls.Config) (net.Conn, error) {
	cfg := client.Clone()
	cfg.NextProtos = []string{proto}
	d := &tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if c.(*tls.Conn).ConnectionState().NegotiatedProtocol != proto {
		c.Close()
		return nil, errors.New("peer does not speak " + proto)
	}
	return c, nil
}

// tcpAddr is a net.Addr for an advertised host:port.
type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }
