package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
)

// systemd's notification protocol (sd_notify(3)) for Type=notify units:
//
//   - READY=1 once the API answers on its socket, so that `systemctl start`
//     (and units ordered after cofferd) return only when clients can talk
//     to it.
//   - STATUS= follows the seal state, for `systemctl status`.
//   - WATCHDOG=1 every WatchdogSec/2 while the API answers a status request
//     on its socket within a deadline; a hung daemon stops pinging and
//     systemd kills and restarts it.
//   - STOPPING=1 when shutdown begins.
//
// Outside systemd (NOTIFY_SOCKET unset) all of this is off and costs
// nothing.

// notifyStatusIntervalEnv is an undocumented test hook: end-to-end tests
// poll the seal state faster than the default 1s so that STATUS changes show
// within their time budget. Operators have no reason to tune it.
const notifyStatusIntervalEnv = "COFFER_NOTIFY_STATUS_INTERVAL"

const defaultStatusInterval = time.Second

// maxStatusText bounds a STATUS= line: systemctl shows it on one line.
const maxStatusText = 300

// notifier sends sd_notify messages. Its methods are safe for concurrent
// use and do nothing when cofferd does not run under systemd.
type notifier struct {
	log            hclog.Logger
	enabled        bool          // NOTIFY_SOCKET is set
	statusInterval time.Duration // how often the seal state is polled
	watchdog       time.Duration // WatchdogSec; 0 when the watchdog is off

	mu         sync.Mutex
	lastStatus string
	failed     bool // a send failed and was logged; logged again only after a success
}

// newNotifier reads NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID and the test
// hook from the environment.
func newNotifier(log hclog.Logger) (*notifier, error) {
	n := &notifier{log: log.Named("systemd"), enabled: os.Getenv("NOTIFY_SOCKET") != "", statusInterval: defaultStatusInterval}
	if v := os.Getenv(notifyStatusIntervalEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%s=%q is not a positive Go duration (e.g. 100ms); unset it to use the default", notifyStatusIntervalEnv, v)
		}
		n.statusInterval = d
	}
	if !n.enabled {
		return n, nil
	}
	wd, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil {
		return nil, fmt.Errorf("systemd watchdog settings: %w; check WatchdogSec= in the unit", err)
	}
	n.watchdog = wd
	return n, nil
}

// send sends one notification. A failure is logged (once until a send works
// again) and otherwise ignored: systemd then times the start out or kills a
// silent watchdog, which is the right outcome for a daemon it cannot hear.
func (n *notifier) send(state string) {
	if !n.enabled {
		return
	}
	_, err := sddaemon.SdNotify(false, state)
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case err != nil && !n.failed:
		n.failed = true
		n.log.Error("cannot notify systemd (NOTIFY_SOCKET)", "error", err)
	case err == nil && n.failed:
		n.failed = false
		n.log.Info("notifying systemd works again")
	}
}

// status sends STATUS=text when it differs from the last one sent.
func (n *notifier) status(text string) {
	n.mu.Lock()
	same := text == n.lastStatus
	n.lastStatus = text
	n.mu.Unlock()
	if !same {
		n.send("STATUS=" + text)
	}
}

// starting says what a slow start is doing, before the API serves.
func (n *notifier) starting(what string) {
	n.status("starting: " + what)
}

// ready sends READY=1 together with the first seal state.
func (n *notifier) ready(st api.Status) {
	text := statusText(st)
	n.mu.Lock()
	n.lastStatus = text
	n.mu.Unlock()
	n.send("READY=1\nSTATUS=" + text)
	if n.enabled {
		n.log.Debug("told systemd the API is ready", "status", text, "watchdog", n.watchdog)
	}
}

// stopping sends STOPPING=1.
func (n *notifier) stopping() {
	n.mu.Lock()
	n.lastStatus = "stopping: sealing and closing the raft store"
	n.mu.Unlock()
	n.send("STOPPING=1\nSTATUS=stopping: sealing and closing the raft store")
}

// run follows the seal state and pings the watchdog until ctx ends. status
// reads the node's state in-process; probe checks that the API answers on
// its socket.
func (n *notifier) run(ctx context.Context, status func() api.Status, probe func(context.Context) error) {
	if !n.enabled {
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(n.statusInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			n.status(statusText(status()))
		}
	}()
	if n.watchdog > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.watchdogLoop(ctx, probe)
		}()
	}
	wg.Wait()
}

// watchdogLoop pings systemd's watchdog every WatchdogSec/2 as long as probe
// succeeds within a quarter of WatchdogSec, so that one slow probe is
// forgiven but two in a row let systemd restart the daemon.
func (n *notifier) watchdogLoop(ctx context.Context, probe func(context.Context) error) {
	every := n.watchdog / 2
	deadline := n.watchdog / 4
	t := time.NewTicker(every)
	defer t.Stop()
	unhealthy := false
	for {
		pctx, cancel := context.WithTimeout(ctx, deadline)
		err := probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			if unhealthy {
				n.log.Info("the API answers again; pinging systemd's watchdog")
				unhealthy = false
			}
			n.send(sddaemon.SdNotifyWatchdog)
		case !unhealthy:
			unhealthy = true
			n.log.Error("the API did not answer on its socket; not pinging systemd's watchdog, which restarts cofferd after WatchdogSec", "deadline", deadline, "watchdog", n.watchdog, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// statusText is the STATUS= line for a node state:
//
//	not initialised: run `coffer operator init`
//	sealed: waiting for unseal shares (1/3)
//	sealed: <why, e.g. the device failed> (unseal shares 0/3)
//	unsealed, leader
//	unsealed, follower of node2
//	unsealed, no raft leader
//
// An unsealed node whose seal device fails gets "; seal device failing: …".
func statusText(st api.Status) string {
	var s string
	switch {
	case !st.Initialized:
		s = "not initialised: run `coffer operator init`"
	case st.Sealed && (st.SealedReason == "" || strings.HasPrefix(st.SealedReason, "waiting for unseal shares")):
		s = fmt.Sprintf("sealed: waiting for unseal shares (%d/%d)", st.Progress, st.Threshold)
	case st.Sealed:
		// "sealed: sealed by an operator" says it twice.
		s = fmt.Sprintf("sealed: %s (unseal shares %d/%d)", strings.TrimPrefix(st.SealedReason, "sealed "), st.Progress, st.Threshold)
	case st.IsLeader:
		s = "unsealed, leader"
	case st.LeaderID != "":
		s = "unsealed, follower of " + st.LeaderID
	default:
		s = "unsealed, no raft leader"
	}
	if !st.Sealed && st.Initialized && st.SealDeviceError != "" {
		s += "; seal device failing: " + st.SealDeviceError
	}
	// One line: sd_notify separates fields with newlines.
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxStatusText {
		cut := maxStatusText
		for cut > 0 && s[cut]&0xC0 == 0x80 { // not inside a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// apiProbe returns a function that asks the API on the unix socket at path
// for its status, as any client would, and fails unless a status body comes
// back.
func apiProbe(path string) func(context.Context) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
		// A fresh connection each time: a probe must go through accept,
		// where a wedged server shows.
		DisableKeepAlives: true,
	}}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://coffer/v1/sys/status", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status answered %s", resp.Status)
		}
		var st api.Status
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
			return fmt.Errorf("status answer: %w", err)
		}
		return nil
	}
}

// waitServing polls probe until the API answers, the server stops (served
// closes), ctx ends or timeout passes.
func waitServing(ctx context.Context, probe func(context.Context) error, served <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := probe(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the API did not answer on its socket within %v: %w", timeout, err)
		}
		select {
		case <-served:
			return errors.New("the API server stopped before it answered")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}
