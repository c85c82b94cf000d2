package auth

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"
)

// childConnectEnv makes the re-executed test binary connect to the socket
// it names and exit at once: a peer that is gone by the time the daemon
// looks at it.
const childConnectEnv = "COFFER_TEST_CONNECT_AND_EXIT"

func TestMain(m *testing.M) {
	if path := os.Getenv(childConnectEnv); path != "" {
		c, err := net.Dial("unix", path)
		if err != nil {
			os.Exit(2)
		}
		c.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// listen returns a unix listener on a short path (socket paths are limited
// to 107 bytes, which long t.TempDir() names can exceed).
func listen(t *testing.T) (*net.UnixListener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "coffer-auth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func TestCallerFromConn_Self(t *testing.T) {
	l, path := listen(t)
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	// Both ends are this process.
	for name, conn := range map[string]net.Conn{"server side": server, "client side": client} {
		t.Run(name, func(t *testing.T) {
			c, err := CallerFromConn(conn)
			if err != nil {
				t.Fatalf("CallerFromConn: %v", err)
			}
			if got, exp := c.UID, uint32(os.Getuid()); got != exp {
				t.Errorf("UID = %d, want %d", got, exp)
			}
			if got, exp := c.GID, uint32(os.Getgid()); got != exp {
				t.Errorf("GID = %d, want %d", got, exp)
			}
			if got, exp := c.PID, int32(os.Getpid()); got != exp {
				t.Errorf("PID = %d, want %d", got, exp)
			}
			if len(c.Groups) == 0 || c.Groups[0] != c.GID {
				t.Errorf("Groups = %v, want the primary gid %d first", c.Groups, c.GID)
			}
			supp, err := os.Getgroups()
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range supp {
				if !slices.Contains(c.Groups, uint32(g)) {
					t.Errorf("Groups = %v, missing supplementary gid %d", c.Groups, g)
				}
			}
			if u, err := user.Current(); err == nil {
				if got, exp := c.User, u.Username; got != exp {
					t.Errorf("User = %q, want %q", got, exp)
				}
			}
			if g, err := user.LookupGroupId(strconv.Itoa(os.Getgid())); err == nil {
				if !slices.Contains(c.GroupNames, g.Name) {
					t.Errorf("GroupNames = %v, want it to contain %q", c.GroupNames, g.Name)
				}
			}
			if data, err := os.ReadFile("/proc/self/cgroup"); err == nil {
				unit, userUnit := UnitFromCgroup(data)
				if c.Unit != unit || c.UserUnit != userUnit {
					t.Errorf("Unit = %q/%v, want %q/%v from /proc/self/cgroup", c.Unit, c.UserUnit, unit, userUnit)
				}
			}
		})
	}
}

func TestCallerFromConn_NotUnix(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := CallerFromConn(a); err == nil {
		t.Fatal("CallerFromConn(net.Pipe) succeeded, want an error")
	}
}

func TestCallerFromConn_Closed(t *testing.T) {
	l, path := listen(t)
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	client.Close()
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	server.Close()
	if _, err := CallerFromConn(server); err == nil {
		t.Fatal("CallerFromConn on a closed conn succeeded, want an error")
	}
}

// TestCallerFromConn_PeerGone: a peer that exited before we look cannot
// lend (through a reused pid) another process's unit or groups.
func TestCallerFromConn_PeerGone(t *testing.T) {
	l, path := listen(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childConnectEnv+"="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// The child is reaped: its pid is free for reuse.
	l.SetDeadline(time.Now().Add(10 * time.Second))
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	c, err := CallerFromConn(server)
	if err != nil {
		t.Fatalf("CallerFromConn: %v", err)
	}
	if got, exp := c.PID, int32(cmd.Process.Pid); got != exp {
		t.Errorf("PID = %d, want the child's %d", got, exp)
	}
	if got, exp := c.UID, uint32(os.Getuid()); got != exp {
		t.Errorf("UID = %d, want %d", got, exp)
	}
	if c.Unit != "" || !reflect.DeepEqual(c.Groups, []uint32{c.GID}) {
		t.Errorf("gone peer: Unit = %q, Groups = %v; want no unit and only the primary gid", c.Unit, c.Groups)
	}
}

func TestUnitFromCgroup(t *testing.T) {
	tests := []struct {
		name     string
		cgroup   string
		unit     string
		userUnit bool
	}{
		{name: "v2 system service", cgroup: "0::/system.slice/billing.service\n", unit: "billing.service"},
		{name: "v2 no trailing newline", cgroup: "0::/system.slice/billing.service", unit: "billing.service"},
		{name: "v2 sub-cgroup of a service", cgroup: "0::/system.slice/foo.service/sub\n", unit: "foo.service"},
		{name: "v2 nested slices", cgroup: "0::/system.slice/system-getty.slice/getty@tty1.service\n", unit: "getty@tty1.service"},
		{
			name:     "v2 user manager unit",
			cgroup:   "0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n",
			unit:     "x.service",
			userUnit: true,
		},
		{
			name:     "v2 user manager scope",
			cgroup:   "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope\n",
			unit:     "app-gnome-firefox-1234.scope",
			userUnit: true,
		},
		{name: "v2 user manager itself", cgroup: "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", unit: "init.scope", userUnit: true},
		{name: "v2 login session scope", cgroup: "0::/user.slice/user-1000.slice/session-3.scope\n", unit: "session-3.scope"},
		{
			name:   "v2 delegated subtree cannot pose as another unit",
			cgroup: "0::/system.slice/runner.service/billing.service\n",
			unit:   "runner.service",
		},
		{name: "v2 pid 1", cgroup: "0::/init.scope\n", unit: "init.scope"},
		{name: "v2 root cgroup", cgroup: "0::/\n", unit: ""},
		{name: "v2 only slices", cgroup: "0::/system.slice\n", unit: ""},
		{name: "v2 container, cgroupfs driver", cgroup: "0::/docker/0123abcd\n", unit: ""},
		{name: "v2 docker scope", cgroup: "0::/system.slice/docker-0123abcd.scope\n", unit: "docker-0123abcd.scope"},
		{name: "v2 bare suffix is not a unit", cgroup: "0::/system.slice/.service\n", unit: ""},
		{
			name: "v1 name=systemd",
			cgroup: "12:memory:/system.slice/billing.service\n" +
				"3:cpu,cpuacct:/system.slice/billing.service\n" +
				"1:name=systemd:/system.slice/billing.service\n",
			unit: "billing.service",
		},
		{
			name:   "v1 without name=systemd",
			cgroup: "12:memory:/system.slice/billing.service\n",
			unit:   "",
		},
		{
			name: "hybrid prefers the v2 line",
			cgroup: "1:name=systemd:/system.slice/old.service\n" +
				"0::/system.slice/billing.service\n",
			unit: "billing.service",
		},
		{name: "path with a colon", cgroup: "0::/system.slice/a:b.service\n", unit: "a:b.service"},
		{name: "empty", cgroup: "", unit: ""},
		{name: "garbage", cgroup: "no colons here\n::\n", unit: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unit, userUnit := UnitFromCgroup([]byte(tt.cgroup))
			if unit != tt.unit || userUnit != tt.userUnit {
				t.Errorf("UnitFromCgroup = %q, %v; want %q, %v", unit, userUnit, tt.unit, tt.userUnit)
			}
		})
	}
}

func TestParseStatusGroups(t *testing.T) {
	tests := []struct {
		name   string
		status string
		exp    []uint32
	}{
		{name: "several", status: "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nNSpid:\t1\n", exp: []uint32{4, 24, 27, 1000}},
		{name: "none", status: "Name:\tx\nGroups:\t\n", exp: nil},
		{name: "missing line", status: "Name:\tx\n", exp: nil},
		{name: "malformed", status: "Groups:\t4 x\n", exp: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseStatusGroups([]byte(tt.status)); !reflect.DeepEqual(got, tt.exp) {
				t.Errorf("parseStatusGroups = %v, want %v", got, tt.exp)
			}
		})
	}
}

func TestMergeGroups(t *testing.T) {
	if got, exp := mergeGroups(100, []uint32{27, 4, 100, 27}), []uint32{100, 4, 27}; !reflect.DeepEqual(got, exp) {
		t.Errorf("mergeGroups = %v, want %v", got, exp)
	}
	if got, exp := mergeGroups(5, nil), []uint32{5}; !reflect.DeepEqual(got, exp) {
		t.Errorf("mergeGroups = %v, want %v", got, exp)
	}
}

func TestReadProc_Missing(t *testing.T) {
	groups, unit, userUnit := readProc(t.TempDir(), 12345)
	if groups != nil || unit != "" || userUnit {
		t.Errorf("readProc of a missing pid = %v, %q, %v; want nothing", groups, unit, userUnit)
	}
}

func TestNameCache(t *testing.T) {
	now := time.Unix(1000, 0)
	calls := 0
	nc := newNameCache()
	nc.now = func() time.Time { return now }
	nc.lookupUser = func(uid uint32) (string, error) {
		calls++
		if uid == 1 {
			return "", errors.New("no such user")
		}
		return "u" + strconv.Itoa(int(uid)), nil
	}

	if got := nc.userName(7); got != "u7" {
		t.Fatalf("userName(7) = %q", got)
	}
	nc.userName(7)
	if calls != 1 {
		t.Errorf("lookups = %d after two calls, want 1 (cached)", calls)
	}
	now = now.Add(cacheTTL)
	nc.userName(7)
	if calls != 2 {
		t.Errorf("lookups = %d after expiry, want 2", calls)
	}

	if got := nc.userName(1); got != "" {
		t.Errorf("userName(unknown) = %q, want \"\"", got)
	}
	nc.userName(1)
	if calls != 3 {
		t.Errorf("lookups = %d, want the miss cached (3)", calls)
	}
	now = now.Add(cacheMissTTL)
	nc.userName(1)
	if calls != 4 {
		t.Errorf("lookups = %d, want the miss to expire sooner (4)", calls)
	}

	for i := range uint32(3 * maxCacheEntries) {
		nc.userName(1000 + i)
	}
	if n := len(nc.users); n > maxCacheEntries {
		t.Errorf("cache holds %d entries, want at most %d", n, maxCacheEntries)
	}
}
