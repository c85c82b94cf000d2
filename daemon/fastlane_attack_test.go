package daemon

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// TestFastLane_HandoffKeepsHeadDeadline: a head that outgrows the lane's
// 4 KiB buffer is handed to net/http, which used to start its own header
// timeout then: a caller trickling a large head just under the limit to
// the lane got the limit a second time from net/http (slowloris at twice
// the header timeout). The head's deadline now carries over the handoff.
func TestFastLane_HandoffKeepsHeadDeadline(t *testing.T) {
	const header = 2 * time.Second
	n := startNodeOpts(t, t.TempDir(), nil, func(o *Options) { o.headerTimeout = header })
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)

	rc := dialRaw(t, n)
	start := time.Now()
	// Most of the lane's buffer at once, the rest just before the head
	// deadline: the lane hands the head over at 1.8 s.
	first := "GET /v1/sys/status HTTP/1.1\r\nHost: coffer\r\nX-Pad: " + strings.Repeat("a", 4000)
	io.WriteString(rc.c, first)
	time.Sleep(header * 9 / 10)
	io.WriteString(rc.c, strings.Repeat("b", 200))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := io.WriteString(rc.c, "c"); err != nil {
					return
				}
			}
		}
	}()
	// net/http's fresh timeout would end it at 3.8 s.
	waitClosed(t, rc.c, start, header-50*time.Millisecond, header+time.Second, "large head trickled across the handoff")
}

// TestReplayConn_WipesOnceDrained: the bytes the lane read before a
// handoff (here an unseal share in a request net/http serves) are zeroed
// as soon as net/http has read them, not only at its next read: net/http
// reads them in one go, and a connection it closes then (an error answer,
// Connection: close) never reads again, so they stayed in the lane's
// buffer.
func TestReplayConn_WipesOnceDrained(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	req := rawRequest("POST", "/v1/sys/unseal", `{"share":"c2VjcmV0IHNoYXJlIHNlY3JldCBzaGFyZQ=="}`, "Connection: close")
	go io.WriteString(b, req)
	lr := newLaneReader(a, fastReadBuf)
	if _, err := lr.Peek(len(req)); err != nil {
		t.Fatal(err)
	}
	rc := &replayConn{Conn: a, r: lr, cancel: func() {}, headDone: true}
	p := make([]byte, 4096) // net/http's read buffer
	n, err := rc.Read(p)
	if err != nil || string(p[:n]) != req {
		t.Fatalf("read %q, %v", p[:n], err)
	}
	if !bytes.Equal(lr.buf, make([]byte, len(lr.buf))) {
		t.Fatal("the handed-over request is still in the lane's buffer after net/http read it")
	}
}
