package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

func wrapBatch(t *testing.T, n *testNode, key string, count int) []string {
	t.Helper()
	req := api.WrapRequest{}
	for i := 0; i < count; i++ {
		req.Batch = append(req.Batch, api.WrapItem{Plaintext: []byte("pt")})
	}
	var resp api.WrapBatchResponse
	n.must("POST", "/v1/keys/"+key+"/wrap", req, &resp, 200)
	var out []string
	for _, r := range resp.Batch {
		out = append(out, r.Ciphertext)
	}
	return out
}

func keyVersion(t *testing.T, n *testNode, key string) int {
	t.Helper()
	var k api.Key
	n.must("GET", "/v1/keys/"+key, nil, &k, 200)
	return k.LatestVersion
}

// TestServer_NonceBudgetRotation: a 96-bit-nonce key whose latest
// version reaches the nonce budget (lowered by the test hook) is rotated
// by the leader with an audit event; an xaes256-gcm key is not; old
// ciphertexts still open; the node's count survives a restart.
func TestServer_NonceBudgetRotation(t *testing.T) {
	const budget = 20
	dir := t.TempDir()
	opt := func(o *Options) { o.NonceBudget, o.NonceInterval = budget, 50*time.Millisecond }
	n := startNodeOpts(t, dir, nil, opt)
	shares := n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "hot"}, nil, 201)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "big", Type: api.KeyTypeXAES256GCM}, nil, 201)
	old := wrapBatch(t, n, "hot", budget+5)
	wrapBatch(t, n, "big", budget+5)
	waitFor(t, "the nonce-budget rotation", 10*time.Second, func() bool { return keyVersion(t, n, "hot") == 2 })
	if v := keyVersion(t, n, "big"); v != 1 {
		t.Fatalf("xaes256-gcm key rotated to version %d", v)
	}
	_, entries := auditLog(t, n)
	var ev *audit.Entry
	for _, e := range entries {
		if e.Type == audit.TypeEvent && e.Operation == "rotate" && e.Key == "hot" {
			ev = e
		}
	}
	if ev == nil || ev.Detail["reason"] != "nonce_budget" || ev.KeyVersion != 2 {
		t.Fatalf("no nonce-budget rotation event: %+v", ev)
	}
	for _, ct := range old {
		var r api.UnwrapResult
		n.must("POST", "/v1/keys/hot/unwrap", map[string]string{"ciphertext": ct}, &r, 200)
	}

	// Version 2: 15 encryptions, then a clean restart keeps the count.
	wrapBatch(t, n, "hot", 15)
	n.stop()
	data, err := os.ReadFile(filepath.Join(dir, nonceCountsFile))
	if err != nil {
		t.Fatal(err)
	}
	var f nonceFile
	if err := json.Unmarshal(data, &f); err != nil || len(f.Counts) != 1 || f.Counts[0].Key != "hot" || f.Counts[0].Version != 2 || f.Counts[0].Count != 15 {
		t.Fatalf("persisted counts %s (%v), want hot v2 = 15", data, err)
	}
	n = startNodeOpts(t, dir, nil, opt)
	n.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: shares[0]}, nil, 200)
	// 15 + 5 reaches the budget only if the 15 were remembered.
	wrapBatch(t, n, "hot", 5)
	waitFor(t, "the nonce-budget rotation after a restart", 10*time.Second, func() bool { return keyVersion(t, n, "hot") == 3 })
}
