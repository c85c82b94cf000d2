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
// through the leader and through a follower, in one process over real
// loopback TCP with mutual TLS: key creations, and rotations.
// The two nodes take turns, write by write, so that both see records of
// the same size (a rotation rewrites the key's record with all its
// versions). A measurement, not a test: it asserts nothing about time and
// runs only with COFFER_BENCH=1.
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
	// Each node rotates a key of its own: a rotation needs the key's
	// current record, and the other node's last write may not have
	// reached this one yet.
	for _, name := range []string{"rot-" + l.id, "rot-" + f.id} {
		if _, err := l.ks.CreateKey(ctx, name, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	p50 := func(lat []time.Duration) (time.Duration, time.Duration) {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return lat[len(lat)/2].Round(10 * time.Microsecond), lat[len(lat)*99/100].Round(10 * time.Microsecond)
	}
	for round := 0; round < 3; round++ {
		lat := map[string][]time.Duration{}
		for i := 0; i < 100; i++ {
			for _, cn := range []*clusterNode{l, f} {
				role := "leader"
				if cn == f {
					role = "follower"
				}
				t0 := time.Now()
				if _, err := cn.ks.CreateKey(ctx, fmt.Sprintf("k-%d-%s-%d", round, cn.id, i), "", ""); err != nil {
					t.Fatal(err)
				}
				lat["create via "+role] = append(lat["create via "+role], time.Since(t0))
				t0 = time.Now()
				if _, err := cn.ks.RotateKey(ctx, "rot-"+cn.id); err != nil {
					t.Fatal(err)
				}
				lat["rotate via "+role] = append(lat["rotate via "+role], time.Since(t0))
			}
		}
		for _, k := range []string{"create via leader", "create via follower", "rotate via leader", "rotate via follower"} {
			a, b := p50(lat[k])
			t.Logf("round %d: %s: p50 %v p99 %v", round, k, a, b)
		}
	}
}
