package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
)

// FuzzRPC: node RPCs sent with a member's verified certificate (the
// strongest position a certificate thief has) never panic the leader and
// never change its state: commands without the keyring's MAC are refused,
// joins need a token, removals need a committed revocation.
func FuzzRPC(f *testing.F) {
	for _, s := range []struct{ path, body string }{
		{"/rpc/apply", `{"f":1,"op":"delete","path":"keys/a","expect":1}`},
		{"/rpc/apply", `{"f":2,"mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","cmd":{"f":1,"op":"delete","path":"keys/a","expect":1}}`},
		{"/rpc/join", `{"id":"node2","address":"127.0.0.1:1","token":"coffer-enrol-0011223344556677-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`},
		{"/rpc/remove", `node1`},
		{"/rpc/read-index", ``},
		{"/rpc/enrol", `{"token":"coffer-enrol-0011223344556677-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","public_key":"` + strings.Repeat("AAAA", 1216/3) + `AAAA"}`},
		{"/rpc/enrol", `{"token":"coffer-enrol-","public_key":""}`},
		{"/rpc/transfer-leadership", `node2`},
		{"/rpc/transfer-leadership", ``},
		{"/rpc/join", `{"id":"node2","address":"127.0.0.1:1","token":"coffer-enrol-0011223344556677-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","enrol_key":"AAAA"}`},
		{"/rpc/x", `{}`},
	} {
		f.Add(s.path, []byte(s.body))
	}
	tlsDir := f.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		f.Fatal(err)
	}
	for _, id := range []string{"node1", "node2"} {
		if _, _, err := tlsutil.CreateNodeCert(tlsDir, id, []net.IP{net.ParseIP("127.0.0.1")}, nil, tlsDir, 10, now); err != nil {
			f.Fatal(err)
		}
	}
	n := fuzzLeader(f, tlsDir)
	pemBytes, err := os.ReadFile(filepath.Join(tlsDir, "node2.crt"))
	if err != nil {
		f.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		f.Fatal(err)
	}
	cs := tls.ConnectionState{HandshakeComplete: true, VerifiedChains: [][]*x509.Certificate{{leaf}}}
	var want bytes.Buffer
	n.ks.Snapshot().WriteTo(&want)
	peers := peerIDs2(f, n.Node)
	h := n.rpcSrv.Handler
	// The fixture really is a member: its read index is answered.
	probe := httptest.NewRequest(http.MethodPost, "http://node1/rpc/read-index", nil)
	probe = probe.WithContext(context.WithValue(probe.Context(), peerTLSKey{}, cs))
	if rec := httptest.NewRecorder(); func() int { h.ServeHTTP(rec, probe); return rec.Code }() != http.StatusOK {
		f.Fatal("the fuzz fixture's certificate is not treated as a member")
	}
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "http://node1/rpc/x", bytes.NewReader(body))
		req.URL.Path = "/" + path
		req = req.WithContext(context.WithValue(req.Context(), peerTLSKey{}, cs))
		h.ServeHTTP(httptest.NewRecorder(), req)
		var got bytes.Buffer
		n.ks.Snapshot().WriteTo(&got)
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("%s %q changed the state", path, body)
		}
		if p := peerIDs2(t, n.Node); !slices.Equal(p, peers) {
			t.Fatalf("%s %q changed the peers: %v", path, body, p)
		}
	})
}

func peerIDs2(tb testing.TB, n *Node) []string {
	ps, err := n.Peers()
	if err != nil {
		tb.Fatal(err)
	}
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.ID+"@"+p.Address)
	}
	slices.Sort(ids)
	return ids
}

// fuzzLeader is an initialised, unsealed leader with node2 a member.
func fuzzLeader(f *testing.F, tlsDir string) *trustNode {
	n := newTrustNode(f, tlsDir, "node1", true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		f.Fatal(err)
	}
	// node2 is a member from before init (a non-voter: it is not running,
	// and must not cost the leader its quorum).
	if err := n.raft.AddNonvoter("node2", "127.0.0.1:1", 0, 5*time.Second).Error(); err != nil {
		f.Fatal(err)
	}
	if err := n.ks.Init(ctx, bytes.Repeat([]byte{9}, 32), "fuzz", 1, 1); err != nil {
		f.Fatal(err)
	}
	return n
}
