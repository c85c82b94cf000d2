package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// startCluster starts n nodes, joins them to node 1, inits with shares and
// threshold, and unseals the others. It returns the cluster and the shares.
func startCluster(t *testing.T, n, shares, threshold int) (*testCluster, []string) {
	t.Helper()
	c := newCluster(t, n)
	c.nodes[0].start()
	waitFor(t, "node1 leads", 10*time.Second, func() bool { return c.nodes[0].status().IsLeader })
	var ir api.InitResponse
	json.Unmarshal([]byte(c.nodes[0].mustCoffer("", "--format", "json", "operator", "init", "--shares", fmt.Sprint(shares), "--threshold", fmt.Sprint(threshold))), &ir)
	for _, d := range c.nodes[1:] {
		d := d
		d.start()
		joinWithToken(t, c.nodes[0], d, c.addrs[0]) // after init: with a token
		waitFor(t, d.nodeID+" receives the state", 10*time.Second, func() bool { return d.status().Initialized })
		d.mustCoffer(strings.Join(ir.Shares[:threshold], "\n")+"\n", "operator", "unseal")
	}
	return c, ir.Shares
}

// TestE2E_Cluster_RekeySnapshotRestore: rekey through a follower switches
// every unsealed node to the new root key and retires the old shares; a
// snapshot restores into a fresh node that the new shares unseal.
func TestE2E_Cluster_RekeySnapshotRestore(t *testing.T) {
	c, oldShares := startCluster(t, 3, 3, 2)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	n1.mustCoffer("", "key", "create", "app")
	ct := strings.TrimSpace(n2.mustCoffer(secret1, "wrap", "--key", "app"))
	secretVal := "snapshot-SECRET\x00value-8a1f"
	n2.mustCoffer(secretVal, "secret", "put", "snap-db")

	// Rekey on a follower, with 2 current shares on stdin.
	var rk api.InitResponse
	out := n2.mustCoffer(oldShares[0]+"\n"+oldShares[2]+"\n", "--format", "json", "operator", "rekey", "--shares", "4", "--threshold", "3")
	if err := json.Unmarshal([]byte(out), &rk); err != nil || len(rk.Shares) != 4 {
		t.Fatalf("rekey output %q: %v", out, err)
	}
	// Wrong current shares are refused and change nothing.
	r := n1.coffer(strings.Join(oldShares, "\n")+"\n", -1, "operator", "rekey", "--shares", "3", "--threshold", "2")
	if r.code != 1 || !strings.Contains(r.stderr, api.CodeInvalidShare) {
		t.Fatalf("rekey with retired shares: exit %d %q", r.code, r.stderr)
	}
	for _, d := range c.nodes {
		d := d
		waitFor(t, d.nodeID+" applies the rekey", 10*time.Second, func() bool { st := d.status(); return st.Shares == 4 && st.Threshold == 3 })
		if st := d.status(); st.Sealed {
			t.Fatalf("%s sealed by the rekey", d.nodeID)
		}
		if pt := d.mustCoffer(ct, "unwrap", "--key", "app"); pt != secret1 {
			t.Fatalf("%s cannot unwrap after rekey", d.nodeID)
		}
	}
	// Old shares no longer unseal; new ones do.
	n3.mustCoffer("", "operator", "seal")
	r = n3.coffer(strings.Join(oldShares, "\n")+"\n", -1, "operator", "unseal")
	if r.code != 1 || !strings.Contains(r.stderr, api.CodeInvalidShare) {
		t.Fatalf("unseal with the old shares: exit %d %q", r.code, r.stderr)
	}
	n3.mustCoffer(strings.Join(rk.Shares[1:4], "\n")+"\n", "operator", "unseal")
	if n3.status().Sealed {
		t.Fatal("new shares did not unseal")
	}

	// Snapshot, then restore into a fresh single node.
	snap := filepath.Join(t.TempDir(), "coffer.snap")
	n3.mustCoffer("", "operator", "raft", "snapshot", "save", snap)
	data, _ := os.ReadFile(snap)
	if strings.Contains(string(data), secret1) || strings.Contains(string(data), `"app"`) || strings.Contains(string(data), "snapshot-SECRET") {
		t.Fatal("snapshot holds a plaintext, a secret value or key metadata in clear")
	}
	// An initialised node of another cluster refuses it (a wrong backup);
	// a fresh, uninitialised node takes it.
	other := newDaemon(t, "")
	other.start()
	other.mustCoffer("", "operator", "init", "--shares", "1", "--threshold", "1")
	if r := other.coffer("", -1, "operator", "raft", "snapshot", "restore", snap); r.code != 1 || !strings.Contains(r.stderr, api.CodeBadRequest) {
		t.Fatalf("restore of another cluster's snapshot: exit %d %q", r.code, r.stderr)
	}
	fresh := newDaemon(t, "")
	fresh.start()
	fresh.mustCoffer("", "operator", "raft", "snapshot", "restore", snap)
	// The upload was streamed through temporary files in the data dir;
	// neither the refused nor the taken restore leaves one behind.
	for _, d := range []*daemon{other, fresh} {
		if left, _ := filepath.Glob(filepath.Join(d.dir, "data", ".restore-*")); len(left) > 0 {
			t.Fatalf("restore left %v", left)
		}
	}
	waitFor(t, "the restored node seals (another root key)", 10*time.Second, func() bool { return fresh.status().Sealed })
	if st := fresh.status(); st.ClusterID != n1.status().ClusterID || st.Threshold != 3 {
		t.Fatalf("restored status: %+v", st)
	}
	fresh.mustCoffer(strings.Join(rk.Shares[:3], "\n")+"\n", "operator", "unseal")
	if pt := fresh.mustCoffer(ct, "unwrap", "--key", "app"); pt != secret1 {
		t.Fatal("restored node cannot unwrap")
	}
	if got := fresh.mustCoffer("", "secret", "get", "snap-db"); got != secretVal {
		t.Fatalf("restored node reads the secret as %q", got)
	}
}

// TestE2E_Cluster_QuorumLossRecover: two of three nodes are lost for good;
// `cofferd recover` with a peers file listing the survivor lets it serve
// writes again, with no acknowledged write lost.
func TestE2E_Cluster_QuorumLossRecover(t *testing.T) {
	c, shares := startCluster(t, 3, 3, 2)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	n2.mustCoffer("", "key", "create", "before")
	n3.kill()
	n2.kill()
	n1.stop()

	peers := filepath.Join(n1.dir, "peers.json")
	os.WriteFile(peers, []byte(fmt.Sprintf(`[{"id":"node1","address":%q}]`, c.addrs[0])), 0o600)
	out, err := exec.Command(filepath.Join(binDir, "cofferd"), "recover", "--config", n1.config, "--peers", peers).CombinedOutput()
	if err != nil {
		t.Fatalf("cofferd recover: %v\n%s", err, out)
	}
	n1.start()
	waitFor(t, "the survivor leads", 10*time.Second, func() bool { return n1.status().IsLeader })
	n1.mustCoffer(strings.Join(shares[:2], "\n")+"\n", "operator", "unseal")
	if r := n1.coffer("", -1, "key", "show", "before"); r.code != 0 {
		t.Fatalf("acknowledged key lost: %s", r.stderr)
	}
	n1.mustCoffer("", "key", "create", "after")
	var peersOut struct{ Peers []map[string]any }
	json.Unmarshal([]byte(n1.mustCoffer("", "--format", "json", "operator", "raft", "list-peers")), &peersOut)
	if len(peersOut.Peers) != 1 {
		t.Fatalf("peers after recover: %+v", peersOut)
	}
}
