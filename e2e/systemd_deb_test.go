package e2e

// TestE2E_SystemdDeb installs the .deb of `make deb` into the Debian 12
// container with systemd 252 (the testbed of TestE2E_Systemd, whose cached
// root file system it shares), configures and starts cofferd, initialises,
// unseals and wraps; upgrades over itself and checks the data survived;
// removes and purges and checks what is left. Heavy (builds the package,
// boots a container): run it alone, as root:
//
//	go test -count=1 -run TestE2E_SystemdDeb ./e2e/

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

func TestE2E_SystemdDeb(t *testing.T) {
	requireTestbed(t)
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	tb := &testbed{t: t, script: filepath.Join(repo, "systemd", "testbed", "sdboot.sh"), name: fmt.Sprintf("coffer-deb-%d", os.Getpid())}

	out, errOut, code := runCmd(t, exec.Command("bash", tb.script, "rootfs"), "")
	if code != 0 {
		t.Fatalf("building the container's root file system: exit %d\n%s%s", code, out, errOut)
	}
	rootfs := strings.TrimSpace(out[strings.LastIndexByte(strings.TrimSpace(out), '\n')+1:])

	// The package, as a site would build it.
	mk := exec.Command("make", "--no-print-directory", "-C", repo, "deb")
	mk.Env = cleanMakeEnv()
	out, errOut, code = runCmd(t, mk, "")
	if code != 0 {
		t.Fatalf("make deb: exit %d\n%s%s", code, out, errOut)
	}
	var deb string
	for _, l := range strings.Split(out, "\n") {
		if p, ok := strings.CutPrefix(l, "built "); ok {
			deb = filepath.Join(repo, strings.TrimSpace(p))
		}
	}
	pkg, err := os.ReadFile(deb)
	if err != nil {
		t.Fatalf("make deb built no package (%q): %v\n%s", deb, err, out)
	}
	if strings.Contains(out+errOut, ": E: ") || strings.Contains(out+errOut, ": W: ") {
		t.Errorf("lintian findings:\n%s", out)
	}

	if out, errOut, code := runCmd(t, exec.Command("bash", tb.script, "up", rootfs, tb.name), ""); code != 0 {
		t.Fatalf("booting the container: exit %d\n%s%s", code, out, errOut)
	}
	t.Cleanup(func() { runCmd(t, exec.Command("bash", tb.script, "down", tb.name), "") })
	tb.must(string(pkg), "sh", "-ec", "cat > /tmp/coffer.deb")
	t.Logf("container: %s", strings.SplitN(tb.must("", "systemctl", "--version"), "\n", 2)[0])

	// 1. Install: users, directories, units, pages; nothing started.
	inst := tb.must("", "dpkg", "-i", "/tmp/coffer.deb")
	if !strings.Contains(inst, "not started until it is configured") {
		t.Errorf("dpkg -i did not say what to do next:\n%s", inst)
	}
	tb.must("", "id", "coffer")
	tb.must("", "getent", "group", "coffer-admin")
	if out := tb.must("", "stat", "-c", "%a %U %G", "/etc/coffer", "/var/lib/coffer", "/var/log/coffer"); out != "750 root coffer\n700 coffer coffer\n750 coffer coffer\n" {
		t.Errorf("directories after install:\n%s", out)
	}
	for _, f := range []string{"/usr/bin/cofferd", "/usr/bin/coffer", "/usr/lib/systemd/system/cofferd.service",
		"/usr/share/man/man1/coffer.1.gz", "/usr/share/man/man1/coffer-encrypt.1.gz", "/usr/share/man/man8/cofferd.8.gz",
		"/usr/share/man/man5/cofferd.hcl.5.gz", "/usr/share/bash-completion/completions/coffer",
		"/usr/share/doc/coffer/copyright", "/usr/share/doc/coffer/examples/cofferd-pkcs11.hcl"} {
		tb.must("", "test", "-f", f)
	}
	if s := tb.show("cofferd.service", "ActiveState"); s != "inactive" {
		t.Errorf("cofferd is %s right after install; an unconfigured daemon must not start", s)
	}
	if s := tb.show("cofferd.service", "LoadState"); s != "loaded" {
		t.Errorf("cofferd.service LoadState %s after install (daemon-reload?)", s)
	}

	// 2. Configure (Shamir only: the restart on upgrade then needs the
	// share again, which shows the state survived), start, init, wrap.
	tb.must(`node_id  = "deb1"
data_dir = "/var/lib/coffer"
listener "unix" {
  path  = "/run/coffer/coffer.sock"
  mode  = "0660"
  group = "coffer"
}
audit {
  path = "/var/log/coffer/audit.log"
}
`, "sh", "-ec", "cat > /etc/coffer/cofferd.hcl; chgrp coffer /etc/coffer/cofferd.hcl; chmod 0640 /etc/coffer/cofferd.hcl")
	tb.must("", "systemctl", "enable", "--now", "cofferd.service")
	var ir api.InitResponse
	if err := json.Unmarshal([]byte(tb.must("", "coffer", "--format", "json", "operator", "init", "--shares", "1", "--threshold", "1")), &ir); err != nil || len(ir.Shares) != 1 {
		t.Fatalf("init: %v\n%s", err, tb.journal())
	}
	share := ir.Shares[0]
	tb.must(share+"\n", "coffer", "operator", "unseal")
	tb.must("", "coffer", "key", "create", "deb-key")
	ct := strings.TrimSpace(tb.must(secret1, "coffer", "wrap", "--key", "deb-key"))
	pid1 := tb.show("cofferd.service", "MainPID")

	// 3. Upgrade over itself: cofferd restarts on the new binary; keys,
	// cluster and audit log are kept.
	tb.must("", "dpkg", "-i", "/tmp/coffer.deb")
	tb.waitShow("cofferd.service", "MainPID", "a new process", 30*time.Second, func(s string) bool { return s != "0" && s != pid1 })
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := tb.status()
		if st.Initialized && st.Sealed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the upgrade: %+v\n%s", st, tb.journal())
		}
		time.Sleep(200 * time.Millisecond)
	}
	tb.must(share+"\n", "coffer", "operator", "unseal")
	if got := tb.must(ct, "coffer", "unwrap", "--key", "deb-key"); got != secret1 {
		t.Fatalf("unwrap after the upgrade: %q", got)
	}
	if out := tb.must("", "coffer", "audit", "verify", "/var/log/coffer/audit.log"); !strings.HasPrefix(out, "ok: ") {
		t.Errorf("audit log after the upgrade: %s", out)
	}

	// 4. Remove: stopped, binaries and units gone, data and audit log kept.
	tb.must("", "dpkg", "-r", "coffer")
	if _, _, code := tb.ct("", "test", "-e", "/usr/bin/cofferd"); code == 0 {
		t.Error("/usr/bin/cofferd is still there after dpkg -r")
	}
	if out, _, _ := tb.ct("", "pgrep", "-x", "cofferd"); strings.TrimSpace(out) != "" {
		t.Errorf("cofferd still runs after dpkg -r (pid %s)", out)
	}
	if s := tb.show("cofferd.service", "LoadState"); s != "not-found" {
		t.Errorf("cofferd.service LoadState %s after dpkg -r", s)
	}
	tb.must("", "test", "-s", "/var/log/coffer/audit.log")
	if out := tb.must("", "ls", "/var/lib/coffer"); strings.TrimSpace(out) == "" {
		t.Error("/var/lib/coffer is empty after dpkg -r")
	}

	// 5. Purge: says what it leaves, and leaves it.
	purge := tb.must("", "dpkg", "-P", "coffer")
	for _, want := range []string{"Left in place", "/var/lib/coffer", "/var/log/coffer", "/etc/coffer"} {
		if !strings.Contains(purge, want) {
			t.Errorf("dpkg -P does not mention %q:\n%s", want, purge)
		}
	}
	tb.must("", "test", "-s", "/var/log/coffer/audit.log")
	tb.must("", "test", "-d", "/var/lib/coffer")
	if out, _, code := tb.ct("", "dpkg", "-s", "coffer"); code == 0 {
		t.Errorf("dpkg -s coffer after purge:\n%s", out)
	}
	if out, _, _ := tb.ct("", "sh", "-c", "ls /etc/systemd/system/*.wants/ 2>/dev/null | grep -c cofferd || true"); strings.TrimSpace(out) != "0" {
		t.Errorf("enablement links left after purge: %s", out)
	}
}
