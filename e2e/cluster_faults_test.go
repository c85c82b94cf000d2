package e2e

// Fault tests of the raft cluster (issue 4), with real cofferd processes
// over mutual TLS on loopback: a paused leader and a minority partition
// (SIGSTOP), a linearizability check of a history recorded under crashes
// and pauses, full-cluster restarts with and without seal devices, and a
// membership change. They measure what an operator would ask: how long
// until a new leader, how long a minority takes to say no_leader.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/coffer-kms/coffer/api"
	softhsmtest "github.com/coffer-kms/coffer/softhsm-test"
)

// applyTimeout is cluster.Config.ApplyTimeout's default: how long a write
// waits for a leader before it fails with no_leader. It is not configurable
// from the binary, so the minority test waits for it in full.
const applyTimeout = 10 * time.Second

// ---- harness additions ----

// spawn execs cofferd and returns at once. A node with raft state waits (up
// to 15 s) for a leader before it serves its socket, and a leader needs a
// quorum of running peers: after a full-cluster stop, every node must be
// exec'd before any of them is waited for.
func (d *daemon) spawn() {
	d.t.Helper()
	d.cmd = exec.Command(filepath.Join(binDir, "cofferd"), "--config", d.config)
	if len(d.env) > 0 {
		d.cmd.Env = append(os.Environ(), d.env...)
	}
	d.cmd.Stdout = lockedWriter{&d.logMu, &d.log}
	d.cmd.Stderr = lockedWriter{&d.logMu, &d.log}
	d.startedAt = time.Now()
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	d.exited = exited
	cmd := d.cmd
	go func() { cmd.Wait(); close(exited) }()
}

// waitServing polls the status endpoint of a spawned node until it answers.
func (d *daemon) waitServing(within time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if r := d.try(time.Second, "GET", "/v1/sys/status", ""); r.err == nil {
			d.servingAfter = time.Since(d.startedAt)
			return
		}
		select {
		case <-d.exited:
			d.t.Fatalf("%s exited at start:\n%s", d.nodeID, d.logs())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s did not serve within %v:\n%s", d.nodeID, within, d.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pause freezes the process with SIGSTOP: it neither answers nor sends
// anything (raft heartbeats included) until resume, like a node cut off by
// a partition or stalled by a long GC or I/O pause. The test's cleanup
// resumes it, so that the harness can stop it with SIGTERM.
func (d *daemon) pause() {
	d.t.Helper()
	if err := syscall.Kill(d.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		d.t.Fatalf("SIGSTOP %s: %v", d.nodeID, err)
	}
	d.t.Cleanup(d.resume)
}

// resume continues a paused process (SIGCONT); harmless on a running or
// exited one.
func (d *daemon) resume() {
	if d.cmd != nil && d.cmd.Process != nil {
		syscall.Kill(d.cmd.Process.Pid, syscall.SIGCONT)
	}
}

// reply is one raw HTTP exchange with a node.
type reply struct {
	status int
	code   string // the error code of a 4xx/5xx body
	body   []byte
	took   time.Duration
	err    error // no answer: the request may or may not have been handled
}

// notSent reports whether the request certainly never reached the daemon:
// the socket refused the connection (the process is down or restarting).
func (r reply) notSent() bool {
	var oe *net.OpError
	return errors.As(r.err, &oe) && oe.Op == "dial"
}

// unixClient is an HTTP client for a node's socket that, unlike daemon.api,
// never fails the test: goroutines may use it, and a paused node costs a
// timeout rather than a hung test.
func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 8,
	}}
}

func doRequest(hc *http.Client, timeout time.Duration, method, path, body string) reply {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, method, "http://coffer"+path, strings.NewReader(body))
	if err != nil {
		return reply{err: err}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return reply{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	r := reply{status: resp.StatusCode, body: data, took: time.Since(start), err: err}
	if resp.StatusCode >= 400 {
		var eb api.ErrorBody
		json.Unmarshal(data, &eb)
		r.code = eb.Error.Code
	}
	return r
}

// try sends one request with a deadline, from any goroutine.
func (d *daemon) try(timeout time.Duration, method, path, body string) reply {
	return doRequest(d.http, timeout, method, path, body)
}

// tryStatus is status without failing the test; ok is false when the node
// did not answer within a second.
func (d *daemon) tryStatus() (api.Status, bool) {
	r := d.try(time.Second, "GET", "/v1/sys/status", "")
	var st api.Status
	if r.err != nil || json.Unmarshal(r.body, &st) != nil {
		return st, false
	}
	return st, true
}

// without returns nodes minus drop.
func without(nodes []*daemon, drop ...*daemon) []*daemon {
	var out []*daemon
	for _, d := range nodes {
		if !slices.Contains(drop, d) {
			out = append(out, d)
		}
	}
	return out
}

// waitLeader waits until one of among says it leads and every other one
// of among names it as leader, and returns it and how long that took.
func waitLeader(t *testing.T, among []*daemon, within time.Duration) (*daemon, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		var lead *daemon
		agree := true
		ids := map[string]bool{}
		for _, d := range among {
			st, ok := d.tryStatus()
			if !ok {
				agree = false
				break
			}
			ids[st.LeaderID] = true
			if st.IsLeader {
				lead = d
			}
		}
		if agree && lead != nil && len(ids) == 1 {
			return lead, time.Since(start)
		}
		if time.Since(start) > within {
			names := make([]string, len(among))
			for i, d := range among {
				names[i] = d.nodeID
			}
			t.Fatalf("no leader agreed on by %v within %v (leader ids seen: %v)", names, within, ids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bootCluster starts the first n nodes of c, joins them to node 1, inits on
// node 1 (5 shares, threshold 3) and unseals every node that the init left
// sealed. It returns the shares.
func bootCluster(c *testCluster, n int) []string {
	t := c.t
	t.Helper()
	c.nodes[0].start()
	waitFor(t, "node1 leads", 10*time.Second, func() bool { return c.nodes[0].status().IsLeader })
	for _, d := range c.nodes[1:n] {
		d.start()
		d.mustCoffer("", "operator", "raft", "join", c.addrs[0])
	}
	shares := c.nodes[0].initNode()
	for i, d := range c.nodes[1:n] {
		waitFor(t, d.nodeID+" receives the cluster state", 10*time.Second, func() bool { return d.status().Initialized })
		if d.status().Sealed {
			// Each node with a different 3 of the 5 shares.
			d.unsealWith(shares[i%3 : i%3+3])
		}
	}
	return shares
}

// appendConfig adds hcl (e.g. a seal block) to a node's config file.
func appendConfig(t *testing.T, d *daemon, hcl string) {
	t.Helper()
	f, err := os.OpenFile(d.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(hcl); err != nil {
		t.Fatal(err)
	}
}

// wrapHTTP wraps pt with key name on d and returns the ciphertext.
func wrapHTTP(t *testing.T, d *daemon, name, pt string) string {
	t.Helper()
	st, _, data := d.api("POST", "/v1/keys/"+name+"/wrap", `{"plaintext":"`+b64(pt)+`"}`)
	var w api.WrapResult
	if err := json.Unmarshal(data, &w); st != 200 || err != nil {
		t.Fatalf("wrap with %s on %s: %d %s", name, d.nodeID, st, data)
	}
	return w.Ciphertext
}

// checkUnwrap unwraps ct with key name on d and compares the plaintext.
func checkUnwrap(t *testing.T, d *daemon, name, ct, want string) time.Duration {
	t.Helper()
	r := d.try(5*time.Second, "POST", "/v1/keys/"+name+"/unwrap", `{"ciphertext":"`+ct+`"}`)
	var u struct{ Plaintext []byte }
	if r.err != nil || r.status != 200 || json.Unmarshal(r.body, &u) != nil {
		t.Fatalf("unwrap of a %.10s… ciphertext on %s: %d %s %v", ct, d.nodeID, r.status, r.code, r.err)
	}
	if string(u.Plaintext) != want {
		t.Fatalf("unwrap on %s gave %d bytes, not the %d-byte plaintext that was wrapped", d.nodeID, len(u.Plaintext), len(want))
	}
	return r.took
}

// keyVersions is every key's latest version as d reads it (list and key
// reads are linearizable: they sync with the leader first).
func keyVersions(t *testing.T, d *daemon) map[string]int {
	t.Helper()
	st, _, data := d.api("GET", "/v1/keys", "")
	var kl api.KeyList
	if err := json.Unmarshal(data, &kl); st != 200 || err != nil {
		t.Fatalf("key list on %s: %d %s", d.nodeID, st, data)
	}
	out := map[string]int{}
	for _, name := range kl.Keys {
		st, _, data := d.api("GET", "/v1/keys/"+name, "")
		var k api.Key
		if err := json.Unmarshal(data, &k); st != 200 || err != nil {
			t.Fatalf("key %s on %s: %d %s", name, d.nodeID, st, data)
		}
		out[name] = k.LatestVersion
	}
	return out
}

// waitConverged waits until every node reads the same keys and versions,
// and returns them.
func waitConverged(t *testing.T, nodes []*daemon, within time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		first := keyVersions(t, nodes[0])
		same := true
		var diff string
		for _, d := range nodes[1:] {
			if kv := keyVersions(t, d); !maps.Equal(kv, first) {
				same = false
				diff = fmt.Sprintf("%s: %v\n%s: %v", nodes[0].nodeID, first, d.nodeID, kv)
			}
		}
		if same {
			return first
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes do not converge within %v:\n%s", within, diff)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---- 1. pause and minority ----

// TestE2E_Cluster_PauseAndMinority: the leader frozen with SIGSTOP is
// replaced and the majority keeps writing (a read sent to a follower as the
// leader froze is answered soon after the election, not after a call to the
// frozen node times out); then one node alone (two of three frozen) refuses
// writes and linearizable reads with 503 no_leader after the apply timeout,
// while it still unwraps (and wraps) with the versions it has; resuming the
// others heals the cluster and every node converges on the same keys and
// versions.
func TestE2E_Cluster_PauseAndMinority(t *testing.T) {
	c := newCluster(t, 3)
	bootCluster(c, 3)
	c.nodes[0].mustCoffer("", "key", "create", "pk")
	var cts []string // a v1 ciphertext from every node
	for _, d := range c.nodes {
		cts = append(cts, wrapHTTP(t, d, "pk", secret1))
	}

	// The leader freezes: the two others elect a new one and write.
	lead, _ := waitLeader(t, c.nodes, 5*time.Second)
	majority := without(c.nodes, lead)
	lead.pause()
	paused := time.Now()
	// A read and a write on a follower at once, while it still takes the
	// frozen node for the leader. The read is idempotent: the node can ask
	// the next leader, so it must be answered once one is elected. The write
	// may have reached the frozen leader, so no_leader (outcome unknown) is
	// a correct answer too; the figure says how long it blocks.
	var early sync.WaitGroup
	var earlyRead, earlyWrite reply
	early.Add(2)
	go func() {
		defer early.Done()
		earlyRead = majority[0].try(3*applyTimeout, "GET", "/v1/keys/pk", "")
	}()
	go func() {
		defer early.Done()
		earlyWrite = majority[0].try(3*applyTimeout, "POST", "/v1/keys", `{"name":"during-pause"}`)
	}()
	newLead, took := waitLeader(t, majority, 5*time.Second)
	t.Logf("leader %s paused: %s leads after %v", lead.nodeID, newLead.nodeID, took.Round(time.Millisecond))
	early.Wait()
	t.Logf("follower read sent at the pause: %d %s after %v; write: %d %s after %v",
		earlyRead.status, earlyRead.code, earlyRead.took.Round(time.Millisecond), earlyWrite.status, earlyWrite.code, earlyWrite.took.Round(time.Millisecond))
	// Once the new leader is known (took), the read should follow within a
	// couple of seconds, not wait out a call to the frozen node.
	if earlyRead.err != nil || earlyRead.status != http.StatusOK || earlyRead.took > took+2*time.Second {
		t.Errorf("a linearizable read on a follower sent when the leader froze: %d %q %v after %v, with a new leader after %v; want 200 within 2 s of the election",
			earlyRead.status, earlyRead.code, earlyRead.err, earlyRead.took.Round(time.Millisecond), took.Round(time.Millisecond))
	}
	if earlyWrite.err != nil || (earlyWrite.status != http.StatusCreated && earlyWrite.code != api.CodeNoLeader && earlyWrite.code != api.CodeOutcomeUnknown) {
		t.Errorf("a write on a follower sent when the leader froze: %d %q %v, want 201 or 503 %s or %s", earlyWrite.status, earlyWrite.code, earlyWrite.err, api.CodeNoLeader, api.CodeOutcomeUnknown)
	}
	for i, d := range majority {
		start := time.Now()
		d.mustCoffer("", "key", "create", fmt.Sprintf("majority%d", i))
		t.Logf("write through %s on the majority: acknowledged in %v, %v after the pause",
			d.nodeID, time.Since(start).Round(time.Millisecond), time.Since(paused).Round(time.Millisecond))
	}
	// Wrap is local: on the node that rotated (read-your-writes); another
	// node may still wrap with v1 until it applies the rotation.
	majority[1].mustCoffer("", "key", "rotate", "pk")
	ctV2 := wrapHTTP(t, majority[1], "pk", secret2)
	if !strings.HasPrefix(ctV2, "coffer:v2:") {
		t.Fatalf("wrap after a rotation on the majority: %.12s…", ctV2)
	}

	// The old leader resumes, steps down and catches up.
	lead.resume()
	waitLeader(t, c.nodes, 10*time.Second)
	before := waitConverged(t, c.nodes, 10*time.Second)

	// One node alone: the other two freeze. The isolated node is the
	// leader, the harder case: it must notice that it lost its quorum.
	alone, _ := waitLeader(t, c.nodes, 5*time.Second)
	others := without(c.nodes, alone)
	for _, d := range others {
		d.pause()
	}
	stepDown := waitFor(t, alone.nodeID+" steps down", 5*time.Second, func() bool {
		st, ok := alone.tryStatus()
		return ok && !st.IsLeader
	})
	t.Logf("isolated leader %s stepped down after %v", alone.nodeID, stepDown.Round(time.Millisecond))

	// A write and a linearizable read on the minority, concurrently: both
	// must fail with no_leader within a bounded time.
	var wg sync.WaitGroup
	var write, read reply
	wg.Add(2)
	go func() {
		defer wg.Done()
		write = alone.try(3*applyTimeout, "POST", "/v1/keys", `{"name":"minority"}`)
	}()
	go func() {
		defer wg.Done()
		read = alone.try(3*applyTimeout, "GET", "/v1/keys/pk", "")
	}()
	// Meanwhile crypto is served locally, at once, with every version the
	// node has.
	for _, ct := range append(cts, ctV2) {
		want := secret1
		if ct == ctV2 {
			want = secret2
		}
		if took := checkUnwrap(t, alone, "pk", ct, want); took > time.Second {
			t.Errorf("unwrap on the minority took %v: it should not wait for the cluster", took)
		}
	}
	ctMinority := wrapHTTP(t, alone, "pk", secret1)
	checkUnwrap(t, alone, "pk", ctMinority, secret1)
	wg.Wait()
	for _, c := range []struct {
		what string
		r    reply
	}{{"write (key create)", write}, {"linearizable read (key show)", read}} {
		if c.r.err != nil || c.r.status != http.StatusServiceUnavailable || c.r.code != api.CodeNoLeader {
			t.Errorf("%s on a minority: %d %q %v, want 503 %s", c.what, c.r.status, c.r.code, c.r.err, api.CodeNoLeader)
		}
		// Bounded by the apply timeout, plus slack for a loaded machine.
		if c.r.took > applyTimeout+5*time.Second {
			t.Errorf("%s on a minority failed only after %v", c.what, c.r.took)
		}
		t.Logf("%s on the minority: %d %s after %v", c.what, c.r.status, c.r.code, c.r.took.Round(time.Millisecond))
	}

	// Heal: everyone resumes, a leader is elected, writes work again (on
	// the node that was alone, too), and every node converges.
	healStart := time.Now()
	for _, d := range others {
		d.resume()
	}
	_, took = waitLeader(t, c.nodes, 10*time.Second)
	t.Logf("healed: a leader agreed on by all three after %v", took.Round(time.Millisecond))
	alone.mustCoffer("", "key", "create", "healed")
	t.Logf("first write after healing acknowledged %v after resume", time.Since(healStart).Round(time.Millisecond))
	after := waitConverged(t, c.nodes, 10*time.Second)
	if _, ok := after["minority"]; ok {
		t.Error("the write refused by the minority exists after healing")
	}
	for name, v := range before {
		if after[name] != v {
			t.Errorf("key %s: version %d before the partition, %d after", name, v, after[name])
		}
	}
	if after["healed"] != 1 {
		t.Errorf("the write after healing is missing: %v", after)
	}
	for _, d := range c.nodes {
		checkUnwrap(t, d, "pk", ctV2, secret2)
		checkUnwrap(t, d, "pk", ctMinority, secret1)
	}
}

// TestE2E_Cluster_FollowerSeesPriorWrites: the deterministic core of the
// linearizability check, without faults. A follower that forwards a write
// answers with the state after that write (a single writer's rotations
// answer v2, v3, … in turn, never the version before), and a write through
// one node is seen at once by a write or read through another (rotate on
// node 3 right after create on node 2 is never not_found).
func TestE2E_Cluster_FollowerSeesPriorWrites(t *testing.T) {
	c := newCluster(t, 3)
	bootCluster(c, 3)
	lead, _ := waitLeader(t, c.nodes, 5*time.Second)
	followers := without(c.nodes, lead)
	const rounds = 40
	var stale, notFound, readStale int
	for i := 0; i < rounds; i++ {
		// One writer per key: every answer is exactly predictable.
		name := fmt.Sprintf("ryw-%02d", i)
		a, b := followers[i%2], followers[(i+1)%2]
		if r := a.try(applyTimeout, "POST", "/v1/keys", `{"name":"`+name+`"}`); r.status != http.StatusCreated {
			t.Fatalf("create %s on %s: %d %s %v", name, a.nodeID, r.status, r.code, r.err)
		}
		version := 1
		for range 2 {
			r := b.try(applyTimeout, "POST", "/v1/keys/"+name+"/rotate", "")
			var k api.Key
			switch {
			case r.status == http.StatusNotFound:
				notFound++
				t.Logf("rotate of %s on %s right after its create on %s: not_found", name, b.nodeID, a.nodeID)
				continue
			case r.status != http.StatusOK || json.Unmarshal(r.body, &k) != nil:
				t.Fatalf("rotate %s on %s: %d %s %v", name, b.nodeID, r.status, r.code, r.err)
			}
			version++
			if k.LatestVersion != version {
				stale++
				t.Logf("rotation to v%d of %s on %s answered latest_version %d", version, name, b.nodeID, k.LatestVersion)
			}
		}
		// A linearizable read through the other follower sees them all.
		r := a.try(applyTimeout, "GET", "/v1/keys/"+name, "")
		var k api.Key
		if r.status != http.StatusOK || json.Unmarshal(r.body, &k) != nil {
			t.Fatalf("read %s on %s: %d %s %v", name, a.nodeID, r.status, r.code, r.err)
		}
		if k.LatestVersion != version {
			readStale++
			t.Logf("read of %s on %s after its rotation to v%d was acknowledged: latest_version %d", name, a.nodeID, version, k.LatestVersion)
		}
	}
	if stale+notFound+readStale > 0 {
		t.Errorf("in %d rounds: %d rotations answered a version from before themselves, %d rotations after an acknowledged create answered not_found, %d reads missed acknowledged rotations", rounds, stale, notFound, readStale)
	}
}

// ---- 2. linearizability ----

// TestE2E_Cluster_Linearizable records a history of concurrent key
// creates, rotations and reads, three clients per node over raw HTTP on
// each node's socket, while the leader is killed (SIGKILL), restarted and
// unsealed, and then the next leader is frozen (SIGSTOP) and resumed; then
// porcupine checks that the history is linearizable against keyModel.
func TestE2E_Cluster_Linearizable(t *testing.T) {
	c := newCluster(t, 3)
	shares := bootCluster(c, 3)
	keys := []string{"lin-a", "lin-b", "lin-c", "lin-d"}
	const (
		clientsPerNode = 3
		maxOps         = 450 // a safety cap; the fault schedule ends the run first (~200)
		opTimeout      = 3 * applyTimeout
	)
	h := newLinHistory()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	stopClients := func() {
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	}
	// Also when the test fails half-way, before the nodes are stopped.
	t.Cleanup(stopClients)
	var unexpectedMu sync.Mutex
	var unexpected []string
	for ni, d := range c.nodes {
		hc := unixClient(d.sock)
		for j := 0; j < clientsPerNode; j++ {
			client := ni*clientsPerNode + j
			rng := rand.New(rand.NewPCG(uint64(client), uint64(time.Now().UnixNano())))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for h.len() < maxOps {
					// Pace the clients so that the history spans the faults
					// without growing past what porcupine checks quickly.
					select {
					case <-stop:
						return
					case <-time.After(time.Duration(60+rng.IntN(180)) * time.Millisecond):
					}
					in := linInput{Key: keys[rng.IntN(len(keys))]}
					switch p := rng.IntN(100); {
					case p < 15:
						in.Op = linCreate
					case p < 55:
						in.Op = linRotate
					default:
						in.Op = linRead
					}
					call := h.now()
					r := linDo(hc, opTimeout, in)
					ret := h.now()
					out, what, keep := linClassify(in, r)
					if !keep {
						h.drop(in, what)
						continue
					}
					if strings.HasPrefix(what, "unexpected") {
						unexpectedMu.Lock()
						unexpected = append(unexpected, fmt.Sprintf("%s(%s) on %s: %s", in.Op, in.Key, d.nodeID, what))
						unexpectedMu.Unlock()
					}
					h.add(client, in, call, out, ret, what, d.nodeID)
				}
			}()
		}
	}
	runStart := time.Now()
	// The fault schedule advances on recorded operations, not on a clock,
	// so that each phase sees traffic however loaded the machine is.
	waitOps := func(more int) {
		t.Helper()
		n := h.len() + more
		if n > maxOps {
			t.Fatalf("the fault schedule needs %d operations, over the cap of %d: raise maxOps", n, maxOps)
		}
		waitFor(t, fmt.Sprintf("%d operations recorded", n), 30*time.Second, func() bool { return h.len() >= n })
	}
	waitOps(40)
	l1, _ := waitLeader(t, c.nodes, 5*time.Second)
	l1.kill()
	_, tookKill := waitLeader(t, without(c.nodes, l1), 5*time.Second)
	t.Logf("leader %s killed: new leader after %v", l1.nodeID, tookKill.Round(time.Millisecond))
	waitOps(30)
	l1.start()
	l1.unsealWith(shares[2:5])
	t.Logf("%s restarted and unsealed", l1.nodeID)
	waitOps(30)
	l2, _ := waitLeader(t, c.nodes, 10*time.Second)
	l2.pause()
	_, tookPause := waitLeader(t, without(c.nodes, l2), 5*time.Second)
	t.Logf("leader %s paused: new leader after %v", l2.nodeID, tookPause.Round(time.Millisecond))
	waitOps(30)
	l2.resume()
	waitOps(40)
	stopClients()
	runTook := time.Since(runStart)

	// Final reads of every key on every node, once all is quiet: they pin
	// down the outcome of every write left unknown.
	waitLeader(t, c.nodes, 10*time.Second)
	for ni, d := range c.nodes {
		hc := unixClient(d.sock)
		for _, k := range keys {
			in := linInput{Op: linRead, Key: k}
			call := h.now()
			r := linDo(hc, opTimeout, in)
			ret := h.now()
			out, what, keep := linClassify(in, r)
			if !keep || out.Kind == linUnknown {
				t.Fatalf("final read of %s on %s: %s", k, d.nodeID, what)
			}
			h.add(len(c.nodes)*clientsPerNode+ni, in, call, out, ret, what, d.nodeID)
		}
	}

	ops := h.operations()
	t.Logf("history: %d operations in %v\n%s", len(ops), runTook.Round(time.Millisecond), h.summary())
	for _, u := range unexpected {
		t.Errorf("unexpected answer: %s", u)
	}
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(keyModel, ops, 60*time.Second)
	t.Logf("porcupine: %s in %v", res, time.Since(checkStart).Round(time.Millisecond))
	if res != porcupine.Ok {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("coffer-linearizability-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(keyModel, info, path); err != nil {
			t.Logf("cannot write the visualization: %v", err)
		}
		for _, part := range keyModel.Partition(ops) {
			if !porcupine.CheckOperations(keyModel, part) {
				t.Logf("operations on %s (ms since start; return ∞ = unknown outcome):\n%s", part[0].Input.(linInput).Key, describeOps(part))
			}
		}
		for _, d := range c.nodes {
			lp := strings.TrimSuffix(path, ".html") + "-" + d.nodeID + ".log"
			if err := os.WriteFile(lp, []byte(d.logs()), 0o600); err != nil {
				t.Logf("cannot save %s's log: %v", d.nodeID, err)
			}
		}
		t.Fatalf("the history is not linearizable (porcupine: %s); visualization: %s, node logs next to it", res, path)
	}
}

// describeOps lists operations by call time, one a line, for a failure
// message.
func describeOps(ops []porcupine.Operation) string {
	ops = slices.Clone(ops)
	slices.SortFunc(ops, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	var b strings.Builder
	for _, op := range ops {
		ret := "∞"
		if op.Return != math.MaxInt64 {
			ret = fmt.Sprintf("%.1f", float64(op.Return)/1e6)
		}
		fmt.Fprintf(&b, "  client %2d on %s  [%9.1f, %9s]  %s\n", op.ClientId, op.Metadata, float64(op.Call)/1e6, ret, keyModel.DescribeOperation(op.Input, op.Output))
	}
	return b.String()
}

// linDo sends one operation of the model over raw HTTP.
func linDo(hc *http.Client, timeout time.Duration, in linInput) reply {
	switch in.Op {
	case linCreate:
		return doRequest(hc, timeout, "POST", "/v1/keys", `{"name":"`+in.Key+`"}`)
	case linRotate:
		return doRequest(hc, timeout, "POST", "/v1/keys/"+in.Key+"/rotate", "")
	default:
		return doRequest(hc, timeout, "GET", "/v1/keys/"+in.Key, "")
	}
}

// linClassify turns an answer into the model's output. keep is false for an
// operation that certainly had no effect and observed nothing; what names
// the outcome for the summary ("unexpected …" for an answer that no correct
// node should give).
func linClassify(in linInput, r reply) (out linOutput, what string, keep bool) {
	if r.err != nil {
		if r.notSent() {
			return out, "node down", false
		}
		if errors.Is(r.err, context.DeadlineExceeded) {
			return linOutput{Kind: linUnknown}, "unknown: client timeout", in.Op != linRead
		}
		return linOutput{Kind: linUnknown}, "unknown: connection lost", in.Op != linRead
	}
	if r.status == http.StatusServiceUnavailable && r.code == api.CodeSealed {
		// Refused before anything else: the restarted node is not unsealed yet.
		return out, "sealed", false
	}
	var k api.Key
	switch {
	case (in.Op == linCreate && r.status == http.StatusCreated) || (in.Op != linCreate && r.status == http.StatusOK):
		if err := json.Unmarshal(r.body, &k); err != nil || k.LatestVersion < 1 {
			return linOutput{Kind: linUnknown}, "unexpected: a success without a key", in.Op != linRead
		}
		return linOutput{Kind: linOK, Version: k.LatestVersion}, "ok", true
	case in.Op == linCreate && r.status == http.StatusConflict && r.code == api.CodeAlreadyExists:
		return linOutput{Kind: linExists}, "already_exists", true
	case in.Op != linCreate && r.status == http.StatusNotFound && r.code == api.CodeNotFound:
		return linOutput{Kind: linNotFound}, "not_found", true
	case r.status == http.StatusServiceUnavailable && r.code == api.CodeOutcomeUnknown:
		// The write reached a leader and may still be committed.
		return linOutput{Kind: linUnknown}, "unknown: outcome_unknown", in.Op != linRead
	case r.status == http.StatusServiceUnavailable && r.code == api.CodeNoLeader:
		// The write may still be committed later; a read saw nothing.
		return linOutput{Kind: linUnknown}, "unknown: no_leader", in.Op != linRead
	}
	return linOutput{Kind: linUnknown}, fmt.Sprintf("unexpected: %d %s", r.status, r.code), in.Op != linRead
}

// ---- 3. full-cluster restart ----

// stopAll stops every node with SIGTERM (each seals itself on the way out).
func stopAll(nodes []*daemon) {
	for _, d := range nodes {
		d.stop()
	}
}

// restartAll execs every node at once and waits until each serves and a
// leader is agreed on; it returns how long that took.
func restartAll(t *testing.T, nodes []*daemon) time.Duration {
	t.Helper()
	start := time.Now()
	for _, d := range nodes {
		d.spawn()
	}
	for _, d := range nodes {
		d.waitServing(30 * time.Second)
	}
	waitLeader(t, nodes, 15*time.Second)
	return time.Since(start)
}

// TestE2E_Cluster_FullRestartShamir: all three nodes stopped and started
// again elect a leader by themselves (no operator, no recovery mode); with
// no seal device every node is sealed and waits for shares, and serves once
// unsealed with everything it had.
func TestE2E_Cluster_FullRestartShamir(t *testing.T) {
	c := newCluster(t, 3)
	shares := bootCluster(c, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	n2.mustCoffer("", "key", "create", "fr")
	n3.mustCoffer("", "key", "rotate", "fr")
	ct := wrapHTTP(t, n1, "fr", secret1)
	want := waitConverged(t, c.nodes, 10*time.Second)

	stopAll(c.nodes)
	took := restartAll(t, c.nodes)
	t.Logf("full restart: all three serving with a leader after %v", took.Round(time.Millisecond))
	for _, d := range c.nodes {
		st := d.status()
		if !st.Initialized || !st.Sealed || st.Progress != 0 || st.LeaderID == "" {
			t.Fatalf("%s after a full restart: want initialised, sealed, no progress, a leader; got %+v", d.nodeID, st)
		}
		if !strings.Contains(st.SealedReason, "coffer operator unseal") {
			t.Errorf("%s sealed_reason does not say how to unseal: %q", d.nodeID, st.SealedReason)
		}
		d.expectAPI("POST", "/v1/keys/fr/unwrap", `{"ciphertext":"`+ct+`"}`, 503, api.CodeSealed)
		d.expectAPI("POST", "/v1/keys", `{"name":"while-sealed"}`, 503, api.CodeSealed)
	}
	for i, d := range c.nodes {
		d.unsealWith(shares[i : i+3])
	}
	if got := waitConverged(t, c.nodes, 10*time.Second); !maps.Equal(got, want) {
		t.Fatalf("keys after the restart: %v, before: %v", got, want)
	}
	for _, d := range c.nodes {
		checkUnwrap(t, d, "fr", ct, secret1)
	}
	lead, _ := waitLeader(t, c.nodes, 5*time.Second)
	without(c.nodes, lead)[0].mustCoffer("", "key", "create", "after-restart")
	for _, d := range c.nodes {
		if v := keyVersions(t, d)["after-restart"]; v != 1 {
			t.Errorf("%s does not see the write after the restart", d.nodeID)
		}
	}
}

// TestE2E_Cluster_FullRestartDevices: every node has its own SoftHSM token.
// Node 1's token seals the root key at init; nodes 2 and 3 are unsealed
// with shares once and enrol their tokens with reseal. Then all three stop
// and start again: each auto-unseals with its token and a leader is
// elected, with no operator, no shares and no recovery mode.
func TestE2E_Cluster_FullRestartDevices(t *testing.T) {
	c := newCluster(t, 3)
	for i, d := range c.nodes {
		tk := softhsmtest.NewToken(t, fmt.Sprintf("coffer-fr-node%d", i+1))
		appendConfig(t, d, pkcs11HCL(tk, tk.PINFile(t)))
		d.env = append(d.env, tk.Env()...)
	}
	bootCluster(c, 3)
	for _, d := range c.nodes[1:] {
		d.mustCoffer("", "operator", "reseal")
	}
	for _, d := range c.nodes {
		if st := d.status(); st.Sealed || st.SealType != "pkcs11" || st.SealDeviceError != "" {
			t.Fatalf("%s before the restart: %+v", d.nodeID, st)
		}
		if _, err := os.Stat(filepath.Join(d.dir, "data", "seal-blob.json")); err != nil {
			t.Fatalf("%s has no device-sealed root key: %v", d.nodeID, err)
		}
	}
	c.nodes[1].mustCoffer("", "key", "create", "dev")
	ct := wrapHTTP(t, c.nodes[2], "dev", secret1)
	want := waitConverged(t, c.nodes, 10*time.Second)

	stopAll(c.nodes)
	mark := map[*daemon]int{}
	for _, d := range c.nodes {
		mark[d] = len(d.logs())
	}
	start := time.Now()
	restartAll(t, c.nodes)
	for _, d := range c.nodes {
		d.waitStatus(d.nodeID+" auto-unseals", 15*time.Second, func(st api.Status) bool { return !st.Sealed })
	}
	t.Logf("full restart with devices: all three auto-unsealed with a leader after %v", time.Since(start).Round(time.Millisecond))
	for _, d := range c.nodes {
		d.expectAutoUnsealed("pkcs11")
		since := d.logs()[mark[d]:]
		if !strings.Contains(since, "auto-unsealed with the seal device") || strings.Contains(since, "break-glass") {
			t.Errorf("%s after the restart: want an auto-unseal and no break-glass unseal in its log:\n%s", d.nodeID, since)
		}
	}
	if got := waitConverged(t, c.nodes, 10*time.Second); !maps.Equal(got, want) {
		t.Fatalf("keys after the restart: %v, before: %v", got, want)
	}
	lead, _ := waitLeader(t, c.nodes, 5*time.Second)
	without(c.nodes, lead)[0].mustCoffer("", "key", "rotate", "dev")
	for _, d := range c.nodes {
		checkUnwrap(t, d, "dev", ct, secret1)
		if v := keyVersions(t, d)["dev"]; v != 2 {
			t.Errorf("%s sees dev at version %d after a rotation, want 2", d.nodeID, v)
		}
	}
}

// ---- 4. membership ----

// TestE2E_Cluster_Membership: a fourth node joins a running cluster,
// receives its state and serves once unsealed; then the leader among the
// original three is removed and stopped. The three left keep serving
// writes and reads on every node, and they are now the whole
// configuration: with one of them frozen, the other two still commit.
func TestE2E_Cluster_Membership(t *testing.T) {
	c := newCluster(t, 4)
	shares := bootCluster(c, 3)
	orig, n4 := c.nodes[:3], c.nodes[3]
	orig[1].mustCoffer("", "key", "create", "mk")
	ct := wrapHTTP(t, orig[2], "mk", secret1)

	n4.start()
	joinWithToken(t, orig[0], n4, c.addrs[1]) // via any member, with a token
	waitFor(t, "node4 receives the cluster state", 10*time.Second, func() bool { return n4.status().Initialized })
	n4.unsealWith(shares[2:5])
	checkUnwrap(t, n4, "mk", ct, secret1)
	n4.mustCoffer("", "key", "rotate", "mk")
	n4.mustCoffer("", "key", "create", "from-node4")
	waitConverged(t, c.nodes, 10*time.Second)
	if peers := listPeers(t, orig[0]); len(peers) != 4 {
		t.Fatalf("peers after the join: %v", peers)
	}

	// Remove the leader: it has to hand over.
	lead, _ := waitLeader(t, orig, 5*time.Second)
	n4.mustCoffer("", "operator", "raft", "remove-peer", lead.nodeID)
	lead.stop()
	rest := without(c.nodes, lead)
	newLead, took := waitLeader(t, rest, 10*time.Second)
	t.Logf("leader %s removed: %s leads after %v", lead.nodeID, newLead.nodeID, took.Round(time.Millisecond))
	for _, d := range rest {
		peers := listPeers(t, d)
		if len(peers) != 3 || slices.Contains(peers, lead.nodeID) {
			t.Errorf("peers on %s after removing %s: %v", d.nodeID, lead.nodeID, peers)
		}
	}
	for _, d := range rest {
		d.mustCoffer("", "key", "create", "after-remove-"+d.nodeID)
	}
	kv := waitConverged(t, rest, 10*time.Second)
	for _, d := range rest {
		if kv["after-remove-"+d.nodeID] != 1 || kv["mk"] != 2 || kv["from-node4"] != 1 {
			t.Errorf("keys after the removal: %v", kv)
		}
		checkUnwrap(t, d, "mk", ct, secret1)
	}

	// Three voters now: one frozen follower leaves a quorum of two. (Were
	// the removed node still counted, two of four could not commit.)
	follower := without(rest, newLead)[0]
	follower.pause()
	writer := without(rest, newLead, follower)[0]
	writer.mustCoffer("", "key", "create", "quorum-of-two")
	follower.resume()
	waitConverged(t, rest, 10*time.Second)
}

// listPeers returns the node ids of the raft configuration as d knows it.
func listPeers(t *testing.T, d *daemon) []string {
	t.Helper()
	var out struct {
		Peers []struct{ ID string }
	}
	if err := json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "operator", "raft", "list-peers")), &out); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range out.Peers {
		ids = append(ids, p.ID)
	}
	return ids
}

// ---- 5. scheduled rotation ----

// TestE2E_Cluster_ScheduledRotationLeaderOnly: a key with the minimum
// rotation period (1m) is rotated once, by the leader only. The scheduler
// looks every 30 s and cofferd offers no way to shorten that or the
// minimum period, so this takes 60–90 s: it runs only with
// COFFER_E2E_SLOW=1. (The scheduler's leader-only rule and its
// compare-and-set are also covered in-process by the daemon's tests.)
func TestE2E_Cluster_ScheduledRotationLeaderOnly(t *testing.T) {
	if os.Getenv("COFFER_E2E_SLOW") != "1" {
		t.Skip("takes 60-90 s (minimum rotation period 1m, scheduler interval 30s, neither settable from the binary): set COFFER_E2E_SLOW=1 to run it")
	}
	c := newCluster(t, 3)
	bootCluster(c, 3)
	lead, _ := waitLeader(t, c.nodes, 5*time.Second)
	follower := without(c.nodes, lead)[0]
	follower.expectAPI("POST", "/v1/keys", `{"name":"sched","rotation_period":"1m"}`, 201, "")
	created := time.Now()
	waitFor(t, "a scheduled rotation", 100*time.Second, func() bool { return keyVersions(t, follower)["sched"] >= 2 })
	t.Logf("rotated on schedule %v after creation", time.Since(created).Round(time.Second))
	kv := waitConverged(t, c.nodes, 10*time.Second)
	if kv["sched"] != 2 {
		t.Errorf("sched at version %d, want exactly one scheduled rotation", kv["sched"])
	}
	var rotatedBy []string
	for _, d := range c.nodes {
		if strings.Contains(d.logs(), "rotated key on schedule") {
			rotatedBy = append(rotatedBy, d.nodeID)
		}
	}
	if len(rotatedBy) != 1 || rotatedBy[0] != lead.nodeID {
		t.Errorf("scheduled rotation logged by %v, want the leader %s only", rotatedBy, lead.nodeID)
	}
}
