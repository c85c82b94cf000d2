package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

const (
	// commandTimeout bounds one command on a simulator connection when the
	// caller's context has no earlier deadline. swtpm serves one client at a
	// time, so a command sent while another client holds it waits silently;
	// this turns that wait into an error instead of a hang. Real TPMs answer
	// an ECC P-256 CreatePrimary in well under a second.
	commandTimeout = 20 * time.Second

	// dialTimeout bounds connecting to a simulator.
	dialTimeout = 5 * time.Second

	// maxResponse is larger than any TPM 2.0 response (TPM2_MAX_COMMAND_SIZE
	// is 4 KiB on common TPMs); a bigger size field means the stream is out
	// of step, not a real answer.
	maxResponse = 64 << 10

	rspHeaderSize = 10 // tag (2) | responseSize (4) | responseCode (4)
)

// transportError marks a failure to exchange bytes with the TPM (as opposed
// to a TPM response code). The connection is unusable afterwards.
type transportError struct {
	err error
}

func (e *transportError) Error() string { return "lost the connection to the TPM: " + e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// conn is one connection to a TPM. It implements transport.TPM for go-tpm.
// It is not safe for concurrent use; Device serialises access to it.
//
// Once a command fails at the transport level the connection is "broken":
// the byte stream may be out of step with the TPM, so every later Send fails
// and the Device opens a new connection.
type conn struct {
	// Exactly one of nc (simulator over TCP or a unix socket) and dev (a
	// character device) is set.
	nc  net.Conn
	dev transport.TPMCloser

	// ctx is the context of the Device operation in progress; Send honours
	// its cancellation and deadline.
	ctx context.Context

	broken error

	// last is the most recent response buffer. go-tpm decrypts an encrypted
	// response parameter in place, so after TPM2_Unseal this buffer holds the
	// secret in clear; scrub zeroes it.
	last []byte

	// tap, when set (tests), sees every command and response as sent and
	// received on the wire.
	tap func(cmd, rsp []byte)
}

var _ transport.TPM = (*conn)(nil)

// dial opens a connection to the TPM described by t.
func dial(ctx context.Context, t target) (*conn, error) {
	if t.device != "" {
		dev, err := linuxtpm.Open(t.device)
		if err != nil {
			return nil, err
		}
		return &conn{dev: dev, ctx: ctx}, nil
	}
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(ctx, t.network, t.address)
	if err != nil {
		return nil, err
	}
	return &conn{nc: nc, ctx: ctx}, nil
}

// Send sends one command and returns the complete response.
func (c *conn) Send(cmd []byte) ([]byte, error) {
	if c.broken != nil {
		return nil, &transportError{err: c.broken}
	}
	if err := c.ctx.Err(); err != nil {
		// Nothing was sent: the connection stays usable.
		return nil, err
	}
	var rsp []byte
	var err error
	if c.nc != nil {
		rsp, err = c.sendNet(cmd)
	} else {
		rsp, err = c.dev.Send(cmd)
	}
	if err != nil {
		c.broken = err
		ctxErr := c.ctx.Err()
		if d, ok := c.ctx.Deadline(); ok && ctxErr == nil && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
			// The socket deadline was the context's, and it fired a
			// moment before the context's own timer.
			ctxErr = context.DeadlineExceeded
		}
		if ctxErr != nil {
			// The command was interrupted; report the cancellation as such
			// (the caller asked for it) but still mark the stream broken.
			return nil, fmt.Errorf("tpm command interrupted: %w", ctxErr)
		}
		return nil, &transportError{err: err}
	}
	if c.tap != nil {
		c.tap(cmd, rsp)
	}
	c.last = rsp
	return rsp, nil
}

// sendNet speaks the plain TPM 2.0 command/response stream that swtpm's
// server port accepts: write the command, read the 10-byte header, then
// exactly the announced number of bytes (a single Read may return less).
func (c *conn) sendNet(cmd []byte) ([]byte, error) {
	deadline := time.Now().Add(commandTimeout)
	if d, ok := c.ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.nc.SetDeadline(deadline); err != nil {
		return nil, err
	}
	// Cancelling the context unblocks a pending read or write.
	stop := context.AfterFunc(c.ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := c.nc.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, rspHeaderSize)
	if _, err := io.ReadFull(c.nc, hdr); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the TPM closed the connection (simulator stopped or restarted?)")
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < rspHeaderSize || n > maxResponse {
		return nil, fmt.Errorf("malformed TPM response: size field %d", n)
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(c.nc, rsp[rspHeaderSize:]); err != nil {
		return nil, err
	}
	return rsp, nil
}

// scrub zeroes the most recent response buffer (best effort: go-tpm may
// have copied parts of it, and the kernel's socket buffers are out of reach).
func (c *conn) scrub() {
	clear(c.last)
	c.last = nil
}

func (c *conn) close() error {
	c.scrub()
	if c.nc != nil {
		return c.nc.Close()
	}
	return c.dev.Close()
}
