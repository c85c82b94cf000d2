package daemon

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/platform"
)

// The credential socket (docs/api.md, "Credential socket"): systemd's
// LoadCredential=ID:/run/coffer/credentials.sock connects, and the daemon
// answers with the latest value of the secret ID if — and only if — the
// peer is systemd acting for a unit (uid 0, in that unit's cgroup, the unit
// named in the peer's abstract address) and a policy grants that unit
// secret_read on ID. See docs/secrets.md for what systemd 252 does and why
// the refusal below is what it is.

// Refusal modes. systemd's protocol has no way to say "no": it reads to
// EOF and uses what it got. A plain close gives the unit an empty
// credential, and it starts. What makes systemd fail the start is a read
// error, and its read fails (E2BIG) once more than CREDENTIAL_SIZE_MAX
// (1 MiB) arrives. So a refusal sends credentialRefusalBytes zero bytes —
// never a value, never anything shorter — then closes. Measured on systemd
// 252 (TestE2E_SystemdCredentials, with a stand-in socket): no byte → the
// unit starts with an empty credential; more than 1 MiB → "Failed to set
// up credentials: Protocol error", status 243/CREDENTIALS, no start.
const (
	credentialSizeMax      = 1 << 20
	credentialRefusalBytes = credentialSizeMax + 64<<10
	// credentialTimeout bounds one connection, refusal included: a peer
	// that stops reading cannot hold a handler.
	credentialTimeout = 10 * time.Second
	// maxCredentialConns bounds concurrent connections; more wait in the
	// kernel's backlog (systemd starts units in parallel, but each
	// delivery is quick).
	maxCredentialConns = 64
)

// credentialRefusalMode names how a refusal ends the connection, for the
// audit entry's detail.refusal: "oversize" (see above).
const credentialRefusalMode = "oversize"

type credServer struct {
	ln  net.Listener
	wg  sync.WaitGroup
	sem chan struct{}
}

// startCredentials opens the credential socket when it is configured.
func (s *Server) startCredentials() error {
	cr := s.cfg.Credentials
	if cr == nil {
		return nil
	}
	ln, err := platform.ListenUnix(cr.Path, 0o600, "")
	if err != nil {
		return err
	}
	s.creds = &credServer{ln: ln, sem: make(chan struct{}, maxCredentialConns)}
	s.creds.wg.Add(1)
	go s.acceptCredentials(s.creds)
	s.log.Info("serving systemd credentials", "socket", cr.Path)
	return nil
}

// stopCredentials closes the socket and waits for deliveries in flight.
func (s *Server) stopCredentials() {
	if s.creds == nil {
		return
	}
	s.creds.ln.Close()
	s.creds.wg.Wait()
}

func (s *Server) acceptCredentials(cs *credServer) {
	defer cs.wg.Done()
	for {
		conn, err := cs.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("credential socket: accept failed", "error", err)
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		cs.sem <- struct{}{}
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			defer func() { <-cs.sem }()
			s.serveCredential(conn)
		}()
	}
}

// credRefusal is why a delivery was refused: the audit entry's outcome,
// error code and reason.
type credRefusal struct {
	outcome, code, reason string
}

func (s *Server) serveCredential(conn net.Conn) {
	defer conn.Close()
	start := time.Now()
	conn.SetDeadline(start.Add(credentialTimeout))
	e := &audit.Entry{Type: audit.TypeRequest, RequestID: s.newRequestID(), Operation: api.OpCredential, Detail: map[string]string{}}
	peer, err := auth.IdentifyCredentialPeer(conn)
	if err != nil {
		s.refuseCredential(conn, e, start, credRefusal{audit.OutcomeDenied, api.CodePermissionDenied, "cannot identify the peer: " + err.Error()})
		return
	}
	e.Caller = &audit.Caller{UID: peer.UID, GID: peer.GID, PID: peer.PID, Unit: peer.Unit}
	if peer.UserUnit && peer.Unit != "" {
		e.Caller.Unit = "user:" + peer.Unit
	}
	if peer.Comm != "" {
		e.Detail["comm"] = truncate(peer.Comm)
	}
	req, err := auth.ParseCredentialAddress(peer.Address)
	if err != nil {
		e.Detail["address"] = truncate(strconv.Quote(peer.Address))
		s.refuseCredential(conn, e, start, credRefusal{audit.OutcomeDenied, api.CodeBadRequest, err.Error()})
		return
	}
	e.Key = req.ID
	e.Detail["credential_id"] = req.ID
	e.Detail["unit"] = req.Unit
	switch {
	case peer.UID != 0:
		s.refuseCredential(conn, e, start, credRefusal{audit.OutcomeDenied, api.CodePermissionDenied,
			"the peer is uid " + strconv.FormatUint(uint64(peer.UID), 10) + ", not 0 (systemd): its address cannot vouch for a unit"})
		return
	case peer.Unit != req.Unit || peer.UserUnit:
		got := peer.Unit
		if got == "" {
			got = "none (or it could not be read)"
		}
		s.refuseCredential(conn, e, start, credRefusal{audit.OutcomeDenied, api.CodePermissionDenied,
			"the peer's cgroup is not the unit " + req.Unit + "'s: its unit is " + got})
		return
	case s.ks.Sealed():
		s.refuseCredential(conn, e, start, credRefusal{audit.OutcomeError, api.CodeSealed, "the node is sealed"})
		return
	case !s.policies.Load().AllowedUnit(req.Unit, api.OpSecretRead, req.ID):
		s.refuseCredential(conn, e, start, credRefusal{audit.OutcomeDenied, api.CodePermissionDenied,
			"no policy grants " + req.Unit + " secret_read on " + req.ID})
		return
	}
	// Serve the latest version the cluster has committed (a put on another
	// node just before `systemctl restart`); without a leader, this node's
	// own latest.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = s.node.Sync(ctx)
	cancel()
	sv, err := s.ks.GetSecret(req.ID, 0)
	if err != nil {
		_, d, _ := toAPIError(err)
		if d.Code == "" || d.Code == api.CodeInternal {
			d.Code = api.CodeInternal
		}
		s.refuseCredential(conn, e, start, credRefusal{audit.OutcomeError, d.Code, err.Error()})
		return
	}
	defer sv.Destroy()
	e.KeyVersion = sv.Version
	e.Outcome = audit.OutcomeOK
	// The entry is written before the value goes out: nothing is delivered
	// unaudited.
	if err := s.audit.w.Append(e); err != nil {
		s.audit.m.observe(api.OpCredential, audit.OutcomeError, time.Since(start))
		s.log.Error("credential refused: the audit log cannot be written", "unit", req.Unit, "credential-id", req.ID, "error", err)
		refuseConn(conn)
		return
	}
	s.audit.m.observe(api.OpCredential, audit.OutcomeOK, time.Since(start))
	if _, err := conn.Write(sv.Value.Bytes()); err != nil {
		s.log.Warn("credential delivery cut short", "unit", req.Unit, "credential-id", req.ID, "error", err)
		return
	}
	s.log.Info("credential delivered", "unit", req.Unit, "credential-id", req.ID, "version", sv.Version, "peer-pid", peer.PID, "peer-comm", peer.Comm)
}

// refuseCredential audits a refusal, logs it and ends the connection
// without the value.
func (s *Server) refuseCredential(conn net.Conn, e *audit.Entry, start time.Time, r credRefusal) {
	e.Outcome, e.ErrorCode = r.outcome, r.code
	e.Detail["reason"] = r.reason
	e.Detail["refusal"] = credentialRefusalMode
	if err := s.audit.w.Append(e); err != nil {
		s.log.Error("cannot record a credential refusal in the audit log", "error", err)
	}
	s.audit.m.observe(api.OpCredential, r.outcome, time.Since(start))
	s.credentialAlerts(e)
	s.log.Warn("credential refused", "unit", e.Detail["unit"], "credential-id", e.Detail["credential_id"], "reason", r.reason, "request-id", e.RequestID)
	refuseConn(conn)
}

var zeroChunk = make([]byte, 64<<10)

// refuseConn ends a refused connection so that systemd fails the unit's
// start: see credentialRefusalMode.
func refuseConn(conn net.Conn) {
	for sent := 0; sent < credentialRefusalBytes; sent += len(zeroChunk) {
		if _, err := conn.Write(zeroChunk); err != nil {
			return // the peer gave up reading: it failed already
		}
	}
}

// credentialAlerts feeds a refusal to the unusual-access rules (an alert
// rule may name the operation "credential"), as finishRequest does for API
// requests.
func (s *Server) credentialAlerts(e *audit.Entry) {
	uid, unit := int64(-1), ""
	if e.Caller != nil {
		uid, unit = int64(e.Caller.UID), e.Caller.Unit
	}
	for _, al := range s.audit.rules.observe(uid, unit, api.OpCredential, e.Outcome) {
		s.audit.m.unusual.WithLabelValues(al.rule).Inc()
		s.log.Warn("unusual access", "rule", al.rule, "uid", uid, "unit", unit, "count", al.count, "threshold", al.threshold, "window", al.window)
		ev := &audit.Entry{Type: audit.TypeEvent, Operation: "unusual-access", Caller: e.Caller, Outcome: audit.OutcomeOK, Detail: al.detail(api.OpCredential, e.Outcome)}
		if err := s.audit.w.Append(ev); err != nil {
			s.log.Error("cannot record an unusual-access warning in the audit log", "rule", al.rule, "error", err)
		}
	}
}
