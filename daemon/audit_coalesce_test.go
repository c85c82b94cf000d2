package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/config"
)

// TestServer_DeniedFloodAudit is the audit-flood attack: 5,000 denied
// requests from one caller must write less than 500 KB of audit (one entry
// each wrote about 440 bytes: 2.2 MB) and few WARN lines, while an
// authorised caller keeps being served with an entry per request; the log
// still verifies, every denied request is accounted for (individually or
// in a coalesced entry's count), and the unusual-access alert fires.
func TestServer_DeniedFloodAudit(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	n.must("PUT", "/v1/policies/p", api.Policy{
		Subjects: api.Subjects{UIDs: []uint32{1001}}, Keys: []string{"app"}, Operations: []string{"wrap"},
	}, nil, 200)
	path := n.cfg.AuditPath()
	st0, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	logs0 := strings.Count(n.logString(), "request denied")

	granted := &auth.Caller{UID: 1001, GID: 1001, Groups: []uint32{1001}}
	attacker := &auth.Caller{UID: 3003, GID: 3003, Groups: []uint32{3003}, PID: 77}
	const flood = 5000
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var servedIDs []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if len(servedIDs) == 100 { // bounded: the test measures the flood, not these
				time.Sleep(5 * time.Millisecond)
				continue
			}
			st, id, body := n.raw(granted, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`)
			if st != 200 {
				t.Errorf("authorised caller during the flood: %d %s", st, body)
				return
			}
			servedIDs = append(servedIDs, id)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	for i := 0; i < flood; i++ {
		// Two operations the caller has no grant for: both coalesce.
		path := "/v1/keys/app/unwrap"
		if i%2 == 1 {
			path = "/v1/keys/app/datakey"
		}
		if st, _, _ := n.raw(attacker, "POST", path, `{"ciphertext":"x"}`); st != 403 {
			t.Fatalf("attacker request %d: %d, want 403", i, st)
		}
	}
	close(stop)
	wg.Wait()

	// The last second's coalesced entry is written within a second or two.
	var entries []*audit.Entry
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, entries = auditLog(t, n)
		if accounted(entries, 3003) == flood || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := accounted(entries, 3003); got != flood {
		t.Fatalf("audit accounts for %d of %d denied requests", got, flood)
	}
	st1, _ := os.Stat(path)
	grew := st1.Size() - st0.Size()
	individual, coalesced := 0, 0
	for _, e := range entries {
		if e.Caller != nil && e.Caller.UID == 3003 && e.Type == audit.TypeRequest {
			if e.Detail["count"] != "" {
				coalesced++
				if e.Detail["first_request_id"] == "" || e.Detail["last_request_id"] == "" || e.Outcome != audit.OutcomeDenied {
					t.Errorf("coalesced entry without its ids or outcome: %+v", e)
				}
			} else {
				individual++
			}
		}
	}
	t.Logf("5,000 denied requests (+%d authorised): audit grew %d KB: %d individual and %d coalesced entries; %d WARN lines",
		len(servedIDs), grew/1000, individual, coalesced, strings.Count(n.logString(), "request denied")-logs0)
	if grew >= 500_000 {
		t.Fatalf("a 5,000-request denied flood wrote %d bytes of audit, want < 500 KB", grew)
	}
	if w := strings.Count(n.logString(), "request denied") - logs0; w > 500 {
		t.Errorf("%d WARN lines for the flood, want them rate-limited", w)
	}
	// Every authorised request still has its own entry.
	if len(servedIDs) == 0 {
		t.Fatal("the authorised caller was never served")
	}
	for _, id := range servedIDs {
		if e := byRequest(entries, id); e == nil || e.Outcome != audit.OutcomeOK {
			t.Fatalf("authorised request %s has no entry of its own", id)
		}
	}
	if findOp(entries, audit.TypeEvent, "unusual-access") == nil {
		t.Error("no unusual-access event for the flood")
	}
}

// accounted counts the requests of uid in the audit log: one per
// individual entry, detail.count per coalesced one.
func accounted(es []*audit.Entry, uid uint32) int {
	total := 0
	for _, e := range es {
		if e.Type != audit.TypeRequest || e.Caller == nil || e.Caller.UID != uid {
			continue
		}
		if c := e.Detail["count"]; c != "" {
			n, _ := strconv.Atoi(c)
			total += n
		} else {
			total++
		}
	}
	return total
}

// TestCoalescer: the first ten failures of a caller in a second are
// individual, the rest go into one entry per caller per second; other
// callers and seconds are counted apart.
func TestCoalescer(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCoalescer(func() time.Time { return now })
	a := &auth.Caller{UID: 1}
	b := &auth.Caller{UID: 2}
	for i := 1; i <= 15; i++ {
		got, done := c.suppress(a, "a"+strconv.Itoa(i), "wrap", audit.OutcomeDenied, api.CodePermissionDenied)
		if got != (i > coalesceAfter) || len(done) != 0 {
			t.Fatalf("request %d: coalesced %v (done %d)", i, got, len(done))
		}
	}
	if got, _ := c.suppress(b, "b1", "wrap", audit.OutcomeError, api.CodeBadRequest); got {
		t.Fatal("another caller's first failure was coalesced")
	}
	if es := c.flush(false); len(es) != 0 {
		t.Fatalf("flushed %d entries within the second", len(es))
	}
	now = now.Add(time.Second)
	got, done := c.suppress(a, "a16", "unwrap", audit.OutcomeError, api.CodeBadRequest)
	if got || len(done) != 1 {
		t.Fatalf("next second: coalesced %v, %d done", got, len(done))
	}
	e := done[0]
	if e.Detail["count"] != "5" || e.Detail["first_request_id"] != "a11" || e.Detail["last_request_id"] != "a15" ||
		e.Operation != "wrap" || e.Outcome != audit.OutcomeDenied || e.ErrorCode != api.CodePermissionDenied || e.Caller.UID != 1 {
		t.Fatalf("coalesced entry %+v detail %v", e, e.Detail)
	}
	// b had nothing coalesced; its bucket goes without an entry.
	if es := c.flush(false); len(es) != 0 {
		t.Fatalf("flush wrote %d entries for callers with nothing coalesced", len(es))
	}
	if len(c.buckets) != 1 {
		t.Fatalf("%d buckets left, want only the current second's", len(c.buckets))
	}
	// Units of a per-user manager are the user's to name: a fresh one per
	// request still counts as the same caller.
	now = now.Add(time.Second)
	coalesced := 0
	for i := 0; i < 20; i++ {
		u := &auth.Caller{UID: 9, Unit: "run-" + strconv.Itoa(i) + ".service", UserUnit: true}
		if got, _ := c.suppress(u, "u"+strconv.Itoa(i), "wrap", audit.OutcomeDenied, ""); got {
			coalesced++
		}
	}
	if coalesced != 20-coalesceAfter {
		t.Fatalf("user units escaped coalescing: %d of 20 coalesced", coalesced)
	}
}

// logString reads the node's log so far (the log writer is synchronised;
// take a snapshot under its lock).
func (n *testNode) logString() string {
	sw := n.logsWriter
	sw.mu <- struct{}{}
	defer func() { <-sw.mu }()
	return n.logs.String()
}

// TestServer_DeniedFloodAuditSocket is the flood of the issue as it was
// measured: uid 65534, no policy, 5,000 denied unwraps on one keep-alive
// connection of the real socket, while root keeps wrapping; the audit log
// grows by less than 500 KB and still verifies.
func TestServer_DeniedFloodAuditSocket(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	n := startNode(t, t.TempDir(), func(c *config.Config) { c.Listener.Mode = 0o666 })
	os.Chmod(filepath.Dir(n.cfg.Listener.Path), 0o755)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "app"}, nil, 201)
	st0, _ := os.Stat(n.cfg.AuditPath())
	exe := copyTestBinary(t)

	stop := make(chan struct{})
	served := make(chan int)
	go func() {
		ok := 0
		defer func() { served <- ok }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if ok == 100 { // bounded: the test measures the flood, not these
				time.Sleep(5 * time.Millisecond)
				continue
			}
			if st, _, _ := n.raw(nil, "POST", "/v1/keys/app/wrap", `{"plaintext":"eA=="}`); st != 200 {
				t.Errorf("authorised wrap during the flood: %d", st)
				return
			}
			ok++
			time.Sleep(5 * time.Millisecond)
		}
	}()
	cmd := exec.Command(exe, "-test.run=^TestHelperFlood$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COFFER_TEST_FLOOD_SOCK="+n.cfg.Listener.Path, "COFFER_TEST_FLOOD_N=5000", "COFFER_TEST_FLOOD_PATH=/v1/keys/app/unwrap")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	close(stop)
	ok := <-served
	if err != nil {
		t.Fatalf("flood helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "RESULT 5000\n") {
		t.Fatalf("flood helper: %s, want 5000 denied", out)
	}
	var entries []*audit.Entry
	waitFor(t, "every denied request accounted for", 5*time.Second, func() bool {
		_, entries = auditLog(t, n)
		return accounted(entries, 65534) == 5000
	})
	st1, _ := os.Stat(n.cfg.AuditPath())
	grew := st1.Size() - st0.Size()
	t.Logf("5,000 denied unwraps from uid 65534 on one connection (+%d authorised wraps): audit grew %d KB", ok, grew/1000)
	if grew >= 500_000 {
		t.Fatalf("audit grew %d bytes, want < 500 KB", grew)
	}
	if ok == 0 {
		t.Fatal("the authorised caller was never served")
	}
	if findOp(entries, audit.TypeEvent, "unusual-access") == nil {
		t.Error("no unusual-access event")
	}
}
