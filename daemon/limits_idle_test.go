package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/daemon/config"
)

// TestServer_ConnCapsIdleFlood is the per-uid cap bypass: a connection
// beyond max_conns_per_uid is accepted (its caller may turn out to be an
// admin by group) and answered 429 only at its first request. A non-admin
// that never sends a request thus kept every connection it opened, up to
// max_conns plus the admin reserve, and then the node closed everyone's
// new connections at accept, root's included: one uid locked the
// administrators out, which the reserve exists to prevent. Now one uid
// holds at most max_conns_per_uid plus the reserve, and uid 0 (and the
// admin uids) are never closed at accept.
func TestServer_ConnCapsIdleFlood(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Listener.Mode = 0o666
		c.Listener.MaxConnsPerUID = 4
		c.Listener.MaxConns = 8
	})
	os.Chmod(filepath.Dir(n.cfg.Listener.Path), 0o755)
	exe := copyTestBinary(t)
	sock := n.cfg.Listener.Path
	const flood = 200 // > max_conns + adminReserve (72)
	// A request first: the limiter is set before the socket is served.
	if c, err := net.Dial("unix", sock); err != nil || statusOn(c) != "200//" {
		t.Fatalf("root before the flood: %v", err)
	} else {
		c.Close()
	}
	refused0 := n.srv.limiter.refusedAtAccept.Load()
	h := holdIdleConns(t, exe, sock, 65534, flood)
	defer h.release()
	if h.result[0] != strconv.Itoa(flood) {
		t.Fatalf("helper opened %s connections, want %d", h.result[0], flood)
	}
	// Accept runs asynchronously: wait until the node has taken or closed
	// every connection of the flood.
	waitFor(t, "the flood accepted", 10*time.Second, func() bool {
		n.srv.limiter.mu.Lock()
		defer n.srv.limiter.mu.Unlock()
		return uint64(n.srv.limiter.perUID[65534])+n.srv.limiter.refusedAtAccept.Load()-refused0 == flood
	})

	n.srv.limiter.mu.Lock()
	held := n.srv.limiter.perUID[65534]
	n.srv.limiter.mu.Unlock()
	t.Logf("uid 65534 opened %d idle connections; the node holds %d of them (max_conns_per_uid 4, max_conns 8, reserve %d)", flood, held, adminReserve)
	if held > 4+adminReserve {
		t.Errorf("one non-admin uid holds %d connections, want at most max_conns_per_uid + the admin reserve (%d)", held, 4+adminReserve)
	}
	for i := 0; i < 3; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		got := statusOn(c)
		c.Close()
		if got != "200//" {
			t.Fatalf("root's request with uid 65534 flooding idle connections: %s, want 200", got)
		}
	}
}

// TestHelperIdleConns is not a test: run by TestServer_ConnCapsIdleFlood
// as another uid, it opens COFFER_TEST_IDLE_CONNS_N connections and sends
// nothing on them, prints how many it opened, and holds them until stdin
// closes.
func TestHelperIdleConns(t *testing.T) {
	sock := os.Getenv("COFFER_TEST_IDLE_CONNS_SOCK")
	if sock == "" {
		t.Skip("helper process for TestServer_ConnCapsIdleFlood")
	}
	n, _ := strconv.Atoi(os.Getenv("COFFER_TEST_IDLE_CONNS_N"))
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			continue
		}
		conns = append(conns, c)
	}
	fmt.Printf("RESULT %d\n", len(conns))
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

func holdIdleConns(t *testing.T, exe, sock string, uid uint32, n int) *holder {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^TestHelperIdleConns$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COFFER_TEST_IDLE_CONNS_SOCK="+sock, "COFFER_TEST_IDLE_CONNS_N="+strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, stdin: stdin}
	t.Cleanup(h.release)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if r, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
			h.result = strings.Fields(r)
			go io.Copy(io.Discard, stdout)
			return h
		}
	}
	t.Fatalf("helper as uid %d printed no result", uid)
	return nil
}
