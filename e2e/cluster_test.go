package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runCoffer runs the CLI with no daemon (tls commands).
func runCoffer(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "coffer"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("coffer %v: %v\n%s", args, err, out)
	}
	return string(out)
}

type testCluster struct {
	t      *testing.T
	nodes  []*daemon
	addrs  []string
	tlsDir string
}

// newCluster makes certificates with the CLI and configs for n nodes; node
// 0 bootstraps. Nothing is started.
func newCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tlsDir: t.TempDir()}
	runCoffer(t, "tls", "ca", "create", "--out", c.tlsDir)
	for i := 0; i < n; i++ {
		c.addNode(t, fmt.Sprintf("node%d", i+1), i == 0)
	}
	return c
}

// addNode makes a certificate and a config for one more node (not started).
func (c *testCluster) addNode(t *testing.T, id string, bootstrap bool) *daemon {
	t.Helper()
	runCoffer(t, "tls", "cert", "create", "--ca", c.tlsDir, "--node", id, "--ip", "127.0.0.1", "--out", c.tlsDir)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := newDaemonID(t, id, fmt.Sprintf(`
cluster {
  addr          = %q
  bootstrap     = %v
  tls_cert_file = %q
  tls_key_file  = %q
  tls_ca_file   = %q
}
`, addr, bootstrap, filepath.Join(c.tlsDir, id+".crt"), filepath.Join(c.tlsDir, id+".key"), filepath.Join(c.tlsDir, "ca.crt")))
	c.nodes = append(c.nodes, d)
	c.addrs = append(c.addrs, addr)
	return d
}

func newDaemonID(t *testing.T, id, extraHCL string) *daemon {
	d := newDaemon(t, "")
	d.nodeID = id
	d.writeConfig(extraHCL)
	return d
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func (c *testCluster) leader(among ...*daemon) *daemon {
	for _, d := range among {
		if st := d.status(); st.IsLeader {
			return d
		}
	}
	return nil
}

// TestE2E_Cluster_ThreeNodes: three real processes over mutual TLS on
// loopback, built with the CLI only: certificates, bootstrap, join, init,
// unseal; writes on any node, crypto on every node; the leader killed and
// replaced within seconds with no acknowledged write lost; the killed node
// catches up; a peer removed.
func TestE2E_Cluster_ThreeNodes(t *testing.T) {
	c := newCluster(t, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	n1.start()
	waitFor(t, "node1 leads", 10*time.Second, func() bool { return n1.status().IsLeader })
	n2.start()
	n3.start()
	// Join before init on one node, after init on the other.
	n2.mustCoffer("", "operator", "raft", "join", c.addrs[0])

	var ir api.InitResponse
	json.Unmarshal([]byte(n1.mustCoffer("", "--format", "json", "operator", "init", "--shares", "5", "--threshold", "3")), &ir)
	shares := ir.Shares
	joinWithToken(t, n1, n3, c.addrs[1]) // via a follower, with a token (after init)
	for _, d := range []*daemon{n2, n3} {
		d := d
		waitFor(t, d.nodeID+" receives the cluster state", 10*time.Second, func() bool { return d.status().Initialized })
		if st := d.status(); !st.Sealed || st.ClusterID != n1.status().ClusterID {
			t.Fatalf("%s after join: %+v", d.nodeID, st)
		}
		d.mustCoffer(strings.Join(shares[1:4], "\n")+"\n", "operator", "unseal")
	}
	var peers struct{ Peers []map[string]any }
	json.Unmarshal([]byte(n3.mustCoffer("", "--format", "json", "operator", "raft", "list-peers")), &peers)
	if len(peers.Peers) != 3 {
		t.Fatalf("peers = %+v", peers)
	}

	// A key created on node 2 (a follower: forwarded), wrapped on node 3,
	// unwrapped on node 1.
	n2.mustCoffer("", "key", "create", "shared")
	ct := strings.TrimSpace(n3.mustCoffer(secret1, "wrap", "--key", "shared"))
	if pt := n1.mustCoffer(ct, "unwrap", "--key", "shared"); pt != secret1 {
		t.Fatalf("unwrap on node1 = %q", pt)
	}
	// A rotation through node 3, a v2 ciphertext from node 3, unwrapped at
	// once on node 2, which may not have applied the rotation yet: it waits
	// for it rather than failing.
	n3.mustCoffer("", "key", "rotate", "shared")
	ct2 := strings.TrimSpace(n3.mustCoffer(secret2, "wrap", "--key", "shared"))
	if !strings.HasPrefix(ct2, "coffer:v2:") {
		t.Fatalf("wrap after a rotation: %q", ct2)
	}
	if pt := n2.mustCoffer(ct2, "unwrap", "--key", "shared"); pt != secret2 {
		t.Fatalf("unwrap of a fresh version on another node = %q", pt)
	}
	// Key metadata reads are linearizable on any node.
	var k api.Key
	json.Unmarshal([]byte(n1.mustCoffer("", "--format", "json", "key", "show", "shared")), &k)
	if k.LatestVersion != 2 {
		t.Fatalf("node1 sees version %d after the rotation", k.LatestVersion)
	}

	// A secret written on a follower (forwarded), read at once on another
	// node (linearizable read), then versioned with cas through a third.
	secretVal := "cluster\x00db-pass\n"
	follower := c.nodes[0]
	for _, d := range c.nodes {
		if !d.status().IsLeader {
			follower = d
			break
		}
	}
	follower.mustCoffer(secretVal, "secret", "put", "cluster-db", "--cas", "0")
	for _, d := range c.nodes {
		if got := d.mustCoffer("", "secret", "get", "cluster-db"); got != secretVal {
			t.Fatalf("%s reads secret %q", d.nodeID, got)
		}
	}
	n3.mustCoffer("v2", "secret", "put", "cluster-db", "--cas", "1")

	// A stream of acknowledged writes through all nodes, then SIGKILL the
	// leader.
	var acked []string
	for i := 0; i < 15; i++ {
		name := fmt.Sprintf("k%02d", i)
		c.nodes[i%3].mustCoffer("", "key", "create", name)
		acked = append(acked, name)
	}
	lead := c.leader(c.nodes...)
	if lead == nil {
		t.Fatal("no leader")
	}
	var survivors []*daemon
	for _, d := range c.nodes {
		if d != lead {
			survivors = append(survivors, d)
		}
	}
	lead.kill()
	took := waitFor(t, "a new leader", 5*time.Second, func() bool { return c.leader(survivors...) != nil })
	t.Logf("new leader after %v", took)
	// The new leader recorded the change in its audit log.
	newLead := c.leader(survivors...)
	waitFor(t, "a leadership audit event", 5*time.Second, func() bool {
		data, _ := os.ReadFile(filepath.Join(newLead.dir, "data", "audit.log"))
		return strings.Contains(string(data), `"operation":"leadership"`) && strings.Contains(string(data), `"is_leader":"true"`)
	})
	// Writes go on through either survivor.
	for i, d := range survivors {
		name := fmt.Sprintf("after%d", i)
		d.mustCoffer("", "key", "create", name)
		acked = append(acked, name)
	}
	// The secret survives the leader's death, and takes a version there.
	survivors[0].mustCoffer("v3", "secret", "put", "cluster-db", "--cas", "2")
	for _, d := range survivors {
		if got := d.mustCoffer("", "secret", "get", "cluster-db", "--version", "1"); got != secretVal {
			t.Errorf("%s after the leader's death reads v1 %q", d.nodeID, got)
		}
		if got := d.mustCoffer("", "secret", "get", "cluster-db"); got != "v3" {
			t.Errorf("%s after the leader's death reads %q", d.nodeID, got)
		}
	}
	for _, d := range survivors {
		var kl api.KeyList
		json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "key", "list")), &kl)
		have := map[string]bool{}
		for _, k := range kl.Keys {
			have[k] = true
		}
		for _, k := range acked {
			if !have[k] {
				t.Errorf("%s lost acknowledged key %s", d.nodeID, k)
			}
		}
	}

	// The killed node restarts, catches up, and (Shamir only) is unsealed.
	lead.start()
	lead.mustCoffer(strings.Join(shares[:3], "\n")+"\n", "operator", "unseal")
	waitFor(t, lead.nodeID+" catches up", 10*time.Second, func() bool {
		r := lead.coffer("", -1, "key", "show", "after1")
		return r.code == 0
	})
	if pt := lead.mustCoffer(ct2, "unwrap", "--key", "shared"); pt != secret2 {
		t.Fatal("restarted node cannot unwrap")
	}

	// Remove a peer; the other two keep serving writes.
	victim := survivors[1]
	survivors[0].mustCoffer("", "operator", "raft", "remove-peer", victim.nodeID)
	victim.stop()
	json.Unmarshal([]byte(lead.mustCoffer("", "--format", "json", "operator", "raft", "list-peers")), &peers)
	if len(peers.Peers) != 2 {
		t.Fatalf("after remove-peer: %+v", peers)
	}
	waitFor(t, "a leader among the two", 10*time.Second, func() bool { return c.leader(lead, survivors[0]) != nil })
	lead.mustCoffer("", "key", "create", "after-remove")
	if r := survivors[0].coffer("", -1, "key", "show", "after-remove"); r.code != 0 {
		t.Fatalf("write after remove-peer not replicated: %s", r.stderr)
	}
}
