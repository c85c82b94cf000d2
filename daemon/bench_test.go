package daemon

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"

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
