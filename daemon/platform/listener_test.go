package platform

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// sockPath returns a socket path under a fresh temp dir. Unix socket paths
// are limited to 107 bytes; t.TempDir() paths with long test names can
// exceed that, so use a short name below a short dir.
func sockPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cof")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "c.sock")
}

func TestListenUnix(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, path string)
		mode    os.FileMode
		wantErr string
	}{
		{name: "fresh, parent created", mode: 0o660},
		{name: "mode 0600", mode: 0o600},
		{name: "mode 0666", mode: 0o666},
		{
			name: "stale socket replaced",
			mode: 0o660,
			setup: func(t *testing.T, path string) {
				mkParent(t, path)
				l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				// Close without unlinking: what a crashed daemon leaves.
				l.SetUnlinkOnClose(false)
				l.Close()
				if st, err := os.Lstat(path); err != nil || st.Mode().Type() != fs.ModeSocket {
					t.Fatalf("setup left no stale socket: %v", err)
				}
			},
		},
		{
			name: "live socket refused",
			mode: 0o660,
			setup: func(t *testing.T, path string) {
				mkParent(t, path)
				l, err := net.Listen("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
			},
			wantErr: "another cofferd is already serving on ",
		},
		{
			name: "regular file refused",
			mode: 0o660,
			setup: func(t *testing.T, path string) {
				mkParent(t, path)
				if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "exists and is not a socket (a regular file); move it away or choose another listener path",
		},
		{
			name: "directory refused",
			mode: 0o660,
			setup: func(t *testing.T, path string) {
				if err := os.MkdirAll(path, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "exists and is not a socket (a directory)",
		},
		{
			name:    "non-permission mode bits",
			mode:    os.ModeSetuid | 0o660,
			wantErr: "bits beyond the permission bits",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := sockPath(t)
			if tt.setup != nil {
				tt.setup(t, path)
			}
			l, err := ListenUnix(path, tt.mode, "")
			if tt.wantErr != "" {
				if err == nil {
					l.Close()
					t.Fatal("ListenUnix succeeded, want error")
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %q, want it to contain %q", err, tt.wantErr)
				}
				if tt.setup != nil {
					if _, err := os.Lstat(path); err != nil {
						t.Fatalf("refused path was removed: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ListenUnix: %v", err)
			}
			st, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got, exp := st.Mode().Perm(), tt.mode; got != exp {
				t.Errorf("socket mode = %04o, want %04o", got, exp)
			}
			if st.Mode().Type() != fs.ModeSocket {
				t.Errorf("path is %v, want a socket", st.Mode().Type())
			}
			// It serves.
			done := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err == nil {
					c.Close()
				}
				done <- err
			}()
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			c.Close()
			if err := <-done; err != nil {
				t.Fatalf("accept: %v", err)
			}
			// Close unlinks.
			l.Close()
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("socket file still there after Close: %v", err)
			}
		})
	}
}

func mkParent(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestListenUnix_Group(t *testing.T) {
	// Our own group always works; as root, also a group the process is not
	// in, which is what a real deployment does.
	own, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Skipf("own group has no name on this host: %v", err)
	}
	groups := []*user.Group{own}
	if os.Getuid() == 0 {
		for _, name := range []string{"nogroup", "daemon", "bin"} {
			if g, err := user.LookupGroup(name); err == nil && g.Gid != own.Gid {
				groups = append(groups, g)
				break
			}
		}
	}
	for _, g := range groups {
		t.Run(g.Name, func(t *testing.T) {
			path := sockPath(t)
			l, err := ListenUnix(path, 0o660, g.Name)
			if err != nil {
				t.Fatalf("ListenUnix with group %q: %v", g.Name, err)
			}
			defer l.Close()
			st, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got, exp := strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Gid)), g.Gid; got != exp {
				t.Errorf("socket gid = %s, want %s", got, exp)
			}
		})
	}
}

func TestListenUnix_UnknownGroup(t *testing.T) {
	path := sockPath(t)
	l, err := ListenUnix(path, 0o660, "coffer-no-such-group-xyz")
	if err == nil {
		l.Close()
		t.Fatal("ListenUnix succeeded with an unknown group")
	}
	if exp := `listener group "coffer-no-such-group-xyz" does not exist on this host`; !strings.Contains(err.Error(), exp) {
		t.Fatalf("error = %q, want it to contain %q", err, exp)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket created despite the error: %v", err)
	}
}
