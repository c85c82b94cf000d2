package main

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/daemon/platform"
)

// listenAPI returns the API's listener: the socket systemd passed
// (socket activation: LISTEN_FDS/LISTEN_PID, from cofferd.socket), or else
// a unix socket cofferd makes at listener.path with its mode and group.
//
// A passed socket belongs to systemd: cofferd never chmods, chowns or
// removes it (Go does not unlink a socket it did not bind), so it survives
// restarts and clients queue on it meanwhile. Its mode and group come from
// cofferd.socket (SocketMode=, SocketGroup=), not from the config.
func listenAPI(cfg *config.Config, log hclog.Logger) (net.Listener, error) {
	// true: unset LISTEN_* so that nothing cofferd starts inherits them.
	files := activation.Files(true)
	if len(files) == 0 {
		return platform.ListenUnix(cfg.Listener.Path, cfg.Listener.Mode, cfg.Listener.Group)
	}
	defer func() {
		for _, f := range files {
			f.Close() // net.FileListener dup'ed what it keeps
		}
	}()
	if len(files) > 1 {
		return nil, fmt.Errorf("systemd passed %d sockets (LISTEN_FDS); cofferd takes exactly one, the API's unix stream socket: give cofferd.socket a single ListenStream=%s", len(files), cfg.Listener.Path)
	}
	if err := checkPassedSocket(files[0]); err != nil {
		return nil, fmt.Errorf("the file descriptor systemd passed (fd %d, LISTEN_FDS) %w; cofferd.socket needs a single ListenStream=%s with Accept=no", files[0].Fd(), err, cfg.Listener.Path)
	}
	ln, err := net.FileListener(files[0])
	if err != nil {
		return nil, fmt.Errorf("the socket systemd passed cannot be used: %w", err)
	}
	path := ln.Addr().String()
	if path != cfg.Listener.Path {
		log.Warn("the socket systemd passed is not the config's listener path; serving on the passed one (make ListenStream= in cofferd.socket and listener.path agree, clients look for the latter)", "socket", path, "listener-path", cfg.Listener.Path)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm() != cfg.Listener.Mode {
		log.Info("socket activation: the socket's mode comes from cofferd.socket (SocketMode=), not listener.mode", "socket", path, "mode", fmt.Sprintf("%04o", uint32(st.Mode().Perm())), "listener-mode", fmt.Sprintf("%04o", uint32(cfg.Listener.Mode)))
	} else if errors.Is(err, os.ErrNotExist) && path != "" && path[0] != '@' {
		log.Warn("the socket systemd passed has no file at its path any more (was its directory removed?); clients cannot reach it", "socket", path)
	}
	log.Info("serving on the socket passed by systemd (socket activation)", "socket", path)
	return ln, nil
}

// checkPassedSocket checks that f is what the API needs: a unix stream
// socket that listens. net.FileListener alone would also wrap a datagram or
// an unconnected socket, which then fails at the first Accept.
func checkPassedSocket(f *os.File) error {
	fd := int(f.Fd())
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("is not a socket (%w)", err)
	}
	if domain != unix.AF_UNIX {
		return fmt.Errorf("is not a unix socket (address family %d): cofferd's API serves only on a unix socket, where callers are identified by SO_PEERCRED", domain)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("has no readable socket type (%w)", err)
	}
	if typ != unix.SOCK_STREAM {
		return fmt.Errorf("is not a stream socket (type %d; ListenDatagram= or ListenSequentialPacket= cannot carry HTTP)", typ)
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("cannot be checked (%w)", err)
	}
	if listening == 0 {
		return errors.New("is not listening (a connection, as Accept=yes would pass?)")
	}
	return nil
}
