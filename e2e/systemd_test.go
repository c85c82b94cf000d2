package e2e

// TestE2E_Systemd runs Coffer as an operator would on a systemd host: a
// Debian 12 container booted with systemd-nspawn (systemd/testbed/sdboot.sh),
// `make install` into it, systemd-sysusers and systemd-tmpfiles, a SoftHSM
// token, the PIN as an encrypted systemd credential, and then systemctl.
// Needs root, systemd-nspawn and debootstrap (make deps); the container's
// root file system is built once (~40 s, Debian mirror needed) and cached.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
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

// systemdSkipEnv turns the systemd tests off (as COFFER_SKIP_DEVICE_TESTS
// does the device tests).
const systemdSkipEnv = "COFFER_SKIP_SYSTEMD_TESTS"

// testWatchdog is WatchdogSec= for the test, through a drop-in: the unit's
// 30s would make the hung-daemon check slow.
const testWatchdog = 3 * time.Second

// testbed is one booted container.
type testbed struct {
	t      *testing.T
	script string // sdboot.sh
	name   string // container (machine) name
}

// requireTestbed skips unless this machine can boot a container: root,
// systemd-nspawn and debootstrap. Anything that fails after that fails the
// test.
func requireTestbed(t *testing.T) {
	t.Helper()
	if os.Getenv(systemdSkipEnv) == "1" {
		t.Skip("skipped because " + systemdSkipEnv + "=1")
	}
	if testing.Short() {
		t.Skip("boots a container; not with -short")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to boot a container with systemd-nspawn")
	}
	for _, tool := range []string{"systemd-nspawn", "debootstrap", "nsenter", "pgrep", "flock", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: run make deps (installs systemd-container, debootstrap, procps)", tool)
		}
	}
}

// runCmd runs cmd with stdin and returns its stdout, stderr and exit code.
func runCmd(t *testing.T, cmd *exec.Cmd, stdin string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return out.String(), errb.String(), code
}

// with returns the testbed for the (sub)test t, so that its failures are
// t's.
func (tb *testbed) with(t *testing.T) *testbed {
	c := *tb
	c.t = t
	return &c
}

// ct runs a command in the container as root (nsenter into its PID 1).
func (tb *testbed) ct(stdin string, args ...string) (string, string, int) {
	tb.t.Helper()
	return runCmd(tb.t, exec.Command("bash", append([]string{tb.script, "exec", tb.name}, args...)...), stdin)
}

// must runs a command in the container and fails the test if it fails.
func (tb *testbed) must(stdin string, args ...string) string {
	tb.t.Helper()
	out, errOut, code := tb.ct(stdin, args...)
	if code != 0 {
		tb.t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s\n%s", args, code, out, errOut, tb.journal())
	}
	return out
}

// sh runs a shell script in the container.
func (tb *testbed) sh(script string) string {
	tb.t.Helper()
	return tb.must("", "sh", "-ec", script)
}

// journal is the end of cofferd's journal, for failure messages.
func (tb *testbed) journal() string {
	out, _, _ := tb.ct("", "journalctl", "-u", "cofferd", "-o", "short-monotonic", "--no-pager", "-n", "60")
	return "journal of cofferd.service (last 60 lines):\n" + out
}

// show returns a unit property.
func (tb *testbed) show(unit, prop string) string {
	tb.t.Helper()
	return strings.TrimSpace(tb.must("", "systemctl", "show", "-p", prop, "--value", unit))
}

// waitShow polls a unit property until ok accepts it.
func (tb *testbed) waitShow(unit, prop, what string, within time.Duration, ok func(string) bool) string {
	tb.t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := tb.show(unit, prop)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			tb.t.Fatalf("%s %s: want %s within %v, last %q\n%s", unit, prop, what, within, v, tb.journal())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// status asks the node for its status with the installed CLI.
func (tb *testbed) status() api.Status {
	tb.t.Helper()
	out, errOut, code := tb.ct("", "coffer", "--format", "json", "status")
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || (code != 0 && code != 2) {
		tb.t.Fatalf("coffer status: exit %d, %v\n%s%s\n%s", code, err, out, errOut, tb.journal())
	}
	return st
}

func TestE2E_Systemd(t *testing.T) {
	requireTestbed(t)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	tb := &testbed{t: t, script: filepath.Join(repo, "systemd", "testbed", "sdboot.sh"), name: fmt.Sprintf("coffer-e2e-%d", os.Getpid())}
	began := time.Now()
	phase := func(what string, since time.Time) { t.Logf("%-28s %6.1fs", what, time.Since(since).Seconds()) }

	// 1. The container's root file system, cached across runs.
	t0 := time.Now()
	out, errOut, code := runCmd(t, exec.Command("bash", tb.script, "rootfs"), "")
	if code != 0 {
		t.Fatalf("building the container's root file system: exit %d\n%s%s", code, out, errOut)
	}
	rootfs := strings.TrimSpace(out[strings.LastIndexByte(strings.TrimSpace(out), '\n')+1:])
	phase("rootfs ("+filepath.Base(rootfs)+")", t0)

	// 2. make install into a staging tree, plus what an operator writes:
	// the node config and the SoftHSM drop-in from the installed examples.
	t0 = time.Now()
	stage := t.TempDir()
	install := exec.Command("make", "--no-print-directory", "-C", repo, "install", "DESTDIR="+stage, "PREFIX=/usr")
	install.Env = cleanMakeEnv()
	if out, errOut, code := runCmd(t, install, ""); code != 0 {
		t.Fatalf("make install: exit %d\n%s%s", code, out, errOut)
	}
	phase("make install", t0)
	for _, f := range []string{
		"usr/bin/cofferd", "usr/bin/coffer",
		"usr/lib/systemd/system/cofferd.service", "usr/lib/systemd/system/cofferd.socket",
		"usr/lib/sysusers.d/coffer.conf", "usr/lib/tmpfiles.d/coffer.conf",
		"usr/share/doc/coffer/examples/cofferd-pkcs11.hcl", "usr/share/doc/coffer/examples/cofferd-tpm.hcl",
		"usr/share/bash-completion/completions/coffer", "usr/share/zsh/vendor-completions/_coffer",
		"usr/share/fish/vendor_completions.d/coffer.fish",
	} {
		if _, err := os.Stat(filepath.Join(stage, f)); err != nil {
			t.Errorf("make install did not install /%s", f)
		}
	}
	writeStaged(t, stage, "etc/coffer/cofferd.hcl", 0o640, `node_id   = "node1"
data_dir  = "/var/lib/coffer"
log_level = "info"

listener "unix" {
  path  = "/run/coffer/coffer.sock"
  mode  = "0660"
  group = "coffer"
}

admin {
  groups = ["coffer-admin"]
}

seal "pkcs11" {
  library        = "/usr/lib/softhsm/libsofthsm2.so"
  token_label    = "coffer-node1"
  pin_credential = "hsm-pin"
  key_label      = "coffer-seal"
  generate_key   = true
}

audit {
  path = "/var/log/coffer/audit.log"
}
`)
	// Test only: a short watchdog so that the hung-daemon check takes
	// seconds, not a minute.
	writeStaged(t, stage, "etc/systemd/system/cofferd.service.d/test.conf", 0o644, fmt.Sprintf(`[Service]
WatchdogSec=%ds
TimeoutAbortSec=2s
RestartSec=1s
`, int(testWatchdog.Seconds())))

	// 3. Boot, copy the tree in, create users and directories.
	t0 = time.Now()
	if out, errOut, code := runCmd(t, exec.Command("bash", tb.script, "up", rootfs, tb.name), ""); code != 0 {
		t.Fatalf("booting the container: exit %d\n%s%s", code, out, errOut)
	}
	t.Cleanup(func() {
		runCmd(t, exec.Command("bash", tb.script, "down", tb.name), "")
	})
	phase("boot", t0)
	tar := exec.Command("tar", "-C", stage, "-cf", "-", "usr", "etc")
	var tarball bytes.Buffer
	tar.Stdout = &tarball
	if err := tar.Run(); err != nil {
		t.Fatal(err)
	}
	tb.must(tarball.String(), "tar", "-xf", "-", "-C", "/", "--no-overwrite-dir", "--no-same-owner")
	pin := randomHex(t, 8)
	tb.sh(`
systemd-sysusers
systemd-tmpfiles --create coffer.conf
chgrp coffer /etc/coffer/cofferd.hcl
cp /usr/share/doc/coffer/examples/softhsm.conf /etc/systemd/system/cofferd.service.d/
systemctl daemon-reload
# The token as the examples/softhsm.conf comment says: owned by coffer.
runuser -u coffer -g softhsm -- softhsm2-util --init-token --free --label coffer-node1 --so-pin 12345678 --pin ` + pin + ` >/dev/null
`)
	// The PIN as an encrypted credential where the unit's
	// LoadCredentialEncrypted=hsm-pin finds it (host key: no TPM here).
	tb.must(pin, "sh", "-ec", `mkdir -p -m 0700 /etc/credstore.encrypted
umask 077
systemd-creds encrypt --name=hsm-pin - /etc/credstore.encrypted/hsm-pin 2>/dev/null`)
	if out := tb.must("", "id", "-nG", "coffer"); !strings.Contains(out, "tss") {
		t.Errorf("user coffer is not in the group tss (coffer.sysusers): %s", out)
	}
	if out := tb.must("", "stat", "-c", "%a %U %G", "/etc/coffer", "/var/lib/coffer", "/var/log/coffer", "/run/coffer"); out != "750 root coffer\n700 coffer coffer\n750 coffer coffer\n750 coffer coffer\n" {
		t.Errorf("directories from coffer.tmpfiles:\n%s", out)
	}

	var shares []string
	var ciphertext string
	t.Run("start returns once the API answers", func(t *testing.T) {
		tb := tb.with(t)
		t0 := time.Now()
		tb.must("", "systemctl", "start", "cofferd")
		took := time.Since(t0)
		// Taken at once: READY=1 came with the first real STATUS, after the
		// API answered; a start that returned early would still say
		// "starting: …" or have no API.
		if st := tb.show("cofferd", "StatusText"); st != "not initialised: run `coffer operator init`" {
			t.Errorf("StatusText right after start = %q", st)
		}
		if st := tb.status(); st.Initialized || st.SealType != "pkcs11" {
			t.Errorf("status right after start: %+v", st)
		}
		if s := tb.show("cofferd", "ActiveState") + "/" + tb.show("cofferd", "SubState"); s != "active/running" {
			t.Errorf("state %s", s)
		}
		t.Logf("systemctl start took %v", took.Round(time.Millisecond))
	})

	t.Run("StatusText follows the seal state", func(t *testing.T) {
		tb := tb.with(t)
		var ir api.InitResponse
		if err := json.Unmarshal([]byte(tb.must("", "coffer", "--format", "json", "operator", "init", "--shares", "3", "--threshold", "2")), &ir); err != nil || len(ir.Shares) != 3 {
			t.Fatalf("init: %v", err)
		}
		shares = ir.Shares
		tb.waitShow("cofferd", "StatusText", "unsealed, leader", 5*time.Second, statusIs("unsealed, leader"))
		tb.must("", "coffer", "operator", "seal")
		tb.waitShow("cofferd", "StatusText", "sealed, 0/2", 5*time.Second, statusSealedWith(0, 2))
		tb.must(shares[0]+"\n", "coffer", "operator", "unseal")
		tb.waitShow("cofferd", "StatusText", "sealed, 1/2", 5*time.Second, statusSealedWith(1, 2))
		tb.must(shares[2]+"\n", "coffer", "operator", "unseal")
		tb.waitShow("cofferd", "StatusText", "unsealed, leader", 5*time.Second, statusIs("unsealed, leader"))
		tb.must("", "coffer", "key", "create", "billing-db")
		ciphertext = strings.TrimSpace(tb.must(secret1, "coffer", "wrap", "--key", "billing-db"))
	})
	if shares == nil {
		t.FailNow()
	}

	t.Run("sandbox", func(t *testing.T) {
		tb := tb.with(t)
		pid := tb.show("cofferd", "MainPID")
		// ProtectSystem=strict, seen from inside the service's namespace.
		if _, errOut, code := tb.ct("", "nsenter", "-t", pid, "-m", "--", "touch", "/usr/coffer-sandbox-test"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
			t.Errorf("the service's /usr is writable (exit %d: %s)", code, errOut)
		}
		proc := tb.must("", "cat", "/proc/"+pid+"/status")
		uid := strings.TrimSpace(tb.must("", "id", "-u", "coffer"))
		for _, want := range []string{"Uid:\t" + uid + "\t", "NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000004000"} {
			if !strings.Contains(proc, want) {
				t.Errorf("/proc/MAINPID/status lacks %q (User=coffer, NoNewPrivileges=, SystemCallFilter=, CAP_IPC_LOCK only)", want)
			}
		}
		if _, _, code := tb.ct("", "nsenter", "-t", pid, "-m", "--", "test", "-e", "/dev/tpmrm0"); code == 0 {
			t.Log("the container has a /dev/tpmrm0")
		}
		// The API socket, as the config and the tmpfiles entry make it.
		if out := tb.must("", "stat", "-c", "%a %U %G %F", "/run/coffer/coffer.sock"); out != "660 coffer coffer socket\n" {
			t.Errorf("socket: %s", out)
		}
		// The token works from inside the sandbox: seal type and no device
		// error (the restart below shows it unseals).
		if st := tb.status(); st.SealType != "pkcs11" || st.SealDeviceError != "" {
			t.Errorf("status %+v", st)
		}
	})

	t.Run("audit log", func(t *testing.T) {
		tb := tb.with(t)
		st := tb.status()
		if st.AuditHash == "" {
			t.Skip("this build of cofferd writes no audit log yet (status has no audit_hash)")
		}
		out := tb.must("", "coffer", "audit", "verify", "/var/log/coffer/audit.log")
		if !strings.HasPrefix(out, "ok: ") {
			t.Errorf("coffer audit verify: %s", out)
		}
		if stat := tb.must("", "stat", "-c", "%U", "/var/log/coffer/audit.log"); stat != "coffer\n" {
			t.Errorf("audit log owner %s", stat)
		}
	})

	t.Run("other units reach the socket, policy decides", func(t *testing.T) {
		tb := tb.with(t)
		tb.sh(`useradd -r -M -s /usr/sbin/nologin -G coffer billing
useradd -r -M -s /usr/sbin/nologin -G coffer intruder
useradd -r -M -s /usr/sbin/nologin outsider`)
		tb.must(`{"subjects": {"units": ["billing.service"]}, "keys": ["billing-*"], "operations": ["wrap", "unwrap"]}`,
			"sh", "-c", "cat > /tmp/billing.json && coffer policy write billing /tmp/billing.json")
		for _, tc := range []struct {
			unit, user string
			code       int
			stderr     string
		}{
			{"billing", "billing", 0, ""},                         // granted by unit
			{"intruder", "intruder", 1, api.CodePermissionDenied}, // reaches the socket, no policy
			{"misnamed", "billing", 1, api.CodePermissionDenied},  // right user, wrong unit
			{"outsider", "outsider", 1, "permission denied"},      // not in the group coffer: socket refuses
		} {
			out, errOut, code := tb.ct("", "systemd-run", "--quiet", "--wait", "--pipe", "--unit="+tc.unit, "-p", "User="+tc.user,
				"/usr/bin/coffer", "unwrap", "--key", "billing-db", ciphertext)
			if code != tc.code || !strings.Contains(errOut, tc.stderr) {
				t.Errorf("%s.service as %s: exit %d, stderr %q; want exit %d with %q", tc.unit, tc.user, code, errOut, tc.code, tc.stderr)
			}
			if tc.code == 0 && out != secret1 {
				t.Errorf("%s.service unwrapped %d bytes, not the %d wrapped", tc.unit, len(out), len(secret1))
			}
		}
	})

	t.Run("restart unseals with the HSM", func(t *testing.T) {
		tb := tb.with(t)
		tb.must("", "systemctl", "restart", "cofferd")
		if st := tb.show("cofferd", "StatusText"); st != "unsealed, leader" {
			t.Fatalf("StatusText after restart = %q\n%s", st, tb.journal())
		}
		if out := tb.must(ciphertext, "coffer", "unwrap", "--key", "billing-db"); out != secret1 {
			t.Error("the ciphertext from before the restart does not unwrap")
		}
		if !strings.Contains(tb.must("", "journalctl", "-u", "cofferd", "-o", "cat", "--no-pager"), "auto-unsealed with the seal device") {
			t.Error("the journal does not say cofferd auto-unsealed")
		}
	})

	t.Run("watchdog restarts a hung daemon", func(t *testing.T) {
		tb := tb.with(t)
		pid := tb.show("cofferd", "MainPID")
		restarts := tb.show("cofferd", "NRestarts")
		t0 := time.Now()
		tb.must("", "sh", "-c", "kill -STOP "+pid) // minbase has no kill(1): the shell's
		tb.waitShow("cofferd", "MainPID", "a new main process", 10*testWatchdog, func(v string) bool { return v != pid && v != "0" })
		tb.waitShow("cofferd", "ActiveState", "active", 10*testWatchdog, func(v string) bool { return v == "active" })
		t.Logf("restarted %v after SIGSTOP (WatchdogSec=%v)", time.Since(t0).Round(time.Millisecond), testWatchdog)
		if n := tb.show("cofferd", "NRestarts"); n == restarts {
			t.Errorf("NRestarts still %s", n)
		}
		if j := tb.must("", "journalctl", "-u", "cofferd", "-o", "cat", "--no-pager"); !strings.Contains(j, "Watchdog timeout") {
			t.Errorf("the journal does not show a watchdog timeout\n%s", tb.journal())
		}
		if st := tb.show("cofferd", "StatusText"); st != "unsealed, leader" {
			t.Errorf("StatusText after the watchdog restart = %q", st)
		}
	})

	t.Run("socket activation", func(t *testing.T) {
		tb := tb.with(t)
		tb.must("", "systemctl", "stop", "cofferd")
		tb.must("", "systemctl", "start", "cofferd.socket")
		// The first connection starts cofferd; the request waits in the
		// socket's queue and is answered once it serves.
		if st := tb.status(); st.Sealed || !st.Initialized {
			t.Fatalf("status through the activated socket: %+v", st)
		}
		if s := tb.show("cofferd", "ActiveState"); s != "active" {
			t.Fatalf("cofferd %s after a connection to cofferd.socket", s)
		}
		if !strings.Contains(tb.must("", "journalctl", "-u", "cofferd", "-o", "cat", "--no-pager"), "socket passed by systemd") {
			t.Error("cofferd did not say it serves on the socket systemd passed")
		}
		// A restart keeps the socket: a request made while it is down waits.
		tb.must("", "systemctl", "restart", "cofferd")
		if out := tb.must(ciphertext, "coffer", "unwrap", "--key", "billing-db"); out != secret1 {
			t.Error("unwrap after a restart with socket activation")
		}
		if out := tb.must("", "stat", "-c", "%a %U %G", "/run/coffer/coffer.sock"); out != "660 coffer coffer\n" {
			t.Errorf("activated socket: %s", out)
		}
	})

	t.Run("no secret in the journal", func(t *testing.T) {
		tb := tb.with(t)
		j := tb.must("", "journalctl", "--no-pager", "-o", "cat")
		for name, s := range map[string]string{"PIN": pin, "share 1": shares[0], "share 3": shares[2], "plaintext": secret1} {
			if strings.Contains(j, s) {
				t.Errorf("the journal contains the %s", name)
			}
		}
	})

	tb.must("", "systemctl", "stop", "cofferd.socket", "cofferd")
	phase("total", began)
}

// writeStaged writes a file into the staging tree.
func writeStaged(t *testing.T, stage, rel string, mode os.FileMode, body string) {
	t.Helper()
	p := filepath.Join(stage, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

// cleanMakeEnv is the environment for a nested make: without the parent
// make's flags (a -j jobserver whose pipes this process does not pass on).
func cleanMakeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
