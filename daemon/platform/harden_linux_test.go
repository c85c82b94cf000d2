package platform

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// hardenChildEnv makes the test binary, re-executed by TestHardenProcess, run
// HardenProcess and check its effect in a child process, so that the test
// process itself (and the other tests in it) stays dumpable.
const hardenChildEnv = "COFFER_TEST_HARDEN_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(hardenChildEnv) == "1" {
		os.Exit(hardenChild())
	}
	os.Exit(m.Run())
}

// hardenChild returns the exit code: 0 ok, 2 HardenProcess failed, 3 still
// dumpable, 4 core limit not zero.
func hardenChild() int {
	if err := HardenProcess(); err != nil {
		os.Stderr.WriteString("HardenProcess: " + err.Error() + "\n")
		return 2
	}
	d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil || d != 0 {
		os.Stderr.WriteString("process is still dumpable\n")
		return 3
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &rl); err != nil || rl.Cur != 0 || rl.Max != 0 {
		os.Stderr.WriteString("RLIMIT_CORE is not 0/0\n")
		return 4
	}
	return 0
}

func TestHardenProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), hardenChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hardened child failed: %v\n%s", err, out)
	}
	// The parent is untouched.
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 1 {
		t.Errorf("test process dumpable = %d, %v; want 1 (the child must not affect it)", d, err)
	}
}
