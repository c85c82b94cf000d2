package daemon

import (
	"bytes"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
)

// metrics are cofferd's Prometheus metrics, served as text by GET
// /v1/sys/metrics. Each Server has its own registry (tests run several).
//
// The request path pays for them with a few atomic adds and one map read:
// the counters and histogram of an operation are resolved the first time it
// is seen (so a scrape shows only operations that happened) and cached, so
// no label hashing happens per request. No label ever carries a key name, a
// request value or anything a caller chooses, except the denied callers'
// uid and unit, which are bounded (maxDeniedCallers).
type metrics struct {
	reg *prometheus.Registry

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	ops      sync.Map // operation name → *opMetrics

	denied      *prometheus.CounterVec
	deniedMu    sync.Mutex
	deniedSeen  map[[2]string]bool
	unusual     *prometheus.CounterVec
	auditRefuse prometheus.Counter
}

type opMetrics struct {
	ok, denied, err prometheus.Counter
	duration        prometheus.Observer
}

// maxDeniedCallers bounds the label sets of coffer_denied_requests_total;
// callers beyond it are counted under uid "other".
const maxDeniedCallers = 1000

// Latency buckets: wrap answers in tens of microseconds, a raft write in
// milliseconds, a device operation in up to seconds.
var latencyBuckets = []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 2.5, 10}

// gauges are the values read at scrape time.
type gauges struct {
	sealed, initialized, isLeader, hasLeader func() bool
	// deviceHealthy is nil when the node has no seal device.
	deviceHealthy func() bool
	deviceType    string
	auditFailing  func() bool
	auditStats    func() (entries, writeErrors, refused, seq uint64)
}

func newMetrics(g gauges) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), deniedSeen: map[[2]string]bool{}}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coffer_requests_total", Help: "API requests by operation and outcome (ok, denied, error).",
	}, []string{"operation", "outcome"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "coffer_request_duration_seconds", Help: "Time from receiving a request to answering it, including its audit entry.", Buckets: latencyBuckets,
	}, []string{"operation"})
	m.denied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coffer_denied_requests_total", Help: "Requests refused with permission_denied, by caller (uid and systemd unit; uid \"none\" for an unidentified peer).",
	}, []string{"uid", "unit"})
	m.unusual = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coffer_unusual_access_total", Help: "Unusual-access warnings raised, by rule (see the audit block's alert rules).",
	}, []string{"rule"})
	m.auditRefuse = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "coffer_audit_refused_requests_total", Help: "Requests refused because the audit log could not be written.",
	})
	gauge := func(name, help string, f func() bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return b2f(f()) })
	}
	m.reg.MustRegister(m.requests, m.duration, m.denied, m.unusual, m.auditRefuse,
		gauge("coffer_sealed", "1 while this node is sealed (holds no keys).", g.sealed),
		gauge("coffer_initialized", "1 once the cluster is initialised.", g.initialized),
		gauge("coffer_raft_leader", "1 while this node is the raft leader.", g.isLeader),
		gauge("coffer_raft_has_leader", "1 while this node knows a raft leader.", g.hasLeader),
		gauge("coffer_audit_failing", "1 while the audit log cannot be written (every audited request is refused).", g.auditFailing),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "coffer_audit_entries_total", Help: "Audit entries written by this process."},
			func() float64 { e, _, _, _ := g.auditStats(); return float64(e) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "coffer_audit_write_errors_total", Help: "Failed writes and fsyncs of the audit log."},
			func() float64 { _, we, _, _ := g.auditStats(); return float64(we) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_audit_seq", Help: "seq of the last audit entry written (status audit_seq)."},
			func() float64 { _, _, _, s := g.auditStats(); return float64(s) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if g.deviceHealthy != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "coffer_seal_device_healthy", Help: "1 while the node's seal device (HSM or TPM) answers its health check.",
			ConstLabels: prometheus.Labels{"type": g.deviceType},
		}, func() float64 { return b2f(g.deviceHealthy()) }))
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// observe counts one finished request. op comes from operationFor, a
// fixed set, so the label values stay bounded.
func (m *metrics) observe(op, outcome string, d time.Duration) {
	v, ok := m.ops.Load(op)
	if !ok {
		v, _ = m.ops.LoadOrStore(op, &opMetrics{
			ok:       m.requests.WithLabelValues(op, "ok"),
			denied:   m.requests.WithLabelValues(op, "denied"),
			err:      m.requests.WithLabelValues(op, "error"),
			duration: m.duration.WithLabelValues(op),
		})
	}
	om := v.(*opMetrics)
	switch outcome {
	case "ok":
		om.ok.Inc()
	case "denied":
		om.denied.Inc()
	default:
		om.err.Inc()
	}
	om.duration.Observe(d.Seconds())
}

// deniedBy counts a denied request by its caller.
func (m *metrics) deniedBy(uid, unit string) {
	k := [2]string{uid, unit}
	m.deniedMu.Lock()
	if !m.deniedSeen[k] {
		if len(m.deniedSeen) >= maxDeniedCallers {
			k = [2]string{"other", ""}
		}
		m.deniedSeen[k] = true
	}
	m.deniedMu.Unlock()
	m.denied.WithLabelValues(k[0], k[1]).Inc()
}

// write answers a scrape in the Prometheus text format.
func (m *metrics) write(w http.ResponseWriter) error {
	mfs, err := m.reg.Gather()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
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
