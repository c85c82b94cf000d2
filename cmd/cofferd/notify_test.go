package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
)

func TestStatusText(t *testing.T) {
	long := strings.Repeat("é", 400)
	for _, tc := range []struct {
		name string
		st   api.Status
		want string
	}{
		{"not initialised", api.Status{Sealed: true, SealedReason: "not initialised: run `coffer operator init`"}, "not initialised: run `coffer operator init`"},
		{"waiting for shares", api.Status{Initialized: true, Sealed: true, Threshold: 3, Progress: 1,
			SealedReason: "waiting for unseal shares: 1 of 3 entered; run `coffer operator unseal`"}, "sealed: waiting for unseal shares (1/3)"},
		{"no reason", api.Status{Initialized: true, Sealed: true, Threshold: 2}, "sealed: waiting for unseal shares (0/2)"},
		{"device failed", api.Status{Initialized: true, Sealed: true, Threshold: 3,
			SealedReason: "the tpm device could not unseal the root key: PCRs changed"}, "sealed: the tpm device could not unseal the root key: PCRs changed (unseal shares 0/3)"},
		{"sealed by an operator", api.Status{Initialized: true, Sealed: true, Threshold: 3, Progress: 2,
			SealedReason: "sealed by an operator (uid 0)"}, "sealed: by an operator (uid 0) (unseal shares 2/3)"},
		{"multi-line reason", api.Status{Initialized: true, Sealed: true, Threshold: 1,
			SealedReason: "line one\nSTATUS=forged\tx"}, "sealed: line one STATUS=forged x (unseal shares 0/1)"},
		{"leader", api.Status{Initialized: true, IsLeader: true, LeaderID: "n1"}, "unsealed, leader"},
		{"follower", api.Status{Initialized: true, LeaderID: "node2"}, "unsealed, follower of node2"},
		{"no leader", api.Status{Initialized: true}, "unsealed, no raft leader"},
		{"device failing while unsealed", api.Status{Initialized: true, IsLeader: true, SealDeviceError: "token \"coffer\" is not present"},
			"unsealed, leader; seal device failing: token \"coffer\" is not present"},
		{"long", api.Status{Initialized: true, Sealed: true, SealedReason: long}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := statusText(tc.st)
			if strings.Contains(got, "\n") {
				t.Fatalf("status text has a newline: %q", got)
			}
			if tc.name == "long" {
				if len(got) > maxStatusText+len("…") || !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "sealed: é") {
					t.Fatalf("long reason: %d bytes %q", len(got), got)
				}
				if !isValidUTF8(got) {
					t.Fatal("cut inside a UTF-8 sequence")
				}
				return
			}
			if got != tc.want {
				t.Errorf("statusText = %q, want %q", got, tc.want)
			}
		})
	}
}

func isValidUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// TestNotifier_Messages drives the notifier against a unixgram socket: one
// STATUS per change, READY with the state, watchdog pings only while the
// probe succeeds.
func TestNotifier_Messages(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "n.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", "")
	t.Setenv(notifyStatusIntervalEnv, "10ms")
	n, err := newNotifier(hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	if n.watchdog != 200*time.Millisecond {
		t.Fatalf("watchdog = %v", n.watchdog)
	}
	recv := func() string {
		t.Helper()
		buf := make([]byte, 1024)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:k])
	}

	n.starting("opening")
	if got := recv(); got != "STATUS=starting: opening" {
		t.Fatalf("got %q", got)
	}
	n.ready(api.Status{})
	if got := recv(); got != "READY=1\nSTATUS=not initialised: run `coffer operator init`" {
		t.Fatalf("got %q", got)
	}

	var sealed, healthy atomic.Bool
	healthy.Store(true)
	status := func() api.Status {
		return api.Status{Initialized: true, Sealed: sealed.Load(), Threshold: 2, IsLeader: true}
	}
	probe := func(context.Context) error {
		if healthy.Load() {
			return nil
		}
		return errors.New("hung")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.run(ctx, status, probe); close(done) }()
	defer func() { cancel(); <-done }()

	// Collect messages until the next STATUS=, counting watchdog pings.
	nextStatus := func() (string, int) {
		t.Helper()
		pings := 0
		for {
			m := recv()
			if m == "WATCHDOG=1" {
				pings++
				continue
			}
			return m, pings
		}
	}
	if got, _ := nextStatus(); got != "STATUS=unsealed, leader" {
		t.Fatalf("got %q", got)
	}
	sealed.Store(true)
	if got, _ := nextStatus(); got != "STATUS=sealed: waiting for unseal shares (0/2)" {
		t.Fatalf("got %q", got)
	}
	// No STATUS while nothing changes, but pings every 100ms.
	deadline := time.Now().Add(350 * time.Millisecond)
	pings := 0
	for time.Now().Before(deadline) {
		if m := recv(); m != "WATCHDOG=1" {
			t.Fatalf("got %q while the state did not change", m)
		}
		pings++
	}
	if pings < 2 {
		t.Fatalf("%d watchdog pings in 350ms at WatchdogSec=200ms", pings)
	}
	// A failing probe stops the pings.
	healthy.Store(false)
	// Drop a ping that was already under way, then expect silence for more
	// than two ping intervals.
	time.Sleep(50 * time.Millisecond)
	for {
		conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, _, err := conn.ReadFromUnix(make([]byte, 64)); err != nil {
			break
		}
	}
	conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	for {
		buf := make([]byte, 64)
		k, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			break // quiet: good
		}
		if string(buf[:k]) == "WATCHDOG=1" {
			t.Fatal("watchdog pinged while the probe failed")
		}
	}
	n.stopping()
	if got := recv(); !strings.HasPrefix(got, "STOPPING=1\n") {
		t.Fatalf("got %q", got)
	}
}

func TestNotifier_BadInterval(t *testing.T) {
	for _, v := range []string{"0", "-1s", "soon"} {
		t.Run(v, func(t *testing.T) {
			t.Setenv(notifyStatusIntervalEnv, v)
			if _, err := newNotifier(hclog.NewNullLogger()); err == nil || !strings.Contains(err.Error(), notifyStatusIntervalEnv) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestNotifier_Off(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n, err := newNotifier(hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	// Nothing to send to: these must neither block nor fail.
	n.ready(api.Status{})
	n.run(context.Background(), func() api.Status { return api.Status{} }, nil)
	n.stopping()
}

// TestCheckPassedSocket: only a listening unix stream socket is accepted.
func TestCheckPassedSocket(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		make func(t *testing.T) *os.File
		want string // "" for accepted
	}{
		{"unix stream listener", func(t *testing.T) *os.File {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "a.sock"), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return file(t, l)
		}, ""},
		{"tcp listener", func(t *testing.T) *os.File {
			l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return file(t, l)
		}, "is not a unix socket"},
		{"unix datagram", func(t *testing.T) *os.File {
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "d.sock"), Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return file(t, c)
		}, "is not a stream socket"},
		{"connected stream", func(t *testing.T) *os.File {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "c.sock"), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			c, err := net.Dial("unix", filepath.Join(dir, "c.sock"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return file(t, c.(*net.UnixConn))
		}, "is not listening"},
		{"regular file", func(t *testing.T) *os.File {
			f, err := os.Create(filepath.Join(dir, "plain"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		}, "is not a socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkPassedSocket(tc.make(t))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func file(t *testing.T, c interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
