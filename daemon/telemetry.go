package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"

	dto "github.com/prometheus/client_model/go"

	"github.com/coffer-kms/coffer/api"
)

// Metrics and status privacy (docs/api.md, "Caller identity and
// authorization"): the socket's GET /v1/sys/metrics names callers (the
// uid and unit labels of coffer_denied_requests_total) and their traffic,
// so it is for admins only; the optional telemetry listener serves the
// same metrics without any caller label, for a Prometheus scraper on TCP.
// The open status keeps its shape, but for a non-admin the texts that can
// carry device paths, library messages or an operator's uid become
// generic.

// callerLabels are the label names that identify a caller.
var callerLabels = map[string]bool{"uid": true, "unit": true}

// writeAggregate answers a scrape with every metric, caller-labelled
// counters summed over their callers into one series without labels.
func (m *metrics) writeAggregate(w http.ResponseWriter) error {
	mfs, err := m.reg.Gather()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(aggregate(mf)); err != nil {
			return err
		}
	}
	h := w.Header()
	h.Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(buf.Bytes())
	return err
}

// aggregate returns mf with its caller labels summed away. Only counters
// carry caller labels; any other family with one is dropped rather than
// risk exposing a caller.
func aggregate(mf *dto.MetricFamily) *dto.MetricFamily {
	has := false
	for _, m := range mf.Metric {
		for _, lp := range m.Label {
			has = has || callerLabels[lp.GetName()]
		}
	}
	if !has {
		return mf
	}
	out := &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type}
	if mf.GetType() != dto.MetricType_COUNTER {
		return out
	}
	var sum float64
	for _, m := range mf.Metric {
		sum += m.GetCounter().GetValue()
	}
	out.Metric = []*dto.Metric{{Counter: &dto.Counter{Value: &sum}}}
	return out
}

// telemetryMaxConns bounds the connections the telemetry listener holds.
// It is TCP, reachable by whoever can reach its address, and outside the
// API socket's caps (limits.go), while every connection costs a file
// descriptor the daemon shares with the API socket, raft and the audit
// log. A scraper needs one or two; beyond the cap a connection is closed
// at accept, so a flood of idle connections can delay scrapes but holds
// at most this many descriptors.
const telemetryMaxConns = 32

// telemetryMaxConnsPerIP bounds one remote address's share, so that a
// flood from one address does not keep a scraper at another out.
const telemetryMaxConnsPerIP = 4

// serveTelemetry starts the telemetry listener, if configured. It serves
// GET /metrics only, with the aggregate metrics, and nothing else.
func (s *Server) serveTelemetry() error {
	t := s.cfg.Telemetry
	if t == nil {
		return nil
	}
	ln, err := net.Listen("tcp", t.PrometheusListen)
	if err != nil {
		return fmt.Errorf("telemetry: cannot listen on prometheus_listen %s: %w", t.PrometheusListen, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if err := s.audit.m.writeAggregate(w); err != nil {
			s.log.Error("telemetry scrape failed", "error", err)
		}
	})
	s.telemetry = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       s.readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          s.http.ErrorLog,
	}
	s.telemetryAddr = ln.Addr().String()
	s.log.Info("serving aggregate metrics for Prometheus", "address", s.telemetryAddr)
	ln = &capListener{Listener: ln, sem: make(chan struct{}, telemetryMaxConns), perIP: map[string]int{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.telemetry.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("the telemetry listener stopped", "error", err)
		}
	}()
	return nil
}

// capListener closes connections beyond cap(sem) in all, or beyond
// telemetryMaxConnsPerIP of one remote address, at accept (it does not
// wait: a blocked accept would let a flood hold the scraper out longer).
type capListener struct {
	net.Listener
	sem   chan struct{}
	mu    sync.Mutex
	perIP map[string]int
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := c.RemoteAddr().String()
		if h, _, err := net.SplitHostPort(ip); err == nil {
			ip = h
		}
		l.mu.Lock()
		ok := l.perIP[ip] < telemetryMaxConnsPerIP
		if ok {
			select {
			case l.sem <- struct{}{}:
				l.perIP[ip]++
			default:
				ok = false
			}
		}
		l.mu.Unlock()
		if !ok {
			c.Close()
			continue
		}
		return &capConn{Conn: c, l: l, ip: ip}, nil
	}
}

// capConn gives its slot back once, at its first Close.
type capConn struct {
	net.Conn
	l    *capListener
	ip   string
	once sync.Once
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.perIP[c.ip]--; c.l.perIP[c.ip] <= 0 {
			delete(c.l.perIP, c.ip)
		}
		c.l.mu.Unlock()
		<-c.l.sem
	})
	return err
}

func (s *Server) closeTelemetry() {
	if s.telemetry == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	s.telemetry.Shutdown(ctx)
	cancel()
}

// Generic status texts for non-admins (docs/api.md).
const (
	genericDeviceError = "seal device unavailable"
	genericAuditError  = "audit log unavailable: every audited request is refused until an administrator fixes it"
	genericSealed      = "seal device unavailable: an administrator sees the cause in `coffer status`"
	genericOpSealed    = "sealed by an operator: unseal with shares (`coffer operator unseal`)"
)

// statusFor is the status as rc's caller may see it: an admin sees every
// text; anyone else generic ones instead of texts that may carry paths,
// device or library messages or an operator's uid. The progress texts
// ("not initialised", "waiting for unseal shares") are generic already.
func (s *Server) statusFor(rc *reqCtx) api.Status {
	st := s.status()
	if s.isAdmin(rc.caller) {
		return st
	}
	if raw, byOperator := s.seal.SealedReason(); raw != "" && st.SealedReason == raw {
		st.SealedReason = genericSealed
		if byOperator {
			st.SealedReason = genericOpSealed
		}
	}
	if st.SealDeviceError != "" {
		st.SealDeviceError = genericDeviceError
	}
	if st.AuditError != "" {
		st.AuditError = genericAuditError
	}
	return st
}
