package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"sync"
	"testing"
)

// peakRSS is the process's VmHWM (peak resident set) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VmHWM:\s+(\d+) kB`).FindSubmatch(status)
	if m == nil {
		t.Fatalf("no VmHWM in /proc/%d/status", pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// openFloodBound is the stated bound (docs/threat-model.md, "Local denial
// of service") on how much 16 concurrent requests to an open endpoint may
// raise cofferd's peak RSS: under 64 KiB each by construction (limits.go),
// plus what the Go runtime and the kernel round up to; well below the
// 4 MiB each that they sent.
const openFloodBound = 16 << 20

// TestE2E_OpenFloodMemory is the unseal-flood attack on a real cofferd:
// 16 concurrent 4 MiB bodies to the open POST /v1/sys/unseal. Before the
// open-endpoint body limit, each was buffered whole (peak RSS +140 MB, an
// OOM kill away from a sealed node); now each is cut off at 4 KiB with
// 413 too_large.
func TestE2E_OpenFloodMemory(t *testing.T) {
	d := newDaemon(t, "")
	d.start()
	pid := d.cmd.Process.Pid
	for i := 0; i < 20; i++ { // warm up the serving path
		d.api("GET", "/v1/sys/status", "")
	}
	before := peakRSS(t, pid)

	share := bytes.Repeat([]byte("A"), 4<<20)
	body := append(append([]byte(`{"share":"`), share...), `"}`...)
	var wg sync.WaitGroup
	codes := make(chan int, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := d.http.Post("http://coffer/v1/sys/unseal", "application/json", bytes.NewReader(body))
			if err != nil {
				codes <- 0 // the server closed the connection while we were still sending
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusRequestEntityTooLarge && c != 0 {
			t.Errorf("4 MiB unseal body answered %d, want 413", c)
		}
	}
	after := peakRSS(t, pid)
	growth := after - before
	t.Logf("peak RSS %d MiB before, %d MiB after 16 × 4 MiB open requests: +%d KiB (bound %d MiB)", before>>20, after>>20, growth>>10, openFloodBound>>20)
	if growth > openFloodBound {
		t.Fatalf("16 × 4 MiB open requests raised cofferd's peak RSS by %d MiB, over the %d MiB bound", growth>>20, openFloodBound>>20)
	}
	// The node still answers.
	if st, _, _ := d.api("GET", "/v1/sys/status", ""); st != 200 {
		t.Fatalf("status after the flood: %d", st)
	}
}
