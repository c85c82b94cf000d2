package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/coffer-kms/coffer/api"
)

// The bench's lean client. The load generator shares the machine with the
// server it measures, so every microsecond it spends per request is taken
// from the server (issue 15: with net/http and full JSON decoding, `coffer
// bench` reached about 55 % of what a lean generator reached against the
// same server). Each worker keeps one connection, writes a request rendered
// once before the run, parses the HTTP/1.1 answer by hand and checks the
// body by looking for the field every successful answer has; a body is
// decoded as JSON only when it carries an error, to count its code.

// rawConn is one worker's persistent connection.
type rawConn struct {
	socket string
	req    []byte // the whole HTTP/1.1 request, rendered once
	conn   net.Conn
	br     *bufio.Reader
	stop   func() bool // undoes the context.AfterFunc of conn
	body   []byte      // the last answer's body, reused
}

func newRawConn(socket, path string, body []byte) *rawConn {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: coffer\r\nUser-Agent: coffer-bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, len(body))
	b.Write(body)
	return &rawConn{socket: socket, req: b.Bytes()}
}

func (c *rawConn) close() {
	if c.conn != nil {
		c.stop()
		c.conn.Close()
		c.conn = nil
	}
	clear(c.body[:cap(c.body)])
}

// roundTrip sends the request and returns the status and the body, which
// stays valid until the next call.
func (c *rawConn) roundTrip(ctx context.Context) (int, []byte, error) {
	if c.conn == nil {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", c.socket)
		if err != nil {
			return 0, nil, err
		}
		c.conn = conn
		// Closing the connection when the run ends unblocks a read, with
		// no per-request deadline (which costs a timer update each time).
		c.stop = context.AfterFunc(ctx, func() { conn.Close() })
		if c.br == nil {
			c.br = bufio.NewReaderSize(conn, 16<<10)
		} else {
			c.br.Reset(conn)
		}
	}
	status, body, keep, err := c.exchange()
	if err != nil || !keep {
		c.stop()
		c.conn.Close()
		c.conn = nil
	}
	return status, body, err
}

func (c *rawConn) exchange() (status int, body []byte, keep bool, err error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return 0, nil, false, err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, nil, false, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, nil, false, fmt.Errorf("malformed status line %q", truncateBytes(line))
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, false, fmt.Errorf("malformed status line %q", truncateBytes(line))
	}
	length, chunked, keep := -1, false, line[7] == '1'
	for {
		h, err := c.br.ReadSlice('\n')
		if err != nil {
			return 0, nil, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, nil, false, fmt.Errorf("malformed header line %q", truncateBytes(h))
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, nil, false, fmt.Errorf("malformed Content-Length %q", truncateBytes(value))
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			if bytes.EqualFold(value, []byte("close")) {
				keep = false
			}
		}
	}
	c.body = c.body[:0]
	switch {
	case chunked:
		for {
			sz, err := c.br.ReadSlice('\n')
			if err != nil {
				return 0, nil, false, err
			}
			sz, _, _ = bytes.Cut(bytes.TrimRight(sz, "\r\n"), []byte(";"))
			n, err := strconv.ParseUint(string(sz), 16, 31)
			if err != nil {
				return 0, nil, false, fmt.Errorf("malformed chunk size %q", truncateBytes(sz))
			}
			if n == 0 {
				// Trailers (none expected), then the final CRLF.
				for {
					t, err := c.br.ReadSlice('\n')
					if err != nil {
						return 0, nil, false, err
					}
					if len(bytes.TrimRight(t, "\r\n")) == 0 {
						return status, c.body, keep, nil
					}
				}
			}
			if err := c.read(int(n)); err != nil {
				return 0, nil, false, err
			}
			if _, err := c.br.Discard(2); err != nil {
				return 0, nil, false, err
			}
		}
	case length >= 0:
		if length > api.MaxBody*2 {
			return 0, nil, false, fmt.Errorf("answer of %d bytes is too large for a bench answer", length)
		}
		if err := c.read(length); err != nil {
			return 0, nil, false, err
		}
		return status, c.body, keep, nil
	}
	// No length: the body runs to the end of the connection.
	b, err := io.ReadAll(io.LimitReader(c.br, api.MaxBody*2))
	c.body = append(c.body, b...)
	clear(b)
	return status, c.body, false, err
}

// read appends n bytes of the body.
func (c *rawConn) read(n int) error {
	start := len(c.body)
	if cap(c.body)-start < n {
		nb := make([]byte, start, start+n)
		copy(nb, c.body)
		clear(c.body[:cap(c.body)])
		c.body = nb
	}
	c.body = c.body[:start+n]
	_, err := io.ReadFull(c.br, c.body[start:])
	return err
}

func truncateBytes(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// rawError is the error of a non-2xx answer, as the API client would
// report it.
func rawError(status int, body []byte) error {
	var eb api.ErrorBody
	if json.Unmarshal(body, &eb) == nil && eb.Error.Code != "" {
		return &api.Error{Status: status, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return &api.Error{Status: status, Code: "http_" + strconv.Itoa(status), Message: fmt.Sprintf("the server answered %d with a body that is not an API error", status)}
}

// malformed is the error of a 200 answer without the expected field.
func malformed(what string) error {
	return &api.Error{Status: 200, Code: "malformed_response", Message: "the answer has no " + what + ": is this a server of the wrap/unwrap API?"}
}

// sendRaw is send over the lean client: the successful items, or an error.
func (w *benchWorker) sendRaw(ctx context.Context, record bool) (int, error) {
	status, body, err := w.raw.roundTrip(ctx)
	if err != nil {
		return 0, err
	}
	if status != 200 {
		return 0, rawError(status, body)
	}
	field := []byte(`"ciphertext":"`)
	if w.cfg.Op == "unwrap" {
		field = []byte(`"plaintext":"`)
		defer clear(body)
	}
	if w.cfg.Batch == 0 {
		if !bytes.Contains(body, field) {
			return 0, malformed(string(field[1 : len(field)-3]))
		}
		return 1, nil
	}
	ok := bytes.Count(body, field)
	if ok == w.cfg.Batch {
		return ok, nil
	}
	// Some items failed (or the answer is not a batch): decode it to
	// count the codes.
	var out struct {
		Batch []struct {
			Error *api.ErrorDetail `json:"error"`
		} `json:"batch"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return 0, malformed("batch")
	}
	if err := checkBatchLen(len(out.Batch), w.cfg.Batch); err != nil {
		return 0, err
	}
	ok = 0
	for _, r := range out.Batch {
		switch {
		case r.Error == nil:
			ok++
		case record:
			w.errs[r.Error.Code]++
		}
	}
	return ok, nil
}
