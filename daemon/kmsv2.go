package daemon

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/kmsv2"
	"github.com/coffer-kms/coffer/keystore"
)

// This file is the node's side of the Kubernetes KMS v2 plugin (package
// daemon/kmsv2): the same policy check, keystore calls and audit log as
// the HTTP API's wrap and unwrap, for calls that arrive over gRPC.

// startKMS makes the KMS v2 socket and serves it in the background when the
// config has a kms_v2 block. A socket that cannot be made (a live plugin
// already there, a bad group) fails the start like the API socket does.
func (s *Server) startKMS() error {
	k := s.cfg.KMSv2
	if k == nil {
		return nil
	}
	ks, err := kmsv2.Listen(kmsv2.Config{
		Path: k.Path, Mode: k.Mode, Group: k.Group, Key: k.Key,
		Backend: kmsBackend{s}, Logger: s.log.Named("kms-v2"),
	})
	if err != nil {
		return err
	}
	s.kms = ks
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := ks.Serve(); err != nil {
			s.log.Error("the KMS v2 plugin stopped serving", "socket", k.Path, "error", err)
		}
	}()
	return nil
}

// stopKMS stops the plugin (calls in flight get a moment to finish) and
// removes its socket.
func (s *Server) stopKMS() {
	if s.kms != nil {
		s.kms.Close(5 * time.Second)
	}
}

// kmsBackend implements kmsv2.Backend.
type kmsBackend struct{ s *Server }

var _ kmsv2.Backend = kmsBackend{}

func (b kmsBackend) Admit() error { return b.s.audit.w.Refuse() }

func (b kmsBackend) DeviceError() error {
	if e := b.s.seal.DeviceError(); e != "" {
		return fmt.Errorf("%w (%s): %s; see `coffer status` and docs/devices.md", kmsv2.ErrDeviceFailing, b.s.seal.Kind(), e)
	}
	return nil
}

func (b kmsBackend) Allowed(c *auth.Caller, op, key string) bool { return b.s.allowed(c, op, key) }

// EnsureKey finds the key, after catching up with the leader if this node
// does not know it, and otherwise creates it through raft. The creation is
// audited as a create request of the caller, marked as made by the plugin.
func (b kmsBackend) EnsureKey(ctx context.Context, c *auth.Caller, key string) (api.Key, error) {
	s := b.s
	k, err := s.ks.GetKey(key)
	if errors.Is(err, keystore.ErrNotFound) && s.node.Sync(ctx) == nil {
		k, err = s.ks.GetKey(key)
	}
	if !errors.Is(err, keystore.ErrNotFound) {
		return k, err
	}
	start := time.Now()
	k, err = s.ks.CreateKey(ctx, key, "", "")
	if errors.Is(err, keystore.ErrAlreadyExists) {
		// Another node's plugin created it first.
		if s.node.Sync(ctx) == nil {
			return s.ks.GetKey(key)
		}
	}
	rec := &kmsv2.Record{Op: api.OpCreate, Caller: c, Key: key, KeyVersion: k.LatestVersion, Start: start, Err: err}
	if aerr := b.record(rec, map[string]string{"via": "kms_v2"}); aerr != nil && err == nil {
		// The key exists now; only its entry is missing. Say so loudly
		// rather than pretend it was not made.
		s.log.Error("the KMS v2 plugin created its key but could not record it in the audit log", "key", key, "error", aerr)
	}
	if err == nil {
		s.log.Info("the KMS v2 plugin created its key at first use", "key", key, "uid", uidOf(c))
	}
	return k, err
}

func uidOf(c *auth.Caller) int64 {
	if c == nil {
		return -1
	}
	return int64(c.UID)
}

func (b kmsBackend) Wrap(ctx context.Context, key string, pt, aad []byte) (string, int, error) {
	r, err := b.one(ctx, b.s.ks.Wrap, key, keystore.Item{Plaintext: pt, AAD: aad})
	return r.Ciphertext, r.Version, err
}

func (b kmsBackend) Unwrap(ctx context.Context, key, ct string, aad []byte) ([]byte, int, error) {
	r, err := b.one(ctx, b.s.ks.Unwrap, key, keystore.Item{Ciphertext: ct, AAD: aad})
	return r.Plaintext, r.Version, err
}

// one runs a single-item crypto operation; like the HTTP API's crypto, it
// catches up with the leader once when the key or version is one this node
// has not applied yet.
func (b kmsBackend) one(ctx context.Context, op func(string, []keystore.Item) ([]keystore.Result, error), key string, it keystore.Item) (keystore.Result, error) {
	items := []keystore.Item{it}
	out, err := op(key, items)
	if needsCatchUp(out, err) {
		for _, r := range out {
			clear(r.Plaintext)
		}
		_ = b.s.node.Sync(ctx)
		out, err = op(key, items)
	}
	if err != nil {
		return keystore.Result{}, err
	}
	return out[0], out[0].Err
}

func (b kmsBackend) Record(r *kmsv2.Record) error {
	var d map[string]string
	if r.UID != "" {
		d = map[string]string{"uid": r.UID}
	}
	return b.record(r, d)
}

// record appends the entry, counts it and feeds the unusual-access rules,
// as finishRequest does for HTTP requests.
func (b kmsBackend) record(r *kmsv2.Record, detail map[string]string) error {
	s := b.s
	a := s.audit
	outcome, code, clientErr := audit.OutcomeOK, "", false
	switch {
	case r.Err == nil:
	case errors.Is(r.Err, kmsv2.ErrPermissionDenied):
		outcome, code, clientErr = audit.OutcomeDenied, api.CodePermissionDenied, true
	default:
		outcome = audit.OutcomeError
		status, d, _ := toAPIError(r.Err)
		code, clientErr = d.Code, status < 500
	}
	e := &audit.Entry{
		Type: audit.TypeRequest, RequestID: s.newRequestID(), Operation: r.Op, Caller: auditCaller(r.Caller),
		Key: r.Key, KeyVersion: r.KeyVersion, Outcome: outcome, ErrorCode: code, Detail: detail,
	}
	// A flood of denied or malformed calls is coalesced as the API
	// socket's is (audit_coalesce.go): whoever can open the KMS socket
	// (kms_v2.group) must not fill the audit disk, which would make the
	// node refuse everyone.
	coalesced := false
	if clientErr {
		var done []*audit.Entry
		coalesced, done = a.coal.suppress(r.Caller, e.RequestID, r.Op, outcome, code)
		a.writeCoalesced(done)
	}
	var err error
	if !coalesced {
		if err = a.w.Append(e); err != nil {
			a.m.auditRefuse.Inc()
			outcome = audit.OutcomeError
		}
	}
	a.m.observe(r.Op, outcome, time.Since(r.Start))
	uid, unit := int64(-1), ""
	if c := r.Caller; c != nil {
		uid, unit = int64(c.UID), accountableUnit(c)
	}
	if outcome == audit.OutcomeDenied {
		u := "none"
		if uid >= 0 {
			u = strconv.FormatInt(uid, 10)
		}
		a.m.deniedBy(u, unit)
	}
	if outcome == audit.OutcomeDenied && !coalesced {
		s.log.Warn("KMS v2 call denied", "request-id", e.RequestID, "operation", r.Op, "key", r.Key, "caller", callerString(r.Caller))
	}
	for _, al := range a.rules.observe(uid, unit, r.Op, outcome) {
		a.m.unusual.WithLabelValues(al.rule).Inc()
		s.log.Warn("unusual access", "rule", al.rule, "caller", callerString(r.Caller), "count", al.count, "threshold", al.threshold, "window", al.window)
		ev := &audit.Entry{Type: audit.TypeEvent, Operation: "unusual-access", Caller: auditCaller(r.Caller), Outcome: audit.OutcomeOK, Detail: al.detail(r.Op, outcome)}
		if aerr := a.w.Append(ev); aerr != nil {
			s.log.Error("cannot record an unusual-access warning in the audit log", "rule", al.rule, "error", aerr)
		}
	}
	return err
}
