package auth

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// connectFrom connects to sock from a socket bound to the abstract addr
// and returns the client fd (the caller closes it).
func connectFrom(t *testing.T, sock, addr string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestIdentifyCredentialPeerHelper is not a test: a helper process that
// waits for a line on stdin, connects, and exits at once.
func TestIdentifyCredentialPeerHelper(t *testing.T) {
	sock := os.Getenv("COFFER_PEER_HELPER_SOCKET")
	if sock == "" {
		t.Skip("helper process only")
	}
	bufio.NewReader(os.Stdin).ReadString('\n')
	connectFrom(t, sock, "@1/unit/coffer-peer-t.service/x")
	os.Exit(0)
}

// TestIdentifyCredentialPeer runs with SO_PEERPIDFD (where the kernel has
// it) and with the pidfd_open fallback of older kernels: the peer's uid,
// pid, exact abstract address and unit; and a peer that exited (and was
// reaped) before cofferd looked yields no unit, even though its pid named
// a process in a unit's cgroup when it connected.
func TestIdentifyCredentialPeer(t *testing.T) {
	for _, peerPIDFD := range []bool{true, false} {
		t.Run("SO_PEERPIDFD="+strconv.FormatBool(peerPIDFD), func(t *testing.T) {
			credPeerPIDFD = peerPIDFD
			defer func() { credPeerPIDFD = true }()
			dir := t.TempDir()
			sock := filepath.Join(dir, "c.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()

			addr := "@7f/unit/billing.service/db-password\x00tail"
			fd := connectFrom(t, sock, addr)
			defer unix.Close(fd)
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			p, err := IdentifyCredentialPeer(c)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			self, _ := os.ReadFile("/proc/self/cgroup")
			wantUnit, _ := UnitFromCgroup(self)
			if p.UID != uint32(os.Getuid()) || p.PID != int32(os.Getpid()) || p.Address != addr || p.Unit != wantUnit {
				t.Fatalf("peer = %+v, want uid %d pid %d address %q unit %q", p, os.Getuid(), os.Getpid(), addr, wantUnit)
			}
			if _, err := ParseCredentialAddress(p.Address); err == nil {
				t.Fatal("an address with a NUL inside parsed")
			}

			// A peer in a unit's cgroup that is gone before the check.
			if os.Getuid() != 0 {
				t.Skip("moving a process into a cgroup needs root")
			}
			cg := "/sys/fs/cgroup/unified"
			if _, err := os.Stat(filepath.Join(cg, "cgroup.procs")); err != nil {
				cg = "/sys/fs/cgroup"
			}
			var fs unix.Statfs_t
			if unix.Statfs(cg, &fs) != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
				t.Skip("no cgroup2 mount")
			}
			unitDir := filepath.Join(cg, "coffer-peer-test.slice", "coffer-peer-t.service")
			if err := os.MkdirAll(unitDir, 0o755); err != nil {
				t.Skipf("cannot create a cgroup: %v", err)
			}
			defer func() {
				os.Remove(unitDir)
				os.Remove(filepath.Dir(unitDir))
			}()
			self2, _ := os.Executable()
			for _, reap := range []bool{false, true} {
				cmd := exec.Command(self2, "-test.run=^TestIdentifyCredentialPeerHelper$")
				cmd.Env = append(os.Environ(), "COFFER_PEER_HELPER_SOCKET="+sock)
				stdin, _ := cmd.StdinPipe()
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(unitDir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatal(err)
				}
				stdin.Write([]byte("go\n"))
				stdin.Close()
				c2, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				if reap {
					cmd.Wait() // exited and reaped: its pid may be anyone's now
				} else {
					// Exited, not reaped: a zombie still has its pid and
					// /proc entry. Wait for the whole thread group to be
					// gone (the pidfd polls readable), not only for the
					// leader's "Z": until then the pid cannot be reused and
					// the cgroup read is still the peer's.
					waitExited(t, cmd.Process.Pid)
				}
				p2, err := IdentifyCredentialPeer(c2)
				c2.Close()
				if !reap {
					cmd.Wait()
				}
				if err != nil {
					t.Fatal(err)
				}
				if p2.PID != int32(cmd.Process.Pid) || p2.Unit != "" {
					t.Fatalf("peer that exited (reaped %v): %+v (its unit must not be trusted)", reap, p2)
				}
			}
		})
	}
}

func waitExited(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10000); err != nil {
		t.Fatal(err)
	}
	if !pidfdExited(fd) {
		t.Fatalf("pid %d did not exit", pid)
	}
}
