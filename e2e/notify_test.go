package e2e

// End-to-end tests of cofferd's systemd integration without systemd:
// sd_notify over a unixgram socket the test owns (NOTIFY_SOCKET), and socket
// activation with a listener the test passes as fd 3 (LISTEN_FDS/LISTEN_PID),
// as systemd would. The same binary under a real systemd is in
// systemd_test.go.

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sdMessage is one datagram cofferd sent to NOTIFY_SOCKET.
type sdMessage struct {
	at     time.Time
	fields []string // "READY=1", "STATUS=…", …
	// apiErr is the outcome of a status request made as soon as a message
	// with READY=1 arrived, before the next message is read.
	apiErr error
}

func (m sdMessage) has(field string) bool {
	for _, f := range m.fields {
		if f == field {
			return true
		}
	}
	return false
}

func (m sdMessage) status() (string, bool) {
	for _, f := range m.fields {
		if s, ok := strings.CutPrefix(f, "STATUS="); ok {
			return s, true
		}
	}
	return "", false
}

// notifySocket is the test's side of NOTIFY_SOCKET.
type notifySocket struct {
	path string
	msgs chan sdMessage
}

// newNotifySocket listens on a unixgram socket; probe, if set, is called
// synchronously for each READY=1 message.
func newNotifySocket(t *testing.T, dir string, probe func() error) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(dir, "notify.sock"), msgs: make(chan sdMessage, 1000)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			m := sdMessage{at: time.Now(), fields: strings.Split(strings.TrimRight(string(buf[:k]), "\n"), "\n")}
			if m.has("READY=1") && probe != nil {
				m.apiErr = probe()
			}
			n.msgs <- m
		}
	}()
	return n
}

// next returns the next message that satisfies match, failing after within.
// Messages that do not match are passed to skipped, if set.
func (n *notifySocket) next(t *testing.T, what string, within time.Duration, match func(sdMessage) bool, skipped func(sdMessage)) sdMessage {
	t.Helper()
	timeout := time.After(within)
	var seen []string
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("%s: notify socket closed", what)
			}
			if match(m) {
				return m
			}
			seen = append(seen, strings.Join(m.fields, "|"))
			if skipped != nil {
				skipped(m)
			}
		case <-timeout:
			t.Fatalf("%s: no such message within %v; got %q", what, within, seen)
		}
	}
}

// waitStatus waits for a STATUS= line that satisfies match; want describes
// it for the failure message.
func (n *notifySocket) waitStatus(t *testing.T, want string, match func(string) bool) string {
	t.Helper()
	m := n.next(t, "STATUS="+want, 10*time.Second, func(m sdMessage) bool {
		s, ok := m.status()
		return ok && match(s)
	}, nil)
	s, _ := m.status()
	return s
}

// statusIs matches a STATUS= line exactly.
func statusIs(want string) func(string) bool { return func(s string) bool { return s == want } }

// statusSealedWith matches the STATUS= line of a sealed node with progress
// entered of threshold shares, whatever reason it gives: "sealed: waiting
// for unseal shares (1/3)" or "sealed: <reason> (unseal shares 1/3)".
func statusSealedWith(progress, threshold int) func(string) bool {
	return func(s string) bool {
		frac := strconv.Itoa(progress) + "/" + strconv.Itoa(threshold) + ")"
		return strings.HasPrefix(s, "sealed: ") && (strings.HasSuffix(s, " "+frac) || strings.HasSuffix(s, "("+frac))
	}
}

// envWithoutSystemd is this process's environment without anything systemd may have
// set for it, so that a test run from a unit does not leak into cofferd.
func envWithoutSystemd(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "CREDENTIALS_DIRECTORY":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// launch starts cofferd without waiting for it. With files, they become
// fds 3, 4, … and LISTEN_FDS/LISTEN_PID say so: LISTEN_PID must be
// cofferd's own pid, which a shell knows ($$) and keeps across exec.
func (d *daemon) launch(files []*os.File, env ...string) {
	d.t.Helper()
	bin := filepath.Join(binDir, "cofferd")
	if len(files) == 0 {
		d.cmd = exec.Command(bin, "--config", d.config)
	} else {
		d.cmd = exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin, "--config", d.config)
		d.cmd.ExtraFiles = files
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(files)))
	}
	d.cmd.Env = envWithoutSystemd(append(append([]string{}, d.env...), env...)...)
	d.cmd.Stdout = lockedWriter{&d.logMu, &d.log}
	d.cmd.Stderr = lockedWriter{&d.logMu, &d.log}
	d.startedAt = time.Now()
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
}

// waitAnswer polls the status endpoint until it answers.
func (d *daemon) waitAnswer() {
	d.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := d.probe(time.Second); err == nil {
			return
		}
		select {
		case <-d.exited:
			d.t.Fatalf("cofferd exited at start:\n%s", d.logs())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("cofferd did not serve within 15s:\n%s", d.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probe makes one status request within timeout.
func (d *daemon) probe(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://coffer/v1/sys/status", nil)
	resp, err := d.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return errors.New(resp.Status)
	}
	return nil
}

// TestE2E_Notify: cofferd under a fake service manager. READY=1 comes only
// once the API answers (a status request made the moment it arrives
// succeeds), after a "starting" STATUS; STATUS= follows init, seal, each
// unseal share and unseal; WATCHDOG=1 comes every WatchdogSec/2; SIGTERM
// gives STOPPING=1.
func TestE2E_Notify(t *testing.T) {
	d := newDaemon(t, "")
	ns := newNotifySocket(t, d.dir, func() error { return d.probe(2 * time.Second) })
	const watchdog = 600 * time.Millisecond
	d.env = []string{
		"NOTIFY_SOCKET=" + ns.path,
		"WATCHDOG_USEC=" + strconv.FormatInt(watchdog.Microseconds(), 10),
		"COFFER_NOTIFY_STATUS_INTERVAL=50ms",
	}
	d.launch(nil)

	var early []sdMessage
	ready := ns.next(t, "READY=1", 30*time.Second, func(m sdMessage) bool { return m.has("READY=1") }, func(m sdMessage) { early = append(early, m) })
	if ready.apiErr != nil {
		t.Fatalf("READY=1 arrived but the API did not answer a status request at once: %v", ready.apiErr)
	}
	if len(early) == 0 {
		t.Error("no STATUS=starting: … before READY=1")
	} else if s, _ := early[0].status(); !strings.HasPrefix(s, "starting: ") {
		t.Errorf("first message %q, want STATUS=starting: …", early[0].fields)
	}
	if s, _ := ready.status(); s != "not initialised: run `coffer operator init`" {
		t.Errorf("STATUS with READY=1 = %q", s)
	}
	t.Logf("READY=1 %v after exec", ready.at.Sub(d.startedAt).Round(time.Millisecond))

	t.Run("status follows the seal state", func(t *testing.T) {
		shares := d.initNode()
		ns.waitStatus(t, "unsealed, leader", statusIs("unsealed, leader"))
		d.mustCoffer("", "operator", "seal")
		t.Logf("after seal: STATUS=%s", ns.waitStatus(t, "sealed … 0/3", statusSealedWith(0, 3)))
		d.mustCoffer(shares[0]+"\n", "operator", "unseal")
		ns.waitStatus(t, "sealed … 1/3", statusSealedWith(1, 3))
		d.mustCoffer(shares[1]+"\n", "operator", "unseal")
		ns.waitStatus(t, "sealed … 2/3", statusSealedWith(2, 3))
		d.mustCoffer(shares[2]+"\n", "operator", "unseal")
		ns.waitStatus(t, "unsealed, leader", statusIs("unsealed, leader"))
	})

	t.Run("watchdog pings keep coming", func(t *testing.T) {
		var pings []time.Time
		start := time.Now()
		for len(pings) < 4 {
			m := ns.next(t, "WATCHDOG=1", 5*watchdog, func(m sdMessage) bool { return m.has("WATCHDOG=1") }, nil)
			pings = append(pings, m.at)
		}
		// Four pings at WatchdogSec/2 take about 1.5 WatchdogSec; allow for
		// a loaded machine, but not for pings as far apart as WatchdogSec.
		for i := 1; i < len(pings); i++ {
			if gap := pings[i].Sub(pings[i-1]); gap >= watchdog {
				t.Errorf("watchdog pings %v apart, WatchdogSec is %v", gap, watchdog)
			}
		}
		t.Logf("4 pings in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("STOPPING=1 on SIGTERM", func(t *testing.T) {
		d.cmd.Process.Signal(syscall.SIGTERM)
		ns.next(t, "STOPPING=1", 10*time.Second, func(m sdMessage) bool { return m.has("STOPPING=1") }, nil)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			t.Fatal("cofferd did not exit after STOPPING=1")
		}
		if code := d.cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("exit %d after SIGTERM:\n%s", code, d.logs())
		}
	})
}

// TestE2E_Notify_Off: without NOTIFY_SOCKET, cofferd neither notifies nor
// complains, and a watchdog meant for another pid is ignored.
func TestE2E_Notify_Off(t *testing.T) {
	d := newDaemon(t, "")
	ns := newNotifySocket(t, d.dir, nil)
	// WATCHDOG_PID names another process: the watchdog is not cofferd's.
	d.env = []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=200000", "WATCHDOG_PID=1", "COFFER_NOTIFY_STATUS_INTERVAL=50ms"}
	d.launch(nil)
	ns.next(t, "READY=1", 30*time.Second, func(m sdMessage) bool { return m.has("READY=1") }, nil)
	select {
	case m := <-ns.msgs:
		if m.has("WATCHDOG=1") {
			t.Fatalf("WATCHDOG=1 sent although WATCHDOG_PID is not cofferd's")
		}
	case <-time.After(600 * time.Millisecond):
	}
	d.stop()

	quiet := newDaemon(t, "")
	quiet.launch(nil)
	quiet.waitAnswer()
	quiet.stop()
	if strings.Contains(quiet.logs(), "systemd") {
		t.Errorf("cofferd outside systemd logged about systemd:\n%s", quiet.logs())
	}
}

// TestE2E_SocketActivation: cofferd serves on a listener passed as fd 3,
// leaves it (mode, owner, file) alone, and serves on it again after a
// restart, with requests made in between answered once it is back.
func TestE2E_SocketActivation(t *testing.T) {
	d := newDaemon(t, "")
	// The passed socket is at the config's listener path: had cofferd tried
	// to make its own it would have found this one live and refused.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	t.Cleanup(func() { ln.Close() })
	if err := os.Chmod(d.sock, 0o606); err != nil { // not the config's 0666
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })

	d.launch([]*os.File{f})
	d.waitAnswer()
	// stderr reaches d.logs() through a pipe copied by another goroutine:
	// an answer can arrive before the line that preceded it is copied.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(d.logs(), "socket activation") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(d.logs(), "socket activation") {
		t.Errorf("the log does not say cofferd uses the passed socket:\n%s", d.logs())
	}
	shares := d.initNode()
	d.mustCoffer("", "key", "create", "app")
	ct := d.wrap("app", secret1)

	d.stop()
	st, err := os.Stat(d.sock)
	if err != nil {
		t.Fatalf("cofferd removed the socket it was passed: %v", err)
	}
	if st.Mode().Perm() != 0o606 {
		t.Errorf("cofferd changed the passed socket's mode to %04o", st.Mode().Perm())
	}

	// While cofferd is down the socket still accepts (into its backlog); a
	// request made now is answered once cofferd is back, as with systemd
	// holding the socket during a restart.
	answered := make(chan error, 1)
	go func() { answered <- d.probe(30 * time.Second) }()
	d.launch([]*os.File{f})
	if err := <-answered; err != nil {
		t.Fatalf("a request made while cofferd was down: %v\n%s", err, d.logs())
	}
	d.unsealWith(shares[:3])
	d.expectUnwrap("app", ct, secret1)
}

// TestE2E_SocketActivation_Refused: sockets cofferd cannot serve the API on
// are refused at start with a line that says what to fix.
func TestE2E_SocketActivation_Refused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files func(t *testing.T, dir string) []*os.File
		want  string
	}{
		{
			name: "tcp",
			files: func(t *testing.T, dir string) []*os.File {
				l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
				return []*os.File{fileOf(t, l)}
			},
			want: "is not a unix socket",
		},
		{
			name: "datagram",
			files: func(t *testing.T, dir string) []*os.File {
				c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "dg.sock"), Net: "unixgram"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return []*os.File{fileOf(t, c)}
			},
			want: "is not a stream socket",
		},
		{
			name: "two sockets",
			files: func(t *testing.T, dir string) []*os.File {
				var fs []*os.File
				for _, n := range []string{"a.sock", "b.sock"} {
					l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, n), Net: "unix"})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { l.Close() })
					fs = append(fs, fileOf(t, l))
				}
				return fs
			},
			want: "systemd passed 2 sockets",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDaemon(t, "")
			d.launch(tc.files(t, d.dir))
			select {
			case <-d.exited:
			case <-time.After(30 * time.Second):
				t.Fatal("cofferd did not exit")
			}
			if code := d.cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			if !strings.Contains(d.logs(), tc.want) || !strings.Contains(d.logs(), "cofferd.socket") {
				t.Errorf("log does not say %q and how to fix cofferd.socket:\n%s", tc.want, d.logs())
			}
		})
	}
}

func fileOf(t *testing.T, c interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
