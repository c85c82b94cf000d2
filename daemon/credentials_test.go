package daemon

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/config"
)

// credentialFetch connects to the credential socket from a socket bound to
// addr ("" binds none), shuts down its sending side as systemd does and
// reads to EOF (at most 4 MiB). It returns what arrived.
func credentialFetch(sock, addr string) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "cred")
	defer f.Close()
	if addr != "" {
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
			return nil, fmt.Errorf("bind %q: %w", addr, err)
		}
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	unix.Shutdown(fd, unix.SHUT_WR)
	return io.ReadAll(io.LimitReader(f, 4<<20))
}

// TestCredentialHelper is not a test: the tests below run the test binary
// again as a helper process (another uid, or moved into a unit's cgroup)
// that fetches one credential and reports what it got.
func TestCredentialHelper(t *testing.T) {
	sock := os.Getenv("COFFER_CRED_HELPER_SOCKET")
	if sock == "" {
		t.Skip("helper process only")
	}
	// Wait for the go-ahead (the parent moves us into a cgroup first).
	bufio.NewReader(os.Stdin).ReadString('\n')
	if n, _ := strconv.Atoi(os.Getenv("COFFER_CRED_HELPER_N")); n > 0 {
		// Rate mode: n fetches in a row, one connection each, as systemd
		// makes them.
		start := time.Now()
		_, rest, _ := strings.Cut(os.Getenv("COFFER_CRED_HELPER_ADDR"), "/")
		for i := 0; i < n; i++ {
			// A fresh random part per connection, as systemd binds.
			addr := fmt.Sprintf("@%x/%s", uint64(os.Getpid())<<32|uint64(i), rest)
			if _, err := credentialFetch(sock, addr); err != nil {
				t.Fatal(err)
			}
		}
		json.NewEncoder(os.Stdout).Encode(map[string]any{"n": n, "seconds": time.Since(start).Seconds()})
		return
	}
	data, err := credentialFetch(sock, os.Getenv("COFFER_CRED_HELPER_ADDR"))
	res := map[string]any{"n": len(data), "zero": len(bytes.Trim(data, "\x00")) == 0, "data": data}
	if err != nil {
		res["err"] = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

type helperResult struct {
	N    int    `json:"n"`
	Zero bool   `json:"zero"`
	Data []byte `json:"data"`
	Err  string `json:"err"`
}

// runCredHelper runs the helper (as uid, or -1 for ours), first placing it
// in cgroup (a path under the cgroup2 mount, "" for none).
func runCredHelper(t *testing.T, bin, sock, addr string, uid int, cgroup string) helperResult {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestCredentialHelper$")
	cmd.Env = append(os.Environ(), "COFFER_CRED_HELPER_SOCKET="+sock, "COFFER_CRED_HELPER_ADDR="+addr)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		cmd.Dir = "/"
	}
	stdin, _ := cmd.StdinPipe()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if cgroup != "" {
		if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("moving the helper into %s: %v", cgroup, err)
		}
	}
	stdin.Write([]byte("go\n"))
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s%s", err, out.String(), errb.String())
	}
	var r helperResult
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "{") {
			json.Unmarshal([]byte(l), &r)
		}
	}
	return r
}

// unitCgroup creates the cgroup2 directory of a fake system unit, so that a
// process moved there has "0::/system.slice/UNIT" in /proc/PID/cgroup, as
// under systemd. It skips the test where that cannot be done.
func unitCgroup(t *testing.T, unit string) string {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		root = "/sys/fs/cgroup"
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Skipf("no cgroup2 mount at %s", root)
	}
	dir := filepath.Join(root, "system.slice", unit)
	_, err := os.Stat(filepath.Dir(dir))
	madeSlice := os.IsNotExist(err)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup (%v): needs root", err)
	}
	t.Cleanup(func() {
		// The helper has exited by now; an empty cgroup can be removed.
		deadline := time.Now().Add(5 * time.Second)
		for os.Remove(dir) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if madeSlice {
			os.Remove(filepath.Dir(dir)) // system.slice, made here (no systemd on this host)
		}
	})
	return dir
}

// TestServer_CredentialSocket: refusals without systemd — a uid-0 client
// whose forged abstract address names a unit it is not in, a non-root
// client with a well-formed address, no address, malformed addresses, a
// unit without a policy, a sealed node — each send no value (more than 1
// MiB of zero bytes: see credentials.go), each is audited, and the daemon
// keeps serving; a uid-0 process in the unit's cgroup gets the exact bytes.
func TestServer_CredentialSocket(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: a uid-0 peer, another uid and cgroups")
	}
	sockDir, _ := os.MkdirTemp("", "coffer-cred")
	os.Chmod(sockDir, 0o755)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	credSock := filepath.Join(sockDir, "cred.sock")
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Credentials = &config.CredentialsConfig{Path: credSock}
		c.Audit = &config.AuditConfig{Alerts: []config.AlertRule{{Name: "cred-probing", Operations: []string{"credential"}, Outcome: "denied", Threshold: 3, Window: time.Minute}}}
	})
	n.init(1, 1)
	value := "db\x00pass\nMARKER-c4e1\n"
	n.must("PUT", "/v1/secrets/db-password", map[string]any{"value": b64(value)}, nil, 200)
	n.must("PUT", "/v1/policies/billing", api.Policy{
		Subjects: api.Subjects{Units: []string{"coffer-cred-a.service"}, UIDs: []uint32{0, 65534}},
		Secrets:  []string{"db-password", "nope"}, Operations: []string{"secret_read"},
	}, nil, 200)
	if fi, err := os.Stat(credSock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential socket: %v %v, want mode 0600", err, fi)
	}

	refused := func(what string, data []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(data) <= credentialSizeMax || len(bytes.Trim(data, "\x00")) != 0 {
			t.Errorf("%s: got %d bytes (all zero: %v), want more than %d zero bytes", what, len(data), len(bytes.Trim(data, "\x00")) == 0, credentialSizeMax)
		}
	}
	// uid 0, but not in the unit's cgroup: the forged address does not count.
	data, err := credentialFetch(credSock, "@1f2e3d/unit/coffer-cred-a.service/db-password")
	refused("forged address", data, err)
	data, err = credentialFetch(credSock, "")
	refused("no address", data, err)
	for _, a := range []string{
		"@1f2e3d/unit/coffer-cred-a.service/db-password/x", "@XYZ/unit/coffer-cred-a.service/db-password",
		"@/unit/coffer-cred-a.service/db-password", "@1/unit/coffer cred.service/db-password",
		"@1/unit/coffer-cred-a/db-password", "@1/units/coffer-cred-a.service/db-password",
		"@1/unit/coffer-cred-a.service/db-password\x00junk", "@12345678901234567/unit/coffer-cred-a.service/db-password",
	} {
		data, err = credentialFetch(credSock, a)
		refused(fmt.Sprintf("address %q", a), data, err)
	}

	bin := copyTestBinary(t)
	cgA := unitCgroup(t, "coffer-cred-a.service")
	// A uid that is not 0, in the unit's cgroup, with a well-formed address
	// (the socket is opened up for the test: in production only root and
	// cofferd can connect). A service of the unit runs as its own user;
	// only systemd, uid 0, may speak for the unit.
	os.Chmod(credSock, 0o666)
	r := runCredHelper(t, bin, credSock, "@abc/unit/coffer-cred-a.service/db-password", 65534, cgA)
	if r.Err != "" || r.N <= credentialSizeMax || !r.Zero {
		t.Errorf("uid 65534: %+v", r)
	}
	os.Chmod(credSock, 0o600)

	// uid 0 in the unit's cgroup: delivered, exactly.
	r = runCredHelper(t, bin, credSock, "@abc/unit/coffer-cred-a.service/db-password", -1, cgA)
	if r.Err != "" || string(r.Data) != value {
		t.Fatalf("delivery: %+v", r)
	}
	// In its own cgroup but naming another unit: refused.
	r = runCredHelper(t, bin, credSock, "@abc/unit/coffer-cred-b.service/db-password", -1, cgA)
	if r.N <= credentialSizeMax || !r.Zero {
		t.Errorf("naming another unit: %+v", r)
	}
	// A unit without a policy, in its own cgroup: refused.
	cgB := unitCgroup(t, "coffer-cred-b.service")
	r = runCredHelper(t, bin, credSock, "@abc/unit/coffer-cred-b.service/db-password", -1, cgB)
	if r.N <= credentialSizeMax || !r.Zero {
		t.Errorf("no policy: %+v", r)
	}
	// No such secret: refused.
	r = runCredHelper(t, bin, credSock, "@abc/unit/coffer-cred-a.service/nope", -1, cgA)
	if r.N <= credentialSizeMax || !r.Zero {
		t.Errorf("no such secret: %+v", r)
	}
	// The daemon keeps serving both sockets.
	n.must("GET", "/v1/sys/health", nil, nil, 200)
	r = runCredHelper(t, bin, credSock, "@abc/unit/coffer-cred-a.service/db-password", -1, cgA)
	if string(r.Data) != value {
		t.Fatalf("delivery after the refusals: %+v", r)
	}
	// Sealed: refused.
	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	r = runCredHelper(t, bin, credSock, "@abc/unit/coffer-cred-a.service/db-password", -1, cgA)
	if r.N <= credentialSizeMax || !r.Zero {
		t.Errorf("sealed: %+v", r)
	}

	_, es := auditLog(t, n)
	var ok, denied, errs int
	reasons := map[string]bool{}
	for _, e := range es {
		if e.Operation != api.OpCredential {
			continue
		}
		switch e.Outcome {
		case audit.OutcomeOK:
			ok++
			if e.Key != "db-password" || e.KeyVersion != 1 || e.Caller == nil || e.Caller.Unit != "coffer-cred-a.service" || e.Detail["credential_id"] != "db-password" {
				t.Errorf("delivery entry: %+v", e)
			}
		case audit.OutcomeDenied:
			denied++
		default:
			errs++
		}
		for _, k := range []string{"cgroup is not the unit", "not 0", "not an abstract", "not @<hex>", "no policy grants coffer-cred-b.service", "sealed", "no secret named"} {
			if strings.Contains(e.Detail["reason"], k) {
				reasons[k] = true
			}
		}
	}
	if ok != 2 || denied < 13 || errs != 2 {
		t.Errorf("credential audit entries: %d ok, %d denied, %d error", ok, denied, errs)
	}
	if !hasCredAlert(es) {
		t.Error("no unusual-access event for the repeated credential refusals (rule on operation credential)")
	}
	if len(reasons) != 7 {
		t.Errorf("refusal reasons audited: %v", reasons)
	}
	data, _ = os.ReadFile(n.cfg.AuditPath())
	if bytes.Contains(data, []byte("MARKER-c4e1")) || bytes.Contains(n.logs.Bytes(), []byte("MARKER-c4e1")) {
		t.Error("the value is in the audit log or the daemon log")
	}
}

// copyTestBinary: limits_test.go.

// TestCredentialDeliveryRate measures deliveries per second on the
// credential socket (one connection each, as systemd makes them) from
// helper processes in a unit's cgroup. Set COFFER_BENCH=1 to run it;
// COFFER_BENCH_PARALLEL helpers run at once (default 1).
func TestCredentialDeliveryRate(t *testing.T) {
	if os.Getenv("COFFER_BENCH") != "1" || os.Getuid() != 0 {
		t.Skip("a benchmark: COFFER_BENCH=1, as root")
	}
	sockDir, _ := os.MkdirTemp("", "coffer-cred")
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	credSock := filepath.Join(sockDir, "cred.sock")
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Credentials = &config.CredentialsConfig{Path: credSock}
		c.LogLevel = "info"
	})
	n.init(1, 1)
	n.must("PUT", "/v1/secrets/db-password", map[string]any{"value": b64("0123456789abcdef0123456789abcdef")}, nil, 200)
	n.must("PUT", "/v1/policies/bench", api.Policy{Subjects: api.Subjects{Units: []string{"coffer-cred-bench.service"}},
		Secrets: []string{"db-password"}, Operations: []string{"secret_read"}}, nil, 200)
	bin := copyTestBinary(t)
	cg := unitCgroup(t, "coffer-cred-bench.service")
	par, _ := strconv.Atoi(os.Getenv("COFFER_BENCH_PARALLEL"))
	par = max(par, 1)
	const per = 2000
	start := time.Now()
	errc := make(chan error, par)
	for i := 0; i < par; i++ {
		go func() {
			cmd := exec.Command(bin, "-test.run=^TestCredentialHelper$")
			cmd.Env = append(os.Environ(), "COFFER_CRED_HELPER_SOCKET="+credSock,
				"COFFER_CRED_HELPER_ADDR=@abc/unit/coffer-cred-bench.service/db-password", "COFFER_CRED_HELPER_N="+strconv.Itoa(per))
			stdin, _ := cmd.StdinPipe()
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				errc <- err
				return
			}
			os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0)
			stdin.Write([]byte("go\n"))
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				errc <- fmt.Errorf("%v: %s", err, out.String())
				return
			}
			errc <- nil
		}()
	}
	for i := 0; i < par; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	el := time.Since(start)
	t.Logf("%d deliveries by %d helper(s) in %v: %.0f deliveries/s (each audited)", per*par, par, el.Round(time.Millisecond), float64(per*par)/el.Seconds())
}

func hasCredAlert(es []*audit.Entry) bool {
	for _, e := range es {
		if e.Type == audit.TypeEvent && e.Operation == "unusual-access" && e.Detail["rule"] == "cred-probing" {
			return true
		}
	}
	return false
}
