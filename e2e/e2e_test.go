// Package e2e runs the real binaries as separate processes: cofferd on a
// real unix socket with a real raft store, driven by the coffer CLI and by
// raw HTTP, as an operator and a service would.
package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore/shamir"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "coffer-e2e-bin")
	if err != nil {
		panic(err)
	}
	// Other uids must be able to run the client (authorization test).
	os.Chmod(dir, 0o755)
	for _, c := range []string{"cofferd", "coffer"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "github.com/coffer-kms/coffer/cmd/"+c).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", c, err, out)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is one cofferd process.
type daemon struct {
	t       *testing.T
	dir     string // holds config, data, socket
	config  string
	sock    string
	cmd     *exec.Cmd
	logMu   sync.Mutex
	log     bytes.Buffer // stderr of every run of this daemon
	exited  chan struct{}
	http    *http.Client
	extraHC string
	// env is added to cofferd's environment (e.g. a SoftHSM token's
	// SOFTHSM2_CONF, so that each daemon sees its own token store).
	env []string
	// startedAt is when the last start exec'd cofferd; servingAfter is how
	// long it took from there to the first status answer.
	startedAt    time.Time
	servingAfter time.Duration
	// nodeID is the config's node_id (default "e2e").
	nodeID string
	// pollEvery is how often start polls for the socket (default 20ms);
	// the timing test makes it finer.
	pollEvery time.Duration
	// procAttr, if set, is cofferd's SysProcAttr (e.g. to run it as
	// another uid).
	procAttr *syscall.SysProcAttr
}

func newDaemon(t *testing.T, extraHCL string) *daemon {
	t.Helper()
	// Short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "cofe2e")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &daemon{t: t, dir: dir, sock: filepath.Join(dir, "coffer.sock"), config: filepath.Join(dir, "cofferd.hcl")}
	d.writeConfig(extraHCL)
	d.http = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
	}}}
	t.Cleanup(d.stop)
	return d
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (d *daemon) start() {
	d.t.Helper()
	d.cmd = exec.Command(filepath.Join(binDir, "cofferd"), "--config", d.config)
	if len(d.env) > 0 {
		d.cmd.Env = append(os.Environ(), d.env...)
	}
	d.cmd.Stdout = lockedWriter{&d.logMu, &d.log}
	d.cmd.Stderr = lockedWriter{&d.logMu, &d.log}
	d.cmd.SysProcAttr = d.procAttr
	poll := d.pollEvery
	if poll <= 0 {
		poll = 20 * time.Millisecond
	}
	d.startedAt = time.Now()
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := d.http.Get("http://coffer/v1/sys/status")
		if err == nil {
			d.servingAfter = time.Since(d.startedAt)
			resp.Body.Close()
			return
		}
		select {
		case <-d.exited:
			d.t.Fatalf("cofferd exited at start:\n%s", d.logs())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("cofferd did not serve within 15s:\n%s", d.logs())
		}
		time.Sleep(poll)
	}
}

// kill stops cofferd with SIGKILL, as a crash or power loss would: no
// shutdown, no sealing on the way out.
func (d *daemon) kill() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Kill()
	<-d.exited
}

// writeConfig replaces the daemon's config with the base settings plus
// extraHCL (e.g. to change its seal block between runs).
func (d *daemon) writeConfig(extraHCL string) {
	d.t.Helper()
	id := d.nodeID
	if id == "" {
		id = "e2e"
	}
	level := os.Getenv("COFFER_E2E_LOG_LEVEL") // benchmarks turn tracing off
	if level == "" {
		level = "trace"
	}
	cfg := fmt.Sprintf(`node_id   = "`+id+`"
data_dir  = "data"
log_level = "`+level+`"

listener "unix" {
  path = "coffer.sock"
  mode = "0666"
}
%s`, extraHCL)
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("cofferd did not stop on SIGTERM within 10s")
	}
}

func (d *daemon) logs() string {
	d.logMu.Lock()
	defer d.logMu.Unlock()
	return d.log.String()
}

// result of one coffer run.
type result struct {
	stdout, stderr string
	code           int
}

// coffer runs the CLI against the daemon, as uid (or as this process when
// uid < 0).
func (d *daemon) coffer(stdin string, uid int, args ...string) result {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "coffer"), args...)
	cmd.Env = append(os.Environ(), "COFFER_SOCKET="+d.sock)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		cmd.Dir = "/"
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

func (d *daemon) mustCoffer(stdin string, args ...string) string {
	d.t.Helper()
	r := d.coffer(stdin, -1, args...)
	if r.code != 0 {
		d.t.Fatalf("coffer %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// api sends a raw HTTP request on the socket and returns status, error code
// and body.
func (d *daemon) api(method, path, body string) (int, string, []byte) {
	d.t.Helper()
	req, _ := http.NewRequest(method, "http://coffer"+path, strings.NewReader(body))
	resp, err := d.http.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.Header.Get("X-Request-Id") == "" {
		d.t.Errorf("%s %s: response without X-Request-Id", method, path)
	}
	var eb api.ErrorBody
	if resp.StatusCode >= 400 {
		json.Unmarshal(data, &eb)
	}
	return resp.StatusCode, eb.Error.Code, data
}

func (d *daemon) expectAPI(method, path, body string, status int, code string) {
	d.t.Helper()
	st, c, data := d.api(method, path, body)
	if st != status || c != code {
		d.t.Errorf("%s %s: got %d %q (%s), want %d %q", method, path, st, c, bytes.TrimSpace(data), status, code)
	}
}

func (d *daemon) status() api.Status {
	d.t.Helper()
	_, _, data := d.api("GET", "/v1/sys/status", "")
	var st api.Status
	if err := json.Unmarshal(data, &st); err != nil {
		d.t.Fatal(err)
	}
	return st
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

const (
	secret1 = "e2e-PLAINTEXT-one-7f3a9c"
	secret2 = "e2e-PLAINTEXT-two-b81d44"
)

// TestE2E_OperatorJourney is the end-to-end scenario, with the
// binaries as separate processes.
func TestE2E_OperatorJourney(t *testing.T) {
	d := newDaemon(t, "")
	d.start()
	if r := d.coffer("", -1, "status"); r.code != 2 {
		t.Fatalf("status before init: exit %d, want 2\n%s%s", r.code, r.stdout, r.stderr)
	}

	// Init with 5 shares, threshold 3.
	var ir api.InitResponse
	if err := json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "operator", "init", "--shares", "5", "--threshold", "3")), &ir); err != nil {
		t.Fatal(err)
	}
	if len(ir.Shares) != 5 || ir.Encrypted {
		t.Fatalf("init: %+v", ir)
	}
	shares := ir.Shares
	d.expectAPI("POST", "/v1/sys/init", `{"shares":5,"threshold":3}`, 409, api.CodeAlreadyExists)

	// The node that inits is unsealed; seal it and unseal with 3 shares on stdin.
	d.mustCoffer("", "operator", "seal")
	if st := d.status(); !st.Sealed {
		t.Fatal("not sealed after operator seal")
	}
	d.mustCoffer(strings.Join(shares[:3], "\n")+"\n", "operator", "unseal")
	if st := d.status(); st.Sealed {
		t.Fatalf("still sealed after 3 shares: %+v", st)
	}
	if r := d.coffer("", -1, "status"); r.code != 0 {
		t.Fatalf("status unsealed: exit %d", r.code)
	}

	d.mustCoffer("", "key", "create", "app")
	d.mustCoffer("", "key", "create", "other", "--type", "chacha20-poly1305")

	// Wrap/unwrap through the CLI.
	ctCLI := strings.TrimSpace(d.mustCoffer(secret1, "wrap", "--key", "app", "--aad", "ctx-1"))
	if !strings.HasPrefix(ctCLI, "coffer:v1:") {
		t.Fatalf("wrap printed %q", ctCLI)
	}
	if pt := d.mustCoffer("", "unwrap", "--key", "app", "--aad", "ctx-1", ctCLI); pt != secret1 {
		t.Fatalf("CLI unwrap = %q", pt)
	}
	// And through raw HTTP on the socket.
	st, _, data := d.api("POST", "/v1/keys/app/wrap", `{"plaintext":"`+b64(secret2)+`"}`)
	var w api.WrapResult
	json.Unmarshal(data, &w)
	if st != 200 || w.KeyVersion != 1 {
		t.Fatalf("HTTP wrap: %d %s", st, data)
	}
	ctHTTP := w.Ciphertext
	if pt := d.mustCoffer(ctHTTP+"\n", "unwrap", "--key", "app", "-"); pt != secret2 {
		t.Fatalf("CLI unwrap of HTTP ciphertext = %q", pt)
	}
	var dk api.DataKeyResponse
	if err := json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "datakey", "--key", "app")), &dk); err != nil || len(dk.Plaintext) != 32 {
		t.Fatalf("datakey: %v %+v", err, dk)
	}

	// Restart: sealed; unwrap refused with 503 sealed.
	d.stop()
	d.start()
	if st := d.status(); !st.Initialized || !st.Sealed {
		t.Fatalf("after restart: %+v", st)
	}
	d.expectAPI("POST", "/v1/keys/app/unwrap", `{"ciphertext":"`+ctHTTP+`"}`, 503, api.CodeSealed)
	if r := d.coffer("", -1, "status"); r.code != 2 {
		t.Fatalf("status sealed: exit %d", r.code)
	}

	// A mistyped share is refused on entry, progress kept.
	d.mustCoffer(shares[2]+"\n", "operator", "unseal")
	typo := []byte(shares[3])
	typo[len(typo)-3] = map[bool]byte{true: 'b', false: 'a'}[typo[len(typo)-3] == 'a']
	d.expectAPI("POST", "/v1/sys/unseal", `{"share":"`+string(typo)+`"}`, 400, api.CodeInvalidShare)
	if st := d.status(); st.Progress != 1 {
		t.Fatalf("progress after a mistyped share = %d, want 1", st.Progress)
	}
	// A different 3 of the 5 shares.
	d.mustCoffer(shares[3]+"\n"+shares[4]+"\n", "operator", "unseal")
	if st := d.status(); st.Sealed {
		t.Fatal("still sealed")
	}
	if pt := d.mustCoffer("", "unwrap", "--key", "app", "--aad", "ctx-1", ctCLI); pt != secret1 {
		t.Fatal("old CLI ciphertext does not unwrap after restart")
	}
	if pt := d.mustCoffer(ctHTTP, "unwrap", "--key", "app"); pt != secret2 {
		t.Fatal("old HTTP ciphertext does not unwrap after restart")
	}

	// Rotate: old and new unwrap; min_decryption_version refuses the old.
	d.mustCoffer("", "key", "rotate", "app")
	ctV2 := strings.TrimSpace(d.mustCoffer(secret2, "wrap", "--key", "app"))
	if !strings.HasPrefix(ctV2, "coffer:v2:") {
		t.Fatalf("after rotate: %q", ctV2)
	}
	for ct, want := range map[string]string{ctHTTP: secret2, ctV2: secret2} {
		if pt := d.mustCoffer(ct, "unwrap", "--key", "app"); pt != want {
			t.Fatalf("unwrap %s = %q", ct[:12], pt)
		}
	}
	d.mustCoffer("", "key", "update", "app", "--min-decryption-version", "2")
	r := d.coffer(ctHTTP, -1, "unwrap", "--key", "app")
	if r.code != 1 || !strings.Contains(r.stderr, api.CodeVersionDisabled) {
		t.Fatalf("old version after min_decryption_version=2: exit %d stderr %q", r.code, r.stderr)
	}
	d.expectAPI("POST", "/v1/keys/app/unwrap", `{"ciphertext":"`+ctHTTP+`"}`, 409, api.CodeVersionDisabled)

	// Bad input over the real socket: exact status and code, still serving.
	tampered := []byte(ctV2)
	tampered[len(tampered)-4] ^= 1
	for _, c := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"malformed JSON", "POST", "/v1/keys/app/wrap", `{"plaintext":`, 400, api.CodeBadRequest},
		{"unknown field", "POST", "/v1/keys/app/wrap", `{"plaintext":"eA==","x":1}`, 400, api.CodeBadRequest},
		{"bad base64", "POST", "/v1/keys/app/wrap", `{"plaintext":"%%%"}`, 400, api.CodeBadRequest},
		{"bad key name", "POST", "/v1/keys/no*pe/wrap", `{"plaintext":"eA=="}`, 400, api.CodeBadRequest},
		{"oversized body", "POST", "/v1/keys/app/wrap", `{"plaintext":"` + strings.Repeat("QUFB", api.MaxBody/4+1) + `"}`, 413, api.CodeTooLarge},
		{"tampered", "POST", "/v1/keys/app/unwrap", `{"ciphertext":"` + string(tampered) + `"}`, 400, api.CodeDecryptFailed},
		{"wrong aad", "POST", "/v1/keys/app/unwrap", `{"ciphertext":"` + ctV2 + `","aad":"` + b64("nope") + `"}`, 400, api.CodeDecryptFailed},
		{"another key's", "POST", "/v1/keys/other/unwrap", `{"ciphertext":"` + ctV2 + `"}`, 400, api.CodeDecryptFailed},
		{"unknown key", "POST", "/v1/keys/missing/wrap", `{"plaintext":"eA=="}`, 404, api.CodeNotFound},
		{"unknown path", "GET", "/v1/what", ``, 404, api.CodeNotFound},
		{"wrong method", "DELETE", "/v1/sys/status", ``, 405, api.CodeMethodNotAllowed},
		{"init twice", "POST", "/v1/sys/init", `{"shares":1,"threshold":1}`, 409, api.CodeAlreadyExists},
	} {
		t.Run("bad input/"+c.name, func(t *testing.T) {
			d.t = t
			d.expectAPI(c.method, c.path, c.body, c.status, c.code)
		})
	}
	d.t = t
	if pt := d.mustCoffer(ctV2, "unwrap", "--key", "app"); pt != secret2 {
		t.Fatal("daemon not serving after bad input")
	}

	t.Run("authorization as another uid", func(t *testing.T) {
		d.t = t
		defer func() { d.t = t }()
		testAuthorization(t, d)
	})

	// Secrets never logged nor stored in clear: search the daemon's
	// trace-level log and every file under its data_dir.
	root := combineShares(t, shares[:3])
	checkNoSecrets(t, d, map[string][]byte{
		"plaintext 1": []byte(secret1), "plaintext 2": []byte(secret2),
		"data key": dk.Plaintext, "root key": root,
		"share 1": []byte(shares[0]), "share 4": []byte(shares[3]),
	})
}

func testAuthorization(t *testing.T, d *daemon) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the client as uid 65534")
	}
	const nobody = 65534
	// Denied by default.
	r := d.coffer(secret1, nobody, "wrap", "--key", "app")
	if r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) {
		t.Fatalf("uid %d wrap without a policy: exit %d stderr %q", nobody, r.code, r.stderr)
	}
	if r := d.coffer("", nobody, "key", "create", "mine"); r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) {
		t.Fatalf("uid %d key create: exit %d %q", nobody, r.code, r.stderr)
	}
	if r := d.coffer("", nobody, "operator", "seal"); r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) {
		t.Fatalf("uid %d seal: exit %d %q", nobody, r.code, r.stderr)
	}
	// Status is open to everyone who can reach the socket.
	if r := d.coffer("", nobody, "status"); r.code != 0 {
		t.Fatalf("uid %d status: exit %d %q", nobody, r.code, r.stderr)
	}
	// A policy grants wrap and read on "app" only.
	pol := filepath.Join(d.dir, "policy.json")
	os.WriteFile(pol, []byte(fmt.Sprintf(`{"subjects":{"uids":[%d]},"keys":["app"],"operations":["wrap","read"]}`, nobody)), 0o644)
	d.mustCoffer("", "policy", "write", "nobody-app", pol)
	ct := strings.TrimSpace(func() string {
		r := d.coffer(secret1, nobody, "wrap", "--key", "app")
		if r.code != 0 {
			t.Fatalf("granted wrap: exit %d %q", r.code, r.stderr)
		}
		return r.stdout
	}())
	if r := d.coffer("", nobody, "key", "show", "app"); r.code != 0 {
		t.Fatalf("granted read: exit %d %q", r.code, r.stderr)
	}
	for _, args := range [][]string{
		{"unwrap", "--key", "app", ct}, // not granted
		{"wrap", "--key", "other", "-"},
		{"key", "rotate", "app"},
		{"datakey", "--key", "app"},
		{"policy", "list"},
	} {
		if r := d.coffer(secret1, nobody, args...); r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) {
			t.Errorf("uid %d %v: exit %d stderr %q, want permission_denied", nobody, args, r.code, r.stderr)
		}
	}
	var kl api.KeyList
	r = d.coffer("", nobody, "--format", "json", "key", "list")
	if json.Unmarshal([]byte(r.stdout), &kl); len(kl.Keys) != 1 || kl.Keys[0] != "app" {
		t.Errorf("uid %d key list = %q (exit %d), want only app", nobody, r.stdout, r.code)
	}
	// The root user still unwraps it.
	if pt := d.mustCoffer(ct, "unwrap", "--key", "app"); pt != secret1 {
		t.Fatal("admin cannot unwrap the granted caller's ciphertext")
	}
	d.mustCoffer("", "policy", "delete", "nobody-app")
	if r := d.coffer(secret1, nobody, "wrap", "--key", "app"); r.code != 1 {
		t.Fatalf("after policy delete: exit %d", r.code)
	}
}

func combineShares(t *testing.T, shares []string) []byte {
	t.Helper()
	var raw [][]byte
	for _, s := range shares {
		b, err := shamir.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, b)
	}
	root, err := shamir.Combine(raw)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// checkNoSecrets searches the daemon log and data_dir (and the extra
// haystacks, by name) for each secret raw, in hex and in base64 (all three
// alignments of the base64 alphabet).
func checkNoSecrets(t *testing.T, d *daemon, secrets map[string][]byte, extra ...map[string][]byte) {
	t.Helper()
	haystacks := map[string][]byte{"cofferd log": []byte(d.logs())}
	for _, x := range extra {
		for k, v := range x {
			haystacks[k] = v
		}
	}
	filepath.Walk(filepath.Join(d.dir, "data"), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			haystacks[p] = b
		}
		return nil
	})
	if len(haystacks) < 2 {
		t.Fatalf("expected the log and data files, got %d haystacks", len(haystacks))
	}
	for name, s := range secrets {
		if len(s) == 0 {
			t.Fatalf("secret %s is empty", name)
		}
		needles := [][]byte{s, []byte(hex.EncodeToString(s)), []byte(strings.ToUpper(hex.EncodeToString(s)))}
		for off := 0; off < 3; off++ {
			if off < len(s) {
				enc := base64.StdEncoding.EncodeToString(s[off:])
				// Drop the padded tail, which depends on what follows.
				needles = append(needles, []byte(enc[:len(enc)/4*4-4]))
			}
		}
		for where, hay := range haystacks {
			for _, n := range needles {
				if len(n) >= 8 && bytes.Contains(hay, n) {
					t.Errorf("%s found in %s", name, where)
				}
			}
		}
	}
}

// TestE2E_SharesFromTwoInits: the right number of shares, but from two
// different inits, gives invalid_share and resets progress.
func TestE2E_SharesFromTwoInits(t *testing.T) {
	a, b := newDaemon(t, ""), newDaemon(t, "")
	a.start()
	b.start()
	var ia, ib api.InitResponse
	json.Unmarshal([]byte(a.mustCoffer("", "--format", "json", "operator", "init", "--shares", "3", "--threshold", "2")), &ia)
	json.Unmarshal([]byte(b.mustCoffer("", "--format", "json", "operator", "init", "--shares", "3", "--threshold", "2")), &ib)
	a.mustCoffer("", "operator", "seal")
	a.mustCoffer(ia.Shares[0]+"\n", "operator", "unseal")
	a.expectAPI("POST", "/v1/sys/unseal", `{"share":"`+ib.Shares[1]+`"}`, 400, api.CodeInvalidShare)
	if st := a.status(); !st.Sealed || st.Progress != 0 {
		t.Fatalf("after shares from two inits: %+v", st)
	}
	a.mustCoffer(ia.Shares[1]+"\n"+ia.Shares[2]+"\n", "operator", "unseal")
	if a.status().Sealed {
		t.Fatal("the right shares did not unseal")
	}
}

// TestE2E_ConfigErrors: an invalid config is one clear line with file:line
// and a non-zero exit.
func TestE2E_ConfigErrors(t *testing.T) {
	d := newDaemon(t, "bogus_setting = 1\n")
	out, err := exec.Command(filepath.Join(binDir, "cofferd"), "--config", d.config).CombinedOutput()
	if err == nil {
		t.Fatal("cofferd accepted an unknown setting")
	}
	if !strings.Contains(string(out), "cofferd.hcl:9") || !strings.Contains(string(out), "bogus_setting") {
		t.Fatalf("error does not name file:line and the key: %s", out)
	}
}
