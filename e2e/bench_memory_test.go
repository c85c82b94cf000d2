package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore"
)

// memFigures is where a cofferd's memory is, from /proc/PID/smaps and the
// Go runtime's own figures (GET /v1/sys/metrics), in bytes.
type memFigures struct {
	RSS, HWM  int64 // VmRSS, VmHWM (peak)
	Anon      int64 // anonymous: Go heap, stacks, runtime metadata, locked key memory
	Locked    int64 // mlocked (key material, internal/lockedmem)
	RaftDB    int64 // resident pages of the raft.db mapping (bbolt mmap)
	Text      int64 // resident pages of the cofferd binary
	OtherFile int64 // other file mappings (shared libraries)
	DBSize    int64 // size of raft.db on disk
	// Go runtime (go_memstats_*).
	HeapAlloc, HeapInuse, HeapIdle, HeapReleased, GoSys float64
}

func (m memFigures) String() string {
	mb := func(v int64) string { return fmt.Sprintf("%.1f", float64(v)/1e6) }
	mbf := func(v float64) string { return fmt.Sprintf("%.1f", v/1e6) }
	return fmt.Sprintf("RSS %s MB (peak %s) = anon %s [locked %s] + raft.db mmap %s + binary %s + libs %s; raft.db file %s MB; Go heap alloc %s, in use %s, idle %s (released %s), sys %s MB",
		mb(m.RSS), mb(m.HWM), mb(m.Anon), mb(m.Locked), mb(m.RaftDB), mb(m.Text), mb(m.OtherFile), mb(m.DBSize),
		mbf(m.HeapAlloc), mbf(m.HeapInuse), mbf(m.HeapIdle), mbf(m.HeapReleased), mbf(m.GoSys))
}

// memOf reads d's memory figures.
func memOf(t *testing.T, d *daemon) memFigures {
	t.Helper()
	var m memFigures
	pid := d.cmd.Process.Pid
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				switch f[0] {
				case "VmRSS:":
					m.RSS = v << 10
				case "VmHWM:":
					m.HWM = v << 10
				}
			}
		}
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	var cur *int64
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") { // a mapping's header line
			path := ""
			if len(f) >= 6 {
				path = f[5]
			}
			switch {
			case path == "" || strings.HasPrefix(path, "["):
				cur = &m.Anon
			case strings.HasSuffix(path, "raft.db"):
				cur = &m.RaftDB
			case path == exe:
				cur = &m.Text
			default:
				cur = &m.OtherFile
			}
			continue
		}
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			*cur += v << 10
		case "Locked:":
			m.Locked += v << 10
		}
	}
	if fi, err := os.Stat(filepath.Join(d.dir, "data", "raft", "raft.db")); err == nil {
		m.DBSize = fi.Size()
	}
	_, _, body := d.api("GET", "/v1/sys/metrics", "")
	for _, l := range strings.Split(string(body), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "go_memstats_heap_alloc_bytes":
			m.HeapAlloc = v
		case "go_memstats_heap_inuse_bytes":
			m.HeapInuse = v
		case "go_memstats_heap_idle_bytes":
			m.HeapIdle = v
		case "go_memstats_heap_released_bytes":
			m.HeapReleased = v
		case "go_memstats_sys_bytes":
			m.GoSys = v
		}
	}
	return m
}

// loadKeys creates keys k1…kN with the given number of versions (a create
// and versions-1 rotations), 24 clients spread over the nodes, and returns
// how many writes failed.
func loadKeys(t *testing.T, nodes []*daemon, nKeys, versions int) int64 {
	var failed atomic.Int64
	for round := 0; round < versions; round++ {
		t0 := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 24; w++ {
			wg.Add(1)
			d := nodes[w%len(nodes)]
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1)
					if i > int64(nKeys) {
						return
					}
					url, body, want := "http://coffer/v1/keys", fmt.Sprintf(`{"name":"k%d"}`, i), 201
					if round > 0 {
						url, body, want = fmt.Sprintf("http://coffer/v1/keys/k%d/rotate", i), "", 200
					}
					// A write whose outcome is unknown (a leader change
					// under load) is retried once the key shows it did not
					// apply, so that every key ends with its versions.
					for try := 0; try < 10; try++ {
						if try > 0 {
							st, _, kb := d.api("GET", fmt.Sprintf("/v1/keys/k%d", i), "")
							var k api.Key
							json.Unmarshal(kb, &k)
							if st == 200 && k.LatestVersion >= round+1 {
								break
							}
							time.Sleep(100 * time.Millisecond)
						}
						req, _ := http.NewRequest("POST", url, strings.NewReader(body))
						resp, err := d.http.Do(req)
						ok := err == nil && resp.StatusCode == want
						if !ok && failed.Add(1) <= 3 {
							var eb api.ErrorBody
							if resp != nil {
								json.NewDecoder(resp.Body).Decode(&eb)
							}
							t.Logf("write %s on %s failed (retried): %v %+v", url, d.nodeID, err, eb.Error)
						}
						if resp != nil {
							resp.Body.Close()
						}
						if ok {
							break
						}
					}
				}
			}()
		}
		wg.Wait()
		el := time.Since(t0)
		what := "created"
		if round > 0 {
			what = "rotated"
		}
		t.Logf("%s %d keys in %v (%.0f writes/s, 24 clients over %d nodes)", what, nKeys, el.Round(time.Millisecond), float64(nKeys)/el.Seconds(), len(nodes))
	}
	return failed.Load()
}

// memoryBenchParams skips unless COFFER_BENCH=1, and reads the key count,
// versions per key and settle time (COFFER_BENCH_KEYS, _VERSIONS, _SETTLE;
// defaults 100,000, 3, 30 s).
func memoryBenchParams(t *testing.T) (nKeys, versions int, settle time.Duration) {
	t.Helper()
	if os.Getenv("COFFER_BENCH") != "1" {
		t.Skip("a benchmark: set COFFER_BENCH=1 to run it")
	}
	nKeys, versions, settle = 100000, 3, 30*time.Second
	if v, err := strconv.Atoi(os.Getenv("COFFER_BENCH_KEYS")); err == nil {
		nKeys = v
	}
	if v, err := strconv.Atoi(os.Getenv("COFFER_BENCH_VERSIONS")); err == nil && v > 0 {
		versions = v
	}
	if v, err := time.ParseDuration(os.Getenv("COFFER_BENCH_SETTLE")); err == nil {
		settle = v
	}
	return nKeys, versions, settle
}

// TestBench_Memory measures the memory of a 3-node cluster holding
// COFFER_BENCH_KEYS keys (default 100,000) of COFFER_BENCH_VERSIONS
// versions each (default 3: a create and two rotations), for the figures
// of docs/benchmarks.md (issue 15, goal 5). A measurement, not a test: it
// runs only with COFFER_BENCH=1.
//
//	COFFER_BENCH=1 COFFER_BENCH_KEYS=10000 go test -count=1 -timeout 60m -run TestBench_Memory -v ./e2e/
//
// It reports, for the leader and a follower, the RSS and where it is (Go
// heap, locked key memory, the raft.db mapping, the binary) right after
// the load and after COFFER_BENCH_SETTLE (default 30s) idle, then the same
// for a fourth node that joins and catches up from the leader's snapshot.
func TestBench_Memory(t *testing.T) {
	nKeys, versions, settle := memoryBenchParams(t)
	t.Setenv("COFFER_E2E_LOG_LEVEL", "warn")
	c, shares := startCluster(t, 3, 3, 2)
	lead := c.leader(c.nodes...)
	var follower *daemon
	for _, d := range c.nodes {
		if d != lead {
			follower = d
			break
		}
	}
	t.Logf("idle, no keys: leader %v", memOf(t, lead))

	failed := loadKeys(t, c.nodes, nKeys, versions)
	t.Logf("%d writes failed and were retried", failed)
	last := fmt.Sprintf("/v1/keys/k%d", nKeys)
	for _, d := range c.nodes {
		waitFor(t, d.nodeID+" applies the last write", 60*time.Second, func() bool {
			st, _, body := d.api("GET", last, "")
			var k api.Key
			json.Unmarshal(body, &k)
			return st == 200 && k.LatestVersion >= versions
		})
	}
	if lead = c.leader(c.nodes...); lead == follower {
		follower = c.nodes[0]
		if follower == lead {
			follower = c.nodes[1]
		}
	}
	t.Logf("%d keys × %d versions, right after the load: leader  %v", nKeys, versions, memOf(t, lead))
	t.Logf("%d keys × %d versions, right after the load: follower %v", nKeys, versions, memOf(t, follower))
	time.Sleep(settle)
	t.Logf("%d keys × %d versions, %v later: leader  %v", nKeys, versions, settle, memOf(t, lead))
	t.Logf("%d keys × %d versions, %v later: follower %v", nKeys, versions, settle, memOf(t, follower))

	// A node that catches up from a snapshot: wait for the leader's first
	// raft snapshot, so that it is sent one rather than the whole log.
	snapDir := filepath.Join(lead.dir, "data", "raft", "snapshots")
	waitFor(t, "the leader takes a raft snapshot", 10*time.Minute, func() bool {
		ents, _ := os.ReadDir(snapDir)
		for _, e := range ents {
			if _, err := os.Stat(filepath.Join(snapDir, e.Name(), "state.bin")); err == nil && !strings.HasSuffix(e.Name(), ".tmp") {
				return true
			}
		}
		return false
	})
	n4 := c.addNode(t, "node4", false)
	t0 := time.Now()
	n4.start()
	joinWithToken(t, lead, n4, c.addrs[0])
	waitFor(t, "node4 receives the state", 120*time.Second, func() bool { return n4.status().Initialized })
	n4.mustCoffer(strings.Join(shares[:2], "\n")+"\n", "operator", "unseal")
	waitFor(t, "node4 has every key", 120*time.Second, func() bool {
		st, _, body := n4.api("GET", last, "")
		var k api.Key
		json.Unmarshal(body, &k)
		return st == 200 && k.LatestVersion >= versions
	})
	t.Logf("node4 joins and catches up (incl. unseal): %v", time.Since(t0).Round(time.Millisecond))
	t.Logf("after the catch-up: leader %v", memOf(t, lead))
	t.Logf("after the catch-up: node4  %v", memOf(t, n4))
	time.Sleep(settle)
	t.Logf("%v later: node4  %v", settle, memOf(t, n4))
}

// direct applies a keystore's proposals at once (a one-node log).
type direct struct{ ks *keystore.Keystore }

func (d *direct) Propose(_ context.Context, cmd []byte) (any, error) { return d.ks.Apply(cmd), nil }

// TestBench_MemoryRestored is TestBench_Memory with the state built
// quickly: the keys × versions are made in this process, in a keystore
// holding the cluster's own state and root key, and restored into the
// running cluster as an admin restores a backup (`coffer operator raft
// snapshot restore`); the followers install it from the leader. It shows
// the memory that the size of the state costs (100,000 keys × 3 versions
// in minutes rather than the hour 300,000 writes through raft take on a
// busy 2-core machine), not the raft log a bulk load leaves behind
// (TestBench_Memory). COFFER_BENCH=1 to run it.
func TestBench_MemoryRestored(t *testing.T) {
	nKeys, versions, settle := memoryBenchParams(t)
	t.Setenv("COFFER_E2E_LOG_LEVEL", "warn")
	c, shares := startCluster(t, 3, 3, 2)
	lead := c.leader(c.nodes...)

	// The cluster's state, in this process, unsealed with its root key.
	dir := t.TempDir()
	small := filepath.Join(dir, "small.snap")
	lead.mustCoffer("", "operator", "raft", "snapshot", "save", small)
	d := &direct{}
	ks := keystore.New(keystore.Config{Proposer: d})
	d.ks = ks
	f, err := os.Open(small)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Restore(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	root := combineShares(t, shares[:2])
	if err := ks.Unseal(root); err != nil {
		t.Fatal(err)
	}
	clear(root)
	t0 := time.Now()
	ctx := context.Background()
	for i := 1; i <= nKeys; i++ {
		name := fmt.Sprintf("k%d", i)
		if _, err := ks.CreateKey(ctx, name, "", ""); err != nil {
			t.Fatal(err)
		}
		for r := 1; r < versions; r++ {
			if _, err := ks.RotateKey(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	big := filepath.Join(dir, "big.snap")
	bf, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.SnapshotTo()(bf); err != nil {
		t.Fatal(err)
	}
	bf.Close()
	ks.Seal()
	fi, _ := os.Stat(big)
	t.Logf("built %d keys × %d versions in this process in %v: snapshot %.1f MB", nKeys, versions, time.Since(t0).Round(time.Millisecond), float64(fi.Size())/1e6)

	t0 = time.Now()
	// The leader may change on a busy machine: a restore refused with
	// no_leader (nothing installed) is sent again to the new one.
	for try := 0; ; try++ {
		lead = c.leader(c.nodes...)
		r := lead.coffer("", -1, "operator", "raft", "snapshot", "restore", big)
		if r.code == 0 {
			break
		}
		if try == 5 || !strings.Contains(r.stderr, api.CodeNoLeader) {
			logs := lead.logs()
			t.Fatalf("restore: exit %d %s\nleader log (end):\n%s", r.code, r.stderr, logs[max(0, len(logs)-3000):])
		}
		time.Sleep(time.Second)
	}
	last := fmt.Sprintf("/v1/keys/k%d", nKeys)
	for _, n := range c.nodes {
		waitFor(t, n.nodeID+" has the restored keys", 5*time.Minute, func() bool {
			st, _, body := n.api("GET", last, "")
			var k api.Key
			json.Unmarshal(body, &k)
			return st == 200 && k.LatestVersion >= versions
		})
	}
	t.Logf("restored into the cluster (all 3 nodes serve every key) in %v", time.Since(t0).Round(time.Millisecond))
	lead = c.leader(c.nodes...)
	var follower *daemon
	for _, n := range c.nodes {
		if n != lead {
			follower = n
			break
		}
	}
	t.Logf("%d keys × %d versions, after the restore: leader   %v", nKeys, versions, memOf(t, lead))
	t.Logf("%d keys × %d versions, after the restore: follower %v", nKeys, versions, memOf(t, follower))
	// Some writes on top (a rotation of 1,000 keys through both), so that
	// raft snapshots again and the leader replicates.
	for i := 1; i <= 1000; i++ {
		n := lead
		if i%2 == 0 {
			n = follower
		}
		if st, code, _ := n.api("POST", fmt.Sprintf("/v1/keys/k%d/rotate", i), ""); st != 200 {
			t.Logf("rotate k%d: %d %s", i, st, code)
		}
	}
	time.Sleep(settle)
	t.Logf("%d keys × %d versions, 1,000 rotations and %v later: leader   %v", nKeys, versions, settle, memOf(t, lead))
	t.Logf("%d keys × %d versions, 1,000 rotations and %v later: follower %v", nKeys, versions, settle, memOf(t, follower))
}
