package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// installCrypto makes f answer wrap and unwrap (single and batch) for key
// "bench"; in a batch, the last item fails with decrypt_failed.
func installCrypto(f *fakeDaemon) {
	f.handle("POST", "/v1/keys/bench/wrap", func(w http.ResponseWriter, r *http.Request) {
		var req api.WrapRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, 400, apiErr(api.CodeBadRequest, err.Error()))
			return
		}
		if req.Batch == nil {
			writeJSON(w, 200, api.WrapResult{Ciphertext: "coffer:v1:Y3Q=", KeyVersion: 1})
			return
		}
		out := make([]api.WrapResult, len(req.Batch))
		for i := range out {
			out[i] = api.WrapResult{Ciphertext: "coffer:v1:Y3Q=", KeyVersion: 1}
		}
		out[len(out)-1] = api.WrapResult{Error: &api.ErrorDetail{Code: api.CodeDecryptFailed, Message: "x"}}
		writeJSON(w, 200, api.WrapBatchResponse{Batch: out})
	})
	f.handle("POST", "/v1/keys/bench/unwrap", func(w http.ResponseWriter, r *http.Request) {
		var req api.CiphertextRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || (req.Batch == nil && req.Ciphertext != "coffer:v1:Y3Q=") {
			writeJSON(w, 400, apiErr(api.CodeDecryptFailed, "cannot open"))
			return
		}
		if req.Batch == nil {
			writeJSON(w, 200, api.UnwrapResult{Plaintext: []byte("pt")})
			return
		}
		out := make([]api.UnwrapResult, len(req.Batch))
		for i := range out {
			out[i] = api.UnwrapResult{Plaintext: []byte("pt")}
		}
		writeJSON(w, 200, api.UnwrapBatchResponse{Batch: out})
	})
}

func TestBench_FakeServer(t *testing.T) {
	f := newFake(t)
	installCrypto(f)
	start := time.Now()
	r := run(t, f, "", "bench", "wrap", "--duration", "300ms", "--warmup", "50ms", "--concurrency", "4")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("bench took %v", el)
	}
	for _, s := range []string{"Ops/s", "Latency p50", "Latency p90", "Latency p99 ", "Latency p99.9", "Latency max", "Errors          none", "Server CPU      ", "per 1000 requests", "4 workers, 32-byte plaintexts, single requests"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("output lacks %q:\n%s", s, r.stdout)
		}
	}
}

func TestBench_JSON(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantErrs  bool
		wantItems float64
	}{
		{"wrap", []string{"bench", "wrap"}, false, 1},
		{"unwrap", []string{"bench", "unwrap", "--size", "100"}, false, 1},
		{"wrap batch", []string{"bench", "wrap", "--batch", "5"}, true, 4},
		{"unwrap batch", []string{"bench", "unwrap", "--batch", "3"}, false, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			installCrypto(f)
			args := append(tt.args, "--duration", "200ms", "--warmup", "0s", "--concurrency", "2", "--format", "json")
			r := run(t, f, "", args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			oneJSONDocument(t, r.stdout)
			var res benchResult
			if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
				t.Fatal(err)
			}
			l := res.LatencyMicros
			if res.Requests == 0 || !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
				t.Fatalf("implausible result: %+v", res)
			}
			if got := float64(res.Items) / float64(res.Requests); got != tt.wantItems {
				t.Fatalf("items per request %v, want %v", got, tt.wantItems)
			}
			if (res.Errors[api.CodeDecryptFailed] > 0) != tt.wantErrs {
				t.Fatalf("errors %v", res.Errors)
			}
			// The fake daemon is this test process: its CPU time is
			// measurable wherever /proc is.
			if _, err := os.Stat("/proc/self/stat"); err == nil && (res.ServerCPU == nil || res.ServerCPU.PID != os.Getpid()) {
				t.Fatalf("server CPU %+v, note %q", res.ServerCPU, res.ServerCPUNote)
			}
		})
	}
}

func TestBench_Errors(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{"key missing", []string{"bench", "wrap", "--key", "nokey"}, ExitError, "create it first: coffer key create nokey"},
		{"unwrap key missing", []string{"bench", "unwrap", "--key", "nokey"}, ExitError, "create it first: coffer key create nokey"},
		{"bad concurrency", []string{"bench", "wrap", "--concurrency", "0"}, ExitUsage, "invalid --concurrency 0"},
		{"bad size", []string{"bench", "wrap", "--size", "70000"}, ExitUsage, "invalid --size 70000"},
		{"bad duration", []string{"bench", "wrap", "--duration", "soon"}, ExitUsage, "invalid value \"soon\" for flag -duration"},
		{"zero duration", []string{"bench", "wrap", "--duration", "0s"}, ExitUsage, "invalid --duration 0s"},
		{"body too large", []string{"bench", "wrap", "--batch", "100", "--size", "65536"}, ExitUsage, "over cofferd's"},
		{"missing op", []string{"bench"}, ExitUsage, "missing command (one of: wrap, unwrap)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			installCrypto(f)
			r := run(t, f, "", tt.args...)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d, %q", r.code, r.stderr, tt.wantCode, tt.want)
			}
		})
	}
}

func TestBench_StopsOnCancel(t *testing.T) {
	f := newFake(t)
	installCrypto(f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- Main(ctx, []string{"coffer", "--socket", f.socket, "bench", "wrap", "--duration", "1m", "--concurrency", "2"},
			strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	// Cancel once the load is running.
	deadline := time.Now().Add(10 * time.Second)
	for len(f.requests()) < 20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitError || !strings.Contains(stderr.String(), "interrupted") {
			t.Fatalf("exit %d, stderr %q", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bench did not stop on cancel")
	}
}

func TestHistogram_Quantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name string
		gen  func() uint64
	}{
		{"lognormal latencies", func() uint64 { return uint64(math.Exp(rng.NormFloat64()*1.2+11)) + 1 }},
		{"uniform small", func() uint64 { return rng.Uint64N(300) }},
		{"bimodal", func() uint64 {
			if rng.IntN(100) < 3 {
				return 50_000_000 + rng.Uint64N(1_000_000)
			}
			return 40_000 + rng.Uint64N(5_000)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h histogram
			vals := make([]uint64, 50_000)
			for i := range vals {
				vals[i] = tt.gen()
				h.record(vals[i])
			}
			slices.Sort(vals)
			for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
				exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
				got := h.quantile(q)
				if diff := math.Abs(float64(got) - float64(exact)); diff > 0.01*float64(exact) {
					t.Errorf("q%v = %d, exact %d (error %.2f%%)", q, got, exact, 100*diff/float64(exact))
				}
			}
			if h.max != vals[len(vals)-1] {
				t.Errorf("max %d, want %d", h.max, vals[len(vals)-1])
			}
		})
	}
}

func TestHistogram_Buckets(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 255, 256, 257, 511, 512, 1000, 1 << 20, 1<<20 + 12345, 1 << 40, math.MaxUint64} {
		i := bucketIndex(v)
		if i < prev || i >= histBuckets {
			t.Fatalf("bucketIndex(%d) = %d (prev %d)", v, i, prev)
		}
		prev = i
		if mid := bucketMid(i); math.Abs(float64(mid)-float64(v)) > float64(v)/128 {
			t.Fatalf("bucket of %d has midpoint %d", v, mid)
		}
	}
	var a, b histogram
	a.record(10)
	b.record(1000)
	a.merge(&b)
	if a.n != 2 || a.max != 1000 || a.quantile(0.5) != 10 || a.quantile(1) != 1000 {
		t.Fatalf("merge: %+v", a.quantile(1))
	}
}
