package cluster

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
	"github.com/coffer-kms/coffer/keystore"
)

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func netNode(t *testing.T, tlsDir, certNode, id string, bootstrap bool) *Node {
	t.Helper()
	crt, key, ca := filepath.Join(tlsDir, certNode+".crt"), filepath.Join(tlsDir, certNode+".key"), filepath.Join(tlsDir, "ca.crt")
	srv, err := tlsutil.ServerConfig(crt, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tlsutil.ClientConfig(crt, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	p := &lazyProposer{}
	ks := keystore.New(keystore.Config{Proposer: p})
	n, err := Open(Config{NodeID: id, DataDir: t.TempDir(), FSM: ks, Codec: keystore.ResponseCodec{},
		Net: &NetConfig{BindAddr: addr, AdvertiseAddr: addr, Bootstrap: bootstrap, ServerTLS: srv, ClientTLS: cli}})
	if err != nil {
		t.Fatal(err)
	}
	p.n = n
	proposers.Store(n, p)
	t.Cleanup(func() { n.Close(); proposers.Delete(n) })
	return n
}

// A node may join only under the id its certificate names: otherwise any
// certificate holder could replace a member by joining under its id.
func TestReview_JoinBindsCertificateNodeID(t *testing.T) {
	tlsDir := t.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"node1", "node2"} {
		if _, _, err := tlsutil.CreateNodeCert(tlsDir, id, []net.IP{net.ParseIP("127.0.0.1")}, nil, tlsDir, 10, now); err != nil {
			t.Fatal(err)
		}
	}
	leader := netNode(t, tlsDir, "node1", "node1", true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// node2's certificate, claiming to be node1.
	impostor := netNode(t, tlsDir, "node2", "node1", false)
	err := impostor.Join(ctx, leader.cfg.Net.AdvertiseAddr, "")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		peers, _ := leader.Peers()
		t.Fatalf("join under another node's id: err %v, peers now %+v", err, peers)
	}
	good := netNode(t, tlsDir, "node2", "node2", false)
	if err := good.Join(ctx, leader.cfg.Net.AdvertiseAddr, ""); err != nil {
		t.Fatalf("honest join: %v", err)
	}
}

// TestRPCApply_RefusesInvalidCommand: the leader does not append a
// forwarded command its state machine could never apply.
func TestRPCApply_RefusesInvalidCommand(t *testing.T) {
	if err := (keystore.ResponseCodec{}).Validate([]byte(`{"f":1,"op":"explode"}`)); err == nil {
		t.Fatal("Validate accepted an unknown command")
	}
	if err := (keystore.ResponseCodec{}).Validate([]byte(`{"f":1,"op":"delete","path":"keys/a","expect":1}`)); err != nil {
		t.Fatalf("Validate refused a valid command: %v", err)
	}
}
