package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestBench_Secrets: a real single-node cofferd with 10,000 secrets × 3
// versions written over the API (16 writers): write rate, the process's
// RSS, and the size of a saved snapshot. A measurement, not a test:
//
//	COFFER_BENCH=1 go test -count=1 -timeout 30m -run TestBench_Secrets -v ./e2e/
func TestBench_Secrets(t *testing.T) {
	if os.Getenv("COFFER_BENCH") != "1" {
		t.Skip("a benchmark: set COFFER_BENCH=1 to run it")
	}
	t.Setenv("COFFER_E2E_LOG_LEVEL", "warn")
	d := newDaemon(t, "")
	d.start()
	d.mustCoffer("", "operator", "init", "--shares", "1", "--threshold", "1")
	rss := func() string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
		return regexp.MustCompile(`VmRSS:\s+(\d+ kB)`).FindStringSubmatch(string(b))[1]
	}
	t.Logf("RSS before: %s", rss())
	const nSecrets, nVersions, workers = 10000, 3, 16
	jobs := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed int
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for path := range jobs {
				req, _ := http.NewRequest("PUT", "http://coffer"+path, bytes.NewReader([]byte(`{"value":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}`)))
				resp, err := d.http.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != 200 {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		}()
	}
	for v := 0; v < nVersions; v++ {
		for i := 0; i < nSecrets; i++ {
			jobs <- "/v1/secrets/secret-" + strconv.Itoa(i)
		}
	}
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	if failed > 0 {
		t.Fatalf("%d writes failed", failed)
	}
	snap := filepath.Join(t.TempDir(), "snap")
	d.mustCoffer("", "operator", "raft", "snapshot", "save", snap)
	fi, _ := os.Stat(snap)
	t.Logf("%d secrets × %d versions: %d writes in %v (%.0f writes/s, %d writers); RSS after: %s; snapshot %.1f MiB",
		nSecrets, nVersions, nSecrets*nVersions, took.Round(time.Millisecond), float64(nSecrets*nVersions)/took.Seconds(), workers, rss(), float64(fi.Size())/(1<<20))
	d.stop()
	d.start()
	t.Logf("RSS after a restart (sealed: no shares given; %s to serve): %s", d.servingAfter.Round(time.Millisecond), rss())
}
