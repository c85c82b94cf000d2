package kmsv2

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/daemon/auth"
)

// MaxConnsPerUID bounds the connections one uid keeps open on the socket.
// The kube-apiserver opens one per KMS provider (two while one is being
// replaced, see maxConnectionAge); every connection held costs the daemon
// a file descriptor (shared with the API socket, raft and the audit log), a
// gRPC transport and what its calls have buffered, and one that completed
// the HTTP/2 handshake was kept with no time limit. Beyond the cap a
// connection is closed at accept, without an answer (docs/threat-model.md).
// uid 0 and the daemon's own uid are exempt: they can stop or trace the
// daemon anyway (and the benchmark opens a connection per worker).
const MaxConnsPerUID = 16

// capListener counts accepted connections per peer uid (SO_PEERCRED).
type capListener struct {
	net.Listener
	log      hclog.Logger
	mu       sync.Mutex
	perUID   map[uint32]int
	lastWarn atomic.Int64
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return c, nil
		}
		uid, err := auth.PeerUID(uc)
		if err != nil {
			c.Close() // the peer is gone
			continue
		}
		if uid == 0 || uid == uint32(os.Getuid()) {
			return c, nil
		}
		l.mu.Lock()
		full := l.perUID[uid] >= MaxConnsPerUID
		if !full {
			l.perUID[uid]++
		}
		l.mu.Unlock()
		if full {
			// At most one line a second: a flood must not become one.
			if now := time.Now().Unix(); l.lastWarn.Swap(now) != now {
				l.log.Warn("KMS v2 connection refused: this uid holds too many connections", "uid", uid, "max", MaxConnsPerUID)
			}
			c.Close()
			continue
		}
		return &capConn{UnixConn: uc, l: l, uid: uid}, nil
	}
}

// capConn is a counted connection; Close releases its count once.
type capConn struct {
	*net.UnixConn
	l    *capListener
	uid  uint32
	once sync.Once
}

func (c *capConn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.perUID[c.uid]--; c.l.perUID[c.uid] <= 0 {
			delete(c.l.perUID, c.uid)
		}
		c.l.mu.Unlock()
	})
	return err
}
