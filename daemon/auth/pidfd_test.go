package auth

import (
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPidfdExited: a running process is alive, a terminated one (zombie or
// reaped) is not. The check is a poll, so it works without permission over
// the process, as cofferd (user coffer) has none over its callers.
func TestPidfdExited(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Skipf("pidfd_open: %v (kernel before 5.3?)", err)
	}
	defer unix.Close(fd)
	if pidfdExited(fd) {
		t.Fatal("a running process counts as exited")
	}
	cmd.Process.Kill()
	// Not reaped yet: a zombie has terminated too. Wait for it to die.
	if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 5000); err != nil {
		t.Fatal(err)
	}
	if !pidfdExited(fd) {
		t.Fatal("a killed (zombie) process counts as alive")
	}
	cmd.Wait()
	if !pidfdExited(fd) {
		t.Fatal("a reaped process counts as alive")
	}
}
