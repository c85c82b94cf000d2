//go:build linux

package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal pair; the test is skipped where there is
// none (some sandboxes).
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pty: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// syncBuffer is a bytes.Buffer that Main and the test can share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls until s contains sub n times.
func waitFor(t *testing.T, s *syncBuffer, sub string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(s.String(), sub) < n {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d × %q in %q", n, sub, s.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

const prompt = "Unseal share (will be hidden): "

// waitEchoOff polls until the terminal's echo is off: coffer prints the
// prompt just before it turns echo off, and input typed in between would be
// echoed.
func waitEchoOff(t *testing.T, tty *os.File) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if st.Lflag&unix.ECHO == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("echo never turned off")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// answer waits for the n-th prompt and types line.
func answer(t *testing.T, errb *syncBuffer, n int, master, tty *os.File, line string) {
	t.Helper()
	waitFor(t, errb, prompt, n)
	waitEchoOff(t, tty)
	if _, err := master.WriteString(line); err != nil {
		t.Fatal(err)
	}
}

func startUnseal(t *testing.T, ctx context.Context, f *fakeDaemon, tty *os.File) (out, errb *syncBuffer, done chan int) {
	out, errb, done = &syncBuffer{}, &syncBuffer{}, make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"coffer", "--socket", f.socket, "operator", "unseal"}, tty, out, errb)
	}()
	return out, errb, done
}

func wait(t *testing.T, done chan int) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(10 * time.Second):
		t.Fatal("coffer did not finish")
		return -1
	}
}

func TestUnseal_Prompt(t *testing.T) {
	f := newFake(t)
	s := &fakeSeal{initialized: true, sealed: true, threshold: 2}
	installSeal(f, s)
	master, tty := openPTY(t)
	out, errb, done := startUnseal(t, context.Background(), f, tty)

	answer(t, errb, 1, master, tty, "s1-secret\n")
	answer(t, errb, 2, master, tty, "\n")           // an empty line is asked again
	answer(t, errb, 3, master, tty, "bad-secret\n") // refused: asked again
	answer(t, errb, 4, master, tty, "s2-secret\n")
	if code := wait(t, done); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if got := strings.Join(s.shares, ","); got != "s1-secret,bad-secret,s2-secret" {
		t.Fatalf("shares %q", got)
	}
	if got := out.String(); got != "Unseal progress: 1/2\nUnsealed.\n" {
		t.Fatalf("stdout %q", got)
	}
	if e := errb.String(); !strings.Contains(e, "coffer: share refused: the share's checksum does not match: it was mistyped; try again.") || strings.Contains(e, "secret") {
		t.Fatalf("stderr %q", e)
	}
	// Nothing was echoed back to the terminal.
	echo := make([]byte, 4096)
	fds := []unix.PollFd{{Fd: int32(master.Fd()), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, 50); n > 0 {
		n, _ := unix.Read(int(master.Fd()), echo)
		if n > 0 && bytes.Contains(echo[:n], []byte("secret")) {
			t.Fatalf("the terminal echoed a share: %q", echo[:n])
		}
	}
}

func TestUnseal_PromptEOFAndCancel(t *testing.T) {
	t.Run("ctrl-d", func(t *testing.T) {
		f := newFake(t)
		s := &fakeSeal{initialized: true, sealed: true, threshold: 3}
		installSeal(f, s)
		master, tty := openPTY(t)
		_, errb, done := startUnseal(t, context.Background(), f, tty)
		answer(t, errb, 1, master, tty, "s1\n")
		answer(t, errb, 2, master, tty, "\x04") // Ctrl-D on an empty line: EOF
		if code := wait(t, done); code != ExitError || !strings.Contains(errb.String(), "unseal stopped at progress 1/3; cofferd keeps the shares accepted so far") {
			t.Fatalf("exit %d, stderr %q", code, errb.String())
		}
	})
	t.Run("interrupt restores echo", func(t *testing.T) {
		f := newFake(t)
		installSeal(f, &fakeSeal{initialized: true, sealed: true, threshold: 3})
		_, tty := openPTY(t)
		ctx, cancel := context.WithCancel(context.Background())
		_, errb, done := startUnseal(t, ctx, f, tty)
		waitFor(t, errb, prompt, 1)
		waitEchoOff(t, tty)
		cancel()
		if code := wait(t, done); code != ExitError || !strings.Contains(errb.String(), "interrupted") {
			t.Fatalf("exit %d, stderr %q", code, errb.String())
		}
		st, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if st.Lflag&unix.ECHO == 0 {
			t.Fatal("echo left off after an interrupted prompt")
		}
	})
}
