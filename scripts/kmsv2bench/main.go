// Command kmsv2bench measures the Kubernetes KMS v2 plugin next to the HTTP
// API in the same run (docs/benchmarks.md): it starts its own cofferd (dev
// mode, soft seal, a kms_v2 socket), then runs gRPC Encrypt and Decrypt
// and HTTP wrap and unwrap of a 32-byte DEK, each at the given
// concurrencies (each worker on its own connection, and Decrypt also with
// all workers on one connection, as the API server does), and prints one
// Markdown table row per run: ops/s, p50 and
// p99 latency, and cofferd's CPU time per 1,000 calls (from
// /proc/PID/stat).
//
//	make build && go run ./scripts/kmsv2bench -duration 5s
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

func main() {
	bin := flag.String("cofferd", "bin/cofferd", "the cofferd `binary` to start")
	dur := flag.Duration("duration", 5*time.Second, "measured window per row")
	warm := flag.Duration("warmup", time.Second, "unmeasured load before each row")
	concs := flag.String("concurrency", "1,32", "comma-separated worker counts")
	flag.Parse()
	if err := run(*bin, *dur, *warm, *concs); err != nil {
		fmt.Fprintln(os.Stderr, "kmsv2bench:", err)
		os.Exit(1)
	}
}

func run(bin string, dur, warm time.Duration, concs string) error {
	dir, err := os.MkdirTemp("", "kmsv2bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	apiSock, kmsSock := filepath.Join(dir, "api.sock"), filepath.Join(dir, "kms.sock")
	conf := fmt.Sprintf(`node_id = "bench"
data_dir = %q
log_level = "warn"
dev = true
listener "unix" { path = %q }
admin { uids = [%d] }
seal "soft" { key_file = %q }
kms_v2 {
  path = %q
  key  = "kubernetes"
}
`, filepath.Join(dir, "data"), apiSock, os.Getuid(), filepath.Join(dir, "seal.key"), kmsSock)
	cfg := filepath.Join(dir, "cofferd.hcl")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	pid := cmd.Process.Pid
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", apiSock); err == nil {
			c.Close()
			break
		}
		if i > 300 {
			return fmt.Errorf("cofferd did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	hc := httpClient(apiSock)
	if _, err := post(hc, "/v1/sys/init", `{"shares":1,"threshold":1}`); err != nil {
		return err
	}
	// The first Status creates the key; wrap and unwrap use it too.
	conn, kc, err := dialKMS(kmsSock)
	if err != nil {
		return err
	}
	if _, err := kc.Status(context.Background(), &kmsapi.StatusRequest{}); err != nil {
		return fmt.Errorf("Status: %w", err)
	}
	conn.Close()
	dek := bytes.Repeat([]byte{7}, 32)
	wrapBody := `{"plaintext":"` + base64.StdEncoding.EncodeToString(dek) + `"}`
	out, err := post(hc, "/v1/keys/kubernetes/wrap", wrapBody)
	if err != nil {
		return err
	}
	var w struct{ Ciphertext string }
	json.Unmarshal(out, &w)
	unwrapBody := `{"ciphertext":"` + w.Ciphertext + `"}`
	_, kc0, err := dialKMS(kmsSock)
	if err != nil {
		return err
	}
	enc, err := kc0.Encrypt(context.Background(), &kmsapi.EncryptRequest{Uid: "bench", Plaintext: dek})
	if err != nil {
		return err
	}
	decReq := &kmsapi.DecryptRequest{Uid: "bench", Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations}

	type op struct {
		name string
		// worker returns the call a worker makes, on its own connection.
		worker func() (func() error, func(), error)
	}
	grpcOp := func(call func(kmsapi.KeyManagementServiceClient) error) func() (func() error, func(), error) {
		return func() (func() error, func(), error) {
			c, kc, err := dialKMS(kmsSock)
			if err != nil {
				return nil, nil, err
			}
			return func() error { return call(kc) }, func() { c.Close() }, nil
		}
	}
	// The kube-apiserver multiplexes all its calls over one connection.
	sharedConn, sharedKC, err := dialKMS(kmsSock)
	if err != nil {
		return err
	}
	defer sharedConn.Close()
	sharedOp := func(call func(kmsapi.KeyManagementServiceClient) error) func() (func() error, func(), error) {
		return func() (func() error, func(), error) {
			return func() error { return call(sharedKC) }, func() {}, nil
		}
	}
	httpOp := func(path, body string) func() (func() error, func(), error) {
		return func() (func() error, func(), error) {
			c := httpClient(apiSock)
			return func() error { _, err := post(c, path, body); return err }, c.CloseIdleConnections, nil
		}
	}
	ops := []op{
		{"HTTP wrap", httpOp("/v1/keys/kubernetes/wrap", wrapBody)},
		{"gRPC Encrypt", grpcOp(func(kc kmsapi.KeyManagementServiceClient) error {
			_, err := kc.Encrypt(context.Background(), &kmsapi.EncryptRequest{Uid: "bench", Plaintext: dek})
			return err
		})},
		{"HTTP unwrap", httpOp("/v1/keys/kubernetes/unwrap", unwrapBody)},
		{"gRPC Decrypt", grpcOp(func(kc kmsapi.KeyManagementServiceClient) error {
			_, err := kc.Decrypt(context.Background(), decReq)
			return err
		})},
		{"gRPC Decrypt, one shared connection", sharedOp(func(kc kmsapi.KeyManagementServiceClient) error {
			_, err := kc.Decrypt(context.Background(), decReq)
			return err
		})},
	}
	fmt.Println("| op | concurrency | ops/s | p50 µs | p99 µs | server CPU-s / 1,000 |")
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	for _, cs := range strings.Split(concs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(cs))
		if err != nil || n < 1 {
			return fmt.Errorf("bad concurrency %q", cs)
		}
		for _, o := range ops {
			r, err := measure(pid, n, warm, dur, o.worker)
			if err != nil {
				return fmt.Errorf("%s: %w", o.name, err)
			}
			fmt.Printf("| %s | %d | %.0f | %.0f | %.0f | %.4f |\n", o.name, n, r.rate, r.p50, r.p99, r.cpuPer1000)
		}
	}
	return nil
}

type result struct{ rate, p50, p99, cpuPer1000 float64 }

// measure runs n workers for warm+dur and reports the measured window.
func measure(pid, n int, warm, dur time.Duration, worker func() (func() error, func(), error)) (result, error) {
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		mu        sync.Mutex
		lats      []time.Duration
		firstErr  error
		wg        sync.WaitGroup
	)
	for i := 0; i < n; i++ {
		call, closeFn, err := worker()
		if err != nil {
			return result{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer closeFn()
			var mine []time.Duration
			for !stop.Load() {
				t0 := time.Now()
				if err := call(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				if measuring.Load() {
					mine = append(mine, time.Since(t0))
				}
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	time.Sleep(warm)
	cpu0 := cpuSeconds(pid)
	t0 := time.Now()
	measuring.Store(true)
	time.Sleep(dur)
	measuring.Store(false)
	elapsed := time.Since(t0)
	cpu1 := cpuSeconds(pid)
	stop.Store(true)
	wg.Wait()
	if firstErr != nil {
		return result{}, firstErr
	}
	if len(lats) == 0 {
		return result{}, fmt.Errorf("no calls completed")
	}
	slices.Sort(lats)
	us := func(q float64) float64 { return float64(lats[int(q*float64(len(lats)-1))].Nanoseconds()) / 1e3 }
	return result{
		rate:       float64(len(lats)) / elapsed.Seconds(),
		p50:        us(0.50),
		p99:        us(0.99),
		cpuPer1000: (cpu1 - cpu0) / float64(len(lats)) * 1000,
	}, nil
}

// cpuSeconds is the process's user+system CPU time (/proc/PID/stat fields
// 14 and 15, in clock ticks of 1/100 s on Linux).
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

func dialKMS(path string) (*grpc.ClientConn, kmsapi.KeyManagementServiceClient, error) {
	c, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return c, kmsapi.NewKeyManagementServiceClient(c), nil
}

func httpClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

func post(c *http.Client, path, body string) ([]byte, error) {
	resp, err := c.Post("http://coffer"+path, "application/json", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %d %s", path, resp.StatusCode, out)
	}
	return out, nil
}
