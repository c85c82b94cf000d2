package cluster

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
)

// TestTransport_PendingHandshakesBounded is the handshake flood on the
// cluster port: anyone who can reach it over the network, with no
// certificate, opens TCP connections and never sends a ClientHello. Each
// one used to be held for the whole 10 s handshake timeout with no bound
// on how many, so a flood took the node's file descriptors (shared with
// raft, the API socket and the audit log) with no credentials at all. Now
// at most maxPendingHandshakesPerIP handshakes of one address are pending
// (maxPendingHandshakes in all); the rest are closed at accept, and once
// the flood stops a member's certificate is served again.
func TestTransport_PendingHandshakesBounded(t *testing.T) {
	tlsDir := t.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"node1", "intruder"} {
		newCert(t, tlsDir, id, now)
	}
	n1 := newTrustNode(t, tlsDir, "node1", true)
	addr := n1.cfg.Net.AdvertiseAddr
	const flood = 400
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < flood; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// A pending handshake is held until the 10 s timeout; a refused one is
	// closed at accept. Count those still held 3 s on.
	deadline := time.Now().Add(3 * time.Second)
	res := make(chan bool, len(conns))
	for _, c := range conns {
		go func(c net.Conn) {
			c.SetReadDeadline(deadline)
			_, err := c.Read(make([]byte, 1))
			res <- errors.Is(err, os.ErrDeadlineExceeded)
		}(c)
	}
	held := 0
	for range conns {
		if <-res {
			held++
		}
	}
	t.Logf("%d silent TCP connections from one address: %d held in the handshake (cap %d per address)", flood, held, maxPendingHandshakesPerIP)
	if held > maxPendingHandshakesPerIP {
		t.Fatalf("the cluster port holds %d pending handshakes from one address, want at most %d", held, maxPendingHandshakesPerIP)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	// The slots are released: a certificate holder gets through again (a
	// non-member's RPC is answered 403 after a completed handshake).
	until := time.Now().Add(15 * time.Second)
	for {
		st, out := rawRPC(t, tlsDir, "intruder", addr, "/rpc/read-index", nil)
		if st == http.StatusForbidden {
			break
		}
		if time.Now().After(until) {
			t.Fatalf("no completed handshake after the flood: %d %s", st, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTrust_NonMemberConnectionsBounded: a certificate of the cluster's CA
// for a node id that is not a member (one issued ahead of a join, or
// stolen) completes the handshake, and its RPC connections are kept since
// join is open to it. Nothing bounded how many it kept: each one idle,
// after a refused request, stayed open with no time limit. Now a
// non-member id keeps at most maxNonMemberConns RPC connections, and a
// refused request closes its connection.
func TestTrust_NonMemberConnectionsBounded(t *testing.T) {
	tlsDir := t.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"node1", "intruder"} {
		newCert(t, tlsDir, id, now)
	}
	n1 := newTrustNode(t, tlsDir, "node1", true)
	addr := n1.cfg.Net.AdvertiseAddr
	_, cli := nodeTLS(t, tlsDir, "intruder")
	const flood = 100
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < flood; i++ {
		c, err := dialTLS(addr, alpnRPC, cli, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// One refused request on the first connection (a keep-alive client
	// would then hold it idle).
	if _, err := conns[0].Write([]byte("POST /rpc/read-index HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	res := make(chan bool, len(conns))
	for _, c := range conns {
		go func(c net.Conn) {
			c.SetReadDeadline(deadline)
			_, err := io.Copy(io.Discard, c)
			res <- errors.Is(err, os.ErrDeadlineExceeded)
		}(c)
	}
	held := 0
	for range conns {
		if <-res {
			held++
		}
	}
	t.Logf("%d RPC connections of a non-member certificate: %d held (cap %d)", flood, held, maxNonMemberConns)
	if held > maxNonMemberConns {
		t.Fatalf("a non-member certificate keeps %d RPC connections, want at most %d", held, maxNonMemberConns)
	}
}
