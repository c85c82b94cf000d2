package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// TestE2E_Cluster_NonceBudget: three real nodes with the nonce budget
// lowered (test hook COFFER_NONCE_BUDGET) to 1,000 encryptions per
// version. Each node wraps 400 under one aes256-gcm key: no node alone
// reaches the budget, the cluster's sum does, so the counts must be
// reported and summed for the leader to rotate. An xaes256-gcm key that
// gets the same traffic is not rotated; the old ciphertexts still unwrap
// on every node.
func TestE2E_Cluster_NonceBudget(t *testing.T) {
	c := newCluster(t, 3)
	for _, d := range c.nodes {
		d.env = append(d.env, "COFFER_NONCE_BUDGET=1000")
	}
	c.nodes[0].start()
	waitFor(t, "node1 leads", 10*time.Second, func() bool { return c.nodes[0].status().IsLeader })
	var ir api.InitResponse
	json.Unmarshal([]byte(c.nodes[0].mustCoffer("", "--format", "json", "operator", "init", "--shares", "1", "--threshold", "1")), &ir)
	for _, d := range c.nodes[1:] {
		d := d
		d.start()
		joinWithToken(t, c.nodes[0], d, c.addrs[0])
		waitFor(t, d.nodeID+" receives the state", 10*time.Second, func() bool { return d.status().Initialized })
		d.mustCoffer(ir.Shares[0]+"\n", "operator", "unseal")
	}
	c.nodes[1].mustCoffer("", "key", "create", "hot")
	c.nodes[1].mustCoffer("", "key", "create", "big", "--type", "xaes256-gcm")

	batch := func(n int) string {
		items := make([]string, n)
		for i := range items {
			items[i] = `{"plaintext":"` + b64(fmt.Sprint("item ", i)) + `"}`
		}
		return `{"batch":[` + strings.Join(items, ",") + `]}`
	}
	var olds []string
	for _, d := range c.nodes {
		d := d
		waitFor(t, d.nodeID+" sees the keys", 10*time.Second, func() bool {
			st, _, _ := d.api("GET", "/v1/keys/big", "")
			return st == 200
		})
		for _, key := range []string{"hot", "big"} {
			st, _, body := d.api("POST", "/v1/keys/"+key+"/wrap", batch(400))
			if st != 200 {
				t.Fatalf("%s: wrap %s: %d %s", d.nodeID, key, st, body)
			}
			var r api.WrapBatchResponse
			json.Unmarshal(body, &r)
			if key == "hot" {
				olds = append(olds, r.Batch[0].Ciphertext)
			}
		}
	}
	version := func(d *daemon, key string) int {
		st, _, body := d.api("GET", "/v1/keys/"+key, "")
		var k api.Key
		json.Unmarshal(body, &k)
		if st != 200 {
			t.Fatalf("%s: get %s: %d %s", d.nodeID, key, st, body)
		}
		return k.LatestVersion
	}
	took := waitFor(t, "the leader rotates hot at the cluster's nonce budget", 30*time.Second, func() bool {
		for _, d := range c.nodes {
			if version(d, "hot") != 2 {
				return false
			}
		}
		return true
	})
	t.Logf("3 × 400 encryptions against a budget of 1,000: rotated on every node within %v", took.Round(time.Millisecond))
	for _, d := range c.nodes {
		if v := version(d, "big"); v != 1 {
			t.Errorf("%s: the xaes256-gcm key was rotated (version %d)", d.nodeID, v)
		}
		for _, ct := range olds {
			if st, _, body := d.api("POST", "/v1/keys/hot/unwrap", `{"ciphertext":"`+ct+`"}`); st != 200 {
				t.Errorf("%s: a version-1 ciphertext after the rotation: %d %s", d.nodeID, st, body)
			}
		}
	}
}
