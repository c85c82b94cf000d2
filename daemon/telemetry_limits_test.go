package daemon

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/daemon/config"
)

// TestTelemetry_ConnectionCap: the telemetry listener is TCP, so anyone
// who can reach its address (not only local users) can connect. Each
// connection it keeps costs a file descriptor of the daemon's, shared with
// the API socket, raft and the audit log, and the listener is outside the
// API's connection caps. An attacker opening connections that send nothing
// must not get more than telemetryMaxConns of them held: the rest are
// closed at once. Once the attacker lets go, a scrape works again.
func TestTelemetry_ConnectionCap(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Telemetry = &config.TelemetryConfig{PrometheusListen: "127.0.0.1:0"}
	})
	// An API request first: the socket is served after the telemetry
	// listener started, so its address is set by then.
	if st, _, _ := n.raw(nil, "GET", "/v1/sys/health", ""); st == 0 {
		t.Fatal("no answer on the API socket")
	}
	addr := n.srv.telemetryAddr
	const extra = 40
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < telemetryMaxConns+extra; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// A held connection times out only after readHeaderTimeout (10s); a
	// refused one is closed at accept. Within 5s, count those the daemon
	// closed.
	type res struct{ closed bool }
	ch := make(chan res, len(conns))
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range conns {
		go func(c net.Conn) {
			c.SetReadDeadline(deadline)
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			ch <- res{closed: err != nil && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, os.ErrDeadlineExceeded)}
		}(c)
	}
	closed := 0
	for range conns {
		if (<-ch).closed {
			closed++
		}
	}
	if held := len(conns) - closed; held > telemetryMaxConns {
		t.Fatalf("the telemetry listener holds %d idle connections from one attacker (cap %d)", held, telemetryMaxConns)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	// The count is released: a scrape gets through (poll: the daemon sees
	// the closes asynchronously).
	until := time.Now().Add(20 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(until) {
			t.Fatalf("no scrape after the attacker closed its connections: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTelemetry_ScraperNotLockedOut: one address holding idle connections
// must not keep a scraper at another address out. The telemetry listener
// holds at most telemetryMaxConnsPerIP connections of one address, so an
// attacker needs many addresses to fill telemetryMaxConns.
func TestTelemetry_ScraperNotLockedOut(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.Telemetry = &config.TelemetryConfig{PrometheusListen: "127.0.0.1:0"}
	})
	if st, _, _ := n.raw(nil, "GET", "/v1/sys/health", ""); st == 0 {
		t.Fatal("no answer on the API socket")
	}
	addr := n.srv.telemetryAddr
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < telemetryMaxConns+8; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// The scraper, from another loopback address, while the attacker at
	// 127.0.0.1 holds what it could.
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	until := time.Now().Add(5 * time.Second)
	for {
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(until) {
			t.Fatalf("a scraper at 127.0.0.2 was kept out by idle connections from 127.0.0.1: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
