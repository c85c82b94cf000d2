package cluster

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
)

// TestTrust_RefusalFloodRateLimited: every refusal on the cluster port is
// logged and audited (cluster-refused), at most once per refuseEvery for
// the same node id, what and reason. The reason and the path came from the
// peer, though: a handshake refused for its ALPN protocols carries the
// protocols the client offered in its error text, and a non-member's RPC
// its URL path. Varying them made every refusal new: one WARN line and one
// audit entry each, and a map entry each, with no certificate needed for
// the first. Now neither the handshake error's text nor an unknown path
// makes a refusal new.
func TestTrust_RefusalFloodRateLimited(t *testing.T) {
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
	const flood = 100
	// No certificate: a handshake offering an unknown ALPN protocol, a
	// different one each time.
	for i := 0; i < flood; i++ {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{fmt.Sprintf("x-%d", i)}})
		if err == nil {
			c.Close()
		}
	}
	// Refusals are reported by the handshake goroutines: wait until the
	// count has stopped changing.
	hs, stable := -1, time.Now()
	waitTrue(t, "the handshake refusals are reported", func() bool {
		if c := len(n1.refusals()); c != hs {
			hs, stable = c, time.Now()
		}
		return hs > 0 && time.Since(stable) > 500*time.Millisecond
	})
	// A non-member's certificate: RPCs to a different unknown path each time.
	for i := 0; i < flood; i++ {
		if st, out := rawRPC(t, tlsDir, "intruder", addr, fmt.Sprintf("/rpc/x-%d", i), nil); st != http.StatusForbidden {
			t.Fatalf("intruder: %d %s", st, out)
		}
	}
	rpc := len(n1.refusals()) - hs
	// Join is open to a non-member: a join under a different claimed node
	// id each time (not the certificate's) is the same refusal.
	for i := 0; i < flood; i++ {
		body := fmt.Appendf(nil, `{"id":"claimed-%d","address":"127.0.0.1:1"}`, i)
		if st, out := rawRPC(t, tlsDir, "intruder", addr, "/rpc/join", body); st != http.StatusForbidden {
			t.Fatalf("intruder join: %d %s", st, out)
		}
	}
	joins := len(n1.refusals()) - hs - rpc
	t.Logf("%d handshakes with distinct ALPN protocols: %d refusals reported; %d non-member RPCs to distinct paths: %d reported; %d joins under distinct ids: %d reported", flood, hs, flood, rpc, flood, joins)
	if hs > 3 || rpc > 3 || joins > 3 {
		t.Fatalf("refusals reported (each a WARN line and an audit entry): %d for %d handshakes, %d for %d RPCs, %d for %d joins; want a few", hs, flood, rpc, flood, joins, flood)
	}
}
