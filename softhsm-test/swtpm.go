package softhsmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tpmSkipEnv names the variable that turns a missing swtpm into a skip.
const tpmSkipEnv = "COFFER_SKIP_DEVICE_TESTS"

const (
	// tpmStartTimeout bounds waiting for a new emulator to accept
	// connections; it usually takes a few milliseconds.
	tpmStartTimeout = 10 * time.Second
	// tpmStopTimeout bounds a graceful stop before SIGKILL.
	tpmStopTimeout = 5 * time.Second
	// tpmToolTimeout bounds a tpm2-tools call. swtpm serves one client at a
	// time, so a tool started while a Device holds the connection waits;
	// this turns that into a clear failure instead of a hung test.
	tpmToolTimeout = 15 * time.Second
	// tpmPortAttempts is how often StartSWTPM picks new ports when another
	// process grabs them between the check and swtpm's bind.
	tpmPortAttempts = 5
)

// SWTPM is a private TPM 2.0 emulator (swtpm) serving the raw TPM command
// stream on Addr, with its control channel on CtrlAddr (the next port, as
// tpm2-tools' swtpm TCTI expects). Its state (seeds, NV) lives in Dir, so a
// Restart brings back the same storage root key.
//
// swtpm serves ONE client at a time: while a client (an hsm/tpm Device, a
// cofferd) holds the connection, others — including [SWTPM.PCRExtend] —
// wait until it disconnects.
type SWTPM struct {
	Dir      string // state directory
	Addr     string // command port, "127.0.0.1:PORT"
	CtrlAddr string // control port, "127.0.0.1:PORT+1"

	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	out  *tpmBuffer    // swtpm's stdout and stderr, for failure messages
}

// tpmBuffer is a bytes.Buffer safe for the writer goroutines of exec.Cmd
// and a reader.
type tpmBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *tpmBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *tpmBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// RequireSWTPM fails the test when swtpm or tpm2-tools are missing, or
// skips it when COFFER_SKIP_DEVICE_TESTS=1: a CI without them must not pass
// silently.
func RequireSWTPM(t testing.TB) {
	t.Helper()
	var missing []string
	for _, bin := range []string{"swtpm", "tpm2_pcrextend"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv(tpmSkipEnv) == "1" {
		t.Skipf("%v not installed and %s=1", missing, tpmSkipEnv)
	}
	t.Fatalf("%v not found: install swtpm swtpm-tools tpm2-tools (make deps), or set %s=1 to skip device tests", missing, tpmSkipEnv)
}

// StartSWTPM starts an emulator on a fresh state directory and free ports,
// waits until it accepts connections, and stops it when the test ends.
func StartSWTPM(t testing.TB) *SWTPM {
	t.Helper()
	RequireSWTPM(t)
	s := &SWTPM{Dir: t.TempDir()}
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(s.Stop)
	var lastErr error
	for range tpmPortAttempts {
		port, err := tpmFreePortPair()
		if err != nil {
			t.Fatalf("swtpm: %v", err)
		}
		s.setPort(port)
		if lastErr = s.start(); lastErr == nil {
			return s
		}
		// Most likely another process took a port between our check and
		// swtpm's bind: pick new ports.
	}
	t.Fatalf("swtpm: could not start after %d attempts: %v", tpmPortAttempts, lastErr)
	return nil
}

func (s *SWTPM) setPort(port int) {
	s.port = port
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.CtrlAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1))
}

// tpmFreePortPair returns a port P such that P and P+1 were free a moment
// ago (found by binding port 0).
func tpmFreePortPair() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("cannot find a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if port >= 65535 {
			l.Close()
			continue
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)))
		l.Close()
		if err != nil {
			continue
		}
		l2.Close()
		return port, nil
	}
	return 0, errors.New("cannot find two adjacent free ports")
}

// start runs swtpm in the foreground (so that Kill and Wait work on it) and
// waits until its command port accepts a connection.
func (s *SWTPM) start() error {
	out := &tpmBuffer{}
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+s.Dir,
		"--server", "type=tcp,port="+strconv.Itoa(s.port)+",bindaddr=127.0.0.1",
		"--ctrl", "type=tcp,port="+strconv.Itoa(s.port+1)+",bindaddr=127.0.0.1",
		// not-need-init: no _TPM_Init over the control channel;
		// startup-clear: swtpm runs TPM2_Startup(CLEAR) itself, which also
		// resets the PCRs at every (re)start.
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+filepath.Join(s.Dir, "swtpm.log")+",level=1")
	cmd.Stdout, cmd.Stderr = out, out
	// Do not outlive a test binary that dies (timeout, panic).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot run swtpm: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done, s.out = cmd, done, out
	s.mu.Unlock()

	deadline := time.Now().Add(tpmStartTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("swtpm exited at start (%v): %s%s", cmd.ProcessState, out.String(), s.logTail())
		default:
		}
		// A probe connection that closes at once is harmless: swtpm then
		// serves the next client.
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("swtpm did not accept connections on %s within %v: %s%s", s.Addr, tpmStartTimeout, out.String(), s.logTail())
		}
		time.Sleep(10 * time.Millisecond) // polling a port; there is nothing to wait on
	}
}

func (s *SWTPM) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.Dir, "swtpm.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\nswtpm.log: " + string(b)
}

// Stop stops the emulator gracefully (SIGTERM: swtpm saves its state), and
// kills it if it does not exit in time. Stopping a stopped emulator does
// nothing.
func (s *SWTPM) Stop() { s.signal(syscall.SIGTERM) }

// Kill stops the emulator with SIGKILL, as if the TPM vanished. swtpm writes
// its state on every NV change, so a Restart still finds the same seeds.
func (s *SWTPM) Kill() { s.signal(syscall.SIGKILL) }

func (s *SWTPM) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(tpmStopTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops the emulator (gracefully, if it is running) and starts it
// again on the same state directory and ports: the same seeds give the same
// storage root key, and the PCRs are reset. Clients must reconnect.
func (s *SWTPM) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	// The ports were just released; another process could take them, but
	// the emulator must come back where its clients expect it, so retry
	// briefly rather than move.
	var err error
	for range 3 {
		if err = s.start(); err == nil {
			return
		}
	}
	t.Fatalf("swtpm: restart on %s: %v", s.Addr, err)
}

// PCRExtend extends SHA-256 PCR pcr with SHA-256(data) using tpm2_pcrextend
// (TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=PORT).
//
// swtpm serves one client at a time: the caller must first release the
// emulator — Close the hsm/tpm Device, stop the cofferd using it — or the
// tool waits for the connection and the test fails after a timeout.
func (s *SWTPM) PCRExtend(t testing.TB, pcr int, data string) {
	t.Helper()
	digest := sha256.Sum256([]byte(data))
	ctx, cancel := context.WithTimeout(context.Background(), tpmToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "tpm2_pcrextend", fmt.Sprintf("%d:sha256=%x", pcr, digest))
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+s.TCTI())
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("tpm2_pcrextend %d timed out after %v: is a client (a Device, a cofferd) still connected to the emulator? swtpm serves one client at a time; Close it first. Output: %s", pcr, tpmToolTimeout, out)
	}
	if err != nil {
		t.Fatalf("tpm2_pcrextend %d: %v: %s", pcr, err, out)
	}
}

// TCTI is the tpm2-tools TCTI string for this emulator, for TPM2TOOLS_TCTI
// or -T.
func (s *SWTPM) TCTI() string {
	return "swtpm:host=127.0.0.1,port=" + strconv.Itoa(s.port)
}
