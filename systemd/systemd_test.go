package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/daemon/config"
)

// skipEnv turns missing systemd tools into a skip, as the device tests do
// for SoftHSM and swtpm.
const skipEnv = "COFFER_SKIP_SYSTEMD_TESTS"

// requireTool fails the test when name is not installed (make deps installs
// it), or skips it when COFFER_SKIP_SYSTEMD_TESTS=1.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := name + " is not installed (Debian package systemd): run make deps"
	if os.Getenv(skipEnv) == "1" {
		t.Skip(msg + "; skipped because " + skipEnv + "=1")
	}
	t.Fatal(msg + ", or set " + skipEnv + "=1 to skip the systemd tests")
	return ""
}

// unitDir copies the units into a temporary unit directory, with ExecStart=
// pointing at an executable that exists (verify insists on it; any will do)
// and the given drop-ins (files under examples/) in cofferd.service.d/.
func unitDir(t *testing.T, dropIns ...string) string {
	t.Helper()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"cofferd.service", "cofferd.socket"} {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "ExecStart=/usr/bin/cofferd ", "ExecStart="+exe+" "))
		if err := os.WriteFile(filepath.Join(dir, u), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if len(dropIns) > 0 {
		d := filepath.Join(dir, "cofferd.service.d")
		os.Mkdir(d, 0o755)
		for _, f := range dropIns {
			b, err := os.ReadFile(filepath.Join("examples", f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// analyze runs systemd-analyze with dir first in the unit search path (so
// that drop-ins next to the units are read too).
func analyze(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(requireTool(t, "systemd-analyze"), args...)
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestUnits_Verify: systemd-analyze verify has nothing to say about the
// units, alone and with each example drop-in. verify exits 0 on unknown keys
// and bad values and only prints them, so any output fails.
func TestUnits_Verify(t *testing.T) {
	dropIns, _ := filepath.Glob("examples/*.conf")
	cases := [][]string{nil}
	for _, d := range dropIns {
		cases = append(cases, []string{filepath.Base(d)})
	}
	if len(cases) < 4 {
		t.Fatalf("expected the example drop-ins, found %v", dropIns)
	}
	for _, ds := range cases {
		name := "units"
		if len(ds) > 0 {
			name = "with " + ds[0]
		}
		t.Run(name, func(t *testing.T) {
			dir := unitDir(t, ds...)
			out, err := analyze(t, dir, "verify", "--man=no", filepath.Join(dir, "cofferd.service"), filepath.Join(dir, "cofferd.socket"))
			if err != nil || strings.TrimSpace(out) != "" {
				t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
			}
		})
	}
}

var (
	overallRe = regexp.MustCompile(`Overall exposure level for \S+: ([0-9]+\.[0-9])`)
	findingRe = regexp.MustCompile(`(?m)^✗ (\S+?)=`)
)

// TestUnits_Security: the exposure score of cofferd.service is at most
// MaxExposure, the docs record the score it has, and every finding left is
// named in one of the unit's "Relaxed:" comments.
func TestUnits_Security(t *testing.T) {
	dir := unitDir(t)
	out, err := analyze(t, dir, "security", "--offline=true", "--no-pager", filepath.Join(dir, "cofferd.service"))
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := overallRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("exposure %s", m[1])
	if score > MaxExposure {
		t.Errorf("exposure %s, at most %.1f allowed:\n%s", m[1], MaxExposure, out)
	}

	relaxed := relaxedComments(t)
	for _, f := range findingRe.FindAllStringSubmatch(out, -1) {
		// "RootDirectory=/RootImage=" and "RestrictAddressFamilies=~AF_UNIX"
		// are named by their first setting.
		if !strings.Contains(relaxed, f[1]+"=") {
			t.Errorf("security lists %s, but no \"Relaxed:\" comment in cofferd.service names %s= and says why", f[1], f[1])
		}
	}

	docs, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := "exposure " + m[1]; !strings.Contains(string(docs), want) {
		t.Errorf("docs/operations.md does not record the exposure score (%q)", want)
	}
	unit, _ := os.ReadFile("cofferd.service")
	if want := "exposure " + m[1]; !strings.Contains(string(unit), want) {
		t.Errorf("cofferd.service's header does not record the exposure score (%q)", want)
	}
}

// relaxedComments returns the comment blocks of cofferd.service that contain
// "Relaxed:", from that word to the end of the block.
func relaxedComments(t *testing.T) string {
	t.Helper()
	f, err := os.Open("cofferd.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "#") {
			in = false
			continue
		}
		if i := strings.Index(line, "Relaxed:"); i >= 0 {
			in = true
			line = line[i:]
		}
		if in {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// TestExamples_Load: the example node configs load with cofferd's own
// config loader and say what their comments promise; the socket unit and
// the configs agree on the API socket.
func TestExamples_Load(t *testing.T) {
	socket, err := os.ReadFile("cofferd.socket")
	if err != nil {
		t.Fatal(err)
	}
	if want := "ListenStream=" + config.DefaultSocketPath + "\n"; !strings.Contains(string(socket), want) {
		t.Errorf("cofferd.socket does not have %q", want)
	}
	for _, tc := range []struct {
		file  string
		check func(t *testing.T, c *config.Config)
	}{
		{"cofferd-pkcs11.hcl", func(t *testing.T, c *config.Config) {
			if c.Seal == nil || c.Seal.PKCS11 == nil {
				t.Fatalf("no pkcs11 seal: %+v", c.Seal)
			}
			// The unit's LoadCredentialEncrypted=hsm-pin.
			if got := c.Seal.PKCS11.PINCredential; got != "hsm-pin" {
				t.Errorf("pin_credential = %q, want hsm-pin (the unit's LoadCredentialEncrypted=)", got)
			}
		}},
		{"cofferd-tpm.hcl", func(t *testing.T, c *config.Config) {
			if c.Seal == nil || c.Seal.TPM == nil || c.Seal.TPM.Device != "/dev/tpmrm0" {
				t.Fatalf("no tpm seal on /dev/tpmrm0: %+v", c.Seal)
			}
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			// Load it as if installed: relative paths resolve against
			// /etc/coffer.
			src, err := os.ReadFile(filepath.Join("examples", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			c, err := config.ParseConfig(src, "/etc/coffer/cofferd.hcl")
			if err != nil {
				t.Fatalf("the example does not load: %v", err)
			}
			cl := c.Cluster
			if cl == nil || !cl.Bootstrap || cl.TLSCAFile != "/etc/coffer/tls/ca.crt" {
				t.Errorf("cluster = %+v, want node 1 bootstrapping with certificates in /etc/coffer/tls", cl)
			}
			if c.Listener.Path != config.DefaultSocketPath || c.Listener.Group != "coffer" || c.DataDir != "/var/lib/coffer" {
				t.Errorf("listener %+v, data_dir %s: not the paths of cofferd.service and cofferd.socket", c.Listener, c.DataDir)
			}
			if len(c.Admin.Groups) != 1 || c.Admin.Groups[0] != "coffer-admin" {
				t.Errorf("admin groups %v, want the sysusers group coffer-admin", c.Admin.Groups)
			}
			if c.Audit == nil || !strings.HasPrefix(c.Audit.Path, "/var/log/coffer/") {
				t.Errorf("audit %+v, want it in LogsDirectory=coffer", c.Audit)
			}
			tc.check(t, c)
		})
	}
}

// TestSysusers: systemd-sysusers accepts coffer.sysusers and would create
// the users and groups the unit and the configs name.
func TestSysusers(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "etc"), 0o755)
	abs, _ := filepath.Abs("coffer.sysusers")
	out, err := exec.Command(requireTool(t, "systemd-sysusers"), "--root="+root, "--dry-run", abs).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	for _, want := range []string{"group 'coffer'", "group 'coffer-admin'", "group 'tss'", "user 'coffer'"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("systemd-sysusers would not create %s:\n%s", want, out)
		}
	}
}
