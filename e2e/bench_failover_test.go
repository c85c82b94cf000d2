package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBench_Failover measures the time from SIGKILL of the leader of a
// 3-node cluster to the first write a survivor acknowledges, for several
// fresh clusters (COFFER_BENCH_ROUNDS, default 3), and shows what the
// survivors logged about the election. A measurement, not a test: it runs
// only with COFFER_BENCH=1.
//
//	COFFER_BENCH=1 go test -count=1 -run TestBench_Failover -v ./e2e/
func TestBench_Failover(t *testing.T) {
	if os.Getenv("COFFER_BENCH") != "1" {
		t.Skip("a benchmark: set COFFER_BENCH=1 to run it")
	}
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("COFFER_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	t.Setenv("COFFER_E2E_LOG_LEVEL", "info")
	for round := 0; round < rounds; round++ {
		c, _ := startCluster(t, 3, 3, 2)
		lead := c.leader(c.nodes...)
		var survivors []*daemon
		for _, d := range c.nodes {
			if d != lead {
				survivors = append(survivors, d)
			}
		}
		lead.mustCoffer("", "key", "create", "before")
		lead.kill()
		t0 := time.Now()
		for i := 0; ; i++ {
			if st, _, _ := survivors[0].api("POST", "/v1/keys", fmt.Sprintf(`{"name":"after-kill-%d"}`, i)); st == 201 {
				break
			}
			if time.Since(t0) > 30*time.Second {
				t.Fatal("no write within 30s of the leader's death")
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("round %d: leader SIGKILLed at %s → first acknowledged write on a survivor: %v", round, t0.Format("15:04:05.000"), time.Since(t0).Round(time.Millisecond))
		for _, d := range survivors {
			for _, l := range strings.Split(d.logs(), "\n") {
				for _, k := range []string{"refuses connections", "starting election", "election won", "restarting election", "pre-vote campaign failed"} {
					if strings.Contains(l, k) {
						t.Logf("  %s: %s", d.nodeID, l)
						break
					}
				}
			}
		}
		for _, d := range c.nodes {
			if d != lead {
				d.stop()
			}
		}
	}
}
