package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// SoftHSMLibrary is the Debian path of the SoftHSM2 PKCS#11 module (a
// symlink to the multiarch path). Prefer [Library], which also finds it
// elsewhere.
const SoftHSMLibrary = "/usr/lib/softhsm/libsofthsm2.so"

// Defaults of a token made by [NewToken] or [AddToken]; the same as
// softhsm-token.sh.
const (
	DefaultPIN   = "1234"
	DefaultSOPIN = "12345678"
)

// hsmMaxLabel is the size of CK_TOKEN_INFO.label: a longer label cannot be
// stored, and softhsm2-util would truncate it silently.
const hsmMaxLabel = 32

// hsmSkipEnv names the variable that turns a missing device into a skip.
const hsmSkipEnv = "COFFER_SKIP_DEVICE_TESTS"

// hsmLibraryCandidates are where distributions install the module, in order.
var hsmLibraryCandidates = []string{
	SoftHSMLibrary,
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// Library returns the path of the SoftHSM2 PKCS#11 module, or "" when it is
// not installed.
func Library() string {
	for _, p := range hsmLibraryCandidates {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// Token is a SoftHSM2 token in a private token store.
type Token struct {
	Dir     string // the store: Conf and the tokens directory live here
	Conf    string // the softhsm2.conf to put in SOFTHSM2_CONF
	Label   string // the token label (at most 32 bytes)
	PIN     string // the user PIN
	SOPIN   string // the security officer PIN
	Library string // the PKCS#11 module, as found by Library
}

// Env returns the environment a child process needs to see this token's
// store; append it to os.Environ().
func (tk *Token) Env() []string {
	return []string{"SOFTHSM2_CONF=" + tk.Conf}
}

// PINFile writes the user PIN, followed by a newline as `echo` would write
// it, to a new file of mode 0600 in a temporary directory and returns its
// path (for pin_file in a cofferd config).
func (tk *Token) PINFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsm.pin")
	if err := os.WriteFile(path, []byte(tk.PIN+"\n"), 0o600); err != nil {
		t.Fatalf("softhsmtest: cannot write the PIN file: %v", err)
	}
	return path
}

// RequireSoftHSM fails the test when softhsm2-util or the SoftHSM2 module is
// missing, or skips it when COFFER_SKIP_DEVICE_TESTS=1.
func RequireSoftHSM(t testing.TB) {
	t.Helper()
	var missing []string
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		missing = append(missing, "softhsm2-util")
	}
	if Library() == "" {
		missing = append(missing, "libsofthsm2.so (looked in "+strings.Join(hsmLibraryCandidates, ", ")+")")
	}
	if len(missing) == 0 {
		return
	}
	msg := "SoftHSM2 is not installed (missing " + strings.Join(missing, " and ") + "): install softhsm2 opensc (make deps)"
	if os.Getenv(hsmSkipEnv) == "1" {
		t.Skip(msg + "; skipped because " + hsmSkipEnv + "=1")
		return
	}
	t.Fatal(msg + ", or set " + hsmSkipEnv + "=1 to skip device tests")
}

// WriteConf prepares dir as a private SoftHSM2 token store: it creates
// dir/tokens (SoftHSM does not create its token directory) and writes
// dir/softhsm2.conf, whose path it returns. It needs no testing.TB so that
// TestMain can call it before setting SOFTHSM2_CONF; see the package
// documentation.
func WriteConf(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("softhsmtest: %w", err)
	}
	tokens := filepath.Join(abs, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", fmt.Errorf("softhsmtest: cannot create the token directory: %w", err)
	}
	conf := filepath.Join(abs, "softhsm2.conf")
	// The same settings as softhsm-token.sh: a file store, quiet logging, no
	// slot removal games, and no reset in children (a test's exec'd daemon
	// initialises the library itself).
	body := "directories.tokendir = " + tokens + "\n" +
		"objectstore.backend = file\n" +
		"log.level = ERROR\n" +
		"slots.removable = false\n" +
		"slots.mechanisms = ALL\n" +
		"library.reset_on_fork = false\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return "", fmt.Errorf("softhsmtest: cannot write %s: %w", conf, err)
	}
	return conf, nil
}

// NewToken creates a token labelled label in a token store of its own (a
// new directory and softhsm2.conf), for a child process such as a cofferd
// started by the test: pass it tk.Env(). The store is removed when the test
// ends. The PINs are DefaultPIN and DefaultSOPIN.
func NewToken(t testing.TB, label string) *Token {
	t.Helper()
	RequireSoftHSM(t)
	dir := t.TempDir()
	if _, err := WriteConf(dir); err != nil {
		t.Fatal(err)
	}
	return hsmInitToken(t, dir, label)
}

// AddToken creates one more token, labelled label, in the existing store dir
// (made by NewToken or WriteConf). The label must be unique in the store.
// The token is deleted when the test ends, unless it is gone by then.
//
// A process that has already initialised SoftHSM with this store does not
// see the new token until it re-initialises the library.
func AddToken(t testing.TB, dir, label string) *Token {
	t.Helper()
	RequireSoftHSM(t)
	conf := filepath.Join(dir, "softhsm2.conf")
	if _, err := os.Stat(conf); err != nil {
		t.Fatalf("softhsmtest: AddToken: %s is not a token store (%v); create it with NewToken or WriteConf", dir, err)
	}
	tk := hsmInitToken(t, dir, label)
	t.Cleanup(func() {
		if hsmHasToken(tk) {
			if out, err := tk.hsmUtil("--delete-token", "--token", tk.Label); err != nil {
				t.Logf("softhsmtest: cleanup: cannot delete token %q: %v: %s", tk.Label, err, out)
			}
		}
	})
	return tk
}

// DeleteToken deletes the token from its store, as if the HSM was lost or
// wiped. Processes that have the token open see its objects vanish.
func DeleteToken(t testing.TB, tk *Token) {
	t.Helper()
	if out, err := tk.hsmUtil("--delete-token", "--token", tk.Label); err != nil {
		t.Fatalf("softhsmtest: cannot delete token %q: %v: %s", tk.Label, err, out)
	}
}

func hsmInitToken(t testing.TB, dir, label string) *Token {
	t.Helper()
	if label == "" || len(label) > hsmMaxLabel {
		t.Fatalf("softhsmtest: token label %q is %d bytes; PKCS#11 token labels hold 1 to %d", label, len(label), hsmMaxLabel)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	tk := &Token{
		Dir:     abs,
		Conf:    filepath.Join(abs, "softhsm2.conf"),
		Label:   label,
		PIN:     DefaultPIN,
		SOPIN:   DefaultSOPIN,
		Library: Library(),
	}
	if hsmHasToken(tk) {
		t.Fatalf("softhsmtest: the store %s already holds a token labelled %q; give each test its own label", abs, label)
	}
	if out, err := tk.hsmUtil("--init-token", "--free", "--label", label, "--so-pin", tk.SOPIN, "--pin", tk.PIN); err != nil {
		t.Fatalf("softhsmtest: softhsm2-util --init-token --label %s: %v: %s", label, err, out)
	}
	return tk
}

// hsmHasToken reports whether tk's store holds a token with tk's label.
// softhsm2-util --show-slots prints each label padded with spaces.
func hsmHasToken(tk *Token) bool {
	out, err := tk.hsmUtil("--show-slots")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if l, ok := strings.CutPrefix(line, "Label:"); ok && strings.TrimSpace(l) == tk.Label {
			return true
		}
	}
	return false
}

// hsmUtil runs softhsm2-util on tk's store. The PINs appear on the command
// line: acceptable for throw-away test tokens only.
func (tk *Token) hsmUtil(args ...string) ([]byte, error) {
	cmd := exec.Command("softhsm2-util", args...)
	cmd.Env = append(os.Environ(), tk.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("softhsm2-util %s: %w", args[0], err)
	}
	return out, nil
}
