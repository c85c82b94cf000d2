package daemon

import (
	"bufio"
	"io"
	"net"
)

// laneReader is the fast lane's read buffer: bufio.Reader's job, with the
// buffer in reach, so that the bytes of a request (a wrap's base64
// plaintext) are zeroed once the request is served (wipeConsumed) and when
// the connection ends, instead of lingering until the buffer is reused as
// net/http's do (docs/threat-model.md).
type laneReader struct {
	c    net.Conn
	buf  []byte
	r, w int
	err  error
}

func newLaneReader(c net.Conn, size int) *laneReader {
	return &laneReader{c: c, buf: make([]byte, size)}
}

func (lr *laneReader) Size() int     { return len(lr.buf) }
func (lr *laneReader) Buffered() int { return lr.w - lr.r }

// fill reads once more from the connection into the free end of buf,
// moving what is buffered to the front first if needed.
func (lr *laneReader) fill() error {
	if lr.err != nil {
		return lr.err
	}
	if lr.r == lr.w {
		lr.reset()
	}
	if lr.w == len(lr.buf) && lr.r > 0 {
		n := copy(lr.buf, lr.buf[lr.r:lr.w])
		clear(lr.buf[n:lr.w])
		lr.r, lr.w = 0, n
	}
	if lr.w == len(lr.buf) {
		return bufio.ErrBufferFull
	}
	n, err := lr.c.Read(lr.buf[lr.w:])
	lr.w += n
	if err != nil {
		lr.err = err
		if n > 0 {
			return nil
		}
		return err
	}
	return nil
}

// Peek returns the next n bytes without consuming them, reading as needed;
// n must not exceed Size.
func (lr *laneReader) Peek(n int) ([]byte, error) {
	for lr.w-lr.r < n {
		if err := lr.fill(); err != nil {
			return lr.buf[lr.r:lr.w], err
		}
	}
	return lr.buf[lr.r : lr.r+n], nil
}

// Discard skips n bytes, reading them from the connection if need be.
func (lr *laneReader) Discard(n int) (int, error) {
	done := 0
	for done < n {
		if lr.r == lr.w {
			lr.reset()
			if err := lr.fill(); err != nil {
				return done, err
			}
		}
		k := min(n-done, lr.w-lr.r)
		lr.r += k
		done += k
	}
	return done, nil
}

func (lr *laneReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if lr.r == lr.w {
		if lr.err != nil {
			return 0, lr.err
		}
		lr.reset()
		if len(p) >= len(lr.buf) {
			// Large reads (a big batch) go straight to the caller's
			// buffer, as with bufio.
			n, err := lr.c.Read(p)
			if err != nil {
				lr.err = err
			}
			return n, err
		}
		if err := lr.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, lr.buf[lr.r:lr.w])
	lr.r += n
	return n, nil
}

// reset empties the buffer, zeroing what it held. Everything past w is
// zero at all times.
func (lr *laneReader) reset() {
	clear(lr.buf[:lr.w])
	lr.r, lr.w = 0, 0
}

// wipeConsumed zeroes what was read and consumed, keeping what is
// buffered (a pipelined request) at the front.
func (lr *laneReader) wipeConsumed() {
	if lr.r == 0 {
		return
	}
	n := copy(lr.buf, lr.buf[lr.r:lr.w])
	clear(lr.buf[n:lr.w])
	lr.r, lr.w = 0, n
}

// wipe zeroes the whole buffer (the connection ends).
func (lr *laneReader) wipe() {
	clear(lr.buf)
	lr.r, lr.w = 0, 0
}

var _ io.Reader = (*laneReader)(nil)
