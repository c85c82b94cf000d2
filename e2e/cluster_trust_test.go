package e2e

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
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster/tlsutil"
)

// issueToken has an admin on an unsealed member issue a one-time enrolment
// token for nodeID (`coffer operator enrol token create`).
func issueToken(t *testing.T, admin *daemon, nodeID string) string {
	t.Helper()
	var out api.EnrolTokenResponse
	if err := json.Unmarshal([]byte(admin.mustCoffer("", "--format", "json", "operator", "enrol", "token", "create", "--node", nodeID, "--ttl", "10m")), &out); err != nil || !strings.HasPrefix(out.Token, "coffer-enrol-") {
		t.Fatalf("token create: node %q, expires %v, %v (token not shown)", out.NodeID, out.ExpiresAt, err)
	}
	return out.Token
}

// joinWithToken joins d to the cluster through addr after init, with a
// token an admin on admin issued for d's node id (the token on stdin).
func joinWithToken(t *testing.T, admin, d *daemon, addr string) {
	t.Helper()
	d.mustCoffer(issueToken(t, admin, d.nodeID)+"\n", "operator", "raft", "join", addr, "--token", "-")
}

// peerClient speaks the cluster port with the certificate of certID, as an
// attacker holding that certificate and its key would.
type peerClient struct {
	t   *testing.T
	cfg *tls.Config
}

func newPeerClient(t *testing.T, tlsDir, certID string) *peerClient {
	t.Helper()
	cfg, err := tlsutil.ClientConfig(filepath.Join(tlsDir, certID+".crt"), filepath.Join(tlsDir, certID+".key"), filepath.Join(tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return &peerClient{t: t, cfg: cfg}
}

func (p *peerClient) dial(addr, proto string) (*tls.Conn, error) {
	cfg := p.cfg.Clone()
	cfg.NextProtos = []string{proto}
	d := &tls.Dialer{Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// rpc posts body to a node RPC path; status 0 when the connection was
// refused (closed) before an answer.
func (p *peerClient) rpc(addr, path string, body []byte) (int, string) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
		c, err := p.dial(a, "coffer-rpc/1")
		if err != nil {
			return nil, err
		}
		return struct{ net.Conn }{c}, nil // plain HTTP/1.1 over the TLS stream
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post("http://"+addr+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// raftServed reports whether the raft protocol is served to this
// certificate: a refused connection is closed right after the handshake;
// a served one waits for our RPC (the read times out).
func (p *peerClient) raftServed(addr string) bool {
	c, err := p.dial(addr, "coffer-raft/1")
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// auditOps counts the audit entries of each operation in d's log.
func auditOps(t *testing.T, d *daemon) map[string]int {
	t.Helper()
	_, es := readAudit(t, filepath.Join(d.dir, "data", "audit.log"))
	out := map[string]int{}
	for _, e := range es {
		out[e.Operation]++
	}
	return out
}

// TestE2E_Cluster_CertificateAloneChangesNothing (issue 9): a certificate
// signed by the cluster CA for a node id that never joined is refused on
// every node RPC path and on the raft port of every node, changes no key,
// policy or peer, and the refusals are in the refusing nodes' audit logs.
// A join after init needs a token for the joiner's id. A removed member's
// certificate is refused after the removal, and it comes back only with a
// certificate issued after the removal and a new token.
func TestE2E_Cluster_CertificateAloneChangesNothing(t *testing.T) {
	c := newCluster(t, 4)
	shares := bootCluster(c, 3)
	n1, n2, n3, n4 := c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3]
	n1.mustCoffer("", "key", "create", "victim")
	n1.mustCoffer(`{"subjects":{"uids":[4242]},"keys":["victim"],"operations":["wrap"]}`, "policy", "write", "p1", "-")
	before := waitConverged(t, c.nodes[:3], 10*time.Second)

	runCoffer(t, "tls", "cert", "create", "--ca", c.tlsDir, "--node", "intruder", "--ip", "127.0.0.1", "--out", c.tlsDir)
	evil := newPeerClient(t, c.tlsDir, "intruder")
	// What the issue's attacker sent: a delete of a key skipping the
	// deletion window, a removal of a member, a self-join, a read index.
	del := []byte(`{"f":1,"op":"delete","path":"keys/victim","expect":1}`)
	for i, addr := range c.addrs[:3] {
		for _, rq := range []struct {
			path string
			body []byte
		}{{"/rpc/apply", del}, {"/rpc/remove", []byte("node2")}, {"/rpc/read-index", nil}, {"/rpc/join", []byte(`{"id":"intruder","address":"` + c.addrs[3] + `"}`)}} {
			st, out := evil.rpc(addr, rq.path, rq.body)
			want := http.StatusForbidden
			if rq.path == "/rpc/join" && i == 0 {
				want = http.StatusBadRequest // the leader asks for a token
			}
			if rq.path == "/rpc/join" && st == http.StatusMisdirectedRequest {
				continue // a follower points at the leader
			}
			if st != want {
				t.Errorf("intruder %s on %s: %d %s, want %d", rq.path, c.nodes[i].nodeID, st, out, want)
			}
		}
		if evil.raftServed(addr) {
			t.Errorf("%s serves raft to a certificate that never joined", c.nodes[i].nodeID)
		}
	}
	if after := waitConverged(t, c.nodes[:3], 10*time.Second); len(after) != len(before) || after["victim"] != before["victim"] {
		t.Errorf("keys changed: %v → %v", before, after)
	}
	for _, d := range c.nodes[:3] {
		if p := listPeers(t, d); len(p) != 3 {
			t.Errorf("peers on %s: %v", d.nodeID, p)
		}
		if st, _, body := d.api("GET", "/v1/policies/p1", ""); st != 200 || !strings.Contains(string(body), "4242") {
			t.Errorf("policy on %s: %d %s", d.nodeID, st, body)
		}
		if n := auditOps(t, d)["cluster-refused"]; n == 0 {
			t.Errorf("no cluster-refused entry in %s's audit log", d.nodeID)
		}
	}

	// Another CA's certificate (for a member's id, even) and a client
	// offering only classical key exchanges: refused at the handshake.
	otherCA := t.TempDir()
	runCoffer(t, "tls", "ca", "create", "--out", otherCA)
	runCoffer(t, "tls", "cert", "create", "--ca", otherCA, "--node", "node2", "--ip", "127.0.0.1", "--out", otherCA)
	foreign := newPeerClient(t, otherCA, "node2")
	foreign.cfg.RootCAs = evil.cfg.RootCAs // it trusts our nodes; they must not trust it
	classical := newPeerClient(t, c.tlsDir, "node2")
	classical.cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	for _, addr := range c.addrs[:3] {
		for name, pc := range map[string]*peerClient{"another CA": foreign, "classical key exchange": classical} {
			if st, out := pc.rpc(addr, "/rpc/read-index", nil); st != 0 {
				t.Errorf("%s on %s: %d %s, want the handshake refused", name, addr, st, out)
			}
			if pc.raftServed(addr) {
				t.Errorf("%s on %s: raft served", name, addr)
			}
		}
	}

	// A write through a follower is audited on the leader with its origin.
	lead, _ := waitLeader(t, c.nodes[:3], 5*time.Second)
	via := without(c.nodes[:3], lead)[0]
	via.mustCoffer("", "key", "create", "via-follower")
	_, es := readAudit(t, filepath.Join(lead.dir, "data", "audit.log"))
	found := false
	for _, e := range es {
		d := e.Detail
		if e.Operation == "forwarded-write" && d["origin_node_id"] == via.nodeID && d["path"] == "keys/via-follower" && d["origin_operation"] == "create" && d["origin_uid"] != "" && d["origin_request_id"] != "" {
			found = true
		}
	}
	if !found {
		t.Errorf("no forwarded-write entry for the follower's create in the leader's audit log")
	}

	// After init, a join without a token, or with another node's, fails
	// with invalid_token; with its own it works.
	n4.start()
	if r := n4.coffer("", -1, "operator", "raft", "join", c.addrs[0]); r.code == 0 || !strings.Contains(r.stderr, api.CodeInvalidToken) {
		t.Errorf("join without a token: %+v", r)
	}
	other := issueToken(t, n1, "node9")
	if r := n4.coffer(other+"\n", -1, "operator", "raft", "join", c.addrs[0], "--token", "-"); r.code == 0 || !strings.Contains(r.stderr, api.CodeInvalidToken) {
		t.Errorf("join with another node's token: %+v", r)
	}
	tok := issueToken(t, n1, "node4")
	n4.mustCoffer(tok+"\n", "operator", "raft", "join", c.addrs[1], "--token", "-") // via a follower
	if r := n4.coffer(tok+"\n", -1, "operator", "raft", "join", c.addrs[0], "--token", "-"); r.code != 0 {
		t.Errorf("a member re-joining from its own address: %+v", r)
	}
	waitFor(t, "node4 receives the state", 10*time.Second, func() bool { return n4.status().Initialized })
	n4.unsealWith(shares[:3])
	var tl api.EnrolTokenList
	json.Unmarshal([]byte(n2.mustCoffer("", "--format", "json", "operator", "enrol", "token", "list")), &tl)
	used := 0
	for _, x := range tl.Tokens {
		if x.NodeID == "node4" && x.UsedAt != nil {
			used++
		}
		if strings.Contains(n2.mustCoffer("", "--format", "json", "operator", "enrol", "token", "list"), "coffer-enrol-") {
			t.Error("token list shows a token")
		}
	}
	if used != 1 {
		t.Errorf("tokens after the join: %+v", tl)
	}

	// Remove node3: its certificate is refused from then on.
	member := newPeerClient(t, c.tlsDir, "node3")
	if !member.raftServed(c.addrs[0]) {
		t.Fatal("node3 refused while a member")
	}
	n1.mustCoffer("", "operator", "raft", "remove-peer", "node3")
	waitFor(t, "node3's certificate refused everywhere", 10*time.Second, func() bool {
		for _, a := range []string{c.addrs[0], c.addrs[1], c.addrs[3]} {
			if member.raftServed(a) {
				return false
			}
		}
		return true
	})
	for _, a := range []string{c.addrs[0], c.addrs[1], c.addrs[3]} {
		if st, out := member.rpc(a, "/rpc/apply", del); st == http.StatusOK {
			t.Errorf("removed node's apply on %s: %d %s", a, st, out)
		}
	}
	n1.mustCoffer("", "key", "create", "after-removal")
	if ops := auditOps(t, n1); ops["membership"] == 0 {
		t.Errorf("no membership entry on the leader: %v", ops)
	}
	// Back only with a new certificate and a new token.
	n3.stop()
	os.RemoveAll(filepath.Join(n3.dir, "data"))
	n3.start()
	if r := n3.coffer(issueToken(t, n1, "node3")+"\n", -1, "operator", "raft", "join", c.addrs[0], "--token", "-"); r.code == 0 {
		t.Fatal("the removed node re-joined with its old certificate")
	}
	n3.stop()
	time.Sleep(1100 * time.Millisecond) // certificate times have one-second resolution
	for _, ext := range []string{".crt", ".key"} {
		os.Remove(filepath.Join(c.tlsDir, "node3"+ext))
	}
	runCoffer(t, "tls", "cert", "create", "--ca", c.tlsDir, "--node", "node3", "--ip", "127.0.0.1", "--out", c.tlsDir)
	n3.start()
	joinWithToken(t, n1, n3, c.addrs[0])
	waitFor(t, "node3 is back", 10*time.Second, func() bool { return n3.status().Initialized })
	if p := listPeers(t, n1); len(p) != 4 {
		t.Errorf("peers after node3 is back: %v", p)
	}
}

// TestE2E_Cluster_SealedMemberChangesNothing (issue 9): a member that is
// sealed holds a valid certificate but no root key. Its hand-made commands
// (a key delete skipping the deletion window, a keyring overwrite, a
// revocation of another member), sent to the leader, are refused, and no
// node's state changes; the refusal is audited on the leader. A sealed
// leader hands leadership to an unsealed member, and writes keep working.
func TestE2E_Cluster_SealedMemberChangesNothing(t *testing.T) {
	c := newCluster(t, 3)
	bootCluster(c, 3)
	lead, _ := waitLeader(t, c.nodes, 10*time.Second)
	lead.mustCoffer("", "key", "create", "victim")
	before := waitConverged(t, c.nodes, 10*time.Second)
	var sealed *daemon
	for _, d := range c.nodes {
		if d != lead {
			sealed = d
			break
		}
	}
	sealed.mustCoffer("", "operator", "seal")
	thief := newPeerClient(t, c.tlsDir, sealed.nodeID)
	leadAddr := c.addrs[slicesIndex(c.nodes, lead)]
	for name, cmd := range map[string]string{
		"delete":          `{"f":1,"op":"delete","path":"keys/victim","expect":1}`,
		"delete, bad mac": `{"f":2,"mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","cmd":{"f":1,"op":"delete","path":"keys/victim","expect":1}}`,
		"keyring":         `{"f":1,"op":"keyring","expect":1,"keyring":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`,
		"revoke a member": `{"f":1,"op":"enrol","enrol":{"do":"deny","node_id":"` + lead.nodeID + `","now":"2030-01-01T00:00:00Z"}}`,
	} {
		if st, out := thief.rpc(leadAddr, "/rpc/apply", []byte(cmd)); st != http.StatusForbidden {
			t.Errorf("%s from a sealed member: %d %s", name, st, out)
		}
	}
	if r := sealed.coffer("", -1, "key", "delete", "victim"); r.code == 0 {
		t.Error("a sealed node deleted a key")
	}
	after := waitConverged(t, without(c.nodes, sealed), 10*time.Second)
	if len(after) != len(before) || after["victim"] != before["victim"] {
		t.Errorf("state changed: %v → %v", before, after)
	}
	for _, d := range c.nodes {
		if st := d.status(); !st.Initialized {
			t.Errorf("%s: %+v", d.nodeID, st)
		}
	}
	if p := listPeers(t, lead); len(p) != 3 {
		t.Errorf("peers: %v", p)
	}
	if ops := auditOps(t, lead); ops["cluster-refused"] == 0 {
		t.Errorf("no refusal in the leader's audit log: %v", ops)
	}

	// Seal the leader: it hands over to an unsealed member.
	lead.mustCoffer("", "operator", "seal")
	waitFor(t, "an unsealed member leads", 15*time.Second, func() bool {
		st := lead.status()
		return !st.IsLeader && st.LeaderID != "" && st.LeaderID != lead.nodeID
	})
	writer := without(c.nodes, lead, sealed)[0]
	writer.mustCoffer("", "key", "create", "after-handoff")
}

func slicesIndex(ds []*daemon, d *daemon) int {
	for i, x := range ds {
		if x == d {
			return i
		}
	}
	return -1
}

// oldEntries reads the raft log of d (stopped and restarted around the
// copy), as a thief with its disk would, and returns the command entries
// that mention needle, oldest first.
func oldEntries(t *testing.T, d *daemon, needle string) [][]byte {
	t.Helper()
	d.stop()
	src := filepath.Join(d.dir, "data", "raft", "raft.db")
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	d.start()
	cp := filepath.Join(t.TempDir(), "raft.db")
	if err := os.WriteFile(cp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: cp})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	first, _ := store.FirstIndex()
	last, _ := store.LastIndex()
	var out [][]byte
	for i := first; i <= last && i > 0; i++ {
		var l raft.Log
		if store.GetLog(i, &l) == nil && l.Type == raft.LogCommand && bytes.Contains(l.Data, []byte(needle)) {
			out = append(out, l.Data)
		}
	}
	return out
}

// TestE2E_Cluster_NoRollback (issue 9): old, genuine log entries taken
// from a node's disk and sent again by a member's certificate are
// refused: a policy deleted cannot be put back in an old, wider version,
// and a delete replayed does not delete again. A snapshot restore (admin
// only) still goes back, and no command from before it applies after it.
func TestE2E_Cluster_NoRollback(t *testing.T) {
	c := newCluster(t, 3)
	shares := bootCluster(c, 3)
	lead, _ := waitLeader(t, c.nodes, 10*time.Second)
	leadAddr := c.addrs[slicesIndex(c.nodes, lead)]
	pol := func(keys string) string {
		return `{"subjects":{"uids":[4242]},"keys":[` + keys + `],"operations":["unwrap"]}`
	}
	lead.mustCoffer(pol(`"*"`), "policy", "write", "p", "-") // wide
	snap := filepath.Join(t.TempDir(), "wide.snap")
	lead.mustCoffer("", "operator", "raft", "snapshot", "save", snap)
	lead.mustCoffer(pol(`"app"`), "policy", "write", "p", "-") // narrowed
	lead.mustCoffer("", "policy", "delete", "p")
	follower := without(c.nodes, lead)[0]
	old := oldEntries(t, follower, `"policies/p"`)
	follower.unsealWith(shares[:3])
	if len(old) != 3 {
		t.Fatalf("found %d entries for policies/p in the log, want 3", len(old))
	}
	lead, _ = waitLeader(t, c.nodes, 10*time.Second)
	leadAddr = c.addrs[slicesIndex(c.nodes, lead)]
	member := newPeerClient(t, c.tlsDir, without(c.nodes, lead)[0].nodeID)
	for i, e := range old {
		st, out := member.rpc(leadAddr, "/rpc/apply", e)
		if st != http.StatusOK || !strings.Contains(out, "conflict") {
			t.Errorf("replay of entry %d: %d %s, want it committed and refused (conflict)", i, st, out)
		}
	}
	for _, d := range c.nodes {
		waitFor(t, d.nodeID+" is up", 10*time.Second, func() bool { return !d.status().Sealed })
		if st, _, body := d.api("GET", "/v1/policies/p", ""); st != http.StatusNotFound {
			t.Errorf("policy p on %s after the replays: %d %s", d.nodeID, st, body)
		}
	}
	// The admin's way back: restore the snapshot with the wide policy.
	lead.mustCoffer("", "operator", "raft", "snapshot", "restore", snap)
	waitFor(t, "the restored policy everywhere", 10*time.Second, func() bool {
		for _, d := range c.nodes {
			if st, _, body := d.api("GET", "/v1/policies/p", ""); st != 200 || !strings.Contains(string(body), `"*"`) {
				return false
			}
		}
		return true
	})
	// The narrowing and the delete from before the restore do not apply
	// after it (the restore raised the epoch).
	for i, e := range old[1:] {
		if st, out := member.rpc(leadAddr, "/rpc/apply", e); st != http.StatusOK || !strings.Contains(out, "conflict") {
			t.Errorf("replay of entry %d after the restore: %d %s", i+1, st, out)
		}
	}
	if st, _, body := lead.api("GET", "/v1/policies/p", ""); st != 200 || !strings.Contains(string(body), `"*"`) {
		t.Errorf("policy after replays following the restore: %d %s", st, body)
	}
	lead.mustCoffer(pol(`"app"`), "policy", "write", "p", "-") // writes go on
}
