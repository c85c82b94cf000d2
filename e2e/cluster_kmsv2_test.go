package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/coffer-kms/coffer/api"
)

// kmsClient dials a node's KMS v2 socket (kms.sock in its directory).
func kmsClient(t *testing.T, d *daemon) kmsapi.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(d.dir, "kms.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsapi.NewKeyManagementServiceClient(conn)
}

// TestE2E_Cluster_KMSv2: every node of a three-node cluster is a KMS v2
// plugin for the same key: the key is created once even when all plugins
// start at the same time, a ciphertext made on one node decrypts on the
// others, and after a rotation through the API every node reports the new
// key_id and still decrypts the old ciphertexts.
func TestE2E_Cluster_KMSv2(t *testing.T) {
	c := newCluster(t, 3)
	for _, d := range c.nodes {
		f, err := os.OpenFile(d.config, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("\nkms_v2 {\n  path = \"kms.sock\"\n  key  = \"kubernetes\"\n}\n")
		f.Close()
	}
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	n1.start()
	waitFor(t, "node1 leads", 10*time.Second, func() bool { return n1.status().IsLeader })
	n2.start()
	n3.start()
	n2.mustCoffer("", "operator", "raft", "join", c.addrs[0])
	n3.mustCoffer("", "operator", "raft", "join", c.addrs[0])
	var ir api.InitResponse
	json.Unmarshal([]byte(n1.mustCoffer("", "--format", "json", "operator", "init", "--shares", "1", "--threshold", "1")), &ir)
	for _, d := range []*daemon{n2, n3} {
		d := d
		waitFor(t, d.nodeID+" receives the cluster state", 10*time.Second, func() bool { return d.status().Initialized })
		d.mustCoffer(ir.Shares[0]+"\n", "operator", "unseal")
	}
	clients := []kmsapi.KeyManagementServiceClient{kmsClient(t, n1), kmsClient(t, n2), kmsClient(t, n3)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// All three plugins find the key missing at once: one creates it, the
	// others use it.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, kc := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r *kmsapi.StatusResponse
			r, errs[i] = kc.Status(ctx, &kmsapi.StatusRequest{})
			if errs[i] == nil && r.KeyId != "coffer/kubernetes/v1" {
				t.Errorf("node%d Status key_id = %q", i+1, r.KeyId)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node%d first Status: %v", i+1, err)
		}
	}
	var k api.Key
	json.Unmarshal([]byte(n3.mustCoffer("", "--format", "json", "key", "show", "kubernetes")), &k)
	if k.LatestVersion != 1 {
		t.Fatalf("key after concurrent first use = %+v", k)
	}

	// Made on each node, opened on every other.
	dek := []byte("0123456789abcdef0123456789abcdef")
	var made []*kmsapi.EncryptResponse
	for i, kc := range clients {
		r, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Uid: "cluster-" + string(rune('a'+i)), Plaintext: dek})
		if err != nil {
			t.Fatalf("Encrypt on node%d: %v", i+1, err)
		}
		made = append(made, r)
	}
	decryptAll := func(what string) {
		t.Helper()
		for i, e := range made {
			for j, kc := range clients {
				r, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "d", Ciphertext: e.Ciphertext, KeyId: e.KeyId, Annotations: e.Annotations})
				if err != nil || !bytes.Equal(r.Plaintext, dek) {
					t.Fatalf("%s: ciphertext from node%d on node%d: %v", what, i+1, j+1, err)
				}
			}
		}
	}
	decryptAll("before rotation")

	// Rotate through node 2's API: every plugin reports the new key_id
	// (after replication), encrypts under it, and still opens the old
	// ciphertexts.
	n2.mustCoffer("", "key", "rotate", "kubernetes")
	for i, kc := range clients {
		waitFor(t, "node"+string(rune('1'+i))+" reports key_id v2", 10*time.Second, func() bool {
			r, err := kc.Status(ctx, &kmsapi.StatusRequest{})
			return err == nil && r.KeyId == "coffer/kubernetes/v2"
		})
		r, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Uid: "after-rotation", Plaintext: dek})
		if err != nil || r.KeyId != "coffer/kubernetes/v2" {
			t.Fatalf("Encrypt on node%d after rotation: %v %v", i+1, r, err)
		}
		made = append(made, r)
	}
	decryptAll("after rotation")
	for _, d := range c.nodes {
		data, _ := os.ReadFile(filepath.Join(d.dir, "data", "audit.log"))
		if !strings.Contains(string(data), `"operation":"kms_decrypt"`) {
			t.Errorf("%s audit log has no kms_decrypt entry", d.nodeID)
		}
	}
}
