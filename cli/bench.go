package cli

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coffer-kms/coffer/api"
	ucli "github.com/urfave/cli/v2"
)

// benchConfig is one `coffer bench` run.
type benchConfig struct {
	Op          string // "wrap" or "unwrap"
	Key         string
	Socket      string
	Concurrency int
	Duration    time.Duration
	Warmup      time.Duration
	Size        int
	Batch       int // items per request; 0 sends single-item requests
}

// benchResult is what a run measured; with --format json it is printed as
// is.
type benchResult struct {
	Op             string            `json:"op"`
	Key            string            `json:"key"`
	Socket         string            `json:"socket"`
	Concurrency    int               `json:"concurrency"`
	Size           int               `json:"size"`
	Batch          int               `json:"batch"`
	WarmupSeconds  float64           `json:"warmup_seconds"`
	Seconds        float64           `json:"seconds"`
	Requests       uint64            `json:"requests"`        // successful requests in the window
	FailedRequests uint64            `json:"failed_requests"` // requests answered with an error
	Items          uint64            `json:"items"`           // successful items (= requests without --batch)
	OpsPerSec      float64           `json:"ops_per_sec"`     // successful requests per second
	ItemsPerSec    float64           `json:"items_per_sec"`
	LatencyMicros  latencySummary    `json:"latency_us"`
	Errors         map[string]uint64 `json:"errors"` // by error code, requests and batch items
	ServerCPU      *serverCPU        `json:"server_cpu,omitempty"`
	ServerCPUNote  string            `json:"server_cpu_note,omitempty"`
}

type latencySummary struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99.9"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type serverCPU struct {
	PID                 int     `json:"pid"`
	Seconds             float64 `json:"seconds"`                 // user+system CPU in the window
	PerThousandRequests float64 `json:"per_1000_requests"`       // CPU seconds per 1,000 successful requests
	PerThousandItems    float64 `json:"per_1000_items,omitzero"` // with --batch
}

func (e *env) benchCommand() *ucli.Command {
	flags := func() []ucli.Flag {
		return []ucli.Flag{
			&ucli.StringFlag{Name: "key", Usage: "`NAME` of the key to use (create it first)", Value: "bench"},
			&ucli.IntFlag{Name: "concurrency", Usage: "`N` workers, each with its own connection, sending requests back-to-back", Value: 1},
			&ucli.DurationFlag{Name: "duration", Usage: "length `D` of the measured window", Value: 10 * time.Second},
			&ucli.IntFlag{Name: "size", Usage: "plaintext size in `BYTES` (1-65536)", Value: 32},
			&ucli.IntFlag{Name: "batch", Usage: "`K` items per request (0 = single-item requests)", Value: 0},
			&ucli.DurationFlag{Name: "warmup", Usage: "load for `D` before the measured window, not counted", Value: time.Second},
		}
	}
	sub := func(op, what, example string) *ucli.Command {
		return e.newCmd(&ucli.Command{
			Name:      op,
			Usage:     "measure " + op + " throughput and latency",
			UsageText: "coffer bench " + op + " [--key NAME] [--concurrency N] [--duration D] [--size BYTES] [--batch K] [--warmup D]",
			Description: "Runs --concurrency workers against the socket for --warmup, then measures for\n" +
				"--duration: " + what + "\n" +
				"Prints successful requests, ops/s (and items/s with --batch), p50/p90/p99/p99.9\n" +
				"and max latency, errors by code, and cofferd's CPU seconds per 1,000 requests\n" +
				"(from /proc/PID/stat of the process at the other end of the socket).",
			Flags: flags(),
		}, example, 0, 0, func(x *cmd) error {
			cfg := benchConfig{
				Op: op, Key: x.c.String("key"), Socket: x.client.Socket(),
				Concurrency: x.c.Int("concurrency"), Duration: x.c.Duration("duration"),
				Warmup: x.c.Duration("warmup"), Size: x.c.Int("size"), Batch: x.c.Int("batch"),
			}
			if err := cfg.validate(); err != nil {
				return err
			}
			res, err := runBench(x.ctx, cfg)
			if err != nil {
				return err
			}
			if x.json {
				return x.printValue(res)
			}
			return printBench(x.stdout, res)
		})
	}
	return group(&ucli.Command{
		Name:      "bench",
		Usage:     "load generator: wrap/unwrap throughput and latency against the socket",
		UsageText: "coffer bench wrap|unwrap [--key NAME] [--concurrency N] [--duration D] [--size BYTES] [--batch K] [--warmup D]",
		Description: "Measures cofferd (or any server of the wrap/unwrap API) from the client side.\n" +
			"Create the key first: coffer key create bench",
		Subcommands: []*ucli.Command{
			sub("wrap", "each request wraps a random plaintext of --size bytes\n(--batch of them per request).",
				"coffer key create bench && coffer bench wrap --concurrency 8 --duration 10s"),
			sub("unwrap", "each request unwraps the ciphertext of one random plaintext of\n--size bytes (--batch copies per request), made by one wrap before the run.",
				"coffer bench unwrap --concurrency 32 --batch 100"),
		},
	}, `coffer bench wrap --concurrency 8 --duration 10s
coffer --format json bench unwrap --size 1024`)
}

func (c *benchConfig) validate() error {
	switch {
	case c.Concurrency < 1 || c.Concurrency > 4096:
		return usagef("invalid --concurrency %d: give 1 to 4096", c.Concurrency)
	case c.Duration <= 0:
		return usagef("invalid --duration %s: give a positive duration such as 10s", c.Duration)
	case c.Warmup < 0:
		return usagef("invalid --warmup %s: must not be negative", c.Warmup)
	case c.Size < 1 || c.Size > api.MaxPlaintext:
		return usagef("invalid --size %d: give 1 to %d bytes", c.Size, api.MaxPlaintext)
	case c.Batch < 0 || c.Batch > api.MaxBatch:
		return usagef("invalid --batch %d: give 0 (single requests) to %d", c.Batch, api.MaxBatch)
	}
	return checkName("key", c.Key)
}

// benchBody builds the request body every worker sends. unwrap first wraps
// one sample plaintext to get a ciphertext.
func benchBody(ctx context.Context, probe *Client, cfg benchConfig) ([]byte, error) {
	plaintext := make([]byte, cfg.Size)
	if _, err := rand.Read(plaintext); err != nil {
		return nil, err
	}
	n := max(cfg.Batch, 1)
	var req any
	switch cfg.Op {
	case "wrap":
		if cfg.Batch == 0 {
			req = api.WrapRequest{Plaintext: plaintext}
		} else {
			items := make([]api.WrapItem, n)
			for i := range items {
				items[i].Plaintext = plaintext
			}
			req = api.WrapRequest{Batch: items}
		}
	case "unwrap":
		wr, err := probe.Wrap(ctx, cfg.Key, plaintext, nil)
		if err != nil {
			return nil, benchSetupError(cfg, err)
		}
		if cfg.Batch == 0 {
			req = api.CiphertextRequest{Ciphertext: wr.Ciphertext}
		} else {
			items := make([]api.CiphertextItem, n)
			for i := range items {
				items[i].Ciphertext = wr.Ciphertext
			}
			req = api.CiphertextRequest{Batch: items}
		}
	default:
		return nil, fmt.Errorf("unknown bench operation %q", cfg.Op)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if len(body) > api.MaxBody {
		return nil, usagef("one request would be %d bytes, over cofferd's %d-byte limit: lower --batch or --size", len(body), api.MaxBody)
	}
	return body, nil
}

// benchSetupError explains a failure of the first request.
func benchSetupError(cfg benchConfig, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return fmt.Errorf("key %q not found at %s (%s): create it first: coffer key create %s", cfg.Key, cfg.Socket, ae.Message, cfg.Key)
	}
	return fmt.Errorf("the first %s request failed, so the benchmark did not start: %w", cfg.Op, err)
}

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// benchWorker sends requests back-to-back on a connection of its own and
// records what finished inside the measured window.
type benchWorker struct {
	client *Client  // the probe request before the run
	raw    *rawConn // the workers' lean connection (bench_raw.go)
	cfg    *benchConfig
	path   string
	body   []byte

	hist     *histogram
	requests uint64
	items    uint64
	failed   uint64
	errs     map[string]uint64
}

// send issues one request; it returns the successful items, or an error.
// Batch items that fail are counted in errs by code.
func (w *benchWorker) send(ctx context.Context, record bool) (int, error) {
	if w.raw != nil {
		return w.sendRaw(ctx, record)
	}
	if w.cfg.Batch == 0 {
		var err error
		if w.cfg.Op == "wrap" {
			var out api.WrapResult
			_, err = w.client.Do(ctx, http.MethodPost, w.path, w.body, &out)
		} else {
			var out api.UnwrapResult
			_, err = w.client.Do(ctx, http.MethodPost, w.path, w.body, &out)
			clear(out.Plaintext)
		}
		if err != nil {
			return 0, err
		}
		return 1, nil
	}
	var codes []*api.ErrorDetail
	if w.cfg.Op == "wrap" {
		// Decode only what tells success from failure: skipping the
		// ciphertext strings keeps the load generator from eating the CPU
		// the server needs on a small machine.
		var out struct {
			Batch []struct {
				KeyVersion int              `json:"key_version"`
				Error      *api.ErrorDetail `json:"error"`
			} `json:"batch"`
		}
		if _, err := w.client.Do(ctx, http.MethodPost, w.path, w.body, &out); err != nil {
			return 0, err
		}
		if err := checkBatchLen(len(out.Batch), w.cfg.Batch); err != nil {
			return 0, err
		}
		for _, r := range out.Batch {
			if r.Error == nil && r.KeyVersion < 1 {
				r.Error = &api.ErrorDetail{Code: "malformed_response"}
			}
			codes = append(codes, r.Error)
		}
	} else {
		var out api.UnwrapBatchResponse
		if _, err := w.client.Do(ctx, http.MethodPost, w.path, w.body, &out); err != nil {
			return 0, err
		}
		if err := checkBatchLen(len(out.Batch), w.cfg.Batch); err != nil {
			return 0, err
		}
		for _, r := range out.Batch {
			clear(r.Plaintext)
			codes = append(codes, r.Error)
		}
	}
	ok := 0
	for _, e := range codes {
		if e == nil {
			ok++
		} else if record {
			w.errs[e.Code]++
		}
	}
	return ok, nil
}

func (w *benchWorker) run(ctx context.Context, phase *atomic.Int32, fail func(error)) {
	for {
		before := phase.Load()
		if before == phaseStop || ctx.Err() != nil {
			return
		}
		t0 := time.Now()
		items, err := w.send(ctx, before == phaseMeasure)
		lat := time.Since(t0)
		inWindow := before == phaseMeasure && phase.Load() == phaseMeasure
		if err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) {
				// A broken connection or a cancelled run: nothing more
				// to measure. Stop quietly if the run is over.
				if phase.Load() != phaseStop && ctx.Err() == nil {
					fail(err)
				}
				return
			}
			if inWindow {
				w.failed++
				w.errs[ae.Code]++
			}
			continue
		}
		if inWindow {
			w.hist.record(uint64(lat))
			w.requests++
			w.items += uint64(items)
		}
	}
}

// runBench runs one benchmark: warmup, then the measured window, bounded by
// cfg.Duration and by ctx.
func runBench(ctx context.Context, cfg benchConfig) (*benchResult, error) {
	probe := newClient(cfg.Socket, 1)
	defer probe.Close()
	body, err := benchBody(ctx, probe, cfg)
	if err != nil {
		return nil, err
	}
	path := api.KeyPath(cfg.Key, cfg.Op)
	// One request before any load: a missing key or a sealed node is
	// reported once, clearly, instead of as a storm of errors.
	if _, err := (&benchWorker{client: probe, cfg: &cfg, path: path, body: body, errs: map[string]uint64{}}).send(ctx, false); err != nil {
		return nil, benchSetupError(cfg, err)
	}

	pid, pidErr := serverPID(ctx, cfg.Socket)

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var phase atomic.Int32
	workers := make([]*benchWorker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &benchWorker{raw: newRawConn(cfg.Socket, path, body), cfg: &cfg, path: path, body: body,
			hist: new(histogram), errs: map[string]uint64{}}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.raw.close()
			w.run(wctx, &phase, func(err error) { cancel(err) })
		}()
	}
	stop := func() { phase.Store(phaseStop); cancel(nil); wg.Wait() }

	if !sleepCtx(wctx, cfg.Warmup) {
		stop()
		return nil, benchAborted(wctx)
	}
	cpu0, cpuErr := cpuAt(pid, pidErr)
	t0 := time.Now()
	phase.Store(phaseMeasure)
	completed := sleepCtx(wctx, cfg.Duration)
	phase.Store(phaseStop)
	elapsed := time.Since(t0)
	cpu1, cpuErr1 := cpuAt(pid, cpuErr)
	stop()
	if !completed {
		return nil, benchAborted(wctx)
	}

	res := &benchResult{
		Op: cfg.Op, Key: cfg.Key, Socket: cfg.Socket, Concurrency: cfg.Concurrency,
		Size: cfg.Size, Batch: cfg.Batch, WarmupSeconds: cfg.Warmup.Seconds(), Seconds: elapsed.Seconds(),
		Errors: map[string]uint64{},
	}
	hist := new(histogram)
	for _, w := range workers {
		hist.merge(w.hist)
		res.Requests += w.requests
		res.FailedRequests += w.failed
		res.Items += w.items
		for code, n := range w.errs {
			res.Errors[code] += n
		}
	}
	res.OpsPerSec = float64(res.Requests) / elapsed.Seconds()
	res.ItemsPerSec = float64(res.Items) / elapsed.Seconds()
	us := func(ns uint64) float64 { return float64(ns) / 1e3 }
	res.LatencyMicros = latencySummary{
		P50: us(hist.quantile(0.5)), P90: us(hist.quantile(0.9)), P99: us(hist.quantile(0.99)),
		P999: us(hist.quantile(0.999)), Max: us(hist.max), Mean: hist.mean() / 1e3,
	}
	switch {
	case cpuErr1 != nil:
		res.ServerCPUNote = "server CPU not measured: " + cpuErr1.Error()
	case res.Requests == 0:
		res.ServerCPUNote = "server CPU not measured: no successful request"
	default:
		sc := &serverCPU{PID: pid, Seconds: (cpu1 - cpu0).Seconds()}
		sc.PerThousandRequests = sc.Seconds / float64(res.Requests) * 1000
		if cfg.Batch > 0 && res.Items > 0 {
			sc.PerThousandItems = sc.Seconds / float64(res.Items) * 1000
		}
		res.ServerCPU = sc
	}
	return res, nil
}

// cpuAt reads the server's CPU time, unless an earlier step failed.
func cpuAt(pid int, prev error) (time.Duration, error) {
	if prev != nil {
		return 0, prev
	}
	return processCPU(pid)
}

func benchAborted(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return fmt.Errorf("benchmark stopped: %w", cause)
	}
	return context.Canceled
}

// sleepCtx waits for d; it reports false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func formatMicros(us float64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%.1fµs", us)
	case us < 1e6:
		return fmt.Sprintf("%.3fms", us/1e3)
	default:
		return fmt.Sprintf("%.3fs", us/1e6)
	}
}

func printBench(w io.Writer, r *benchResult) error {
	mode := "single requests"
	if r.Batch > 0 {
		mode = fmt.Sprintf("batches of %d", r.Batch)
	}
	t := newTable(w)
	t.row("Benchmark", fmt.Sprintf("%s with key %q on %s", r.Op, r.Key, r.Socket))
	t.row("Load", fmt.Sprintf("%d workers, %d-byte plaintexts, %s", r.Concurrency, r.Size, mode))
	t.row("Window", fmt.Sprintf("%.2fs after %.2fs warmup", r.Seconds, r.WarmupSeconds))
	t.row("Requests", fmt.Sprintf("%d ok, %d failed", r.Requests, r.FailedRequests))
	t.row("Ops/s", fmt.Sprintf("%.1f", r.OpsPerSec))
	if r.Batch > 0 {
		t.row("Items/s", fmt.Sprintf("%.1f", r.ItemsPerSec))
	}
	l := r.LatencyMicros
	t.row("Latency p50", formatMicros(l.P50))
	t.row("Latency p90", formatMicros(l.P90))
	t.row("Latency p99", formatMicros(l.P99))
	t.row("Latency p99.9", formatMicros(l.P999))
	t.row("Latency max", formatMicros(l.Max))
	t.row("Errors", formatErrors(r.Errors))
	if r.ServerCPU != nil {
		s := fmt.Sprintf("%.4f s per 1000 requests (pid %d, %.2f s in the window)", r.ServerCPU.PerThousandRequests, r.ServerCPU.PID, r.ServerCPU.Seconds)
		if r.ServerCPU.PerThousandItems > 0 {
			s += fmt.Sprintf("; %.4f s per 1000 items", r.ServerCPU.PerThousandItems)
		}
		t.row("Server CPU", s)
	} else {
		t.row("Server CPU", r.ServerCPUNote)
	}
	return t.flush()
}

func formatErrors(errs map[string]uint64) string {
	if len(errs) == 0 {
		return "none"
	}
	codes := make([]string, 0, len(errs))
	for c := range errs {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s: %d", c, errs[c])
	}
	return strings.Join(parts, ", ")
}
