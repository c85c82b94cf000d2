package kmsv2

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	envelopekmsv2 "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmsservice "k8s.io/kms/pkg/service"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

var (
	buildOnce sync.Once
	cofferd   string
	buildErr  error
)

// build compiles cofferd from this repository (the replace in go.mod).
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "coffer-kmsv2-bin")
		if err != nil {
			buildErr = err
			return
		}
		cofferd = filepath.Join(dir, "cofferd")
		// Built in the main module (../..), with its own go.mod's versions.
		cmd := exec.Command("go", "build", "-o", cofferd, "./cmd/cofferd")
		cmd.Dir = filepath.Join("..", "..")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build cofferd: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return cofferd
}

// node is a cofferd process with the kms_v2 socket, initialised and
// unsealed (soft device, dev mode).
type node struct {
	t       *testing.T
	dir     string
	apiSock string
	kmsSock string
	http    *http.Client
	cmd     *exec.Cmd
	stderr  *bytes.Buffer
}

func startNode(t *testing.T) *node {
	t.Helper()
	bin := build(t)
	dir, err := os.MkdirTemp("", "coffer-kmsv2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &node{t: t, dir: dir, apiSock: filepath.Join(dir, "api.sock"), kmsSock: filepath.Join(dir, "kms-v2.sock")}
	conf := fmt.Sprintf(`node_id = "k1"
data_dir = %q
dev = true
listener "unix" {
  path = %q
}
admin {
  uids = [%d]
}
seal "soft" {
  key_file = %q
}
kms_v2 {
  path = %q
  key  = "kubernetes"
}
`, filepath.Join(dir, "data"), n.apiSock, os.Getuid(), filepath.Join(dir, "dev-seal.key"), n.kmsSock)
	cfgPath := filepath.Join(dir, "cofferd.hcl")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n.stderr = &bytes.Buffer{}
	n.cmd = exec.Command(bin, "--config", cfgPath)
	n.cmd.Stderr = n.stderr
	n.cmd.Stdout = n.stderr
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { n.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			n.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("cofferd output:\n%s", n.stderr.String())
		}
		if _, err := os.Stat(n.kmsSock); !os.IsNotExist(err) {
			t.Errorf("the KMS socket is still there after cofferd stopped: %v", err)
		}
	})
	n.http = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", n.apiSock)
	}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("unix", n.apiSock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cofferd never served: %v\n%s", err, n.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.must("POST", "/v1/sys/init", api.InitRequest{Shares: 1, Threshold: 1}, 200)
	return n
}

func (n *node) must(method, path string, body any, want int) {
	n.t.Helper()
	var rd io.Reader
	if body != nil {
		j, _ := json.Marshal(body)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, "http://coffer"+path, rd)
	resp, err := n.http.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		n.t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, data)
	}
}

// secret is a Secret-sized payload (a few KiB, as a TLS Secret would be).
func secret(t *testing.T) []byte {
	b := make([]byte, 6<<10)
	rand.Read(b)
	return b
}

// stateFor is what the API server's KMS v2 probe builds after a Status: a
// fresh DEK seed encrypted by the plugin.
func stateFor(t *testing.T, ctx context.Context, svc kmsservice.Service, uid string) envelopekmsv2.State {
	t.Helper()
	tr, obj, cacheKey, err := envelopekmsv2.GenerateTransformer(ctx, uid, svc, true)
	if err != nil {
		t.Fatalf("GenerateTransformer: %v", err)
	}
	return envelopekmsv2.State{
		Transformer:                           tr,
		EncryptedObjectKeyID:                  obj.KeyID,
		EncryptedObjectEncryptedDEKSource:     obj.EncryptedDEKSource,
		EncryptedObjectAnnotations:            obj.Annotations,
		EncryptedObjectEncryptedDEKSourceType: obj.EncryptedDEKSourceType,
		UID:                                   uid,
		ExpirationTimestamp:                   time.Now().Add(time.Hour),
		CacheKey:                              cacheKey,
		KMSProviderName:                       "coffer",
	}
}

// TestAPIServerEnvelope drives the plugin with the kube-apiserver's KMS v2
// gRPC client and envelope transformer: a Secret-sized value goes through
// TransformToStorage and back (also through a fresh transformer, whose
// empty DEK cache makes it call Decrypt), and a key rotation changes
// key_id while old values stay readable until min_decryption_version
// retires their version.
func TestAPIServerEnvelope(t *testing.T) {
	n := startNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc, err := envelopekmsv2.NewGRPCService(ctx, "unix://"+n.kmsSock, "coffer", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st, err := svc.Status(ctx)
	if err != nil || st.Healthz != "ok" || st.Version != "v2" || st.KeyID != "coffer/kubernetes/v1" {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	state := stateFor(t, ctx, svc, "uid-initial")
	var mu sync.Mutex
	stateFunc := func() (envelopekmsv2.State, error) {
		mu.Lock()
		defer mu.Unlock()
		return state, nil
	}
	tr := envelopekmsv2.NewEnvelopeTransformer(svc, "coffer", stateFunc, "apiserver-a")
	dataCtx := value.DefaultContext("/registry/secrets/default/tls")
	plain := secret(t)
	stored, err := tr.TransformToStorage(ctx, plain, dataCtx)
	if err != nil {
		t.Fatalf("TransformToStorage: %v", err)
	}
	if bytes.Contains(stored, plain[:64]) {
		t.Fatal("stored value contains the plaintext")
	}
	// A second API server (fresh transformer, empty cache): it must ask the
	// plugin to decrypt the DEK seed.
	fresh := func() value.Transformer {
		return envelopekmsv2.NewEnvelopeTransformer(svc, "coffer", stateFunc, "apiserver-b")
	}
	got, _, err := fresh().TransformFromStorage(ctx, stored, dataCtx)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("TransformFromStorage: %v (equal %v)", err, bytes.Equal(got, plain))
	}
	// Another object's context does not open it (the API server's own AAD).
	if _, _, err := fresh().TransformFromStorage(ctx, stored, value.DefaultContext("/registry/secrets/default/other")); err == nil {
		t.Fatal("value opened under another object's key")
	}

	// Rotation: Status reports the new key_id; the API server makes a new
	// DEK seed; old values remain readable.
	n.must("POST", "/v1/keys/kubernetes/rotate", nil, 200)
	st, err = svc.Status(ctx)
	if err != nil || st.KeyID != "coffer/kubernetes/v2" {
		t.Fatalf("Status after rotation = %+v, %v", st, err)
	}
	mu.Lock()
	state = stateFor(t, ctx, svc, "uid-rotated")
	mu.Unlock()
	if state.EncryptedObjectKeyID != "coffer/kubernetes/v2" {
		t.Fatalf("new DEK seed under key_id %q", state.EncryptedObjectKeyID)
	}
	plain2 := secret(t)
	stored2, err := tr.TransformToStorage(ctx, plain2, dataCtx)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct{ stored, plain []byte }{{stored, plain}, {stored2, plain2}} {
		got, stale, err := fresh().TransformFromStorage(ctx, c.stored, dataCtx)
		if err != nil || !bytes.Equal(got, c.plain) {
			t.Fatalf("value %d after rotation: %v", i, err)
		}
		if i == 0 && !stale {
			t.Error("a value under the old key_id is not reported stale (storage migration would not rewrite it)")
		}
	}
	// Retire version 1: the old value no longer opens, the new one does.
	n.must("PATCH", "/v1/keys/kubernetes", map[string]int{"min_decryption_version": 2}, 200)
	if _, _, err := fresh().TransformFromStorage(ctx, stored, dataCtx); err == nil {
		t.Fatal("a value under a retired key version still opened")
	}
	if got, _, err := fresh().TransformFromStorage(ctx, stored2, dataCtx); err != nil || !bytes.Equal(got, plain2) {
		t.Fatalf("current value after retiring v1: %v", err)
	}

	// The API server's request uids are in the audit log.
	n.findAudit(func(e map[string]any) bool {
		d, _ := e["detail"].(map[string]any)
		return e["operation"] == "kms_encrypt" && d["uid"] == "uid-rotated" && e["outcome"] == audit.OutcomeOK
	})
	n.findAudit(func(e map[string]any) bool {
		d, _ := e["detail"].(map[string]any)
		return e["operation"] == "kms_decrypt" && d["uid"] != nil && d["uid"] != "" && e["outcome"] == audit.OutcomeOK
	})
}

// TestEncryptionConfigLoader: the kube-apiserver's EncryptionConfiguration
// loader accepts a config naming the socket (apiVersion v2), its KMS health
// check passes, and the secrets transformer it builds round-trips a value.
func TestEncryptionConfigLoader(t *testing.T) {
	n := startNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conf := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - kms:
          apiVersion: v2
          name: coffer
          endpoint: unix://%s
          timeout: 3s
      - identity: {}
`, n.kmsSock)
	path := filepath.Join(n.dir, "encryption-config.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ec, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "apiserver-test")
	if err != nil {
		t.Fatalf("LoadEncryptionConfig: %v", err)
	}
	tr := ec.Transformers[schema.GroupResource{Resource: "secrets"}]
	if tr == nil {
		t.Fatalf("no transformer for secrets: %v", ec.Transformers)
	}
	if len(ec.HealthChecks) != 1 {
		t.Fatalf("%d health checks", len(ec.HealthChecks))
	}
	// The loader's probe fetches the first Status and DEK seed in the
	// background: poll until writes work.
	dataCtx := value.DefaultContext("/registry/secrets/kube-system/token")
	plain := secret(t)
	var stored []byte
	deadline := time.Now().Add(60 * time.Second)
	for {
		stored, err = tr.TransformToStorage(ctx, plain, dataCtx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TransformToStorage never worked: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !bytes.HasPrefix(stored, []byte("k8s:enc:kms:v2:coffer:")) {
		t.Fatalf("stored value has prefix %q", stored[:min(len(stored), 24)])
	}
	got, _, err := tr.TransformFromStorage(ctx, stored, dataCtx)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("TransformFromStorage: %v", err)
	}
	if err := ec.HealthChecks[0].Check(httptest.NewRequest("GET", "/healthz", nil)); err != nil {
		t.Fatalf("KMS health check: %v", err)
	}
	if !strings.Contains(ec.HealthChecks[0].Name(), "kms-provider") {
		t.Errorf("health check name %q", ec.HealthChecks[0].Name())
	}
}

func (n *node) findAudit(match func(map[string]any) bool) {
	n.t.Helper()
	path := filepath.Join(n.dir, "data", "audit.log")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if f, err := os.Open(path); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var e map[string]any
				if json.Unmarshal(sc.Bytes(), &e) == nil && match(e) {
					f.Close()
					return
				}
			}
			f.Close()
		}
		if time.Now().After(deadline) {
			n.t.Fatal("no matching audit entry in " + path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
