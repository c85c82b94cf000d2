package kmsv2_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/daemon/kmsv2"
)

// TestKMSv2_ConnectionCapPerUID is the connection-exhaustion attack on the
// KMS v2 socket: whoever may open it (kms_v2.group, or mode 0666 here)
// opens connections, completes the HTTP/2 handshake on each (so gRPC's
// handshake timeout does not apply) and then sends nothing. Each one held
// costs the daemon a file descriptor, shared with the API socket and raft,
// and a gRPC server transport; nothing bounded how many one uid kept. Now
// one uid keeps at most kmsv2.MaxConnsPerUID; the rest are closed at
// accept, and the kube-apiserver's own connection is unaffected.
func TestKMSv2_ConnectionCapPerUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as uid 65534")
	}
	n := startNode(t, func(c *config.Config) { c.KMSv2.Mode = 0o666 }, true)
	n.statusOK()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(n.cfg.KMSv2.Path), "kms-conns.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	const flood = 300
	cmd := exec.Command(bin, "-test.run=^TestKMSv2_HelperIdleConns$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COFFER_KMS_IDLE_WAIT="+os.Getenv("COFFER_KMS_IDLE_WAIT"), "COFFER_KMS_IDLE_SOCKET="+n.cfg.KMSv2.Path, "COFFER_KMS_IDLE_N="+strconv.Itoa(flood))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as uid 65534: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`RESULT opened=(\d+) held=(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("client printed no result:\n%s", out)
	}
	opened, _ := strconv.Atoi(string(m[1]))
	held, _ := strconv.Atoi(string(m[2]))
	t.Logf("uid 65534 opened %d handshaken idle connections; the plugin held %d (cap %d per uid)", opened, held, kmsv2.MaxConnsPerUID)
	if held > kmsv2.MaxConnsPerUID {
		t.Fatalf("one uid kept %d idle connections to the KMS v2 socket, want at most %d", held, kmsv2.MaxConnsPerUID)
	}
	// The API server's connection (root, opened at start) still works.
	n.statusOK()
}

// TestKMSv2_HelperIdleConns is the client TestKMSv2_ConnectionCapPerUID
// runs as another uid; it does nothing in a normal run. It opens
// COFFER_KMS_IDLE_N connections, sends the HTTP/2 client preface and an
// empty SETTINGS frame on each, and counts those the server still holds
// 3 seconds later (a read that times out rather than ending).
func TestKMSv2_HelperIdleConns(t *testing.T) {
	path := os.Getenv("COFFER_KMS_IDLE_SOCKET")
	if path == "" {
		t.Skip("helper process only")
	}
	n, _ := strconv.Atoi(os.Getenv("COFFER_KMS_IDLE_N"))
	preface := append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			continue
		}
		c.Write(preface)
		conns = append(conns, c)
	}
	wait := 3 * time.Second
	if d, err := time.ParseDuration(os.Getenv("COFFER_KMS_IDLE_WAIT")); err == nil {
		wait = d // to watch it for longer by hand
	}
	deadline := time.Now().Add(wait)
	res := make(chan bool, len(conns))
	for _, c := range conns {
		go func(c net.Conn) {
			c.SetReadDeadline(deadline)
			_, err := io.Copy(io.Discard, c)
			res <- errors.Is(err, os.ErrDeadlineExceeded)
		}(c)
	}
	held := 0
	for range conns {
		if <-res {
			held++
		}
	}
	fmt.Printf("RESULT opened=%d held=%d\n", len(conns), held)
	for _, c := range conns {
		c.Close()
	}
}
