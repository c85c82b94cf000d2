package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/keystore"
)

// This file ties the audit log (package daemon/audit), the metrics and the
// unusual-access rules to the request path and to the node's events.
//
// Every request passes through serveHTTP, which wraps the ResponseWriter in
// an auditWriter: the moment a handler (or fail) writes the status, the
// request's audit entry is appended, and only once it is written does the
// answer go out. If the entry cannot be written, the answer is replaced by
// 503 audit_unavailable: nothing is acknowledged unaudited. While the log
// is known to be failing, requests are refused before they do anything
// (beginAudit). GET status, health and metrics are not audited (spec), but
// are counted in the metrics and work while the log fails.

// auditor is the node's audit log, metrics and alert rules.
type auditor struct {
	w     *audit.Writer
	m     *metrics
	rules *anomaly
	coal  *coalescer // coalesced entries of failing floods (audit_coalesce.go)
	// lastWarn (unix seconds) rate-limits the WARN lines of denied
	// unaudited requests (metrics), which no coalesced entry covers.
	lastWarn atomic.Int64
	log      hclog.Logger
}

// auditHeadFile remembers the chain head next to the raft state.
const auditHeadFile = "audit-head.json"

// Test seams: how the audit log file is opened (nil: the real file) and
// how often a failing log is retried (0: the writer's default, 1s).
var (
	auditOpenFile      func(path string) (audit.File, error)
	auditRetryInterval time.Duration
)

func newAuditor(s *Server, cfg *config.Config, log hclog.Logger) (*auditor, error) {
	wc := audit.Config{
		Path:     cfg.AuditPath(),
		HeadFile: filepath.Join(cfg.DataDir, auditHeadFile),
		NodeID:   cfg.NodeID,
		Logger:   log.Named("audit"),
		OpenFile: auditOpenFile,

		RetryInterval: auditRetryInterval,
	}
	var rules []config.AlertRule
	if a := cfg.Audit; a != nil {
		wc.Fsync, wc.FsyncInterval, rules = a.Fsync, a.FsyncInterval, a.Alerts
	}
	w, err := audit.Open(wc)
	if err != nil {
		return nil, err
	}
	a := &auditor{w: w, rules: newAnomaly(rules, time.Now), coal: newCoalescer(time.Now), log: log}
	g := gauges{
		sealed:       func() bool { return s.ks.Sealed() },
		initialized:  func() bool { return s.ks.Initialized() },
		isLeader:     func() bool { return s.node != nil && s.node.IsLeader() },
		hasLeader:    func() bool { return s.node != nil && s.node.LeaderID() != "" },
		auditFailing: func() bool { return w.Err() != nil },
		auditStats: func() (uint64, uint64, uint64, uint64) {
			st := w.Stats()
			return st.Entries, st.WriteErrors, st.Refused, st.Seq
		},
	}
	if cfg.Seal != nil {
		g.deviceType = cfg.Seal.Type
		g.deviceHealthy = func() bool { return s.seal.DeviceHealthy() }
	}
	a.m = newMetrics(g)
	if err := w.Err(); err != nil {
		log.Error("the audit log cannot be written: cofferd starts, but refuses every audited request until it can", "error", err)
	}
	return a, nil
}

// close writes the stop event and closes the log.
func (a *auditor) close() {
	a.flushCoalesced(true)
	a.w.Append(&audit.Entry{Type: audit.TypeEvent, Operation: "stop", Outcome: audit.OutcomeOK})
	if err := a.w.Close(); err != nil {
		a.log.Error("closing the audit log", "error", err)
	}
}

// reqAudit is what a request's audit entry collects while it is served.
type reqAudit struct {
	skip bool // GET status, health, metrics
	done bool
	// coalesce: a success that showed a non-admin nothing (an empty key
	// or secret list). It needs no grant at all, so a flood of it is
	// coalesced as a failing flood is (audit_coalesce.go).
	coalesce   bool
	key        string // for create, whose key is in the body
	keyVersion int
	errCode    string // set by fail
	hmac       map[string]string
	detail     map[string]string
}

func (ra *reqAudit) setDetail(k, v string) {
	if ra.detail == nil {
		ra.detail = map[string]string{}
	}
	ra.detail[k] = v
}

// auditWriter appends the request's audit entry when the status is
// written, before anything reaches the client.
type auditWriter struct {
	http.ResponseWriter
	s        *Server
	rc       *reqCtx
	wrote    bool
	replaced bool // the answer was replaced by 503 audit_unavailable
	status   int
}

func (a *auditWriter) WriteHeader(status int) {
	if a.wrote {
		return
	}
	a.wrote, a.status = true, status
	if err := a.s.finishRequest(a.rc, status); err != nil {
		a.replaced, a.status = true, http.StatusServiceUnavailable
		h := a.ResponseWriter.Header()
		for k := range h {
			if k != api.HeaderRequestID {
				delete(h, k)
			}
		}
		writeJSON(a.ResponseWriter, http.StatusServiceUnavailable, api.ErrorBody{Error: auditUnavailable(err)})
		return
	}
	a.ResponseWriter.WriteHeader(status)
}

func (a *auditWriter) Write(p []byte) (int, error) {
	if !a.wrote {
		a.WriteHeader(http.StatusOK)
	}
	if a.replaced {
		return len(p), nil
	}
	return a.ResponseWriter.Write(p)
}

// Flush lets streaming handlers flush through the wrapper.
func (a *auditWriter) Flush() {
	if !a.wrote {
		a.WriteHeader(http.StatusOK)
	}
	if f, ok := a.ResponseWriter.(http.Flusher); ok && !a.replaced {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (a *auditWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// auditUnavailable is the error body of a request refused because its
// audit entry cannot be written. It names no path: the caller may be any
// local service; status and the log tell the operator the details.
func auditUnavailable(err error) api.ErrorDetail {
	return api.ErrorDetail{Code: api.CodeAuditUnavailable, Message: "the audit log cannot be written, so cofferd refuses requests it cannot record: " +
		"an operator must free space on (or fix the permissions of) the audit log's file system; `coffer status` shows the cause, " +
		"and requests work again within a second of that"}
}

// unaudited reports whether a request is one that docs/api.md exempts from
// the audit log.
func unaudited(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	switch r.URL.Path {
	case "/v1/sys/status", "/v1/sys/health", "/v1/sys/metrics":
		return true
	}
	return false
}

// beginAudit wraps rc.w and refuses the request if the audit log is known
// to be failing. It returns false when the request was answered.
func (s *Server) beginAudit(rc *reqCtx) bool {
	rc.au.skip = unaudited(rc.r)
	rc.aw = auditWriter{ResponseWriter: rc.w, s: s, rc: rc}
	rc.w = &rc.aw
	if rc.au.skip {
		return true
	}
	if err := s.audit.w.Refuse(); err != nil {
		rc.au.done = true
		s.audit.m.auditRefuse.Inc()
		s.audit.m.observe(operationFor(rc.r.Method, rc.r.URL.Path), audit.OutcomeError, time.Since(rc.start))
		rc.aw.wrote, rc.aw.status = true, http.StatusServiceUnavailable
		writeJSON(rc.aw.ResponseWriter, http.StatusServiceUnavailable, api.ErrorBody{Error: auditUnavailable(err)})
		return false
	}
	return true
}

// endAudit finishes a request whose handler wrote nothing (net/http then
// answers 200 with no body) and returns the status actually sent.
func (s *Server) endAudit(rc *reqCtx, status int) int {
	if !rc.aw.wrote {
		rc.aw.WriteHeader(status)
	}
	return rc.aw.status
}

// finishRequest records a finished request: audit entry (unless exempt),
// metrics, unusual-access rules. A non-nil error means the entry could not
// be written and the request must be refused.
func (s *Server) finishRequest(rc *reqCtx, status int) error {
	ra := &rc.au
	if ra.done {
		return nil
	}
	ra.done = true
	op := operationFor(rc.r.Method, rc.r.URL.Path)
	outcome := audit.OutcomeOK
	switch {
	case status == http.StatusForbidden:
		outcome = audit.OutcomeDenied
	case status >= 400:
		outcome = audit.OutcomeError
	}
	a := s.audit
	var err error
	coalesced := false
	// A sealed node answers 503 before any grant is checked (the policies
	// are sealed too): anyone can get that answer, so it is coalesced too.
	if !ra.skip && (status >= 400 && status < 500 || ra.coalesce && status < 300 || ra.errCode == api.CodeSealed) {
		var done []*audit.Entry
		coalesced, done = a.coal.suppress(rc.caller, rc.id, op, outcome, ra.errCode)
		a.writeCoalesced(done)
	}
	if outcome == audit.OutcomeDenied && !coalesced && (!ra.skip || a.warnOncePerSecond()) {
		// One line per individually audited denial; a flood gets one line
		// per caller per second (writeCoalesced).
		s.log.Warn("request denied", "request-id", rc.id, "method", rc.r.Method, "path", rc.r.URL.Path, "caller", callerString(rc.caller))
	}
	if !ra.skip && !coalesced {
		e := &audit.Entry{
			Type: audit.TypeRequest, RequestID: rc.id, Operation: op, Caller: rc.auditCaller(),
			Key: ra.key, KeyVersion: ra.keyVersion, Outcome: outcome, HMAC: ra.hmac, Detail: ra.detail,
		}
		if outcome != audit.OutcomeOK {
			e.ErrorCode = ra.errCode
		}
		if rc.name != "" {
			if strings.HasPrefix(op, "policy-") {
				ra.setDetail("policy", rc.name)
				e.Detail = ra.detail
			} else if e.Key == "" {
				e.Key = rc.name
			}
		}
		if err = a.w.Append(e); err != nil {
			a.m.auditRefuse.Inc()
			outcome = audit.OutcomeError
		}
	}
	a.m.observe(op, outcome, time.Since(rc.start))
	if ra.skip {
		return err
	}
	uid, unit := int64(-1), ""
	if c := rc.caller; c != nil {
		uid, unit = int64(c.UID), accountableUnit(c)
	}
	if outcome == audit.OutcomeDenied {
		u := "none"
		if uid >= 0 {
			u = strconv.FormatInt(uid, 10)
		}
		a.m.deniedBy(u, unit)
	}
	for _, al := range a.rules.observe(uid, unit, op, outcome) {
		a.m.unusual.WithLabelValues(al.rule).Inc()
		s.log.Warn("unusual access", "rule", al.rule, "caller", callerString(rc.caller), "count", al.count, "threshold", al.threshold, "window", al.window)
		ev := &audit.Entry{Type: audit.TypeEvent, Operation: "unusual-access", Caller: auditCaller(rc.caller), Outcome: audit.OutcomeOK, Detail: al.detail(op, outcome)}
		if aerr := a.w.Append(ev); aerr != nil {
			s.log.Error("cannot record an unusual-access warning in the audit log", "rule", al.rule, "error", aerr)
		}
	}
	return err
}

func callerString(c *auth.Caller) string {
	if c == nil {
		return "unidentified"
	}
	return c.String()
}

// callerUnit is the unit as the audit log records it: a unit under a
// per-user service manager is named by that user, not the administrator,
// so it is marked "user:" to keep it apart from a system unit of the same
// name.
func callerUnit(c *auth.Caller) string {
	if c.Unit != "" && c.UserUnit {
		return "user:" + c.Unit
	}
	return c.Unit
}

// accountableUnit is the unit that per-caller bounds and counters key on
// (audit coalescing, alert rules, the denied-requests metric): a system
// unit is the administrator's and its own caller; a unit of a per-user
// manager is named by the user, who could start one per request to stay
// under every threshold or use up the metric's label sets, so it counts as
// its uid ("").
func accountableUnit(c *auth.Caller) string {
	if c.UserUnit {
		return ""
	}
	return c.Unit
}

// auditCaller is auditCaller(rc.caller), the connection's copy when there
// is one.
func (rc *reqCtx) auditCaller() *audit.Caller {
	if cs := rc.conn; cs != nil && cs.caller == rc.caller && cs.audit != nil {
		return cs.audit
	}
	return auditCaller(rc.caller)
}

func auditCaller(c *auth.Caller) *audit.Caller {
	if c == nil {
		return nil
	}
	return &audit.Caller{UID: c.UID, GID: c.GID, PID: c.PID, Unit: callerUnit(c)}
}

// operationFor names a request's operation (audit.RequestOperations) from
// its method and path alone, so that it is known even for requests the
// router refuses: the audit operation of the route (http.go). A method the
// endpoint does not have gets the endpoint's operation when all its methods
// share one; anything else is "unknown", which keeps the metrics' label set
// fixed.
func operationFor(method, path string) string {
	routes, _ := match(path)
	if routes == nil {
		return "unknown"
	}
	if rt, ok := routes[method]; ok {
		return rt.audit
	}
	op := ""
	for _, rt := range routes {
		if op != "" && rt.audit != op {
			return "unknown"
		}
		op = rt.audit
	}
	return op
}

// ---- crypto request details ----

// auditCrypto records what a crypto request's entry needs from its items:
// the key version (wrap, datakey: the version used; unwrap, rewrap: the
// version in the ciphertext, and for rewrap the new one in detail
// "new_version"), the batch size ("items", when more than one) and the
// items that failed ("failed_items"), and the HMAC of the aad. It runs
// after the keystore call (out is nil if the whole call failed).
//
// A batch whose items all carry the same aad records hmac.aad as a single
// request would, so a search by value finds it; one with differing aads
// records hmac.aad_batch, the HMAC of the length-prefixed aads in item
// order (uvarint length, then the bytes, for each item), which keeps the
// entry bounded whatever the batch size.
func (s *Server) auditCrypto(rc *reqCtx, items []keystore.Item, out []keystore.Result) {
	ra := &rc.au
	var versions []int
	for i := range items {
		v := 0
		switch {
		case items[i].Ciphertext != "":
			v = ciphertextVersion(items[i].Ciphertext)
		case i < len(out):
			v = out[i].Version
		}
		if v > 0 && !slices.Contains(versions, v) && len(versions) < 16 {
			versions = append(versions, v)
		}
	}
	ra.setKeyVersions(versions)
	for i := range out {
		if i < len(items) && items[i].Ciphertext != "" && out[i].Ciphertext != "" {
			ra.setDetail("new_version", strconv.Itoa(out[i].Version)) // rewrap
			break
		}
	}
	if len(items) > 1 {
		ra.setDetail("items", strconv.Itoa(len(items)))
	}
	failed := 0
	for i := range out {
		if out[i].Err != nil {
			failed++
		}
	}
	if failed > 0 {
		ra.setDetail("failed_items", strconv.Itoa(failed))
	}
	s.auditAAD(rc, items)
}

func (s *Server) auditAAD(rc *reqCtx, items []keystore.Item) {
	same, has := true, false
	for i := range items {
		has = has || len(items[i].AAD) > 0
		same = same && string(items[i].AAD) == string(items[0].AAD)
	}
	if !has {
		return
	}
	field, data := "aad", items[0].AAD
	if !same {
		field, data = "aad_batch", nil
		for i := range items {
			data = binary.AppendUvarint(data, uint64(len(items[i].AAD)))
			data = append(data, items[i].AAD...)
		}
	}
	h, err := s.ks.AuditHMAC(data)
	if err != nil {
		// Sealed between the crypto and here: the entry goes without it.
		return
	}
	rc.au.hmac = map[string]string{field: h}
}

// ciphertextVersion reads N from "coffer:vN:…" (0 if it is not there).
func ciphertextVersion(ct string) int {
	rest, ok := strings.CutPrefix(ct, keystore.CiphertextPrefix)
	if !ok {
		return 0
	}
	num, _, ok := strings.Cut(rest, ":")
	if !ok || len(num) == 0 || len(num) > 10 {
		return 0
	}
	v, err := strconv.Atoi(num)
	if err != nil || v < 0 {
		return 0
	}
	return v
}

// ---- events ----

// AuditEvent records an event (type "event") in the audit log, such as a
// raft leadership change, and returns once it is written (or an error
// wrapping audit.ErrUnavailable). op names the event (see
// audit.EventOperations; add new names there); kv are detail key/value
// pairs, as in hclog: AuditEvent("leadership", "leader", id, "term", "7").
// An odd kv leaves the last key with the value "(missing)". Values are
// recorded as given, so they must not hold secrets. Safe for concurrent use.
func (s *Server) AuditEvent(op string, kv ...string) error {
	var d map[string]string
	if len(kv) > 0 {
		d = make(map[string]string, (len(kv)+1)/2)
		for i := 0; i < len(kv); i += 2 {
			v := "(missing)"
			if i+1 < len(kv) {
				v = kv[i+1]
			}
			d[kv[i]] = v
		}
	}
	return s.auditEvent(&audit.Entry{Operation: op, Detail: d})
}

// auditEvent records e as an event; errors are logged (the event happened
// whether or not it could be recorded) and returned.
func (s *Server) auditEvent(e *audit.Entry) error {
	e.Type = audit.TypeEvent
	if e.Outcome == "" {
		e.Outcome = audit.OutcomeOK
	}
	err := s.audit.w.Append(e)
	if err != nil {
		s.log.Error("cannot record an event in the audit log", "event", e.Operation, "error", err)
	}
	return err
}

// ReopenAudit reopens the audit log file (after log rotation: rename the
// file, then send cofferd SIGHUP). The chain continues in the new file.
func (s *Server) ReopenAudit() error {
	err := s.audit.w.Reopen()
	if err != nil {
		return fmt.Errorf("reopening the audit log: %w", err)
	}
	return nil
}

// auditStatus fills the audit fields of the status.
func (s *Server) auditStatus(st *api.Status) {
	st.AuditSeq, st.AuditHash = s.audit.w.Head()
	if err := s.audit.w.Err(); err != nil {
		var ue *audit.UnavailableError
		msg := err.Error()
		if errors.As(err, &ue) {
			msg = fmt.Sprintf("the audit log %s cannot be written since %s (%v): every audited request is refused; free space or fix permissions there (requests resume within a second), or move the file aside and send cofferd SIGHUP",
				ue.Path, ue.Since.UTC().Format(time.RFC3339), ue.Err)
		}
		st.AuditError = msg
	}
}

// ---- handlers ----

func (s *Server) handleMetrics(rc *reqCtx) error {
	return s.audit.m.write(rc.w)
}

func (s *Server) handleAuditHash(rc *reqCtx) error {
	var req api.AuditHashRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	h, err := s.ks.AuditHMAC([]byte(req.Input))
	if err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, api.AuditHashResponse{Hash: h})
	return nil
}

// setKeyVersions records the key versions an operation touched: one as the
// entry's key_version, several (at most 16, sorted) as detail.key_versions.
func (ra *reqAudit) setKeyVersions(versions []int) {
	switch len(versions) {
	case 0:
	case 1:
		ra.keyVersion = versions[0]
	default:
		slices.Sort(versions)
		vs := make([]string, len(versions))
		for i, v := range versions {
			vs[i] = strconv.Itoa(v)
		}
		ra.setDetail("key_versions", strings.Join(vs, ","))
	}
}
