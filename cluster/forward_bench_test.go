package cluster

import (
	"context"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"
)

// TestBench_ForwardedWriteLatency compares the latency of sequential writes
// (key creation) through the leader and through a follower, in one process
// over real loopback TCP with mutual TLS. A measurement, not a test: it
// asserts nothing about time and runs only with COFFER_BENCH=1.
//
//	COFFER_BENCH=1 go test -count=1 -run TestBench_ForwardedWriteLatency -v ./cluster/
func TestBench_ForwardedWriteLatency(t *testing.T) {
	if os.Getenv("COFFER_BENCH") != "1" {
		t.Skip("a benchmark: set COFFER_BENCH=1 to run it")
	}
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l, f := c.leader(), c.followers()[0]
	for round := 0; round < 3; round++ {
		for _, cn := range []*clusterNode{l, f} {
			var lat []time.Duration
			for i := 0; i < 200; i++ {
				t0 := time.Now()
				if _, err := cn.ks.CreateKey(ctx, fmt.Sprintf("k-%d-%s-%d", round, cn.id, i), "", ""); err != nil {
					t.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			role := "leader"
			if cn == f {
				role = "follower"
			}
			t.Logf("round %d: create via %s: p50 %v p99 %v", round, role, lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond))
		}
	}
}
