package kmsv2_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/config"
)

// node is a real cofferd node (daemon.Server) on real unix sockets: the API
// socket and the KMS v2 socket.
type node struct {
	t      testing.TB
	cfg    *config.Config
	srv    *daemon.Server
	http   *http.Client
	kms    kmsapi.KeyManagementServiceClient
	conn   *grpc.ClientConn
	logs   *lockedBuffer
	cancel context.CancelFunc
	done   chan struct{}
	share  string
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startNode starts a node with a kms_v2 block for key "kubernetes" (mutate
// may change the config) and, unless init is false, initialises it with
// one share.
func startNode(t testing.TB, mutate func(*config.Config), initialise bool) *node {
	t.Helper()
	dir, err := os.MkdirTemp("", "coffer-kms")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755) // a uid-65534 client must reach the sockets
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := config.DefaultConfig()
	cfg.NodeID = "n1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Listener.Path = filepath.Join(dir, "api.sock")
	cfg.KMSv2 = &config.KMSv2Config{Path: filepath.Join(dir, "kms.sock"), Mode: 0o600, Key: "kubernetes"}
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: logs})
	srv, err := daemon.New(daemon.Options{
		Config: cfg, Logger: log, Version: "test",
		ExtraAdminUIDs:      []uint32{uint32(os.Getuid())},
		DeviceCheckInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{t: t, cfg: cfg, srv: srv, logs: logs, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		if err := srv.Serve(ctx); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	waitFile(t, cfg.Listener.Path)
	waitFile(t, cfg.KMSv2.Path)
	n.http = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.Listener.Path)
	}}}
	n.conn, n.kms = dialKMS(t, cfg.KMSv2.Path)
	t.Cleanup(n.stop)
	if initialise {
		var resp api.InitResponse
		n.must("POST", "/v1/sys/init", api.InitRequest{Shares: 1, Threshold: 1}, &resp, 200)
		n.share = resp.Shares[0]
	}
	return n
}

func dialKMS(t testing.TB, path string) (*grpc.ClientConn, kmsapi.KeyManagementServiceClient) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, kmsapi.NewKeyManagementServiceClient(conn)
}

// waitFile waits until something accepts on the socket at path. (Its file
// exists from bind(2) on, a moment before listen(2): a connection in
// between is refused.)
func waitFile(t testing.TB, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *node) stop() {
	n.cancel()
	<-n.done
}

// do sends an API request as this process.
func (n *node) do(method, path string, body, out any) int {
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
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		json.Unmarshal(data, out)
	}
	return resp.StatusCode
}

func (n *node) must(method, path string, body, out any, want int) {
	n.t.Helper()
	if got := n.do(method, path, body, out); got != want {
		n.t.Fatalf("%s %s: %d, want %d", method, path, got, want)
	}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// wantCode checks that err is a gRPC status with code c.
func wantCode(t testing.TB, what string, err error, c codes.Code) {
	t.Helper()
	if got := status.Code(err); got != c {
		t.Fatalf("%s: %v (code %s), want code %s", what, err, got, c)
	}
}

// statusOK polls Status until it answers ok (the node may still be
// catching up), and returns its key_id.
func (n *node) statusOK() string {
	n.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := n.kms.Status(ctx(n.t), &kmsapi.StatusRequest{})
		if err == nil && r.Healthz == "ok" && r.Version == "v2" && r.KeyId != "" {
			return r.KeyId
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("Status never ok: %v %v", r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// auditEntries reads the node's audit log.
func (n *node) auditEntries() []audit.Entry {
	n.t.Helper()
	f, err := os.Open(n.cfg.AuditPath())
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		e, err := audit.ParseLine(sc.Bytes())
		if err != nil {
			n.t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, *e)
	}
	return out
}

// findAudit polls the audit log for an entry that match accepts.
func (n *node) findAudit(what string, match func(audit.Entry) bool) audit.Entry {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, e := range n.auditEntries() {
			if match(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("no audit entry: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *node) waitLog(substr string) {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(n.logs.String(), substr) {
		if time.Now().After(deadline) {
			n.t.Fatalf("log never said %q", substr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *node) encrypt(uid string, pt []byte) *kmsapi.EncryptResponse {
	n.t.Helper()
	r, err := n.kms.Encrypt(ctx(n.t), &kmsapi.EncryptRequest{Uid: uid, Plaintext: pt})
	if err != nil {
		n.t.Fatalf("Encrypt: %v", err)
	}
	return r
}

func (n *node) decrypt(uid string, e *kmsapi.EncryptResponse) ([]byte, error) {
	r, err := n.kms.Decrypt(ctx(n.t), &kmsapi.DecryptRequest{Uid: uid, Ciphertext: e.Ciphertext, KeyId: e.KeyId, Annotations: e.Annotations})
	if err != nil {
		return nil, err
	}
	return r.Plaintext, nil
}

func short(b []byte) string {
	if len(b) > 32 {
		return fmt.Sprintf("%q…", b[:32])
	}
	return fmt.Sprintf("%q", b)
}
