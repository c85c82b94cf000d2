package kmsv2_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/daemon/kmsv2"
)

func TestKMSv2_RoundTripKeyCreatedAndAudited(t *testing.T) {
	n := startNode(t, nil, true)
	// The key does not exist yet: Status creates it (through raft) and is ok.
	if got, exp := n.statusOK(), "coffer/kubernetes/v1"; got != exp {
		t.Fatalf("key_id = %q, want %q", got, exp)
	}
	var k api.Key
	n.must("GET", "/v1/keys/kubernetes", nil, &k, 200)
	if k.LatestVersion != 1 {
		t.Fatalf("key = %+v", k)
	}
	n.findAudit("create by the plugin", func(e audit.Entry) bool {
		return e.Operation == "create" && e.Key == "kubernetes" && e.Detail["via"] == "kms_v2" && e.Outcome == audit.OutcomeOK && e.Caller != nil && e.Caller.UID == uint32(os.Getuid())
	})

	dek := make([]byte, 32)
	rand.Read(dek)
	enc := n.encrypt("uid-enc-1", dek)
	if enc.KeyId != "coffer/kubernetes/v1" || !bytes.HasPrefix(enc.Ciphertext, []byte("coffer:v1:")) || string(enc.Annotations[kmsv2.AnnotationFormat]) != "1" {
		t.Fatalf("Encrypt = key_id %q ct %s ann %v", enc.KeyId, short(enc.Ciphertext), enc.Annotations)
	}
	if bytes.Contains(enc.Ciphertext, dek) {
		t.Fatal("ciphertext contains the plaintext")
	}
	pt, err := n.decrypt("uid-dec-1", enc)
	if err != nil || !bytes.Equal(pt, dek) {
		t.Fatalf("Decrypt = %v, %v", short(pt), err)
	}
	for _, c := range []struct{ op, uid string }{{kmsv2.OpEncrypt, "uid-enc-1"}, {kmsv2.OpDecrypt, "uid-dec-1"}} {
		e := n.findAudit(c.op, func(e audit.Entry) bool { return e.Operation == c.op && e.Detail["uid"] == c.uid })
		if e.Outcome != audit.OutcomeOK || e.Key != "kubernetes" || e.KeyVersion != 1 || e.Caller == nil || e.Type != audit.TypeRequest || e.RequestID == "" {
			t.Errorf("%s entry = %+v", c.op, e)
		}
	}
	// The audit log chain still verifies with the plugin's entries in it.
	if _, err := audit.VerifyFiles(n.cfg.AuditPath()); err != nil {
		t.Fatalf("audit verify: %v", err)
	}
	// The DEK is in no log line and no audit entry, in any encoding.
	auditLog, _ := os.ReadFile(n.cfg.AuditPath())
	for _, enc := range []string{string(dek), hex.EncodeToString(dek), base64.StdEncoding.EncodeToString(dek), base64.RawURLEncoding.EncodeToString(dek)} {
		if strings.Contains(n.logs.String(), enc) || strings.Contains(string(auditLog), enc) {
			t.Fatal("the DEK appears in the log or the audit log")
		}
	}
}

func TestKMSv2_Rotation(t *testing.T) {
	n := startNode(t, nil, true)
	n.statusOK()
	dek1 := []byte("dek-one-0123456789abcdef01234567")
	old := n.encrypt("u1", dek1)
	n.must("POST", "/v1/keys/kubernetes/rotate", nil, nil, 200)
	if got, exp := n.statusOK(), "coffer/kubernetes/v2"; got != exp {
		t.Fatalf("after rotation Status key_id = %q, want %q", got, exp)
	}
	cur := n.encrypt("u2", []byte("dek-two"))
	if cur.KeyId != "coffer/kubernetes/v2" || !bytes.HasPrefix(cur.Ciphertext, []byte("coffer:v2:")) {
		t.Fatalf("after rotation Encrypt key_id = %q", cur.KeyId)
	}
	if pt, err := n.decrypt("u3", old); err != nil || !bytes.Equal(pt, dek1) {
		t.Fatalf("old ciphertext after rotation: %v %v", short(pt), err)
	}
	// min_decryption_version above the old version: the old ciphertext is
	// refused, the new one still opens.
	two := 2
	n.must("PATCH", "/v1/keys/kubernetes", api.UpdateKeyRequest{MinDecryptionVersion: &two}, nil, 200)
	_, err := n.decrypt("u4", old)
	wantCode(t, "Decrypt below min_decryption_version", err, codes.FailedPrecondition)
	if pt, err := n.decrypt("u5", cur); err != nil || string(pt) != "dek-two" {
		t.Fatalf("current ciphertext: %v %v", short(pt), err)
	}
	e := n.findAudit("refused decrypt", func(e audit.Entry) bool { return e.Operation == kmsv2.OpDecrypt && e.Detail["uid"] == "u4" })
	if e.Outcome != audit.OutcomeError || e.ErrorCode != api.CodeVersionDisabled || e.KeyVersion != 1 {
		t.Fatalf("entry of the refused decrypt = %+v", e)
	}
}

// TestKMSv2_SealedAndDeviceFailure: a sealed node answers Unavailable to
// every call and Status errors; a failing seal device makes Status fail
// while the keys still work; both recover.
func TestKMSv2_SealedAndDeviceFailure(t *testing.T) {
	var keyFile string
	n := startNode(t, func(c *config.Config) {
		keyFile = filepath.Join(filepath.Dir(c.DataDir), "dev-seal.key")
		c.Dev = true
		c.Seal = &config.SealConfig{Type: "soft", Soft: &config.SoftSealConfig{KeyFile: keyFile}}
	}, true)
	n.statusOK()
	enc := n.encrypt("u", []byte("secret-dek"))

	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	_, err := n.kms.Status(ctx(t), &kmsapi.StatusRequest{})
	wantCode(t, "Status sealed", err, codes.Unavailable)
	_, err = n.kms.Encrypt(ctx(t), &kmsapi.EncryptRequest{Uid: "u", Plaintext: []byte("x")})
	wantCode(t, "Encrypt sealed", err, codes.Unavailable)
	_, err = n.decrypt("u", enc)
	wantCode(t, "Decrypt sealed", err, codes.Unavailable)
	n.must("POST", "/v1/sys/unseal", api.UnsealRequest{Share: n.share}, nil, 200)
	n.statusOK()
	if pt, err := n.decrypt("u", enc); err != nil || string(pt) != "secret-dek" {
		t.Fatalf("after unseal: %v %v", short(pt), err)
	}

	// The device goes away (its key file is gone): Status fails with a
	// reason naming the device; crypto keeps working meanwhile.
	data, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(keyFile)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = n.kms.Status(ctx(t), &kmsapi.StatusRequest{})
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	wantCode(t, "Status with a failing device", err, codes.Unavailable)
	if !strings.Contains(err.Error(), "seal device") {
		t.Fatalf("Status error does not name the device: %v", err)
	}
	if _, err := n.decrypt("u", enc); err != nil {
		t.Fatalf("Decrypt with a failing device (keys still in memory): %v", err)
	}
	n.waitLog("KMS v2 plugin unhealthy")
	os.WriteFile(keyFile, data, 0o600)
	n.statusOK()
	n.waitLog("KMS v2 plugin healthy again")
}

func TestKMSv2_PendingDeletionKeepsUnhealthy(t *testing.T) {
	n := startNode(t, nil, true)
	n.statusOK()
	n.must("DELETE", "/v1/keys/kubernetes", nil, nil, 202)
	_, err := n.kms.Status(ctx(t), &kmsapi.StatusRequest{})
	wantCode(t, "Status with the key pending deletion", err, codes.FailedPrecondition)
	_, err = n.kms.Encrypt(ctx(t), &kmsapi.EncryptRequest{Uid: "u", Plaintext: []byte("x")})
	wantCode(t, "Encrypt with the key pending deletion", err, codes.FailedPrecondition)
	n.waitLog("its key is scheduled for deletion")
	n.must("POST", "/v1/keys/kubernetes/restore", nil, nil, 200)
	n.statusOK()
}

// TestKMSv2_BadInput: every malformed or altered request gets an error (and
// never a plaintext), and the plugin keeps serving.
func TestKMSv2_BadInput(t *testing.T) {
	n := startNode(t, nil, true)
	n.statusOK()
	good := n.encrypt("u", []byte("0123456789abcdef0123456789abcdef"))
	alter := func(f func(r *kmsapi.DecryptRequest)) *kmsapi.DecryptRequest {
		r := &kmsapi.DecryptRequest{Uid: "u", Ciphertext: bytes.Clone(good.Ciphertext), KeyId: good.KeyId, Annotations: maps.Clone(good.Annotations)}
		f(r)
		return r
	}
	flipped := bytes.Clone(good.Ciphertext)
	raw, _ := base64.StdEncoding.DecodeString(string(flipped[len("coffer:v1:"):]))
	raw[len(raw)-1] ^= 1
	flipped = append([]byte("coffer:v1:"), base64.StdEncoding.EncodeToString(raw)...)
	for _, c := range []struct {
		name string
		req  *kmsapi.DecryptRequest
		code codes.Code
	}{
		{"empty ciphertext", alter(func(r *kmsapi.DecryptRequest) { r.Ciphertext = nil }), codes.InvalidArgument},
		{"garbage", alter(func(r *kmsapi.DecryptRequest) { r.Ciphertext = []byte("\x00\xff garbage") }), codes.InvalidArgument},
		{"flipped tag bit", alter(func(r *kmsapi.DecryptRequest) { r.Ciphertext = flipped }), codes.InvalidArgument},
		{"truncated", alter(func(r *kmsapi.DecryptRequest) { r.Ciphertext = r.Ciphertext[:len(r.Ciphertext)-4] }), codes.InvalidArgument},
		{"altered annotation", alter(func(r *kmsapi.DecryptRequest) { r.Annotations[kmsv2.AnnotationFormat] = []byte("2") }), codes.InvalidArgument},
		{"extra annotation", alter(func(r *kmsapi.DecryptRequest) { r.Annotations["evil.example.com"] = []byte("x") }), codes.InvalidArgument},
		{"no annotations", alter(func(r *kmsapi.DecryptRequest) { r.Annotations = nil }), codes.InvalidArgument},
		{"key_id of another version", alter(func(r *kmsapi.DecryptRequest) { r.KeyId = "coffer/kubernetes/v2" }), codes.InvalidArgument},
		{"key_id of another key", alter(func(r *kmsapi.DecryptRequest) { r.KeyId = "coffer/other/v1" }), codes.NotFound},
		{"foreign key_id", alter(func(r *kmsapi.DecryptRequest) { r.KeyId = "projects/x/keys/y" }), codes.InvalidArgument},
		{"uid with control characters", alter(func(r *kmsapi.DecryptRequest) { r.Uid = "a\nb" }), codes.InvalidArgument},
		{"uid too long", alter(func(r *kmsapi.DecryptRequest) { r.Uid = strings.Repeat("u", 200) }), codes.InvalidArgument},
		{"ciphertext too long", alter(func(r *kmsapi.DecryptRequest) { r.Ciphertext = bytes.Repeat([]byte("A"), kmsv2.MaxCiphertext+1) }), codes.ResourceExhausted},
		{"annotations too large", alter(func(r *kmsapi.DecryptRequest) { r.Annotations["big.example.com"] = make([]byte, kmsv2.MaxAnnotations) }), codes.ResourceExhausted},
		{"message over the gRPC limit", alter(func(r *kmsapi.DecryptRequest) { r.Ciphertext = make([]byte, kmsv2.MaxMessage+1) }), codes.ResourceExhausted},
	} {
		resp, err := n.kms.Decrypt(ctx(t), c.req)
		if resp != nil {
			t.Errorf("%s: answered a plaintext %s", c.name, short(resp.Plaintext))
		}
		wantCode(t, c.name, err, c.code)
	}
	for _, c := range []struct {
		name string
		req  *kmsapi.EncryptRequest
		code codes.Code
	}{
		{"empty plaintext", &kmsapi.EncryptRequest{Uid: "u"}, codes.InvalidArgument},
		{"plaintext over the limit", &kmsapi.EncryptRequest{Uid: "u", Plaintext: make([]byte, kmsv2.MaxPlaintext+1)}, codes.ResourceExhausted},
		{"message over the gRPC limit", &kmsapi.EncryptRequest{Uid: "u", Plaintext: make([]byte, 4<<20)}, codes.ResourceExhausted},
	} {
		_, err := n.kms.Encrypt(ctx(t), c.req)
		wantCode(t, c.name, err, c.code)
	}
	// Still serving, and the good ciphertext still opens.
	n.statusOK()
	if pt, err := n.decrypt("u", good); err != nil || len(pt) != 32 {
		t.Fatalf("after bad input: %v %v", short(pt), err)
	}
	e := n.findAudit("refused garbage", func(e audit.Entry) bool {
		return e.Operation == kmsv2.OpDecrypt && e.Outcome == audit.OutcomeError && e.ErrorCode == api.CodeDecryptFailed
	})
	if e.Detail["uid"] != "u" {
		t.Errorf("refused entry = %+v", e)
	}
}

// TestKMSv2_SocketLifecycle: a live plugin socket is never taken over, a
// stale one is replaced, and the socket is removed on stop.
func TestKMSv2_SocketLifecycle(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.KMSv2.Mode = 0o640 }, true)
	st, err := os.Stat(n.cfg.KMSv2.Path)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o640 {
		t.Fatalf("socket = %v %v, want a socket with mode 0640", st, err)
	}
	// A second plugin on the same socket refuses to start, and the first
	// keeps serving.
	_, err = kmsv2.Listen(kmsv2.Config{Path: n.cfg.KMSv2.Path, Mode: 0o600, Key: "kubernetes", Backend: nopBackend{}})
	if err == nil || !strings.Contains(err.Error(), "already serving") {
		t.Fatalf("Listen on a live socket: %v", err)
	}
	n.statusOK()
	n.stop()
	if _, err := os.Stat(n.cfg.KMSv2.Path); !os.IsNotExist(err) {
		t.Fatalf("socket still there after stop: %v", err)
	}
	// A stale socket (nothing listening) is replaced at start.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: n.cfg.KMSv2.Path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	n2 := startNode(t, func(c *config.Config) { c.KMSv2.Path = n.cfg.KMSv2.Path }, true)
	n2.statusOK()
}

type nopBackend struct{ kmsv2.Backend }

// TestKMSv2_PeerUID: a real client process running as uid 65534 is
// identified by SO_PEERCRED; without a policy every call is denied (and
// audited as denied), with one granting wrap and unwrap on the key it may
// use the plugin.
func TestKMSv2_PeerUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as uid 65534")
	}
	n := startNode(t, func(c *config.Config) { c.KMSv2.Mode = 0o666 }, true)
	n.statusOK()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(n.cfg.KMSv2.Path), "kms-client.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		t.Helper()
		cmd := exec.Command(bin, "-test.run=^TestKMSv2_HelperClient$", "-test.v")
		cmd.Env = append(os.Environ(), "COFFER_KMS_HELPER_SOCKET="+n.cfg.KMSv2.Path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid 65534: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`RESULT (.*)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("client printed no result:\n%s", out)
		}
		return string(m[1])
	}
	if got, exp := run(), "status=PermissionDenied encrypt=PermissionDenied decrypt=PermissionDenied"; got != exp {
		t.Fatalf("without a policy: %s, want %s", got, exp)
	}
	e := n.findAudit("denied uid 65534", func(e audit.Entry) bool {
		return e.Operation == kmsv2.OpEncrypt && e.Caller != nil && e.Caller.UID == 65534
	})
	if e.Outcome != audit.OutcomeDenied || e.ErrorCode != api.CodePermissionDenied || e.Detail["uid"] != "helper-uid" {
		t.Fatalf("denied entry = %+v", e)
	}
	n.must("PUT", "/v1/policies/kube", api.Policy{
		Subjects: api.Subjects{UIDs: []uint32{65534}}, Keys: []string{"kubernetes"}, Operations: []string{"wrap", "unwrap"},
	}, nil, 200)
	if got, exp := run(), "status=OK encrypt=OK decrypt=OK"; got != exp {
		t.Fatalf("with a policy: %s, want %s", got, exp)
	}
	n.statusOK()
}

// TestKMSv2_HelperClient is the client TestKMSv2_PeerUID runs as another
// uid; it does nothing in a normal run.
func TestKMSv2_HelperClient(t *testing.T) {
	path := os.Getenv("COFFER_KMS_HELPER_SOCKET")
	if path == "" {
		t.Skip("helper process only")
	}
	_, c := dialKMS(t, path)
	_, serr := c.Status(ctx(t), &kmsapi.StatusRequest{})
	enc, eerr := c.Encrypt(ctx(t), &kmsapi.EncryptRequest{Uid: "helper-uid", Plaintext: []byte("dek")})
	var derr error
	if eerr == nil {
		var d *kmsapi.DecryptResponse
		d, derr = c.Decrypt(ctx(t), &kmsapi.DecryptRequest{Uid: "helper-uid", Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations})
		if derr == nil && string(d.Plaintext) != "dek" {
			t.Fatalf("round trip gave %q", d.Plaintext)
		}
	} else {
		_, derr = c.Decrypt(ctx(t), &kmsapi.DecryptRequest{Uid: "helper-uid", Ciphertext: []byte("coffer:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), KeyId: "coffer/kubernetes/v1", Annotations: map[string][]byte{kmsv2.AnnotationFormat: []byte("1")}})
	}
	fmt.Printf("RESULT status=%s encrypt=%s decrypt=%s\n", status.Code(serr), status.Code(eerr), status.Code(derr))
}

// TestKMSv2_SocketGroup: kms_v2.group gives the socket to that group.
func TestKMSv2_SocketGroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give the socket to another group")
	}
	var name string
	var gid int
	for _, g := range []string{"nogroup", "daemon", "bin", "adm"} {
		if gr, err := user.LookupGroup(g); err == nil {
			if id, _ := strconv.Atoi(gr.Gid); id != os.Getgid() {
				name, gid = g, id
				break
			}
		}
	}
	if name == "" {
		t.Skip("no spare group on this host")
	}
	n := startNode(t, func(c *config.Config) { c.KMSv2.Group = name }, false)
	st, err := os.Stat(n.cfg.KMSv2.Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := int(st.Sys().(*syscall.Stat_t).Gid); got != gid {
		t.Fatalf("socket group %d, want %d (%s)", got, gid, name)
	}
}

// TestKMSv2_LiveSocketRefusedAtStart: a second cofferd configured with the
// KMS socket of a running one does not start (and removes its own API
// socket again); the first keeps serving.
func TestKMSv2_LiveSocketRefusedAtStart(t *testing.T) {
	n := startNode(t, nil, true)
	n.statusOK()
	dir := t.TempDir()
	cfg := config.DefaultConfig()
	cfg.NodeID = "n2"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Listener.Path = filepath.Join(dir, "api.sock")
	cfg.KMSv2 = &config.KMSv2Config{Path: n.cfg.KMSv2.Path, Mode: 0o600, Key: "kubernetes"}
	srv, err := daemon.New(daemon.Options{Config: cfg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = srv.Serve(ctx)
	if err == nil || !strings.Contains(err.Error(), "already serving") || !strings.Contains(err.Error(), "kms_v2") {
		t.Fatalf("Serve with a live KMS socket: %v", err)
	}
	if _, err := os.Stat(cfg.Listener.Path); !os.IsNotExist(err) {
		t.Errorf("the refused node left its API socket: %v", err)
	}
	n.statusOK()
}

// The plugin's operation names are audit operations (the alert rules'
// config check and the metrics accept only those).
func TestKMSv2_OperationNamesKnown(t *testing.T) {
	for _, op := range []string{kmsv2.OpEncrypt, kmsv2.OpDecrypt} {
		if !slices.Contains(audit.RequestOperations, op) {
			t.Errorf("%q is not in audit.RequestOperations", op)
		}
	}
	if _, err := config.ParseConfig([]byte("node_id = \"n1\"\naudit {\n  path = \"/a.log\"\n  alert \"k\" {\n    operations = [\"kms_decrypt\"]\n    outcome = \"denied\"\n    threshold = 3\n  }\n}\n"), "/c.hcl"); err != nil {
		t.Errorf("an alert rule on kms_decrypt: %v", err)
	}
}
