package kmsv2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/coffer-kms/coffer/daemon/kmsv2"
)

// TestKMSv2_StalledCallsEnd is the memory-pinning attack on the KMS v2
// socket: a client opens calls and sends each one's request only in part
// (a gRPC message header announcing MaxMessage bytes, then less). The
// server buffers what arrived and waits for the rest; a unary call has no
// server-side deadline, so the buffers stayed pinned as long as the client
// kept the connection: up to 256 streams × 256 KiB = 64 MiB per
// connection, with no time limit. Now a connection lives at most
// kmsv2.MaxConnectionAge plus kmsv2.MaxConnectionAgeGrace (shortened
// here), after which a call still waiting for its request is cut off.
func TestKMSv2_StalledCallsEnd(t *testing.T) {
	restore := kmsv2.SetConnectionAgeForTest(time.Second, time.Second)
	defer restore()
	n := startNode(t, nil, true)
	n.statusOK()
	c, err := net.Dial("unix", n.cfg.KMSv2.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	const streams = 16
	part := make([]byte, 32<<10) // within the initial 64 KiB stream window
	for i := 0; i < streams; i++ {
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/v2.KeyManagementService/Decrypt"},
			{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 5, 5+len(part))
		binary.BigEndian.PutUint32(msg[1:], kmsv2.MaxMessage)
		msg = append(msg, part...)
		for len(msg) > 0 { // frames of at most the default 16 KiB
			k := min(len(msg), 16<<10)
			if err := fr.WriteData(id, false, msg[:k]); err != nil {
				t.Fatal(err)
			}
			msg = msg[k:]
		}
	}
	// Read what the server sends until it closes the connection. Settings
	// are acknowledged so that the server does not drop us for that.
	start := time.Now()
	c.SetReadDeadline(start.Add(20 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("%d calls with a partly sent request were still held after %v", streams, time.Since(start).Round(time.Second))
			}
			t.Logf("the server closed the connection with %d stalled calls after %v (%v)", streams, time.Since(start).Round(100*time.Millisecond), err)
			return
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			fr.WriteSettingsAck()
		}
	}
}
