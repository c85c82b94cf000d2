package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
	"github.com/coffer-kms/coffer/keystore"
)

// trustNode is netNode with the keystore as the node's Trust, as cofferd
// wires it, and a record of refusals.
type trustNode struct {
	*Node
	ks      *keystore.Keystore
	mu      sync.Mutex
	refusal []Refusal
}

func (tn *trustNode) refusals() []Refusal {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return slices.Clone(tn.refusal)
}

func newTrustNode(t testing.TB, tlsDir, id string, bootstrap bool) *trustNode {
	t.Helper()
	srv, cli := nodeTLS(t, tlsDir, id)
	addr := freeAddr(t)
	p := &lazyProposer{}
	tn := &trustNode{}
	tn.ks = keystore.New(keystore.Config{Proposer: p, InitialMembers: func() []string {
		var ids []string
		for _, s := range tn.raft.GetConfiguration().Configuration().Servers {
			ids = append(ids, string(s.ID))
		}
		return ids
	}})
	n, err := Open(Config{NodeID: id, DataDir: t.TempDir(), FSM: tn.ks, Codec: keystore.ResponseCodec{}, Trust: tn.ks,
		OnRefused: func(r Refusal) { tn.mu.Lock(); tn.refusal = append(tn.refusal, r); tn.mu.Unlock() },
		// Stands in for the seal Manager's HPKE encryption (daemon/seal):
		// the answer names who answered and for whom.
		EnrolKey: func(nodeID, _ string, _ []byte) ([]byte, error) {
			return []byte("root-for-" + nodeID + "-from-" + id), nil
		},
		Net: &NetConfig{BindAddr: addr, AdvertiseAddr: addr, Bootstrap: bootstrap, ServerTLS: srv, ClientTLS: cli}})
	if err != nil {
		t.Fatal(err)
	}
	p.n = n
	tn.Node = n
	t.Cleanup(func() { n.Close() })
	return tn
}

func nodeTLS(t testing.TB, tlsDir, id string) (srv, cli *tls.Config) {
	t.Helper()
	crt, key, ca := filepath.Join(tlsDir, id+".crt"), filepath.Join(tlsDir, id+".key"), filepath.Join(tlsDir, "ca.crt")
	srv, err := tlsutil.ServerConfig(crt, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	cli, err = tlsutil.ClientConfig(crt, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	return srv, cli
}

func newCert(t *testing.T, tlsDir, id string, now time.Time) {
	t.Helper()
	if _, _, err := tlsutil.CreateNodeCert(tlsDir, id, []net.IP{net.ParseIP("127.0.0.1")}, nil, tlsDir, 10, now); err != nil {
		t.Fatal(err)
	}
}

// rawRPC calls a node RPC with the certificate of id, as an attacker holding
// that certificate would.
func rawRPC(t *testing.T, tlsDir, id, addr, path string, body []byte) (int, string) {
	t.Helper()
	_, cli := nodeTLS(t, tlsDir, id)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
		c, err := dialTLSContext(ctx, a, alpnRPC, cli)
		if err != nil {
			return nil, err
		}
		return plainConn{c}, nil
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post("http://"+addr+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// raftPortOpen reports whether a raft connection with id's certificate is
// served: the node closes a refused one right after the handshake.
func raftPortOpen(t *testing.T, tlsDir, id, addr string) bool {
	t.Helper()
	_, cli := nodeTLS(t, tlsDir, id)
	c, err := dialTLS(addr, alpnRaft, cli, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	// Served: raft waits for our request, so the read times out.
	return errors.As(err, &ne) && ne.Timeout()
}

func peerIDs(t *testing.T, n *Node) []string {
	t.Helper()
	ps, err := n.Peers()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.ID)
	}
	slices.Sort(ids)
	return ids
}

func waitTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTrust_OnlyMembersTalk: a certificate of the cluster CA for a node id
// that never joined gets no raft connection and no node RPC but join; after
// init it joins only with a token for its id, used once; a removed member's
// certificate is refused everywhere and its open connections are closed;
// it comes back only with a certificate issued after the removal and a new
// token.
func TestTrust_OnlyMembersTalk(t *testing.T) {
	tlsDir := t.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"node1", "node2", "node3", "intruder"} {
		newCert(t, tlsDir, id, now)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n1 := newTrustNode(t, tlsDir, "node1", true)
	if err := n1.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	addr := n1.cfg.Net.AdvertiseAddr
	// Before init any certificate of the CA may join (nothing is protected).
	n2 := newTrustNode(t, tlsDir, "node2", false)
	if err := n2.Join(ctx, addr, ""); err != nil {
		t.Fatalf("join before init: %v", err)
	}
	root := bytes.Repeat([]byte{7}, keystore.RootKeySize)
	if err := n1.ks.Init(ctx, root, "c1", 1, 1); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "node2 has the init", n2.ks.Initialized)
	if err := n2.ks.Unseal(root); err != nil {
		t.Fatal(err)
	}

	// The intruder: a valid certificate, never a member.
	cmd := []byte(`{"f":1,"op":"delete","path":"keys/a","expect":1}`)
	for _, path := range []string{"/rpc/apply", "/rpc/remove", "/rpc/read-index", "/rpc/anything"} {
		for _, target := range []string{addr, n2.cfg.Net.AdvertiseAddr} {
			body := cmd
			if path == "/rpc/remove" {
				body = []byte("node2")
			}
			if st, out := rawRPC(t, tlsDir, "intruder", target, path, body); st != http.StatusForbidden {
				t.Errorf("intruder %s on %s: %d %s, want 403", path, target, st, out)
			}
		}
	}
	if raftPortOpen(t, tlsDir, "intruder", addr) || raftPortOpen(t, tlsDir, "intruder", n2.cfg.Net.AdvertiseAddr) {
		t.Error("the raft port served a non-member's certificate")
	}
	if !raftPortOpen(t, tlsDir, "node2", addr) {
		t.Error("the raft port refused a member")
	}
	// After init a join needs a token for the joiner's own id.
	intruder := newTrustNode(t, tlsDir, "intruder", false)
	if err := intruder.Join(ctx, addr, ""); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("join after init without a token: %v", err)
	}
	tok3, _, err := n1.ks.IssueEnrolToken(ctx, "node3", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := intruder.Join(ctx, addr, tok3); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("join with another node's token: %v", err)
	}
	// Taking over a member's address is refused even with a valid token.
	tokI, _, _ := n1.ks.IssueEnrolToken(ctx, "intruder", time.Hour)
	st, out := rawRPC(t, tlsDir, "intruder", addr, "/rpc/join", []byte(`{"id":"intruder","address":"`+n2.cfg.Net.AdvertiseAddr+`","token":"`+tokI+`"}`))
	if st != http.StatusConflict {
		t.Errorf("join at a member's address: %d %s", st, out)
	}
	if got := peerIDs(t, n1.Node); !slices.Equal(got, []string{"node1", "node2"}) {
		t.Fatalf("peers after the intruder: %v", got)
	}
	if len(n1.refusals()) == 0 {
		t.Error("no refusal reported on node1")
	}
	n3 := newTrustNode(t, tlsDir, "node3", false)
	if err := n3.Join(ctx, n2.cfg.Net.AdvertiseAddr, tok3); err != nil { // via a follower
		t.Fatalf("join with its token: %v", err)
	}
	waitTrue(t, "node3 has the state", n3.ks.Initialized)
	// The token is used up.
	if err := n1.ks.UseEnrolToken(ctx, "node3", tok3); !errors.Is(err, keystore.ErrInvalidToken) {
		t.Errorf("second use of a token: %v", err)
	}

	// Remove node3: its certificate is refused and its connections closed.
	if !raftPortOpen(t, tlsDir, "node3", addr) {
		t.Fatal("member node3 refused before its removal")
	}
	if err := n2.RemovePeer(ctx, "node3"); err != nil { // from a follower
		t.Fatal(err)
	}
	waitTrue(t, "node3 refused on node1 and node2", func() bool {
		return !raftPortOpen(t, tlsDir, "node3", addr) && !raftPortOpen(t, tlsDir, "node3", n2.cfg.Net.AdvertiseAddr)
	})
	if st, _ := rawRPC(t, tlsDir, "node3", addr, "/rpc/read-index", nil); st == http.StatusOK {
		t.Error("a removed node's certificate still reads")
	}
	// Nor can it ask for the root key with a token issued for its id.
	tokRevoked, _, _ := n1.ks.IssueEnrolToken(ctx, "node3", time.Hour)
	enrolBody, _ := json.Marshal(enrolRequest{Token: tokRevoked, PublicKey: make([]byte, enrolKeyLen)})
	if st, _ := rawRPC(t, tlsDir, "node3", addr, "/rpc/enrol", enrolBody); st == http.StatusOK || st == http.StatusBadRequest {
		t.Errorf("a removed node's certificate reached /rpc/enrol: %d", st)
	}
	n3.Close()
	tok3b, _, _ := n1.ks.IssueEnrolToken(ctx, "node3", time.Hour)
	n3old := newTrustNode(t, tlsDir, "node3", false)
	if err := n3old.Join(ctx, addr, tok3b); err == nil {
		t.Fatal("a removed node re-joined with its old certificate")
	}
	// A certificate issued after the removal and a token: welcome back.
	time.Sleep(1100 * time.Millisecond) // certificates have second resolution
	for _, ext := range []string{".crt", ".key"} {
		os.Remove(filepath.Join(tlsDir, "node3"+ext))
	}
	newCert(t, tlsDir, "node3", time.Now())
	n3new := newTrustNode(t, tlsDir, "node3", false)
	if err := n3new.Join(ctx, addr, tok3b); err != nil {
		t.Fatalf("re-join with a new certificate and token: %v", err)
	}
	if got := peerIDs(t, n1.Node); !slices.Equal(got, []string{"node1", "node2", "node3"}) {
		t.Fatalf("peers after re-join: %v", got)
	}
	// A raft configuration change that no authenticated write backs (as a
	// hostile leader could append) admits nobody: the allow list decides.
	intruderAddr := intruder.cfg.Net.AdvertiseAddr
	intruder.Close()
	if err := n1.raft.AddVoter("intruder", raft.ServerAddress(intruderAddr), 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "node2 sees the configuration change", func() bool { return slices.Contains(peerIDs(t, n2.Node), "intruder") })
	if raftPortOpen(t, tlsDir, "intruder", n2.cfg.Net.AdvertiseAddr) || raftPortOpen(t, tlsDir, "intruder", addr) {
		t.Error("a configuration change alone admitted a node id")
	}
	if st, _ := rawRPC(t, tlsDir, "intruder", addr, "/rpc/read-index", nil); st != http.StatusForbidden {
		t.Errorf("intruder RPC after the configuration change: %d", st)
	}
	if err := n1.raft.RemoveServer("intruder", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	// A member's certificate alone cannot remove another member: the
	// removal must be revoked in the replicated state first.
	if st, out := rawRPC(t, tlsDir, "node2", addr, "/rpc/remove", []byte("node3")); st != http.StatusForbidden || !strings.Contains(out, "not revoked") {
		t.Errorf("raw remove by a member: %d %s", st, out)
	}
}

// TestTrust_ForgedEntriesRefusedByEveryFSM: a hostile leader (simulated:
// it appends to its raft log directly, skipping the leader's check) commits
// a command without the keyring's MAC, as a member certificate without the
// root key would make. Every unsealed node's FSM refuses it and keeps its
// state; a sealed node applies it but refuses to unseal afterwards.
func TestTrust_ForgedEntriesRefusedByEveryFSM(t *testing.T) {
	tlsDir := t.TempDir()
	now := time.Now()
	if _, _, err := tlsutil.CreateCA(tlsDir, 30, now); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"node1", "node2", "node3"} {
		newCert(t, tlsDir, id, now)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n1 := newTrustNode(t, tlsDir, "node1", true)
	if err := n1.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	n2 := newTrustNode(t, tlsDir, "node2", false)
	n3 := newTrustNode(t, tlsDir, "node3", false)
	for _, n := range []*trustNode{n2, n3} {
		if err := n.Join(ctx, n1.cfg.Net.AdvertiseAddr, ""); err != nil {
			t.Fatal(err)
		}
	}
	root := bytes.Repeat([]byte{5}, keystore.RootKeySize)
	if err := n1.ks.Init(ctx, root, "c1", 1, 1); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "node2 initialised", n2.ks.Initialized)
	if err := n2.ks.Unseal(root); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.ks.CreateKey(ctx, "victim", "", ""); err != nil {
		t.Fatal(err)
	}
	has := func(n *trustNode) bool { _, ok := n.ks.Snapshot().Entries["keys/victim"]; return ok }
	waitTrue(t, "the key everywhere", func() bool { return has(n2) && has(n3) })
	forged := []byte(`{"f":1,"op":"delete","path":"keys/victim","expect":1}`)
	if err := n1.ks.VerifyCommand(forged); err == nil {
		t.Fatal("the leader's check passed a forged command")
	}
	f := n1.raft.Apply(forged, 5*time.Second) // what a hostile leader does
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	if r, _ := f.Response().(error); !errors.Is(r, keystore.ErrUnauthenticated) {
		t.Fatalf("leader FSM: %v", f.Response())
	}
	for _, n := range []*trustNode{n2, n3} {
		if err := n.waitApplied(ctx, f.Index()); err != nil {
			t.Fatal(err)
		}
	}
	if !has(n1) || !has(n2) {
		t.Fatal("an unsealed FSM applied a forged command")
	}
	if err := n3.ks.Unseal(root); !errors.Is(err, keystore.ErrUnauthenticated) || !n3.ks.Sealed() {
		t.Fatalf("sealed node unseals after applying a forged command: %v", err)
	}
}
