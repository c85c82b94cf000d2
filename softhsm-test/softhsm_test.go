package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hsmSlots lists the token labels in tk's store, as a child process sees
// them.
func hsmSlots(t *testing.T, tk *Token) []string {
	t.Helper()
	out, err := tk.hsmUtil("--show-slots")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var labels []string
	for _, line := range strings.Split(string(out), "\n") {
		if l, ok := strings.CutPrefix(strings.TrimSpace(line), "Label:"); ok && strings.TrimSpace(l) != "" {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	return labels
}

func TestLibrary(t *testing.T) {
	RequireSoftHSM(t)
	lib := Library()
	if lib == "" {
		t.Fatal("Library() found no module after RequireSoftHSM passed")
	}
	if !filepath.IsAbs(lib) {
		t.Errorf("Library() = %q, want an absolute path", lib)
	}
}

func TestNewToken(t *testing.T) {
	tk := NewToken(t, "coffer-new")
	if tk.Label != "coffer-new" || tk.PIN != DefaultPIN || tk.SOPIN != DefaultSOPIN || tk.Library != Library() {
		t.Errorf("token = %+v", tk)
	}
	if got, exp := tk.Conf, filepath.Join(tk.Dir, "softhsm2.conf"); got != exp {
		t.Errorf("Conf = %q, want %q", got, exp)
	}
	conf, err := os.ReadFile(tk.Conf)
	if err != nil {
		t.Fatal(err)
	}
	if want := "directories.tokendir = " + filepath.Join(tk.Dir, "tokens") + "\n"; !strings.Contains(string(conf), want) {
		t.Errorf("conf lacks %q:\n%s", want, conf)
	}
	if env := tk.Env(); len(env) != 1 || env[0] != "SOFTHSM2_CONF="+tk.Conf {
		t.Errorf("Env() = %q", env)
	}
	if got := hsmSlots(t, tk); len(got) != 1 || got[0] != "coffer-new" {
		t.Errorf("store holds tokens %q, want only coffer-new", got)
	}

	// Each NewToken is a store of its own, even with the same label.
	other := NewToken(t, "coffer-new")
	if other.Dir == tk.Dir || other.Conf == tk.Conf {
		t.Error("two NewToken calls share a store")
	}

	// A child process logs in with the PIN through Env.
	if _, err := exec.LookPath("pkcs11-tool"); err == nil {
		cmd := exec.Command("pkcs11-tool", "--module", tk.Library, "--token-label", tk.Label, "--login", "--pin", tk.PIN, "--list-objects")
		cmd.Env = append(os.Environ(), tk.Env()...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("pkcs11-tool login with the token's PIN: %v\n%s", err, out)
		}
	}
}

func TestAddAndDeleteToken(t *testing.T) {
	a := NewToken(t, "coffer-a")
	b := AddToken(t, a.Dir, "coffer-b")
	if b.Dir != a.Dir || b.Conf != a.Conf {
		t.Errorf("AddToken made another store: %+v vs %+v", b, a)
	}
	if got := strings.Join(hsmSlots(t, a), ","); got != "coffer-a,coffer-b" && got != "coffer-b,coffer-a" {
		t.Errorf("store holds %q, want coffer-a and coffer-b", got)
	}
	DeleteToken(t, b)
	if got := hsmSlots(t, a); len(got) != 1 || got[0] != "coffer-a" {
		t.Errorf("after DeleteToken the store holds %q, want only coffer-a", got)
	}
	// The label is free again (a replaced HSM).
	AddToken(t, a.Dir, "coffer-b")
	if got := hsmSlots(t, a); len(got) != 2 {
		t.Errorf("after re-adding coffer-b the store holds %q", got)
	}
}

func TestWriteConf(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	conf, err := WriteConf(dir)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{conf: 0o600, filepath.Join(dir, "tokens"): 0o700} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s has mode %04o, want %04o", path, st.Mode().Perm(), mode)
		}
	}
}

func TestPINFile(t *testing.T) {
	tk := &Token{PIN: "4321"}
	path := tk.PINFile(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("PIN file mode %04o, want 0600", st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "4321\n" {
		t.Errorf("PIN file holds %q", data)
	}
}

// hsmFakeTB records what RequireSoftHSM asks of the test.
type hsmFakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *hsmFakeTB) Helper()           {}
func (f *hsmFakeTB) Skip(args ...any)  { f.skipped = fmt.Sprint(args...) }
func (f *hsmFakeTB) Fatal(args ...any) { f.failed = fmt.Sprint(args...) }

func TestRequireSoftHSM_Missing(t *testing.T) {
	// No softhsm2-util on PATH.
	t.Setenv("PATH", t.TempDir())
	tests := []struct {
		name, skipEnv string
		wantSkip      bool
	}{
		{"fails by default", "", false},
		{"skips when asked", "1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(hsmSkipEnv, tt.skipEnv)
			f := &hsmFakeTB{TB: t}
			RequireSoftHSM(f)
			msg := f.failed
			if tt.wantSkip {
				msg = f.skipped
				if f.failed != "" {
					t.Errorf("failed as well as skipped: %s", f.failed)
				}
			} else if f.skipped != "" {
				t.Errorf("skipped: %s", f.skipped)
			}
			if !strings.Contains(msg, "install softhsm2 opensc (make deps)") || !strings.Contains(msg, "softhsm2-util") {
				t.Errorf("message %q", msg)
			}
		})
	}
}

func TestScript(t *testing.T) {
	RequireSoftHSM(t)
	dir := filepath.Join(t.TempDir(), "store")
	run := func(args ...string) (string, string, error) {
		cmd := exec.Command("./softhsm-token.sh", args...)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF=/nonexistent") // the script sets its own
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		return string(out), stderr.String(), err
	}
	out, _, err := run(dir)
	if err != nil {
		t.Fatalf("softhsm-token.sh DIR: %v", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if out != "export SOFTHSM2_CONF="+conf+"\n" {
		t.Errorf("output %q, want only the export line", out)
	}
	if _, _, err := run(dir, "node2", "1111", "87654321"); err != nil {
		t.Fatalf("softhsm-token.sh DIR node2: %v", err)
	}
	tk := &Token{Dir: dir, Conf: conf, Label: "node2", PIN: "1111", Library: Library()}
	if got := strings.Join(hsmSlots(t, tk), ","); got != "coffer-test,node2" && got != "node2,coffer-test" {
		t.Errorf("store holds %q, want coffer-test and node2", got)
	}
	_, stderr, err := run(dir, "node2")
	if err == nil || !strings.Contains(stderr, `already holds a token labelled "node2"`) {
		t.Errorf("a duplicate label: err %v, stderr %q", err, stderr)
	}
	if _, stderr, err := run(); err == nil || !strings.Contains(stderr, "usage:") {
		t.Errorf("no arguments: err %v, stderr %q", err, stderr)
	}
}
