// Package examples runs each example of this directory against a real
// `cofferd --dev` node: the Go service, the Python script (standard library
// only) and the shell script (curl).
package examples

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/internal/devnode"
)

var (
	binDir string
	node   *devnode.Node
)

func TestMain(m *testing.M) {
	var err error
	if binDir, err = devnode.Build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if node, err = devnode.Start(binDir); err != nil {
		os.RemoveAll(binDir)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	node.Stop()
	os.RemoveAll(binDir)
	os.Exit(code)
}

func runExample(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	// The CLI the shell example uses, and the socket every example reads.
	cmd.Env = append(os.Environ(), "COFFER_SOCKET="+node.Socket, "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s\ncofferd:\n%s", name, args, err, out, node.Log())
	}
	return string(out)
}

func expect(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

func TestGoService(t *testing.T) {
	state := t.TempDir()
	bin := filepath.Join(t.TempDir(), "go-service")
	if out, err := exec.Command("go", "build", "-o", bin, "./go-service").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for range 2 { // the second run unwraps the password stored by the first
		out := runExample(t, bin, "-key", "dev", "-state", state)
		expect(t, out, "database password: 18 bytes", "report: 2700000 bytes encrypted and verified")
	}
}

func TestPython(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	out := runExample(t, "python3", "-I", "python/coffer_example.py", "--key", "dev")
	expect(t, out, "round trip: api-token-123", "data key: 32 bytes, unwraps to the same: True",
		"wrong aad: 400 decrypt_failed", "missing key: 404 not_found")
}

func TestShell(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	out := runExample(t, "sh", "shell/coffer.sh", "dev")
	expect(t, out, "ciphertext: coffer:", "round trip: db-password-42", "missing key: not_found", "envelope: 200000 bytes round trip")
}
