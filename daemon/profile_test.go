package daemon

import (
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
)

// TestProfileServe serves a node (info-level log, audit on, key "bench")
// for COFFER_PROFILE_SERVE seconds under a CPU profile written to
// COFFER_PROFILE_OUT, so that an external load generator
// (shared/tools/loadgen) can drive it as it drives cofferd: see
// docs/benchmarks.md, "Where the time goes". The socket path is written to
// COFFER_PROFILE_OUT.sock. Skipped unless asked for.
func TestProfileServe(t *testing.T) {
	secs, _ := strconv.Atoi(os.Getenv("COFFER_PROFILE_SERVE"))
	out := os.Getenv("COFFER_PROFILE_OUT")
	if secs <= 0 || out == "" {
		t.Skip("set COFFER_PROFILE_SERVE=seconds and COFFER_PROFILE_OUT=file to profile the daemon under external load")
	}
	n := startNodeOpts(t, t.TempDir(), func(c *config.Config) { c.LogLevel = "info" }, func(o *Options) {
		o.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: io.Discard})
	})
	n.must("POST", "/v1/sys/init", api.InitRequest{Shares: 1, Threshold: 1}, nil, 200)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "bench"}, nil, 201)
	if err := os.WriteFile(out+".sock", []byte(n.cfg.Listener.Path), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Leave the load generator a moment to start and warm up.
	time.Sleep(2 * time.Second)
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Duration(secs) * time.Second)
	pprof.StopCPUProfile()
	if mp := os.Getenv("COFFER_PROFILE_MEM"); mp != "" {
		mf, err := os.Create(mp)
		if err != nil {
			t.Fatal(err)
		}
		defer mf.Close()
		if err := pprof.Lookup("allocs").WriteTo(mf, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestProfileHeapKeys is a measurement for docs (issue 15, goal 5): a heap
// profile of a whole single-node daemon (real raft) holding
// COFFER_PROFILE_KEYS keys, to see what besides the keystore takes the
// heap. COFFER_PROFILE_HEAP=file to run it.
func TestProfileHeapKeys(t *testing.T) {
	out := os.Getenv("COFFER_PROFILE_HEAP")
	keys, _ := strconv.Atoi(os.Getenv("COFFER_PROFILE_KEYS"))
	if out == "" || keys <= 0 {
		t.Skip("set COFFER_PROFILE_HEAP=file and COFFER_PROFILE_KEYS=n to profile the heap of a daemon with n keys")
	}
	// A finer sample than the default 512 KiB (the state of a few keys is
	// smaller than one sample).
	defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
	runtime.MemProfileRate = 4096
	n := startNodeOpts(t, t.TempDir(), func(c *config.Config) { c.LogLevel = "info" }, func(o *Options) {
		o.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: io.Discard})
	})
	n.must("POST", "/v1/sys/init", api.InitRequest{Shares: 1, Threshold: 1}, nil, 200)
	var ms0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	for i := 0; i < keys; i++ {
		n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "k" + strconv.Itoa(i)}, nil, 201)
	}
	runtime.GC()
	runtime.GC()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	more := int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc)
	t.Logf("%d keys: live heap %.1f MB (%.1f MB more than before them, %d B per key)", keys, float64(ms1.HeapAlloc)/1e6, float64(more)/1e6, more/int64(keys))
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		t.Fatal(err)
	}
}
