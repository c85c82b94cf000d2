package daemon

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
)

// BenchmarkHTTPWrap measures one wrap through the whole daemon path — unix
// socket, HTTP, identity, routing, policy check, JSON, AES-GCM — with the
// client in the same process (so ns/op counts both sides' CPU).
func BenchmarkHTTPWrap(b *testing.B) {
	for _, c := range []struct {
		name  string
		body  []byte
		batch bool
	}{
		{"single-32B", []byte(`{"plaintext":"` + b64(string(make([]byte, 32))) + `"}`), false},
		{"batch100-32B", batchBody(100), true},
	} {
		b.Run(c.name, func(b *testing.B) {
			n := startBenchNode(b)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := n.client.Post("http://coffer/v1/keys/bench/wrap", "application/json", bytes.NewReader(c.body))
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
			if c.batch {
				b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "items/s")
			}
		})
	}
}

func batchBody(n int) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"batch":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"plaintext":"%s"}`, b64(string(make([]byte, 32))))
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}

func startBenchNode(b *testing.B) *testNode {
	n := startNode(b, b.TempDir(), func(c *config.Config) { c.LogLevel = "warn" })
	n.must("POST", "/v1/sys/init", api.InitRequest{Shares: 1, Threshold: 1}, nil, 200)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "bench"}, nil, 201)
	n.client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	return n
}

// BenchmarkServeRaw drives the daemon as the lean load generator does:
// pre-rendered HTTP/1.1 requests on one persistent unix connection per
// worker, answers read by hand. The client allocates nothing per request,
// so allocs/op is the server's (issue 15: the per-request allocations of
// the single crypto routes).
func BenchmarkServeRaw(b *testing.B) {
	pt := b64(string(make([]byte, 32)))
	for _, c := range []struct{ name, path, body string }{
		{"wrap", "/v1/keys/bench/wrap", `{"plaintext":"` + pt + `"}`},
		{"unwrap", "/v1/keys/bench/unwrap", ""}, // ciphertext filled in below
		{"datakey", "/v1/keys/bench/datakey", `{}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			n := startNodeOpts(b, b.TempDir(), func(c *config.Config) { c.LogLevel = "warn" }, func(o *Options) {
				o.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.Discard})
			})
			n.must("POST", "/v1/sys/init", api.InitRequest{Shares: 1, Threshold: 1}, nil, 200)
			n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "bench"}, nil, 201)
			body := c.body
			if body == "" {
				var wr api.WrapResult
				n.must("POST", "/v1/keys/bench/wrap", api.WrapRequest{Plaintext: make([]byte, 32)}, &wr, 200)
				body = `{"ciphertext":"` + wr.Ciphertext + `"}`
			}
			req := []byte("POST " + c.path + " HTTP/1.1\r\nHost: coffer\r\nContent-Type: application/json\r\nContent-Length: " +
				strconv.Itoa(len(body)) + "\r\n\r\n" + body)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				conn, err := net.Dial("unix", n.cfg.Listener.Path)
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				br := bufio.NewReaderSize(conn, 8192)
				buf := make([]byte, 8192)
				for pb.Next() {
					if _, err := conn.Write(req); err != nil {
						b.Error(err)
						return
					}
					if err := readRawAnswer(br, buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// readRawAnswer reads one HTTP/1.1 answer with a Content-Length and fails
// unless its status is 200.
func readRawAnswer(br *bufio.Reader, buf []byte) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("answer %q", line)
	}
	cl := -1
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			cl, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	if cl < 0 || cl > len(buf) {
		return fmt.Errorf("content length %d", cl)
	}
	_, err = io.ReadFull(br, buf[:cl])
	return err
}
