package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// maxHiddenLine bounds a line typed at the hidden prompt.
const maxHiddenLine = 4096

// readHidden reads one line from the terminal fd with echo off, into a
// buffer the caller zeroes. Ctrl-D on an empty line gives io.EOF. ctx
// cancellation (Ctrl-C) ends the read; echo is restored in every case.
//
// It does not use term.ReadPassword: that spins forever on Ctrl-D
// (read returns 0 and it reads again), and its blocking read cannot be
// cancelled, which would leave echo off when coffer exits on a signal.
func readHidden(ctx context.Context, fd int) ([]byte, error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("read from the terminal: %w", err)
	}
	st := *old
	st.Lflag &^= unix.ECHO
	st.Lflag |= unix.ICANON | unix.ISIG
	st.Iflag |= unix.ICRNL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &st); err != nil {
		return nil, fmt.Errorf("turn off the terminal's echo: %w", err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)

	// A pipe that becomes readable when ctx ends wakes the poll below.
	var wake [2]int
	if err := unix.Pipe2(wake[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("read from the terminal: %w", err)
	}
	defer unix.Close(wake[0])
	defer unix.Close(wake[1])
	stop := context.AfterFunc(ctx, func() { unix.Write(wake[1], []byte{0}) })
	defer stop()

	line := make([]byte, 0, maxHiddenLine)
	var chunk [256]byte
	defer clear(chunk[:])
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(wake[0]), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			clear(line)
			return nil, fmt.Errorf("read from the terminal: %w", err)
		}
		if fds[1].Revents != 0 {
			clear(line)
			return nil, ctx.Err()
		}
		if fds[0].Revents == 0 {
			continue
		}
		// In canonical mode one read returns at most one line; 0 bytes
		// means Ctrl-D at the start of a line (or a hung-up terminal).
		n, err := unix.Read(fd, chunk[:])
		switch {
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.EIO) || (err == nil && n == 0):
			if len(line) > 0 {
				return line, nil
			}
			return nil, io.EOF
		case err != nil:
			clear(line)
			return nil, fmt.Errorf("read from the terminal: %w", err)
		}
		for _, b := range chunk[:n] {
			if b == '\n' {
				return line, nil
			}
			if len(line) == cap(line) {
				clear(line)
				return nil, fmt.Errorf("the line typed is longer than %d bytes: not a share", maxHiddenLine)
			}
			line = append(line, b)
		}
	}
}
