package platform

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// probeTimeout bounds the dial that checks whether a daemon still serves on
// an existing socket. A live daemon accepts (into the backlog) at once; the
// timeout only matters for a wedged one, which we also refuse to replace.
const probeTimeout = time.Second

// ListenUnix listens on the unix socket path for the API.
//
//   - The parent directory is created (0755) if missing.
//   - An existing socket that still accepts connections belongs to another
//     daemon: ListenUnix refuses to take it over. A socket nobody listens on
//     (left by a crash) is removed and replaced. Anything else at path (a
//     regular file, a directory) is refused, never deleted.
//   - The socket gets mode (its permission bits) and, if group is not "", the
//     named group; "" keeps the daemon's own group.
//
// The returned listener removes the socket file when closed.
//
// Between bind and chmod the socket briefly carries the mode the umask
// gives it. That is acceptable because the mode is defence in depth: every
// request is still authorised from the caller's kernel credentials.
func ListenUnix(path string, mode os.FileMode, group string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("no listener path given; set path in the listener \"unix\" block")
	}
	if mode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("listener mode %#o has bits beyond the permission bits; use a mode like 0660", uint32(mode))
	}
	gid := -1
	if group != "" {
		g, err := lookupGroupID(group)
		if err != nil {
			return nil, err
		}
		gid = g
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}

	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			// Lost a race with another process that bound the path after
			// our check.
			return nil, fmt.Errorf("another process bound %s while cofferd was starting; stop it first: %w", path, err)
		}
		return nil, fmt.Errorf("cannot listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("cannot set mode %04o on %s: %w", uint32(mode), path, err)
	}
	// Skip the chown when the socket already has the group, as it does when
	// cofferd runs as that group (the systemd unit: User=coffer,
	// Group=coffer): its seccomp filter (~@privileged) refuses chown even
	// where the kernel would allow it.
	if gid >= 0 && !hasGroup(path, gid) {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			if errors.Is(err, fs.ErrPermission) {
				return nil, fmt.Errorf("cannot give %s to group %q: permission denied; run cofferd as root or as a member of %q", path, group, group)
			}
			return nil, fmt.Errorf("cannot give %s to group %q: %w", path, group, err)
		}
	}
	return l, nil
}

// hasGroup reports whether path's group is gid.
func hasGroup(path string, gid int) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(sys.Gid) == gid
}

func lookupGroupID(group string) (int, error) {
	g, err := user.LookupGroup(group)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) {
			return 0, fmt.Errorf("listener group %q does not exist on this host; create it or change group in the listener \"unix\" block", group)
		}
		return 0, fmt.Errorf("cannot look up listener group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("listener group %q has a non-numeric gid %q", group, g.Gid)
	}
	return gid, nil
}

// removeStaleSocket makes path free for bind: nothing there, or a socket
// that nobody listens on (removed). A live socket or a non-socket file is an
// error.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot inspect %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); move it away or choose another listener path", path, describeType(st.Mode()))
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("another cofferd is already serving on %s; stop it first", path)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		// Stale: the daemon that made it is gone.
	case errors.Is(err, syscall.ENOENT):
		// Removed between Lstat and dial: nothing to do.
		return nil
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("a process holds %s but does not answer (its accept queue is full?); stop it first", path)
		}
		return fmt.Errorf("cannot tell whether another daemon serves on %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cannot remove the stale socket %s: %w", path, err)
	}
	return nil
}

func describeType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeDevice != 0:
		return "a device"
	default:
		return "mode " + m.String()
	}
}
