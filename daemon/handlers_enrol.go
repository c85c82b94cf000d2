package daemon

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/seal"
	"github.com/coffer-kms/coffer/keystore"
)

// Enrolment tokens (docs/api.md "Node enrolment"): an admin issues a
// one-time token for a node id; a node id that is not a member joins an
// initialised cluster only with one (cluster/trust.go). The token is shown
// once; the replicated state keeps only its hash (keystore/enrol.go).

var enrolTokensRoutes = map[string]route{
	"POST": {accessAdmin, "", "enrol-token-create", (*Server).handleIssueEnrolToken},
	"GET":  {accessAdmin, "", "enrol-token-list", synced((*Server).handleListEnrolTokens)},
}

var enrolTokenRoutes = map[string]route{
	"DELETE": {accessAdmin, "", "enrol-token-revoke", (*Server).handleRevokeEnrolToken},
}

// enrolRoutes: a sealed member with a seal device presents a token and is
// enrolled (unsealed, its device blob written). Admin only; it must work
// on a sealed node, which is what it is for.
var enrolRoutes = map[string]route{
	"POST": {accessAdminSealed, "", "enrol", (*Server).handleEnrol},
}

// matchEnrol routes "enrol" and "enrol/tokens[/{id}]" below /v1/sys/.
func matchEnrol(rest string) (map[string]route, string) {
	if rest == "enrol" {
		return enrolRoutes, ""
	}
	if rest == "enrol/tokens" {
		return enrolTokensRoutes, ""
	}
	if id, ok := strings.CutPrefix(rest, "enrol/tokens/"); ok && id != "" && !strings.Contains(id, "/") {
		return enrolTokenRoutes, id
	}
	return nil, ""
}

func (s *Server) handleIssueEnrolToken(rc *reqCtx) error {
	var req api.EnrolTokenRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	ttl := time.Hour
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return badRequest("ttl %q is not a duration: give e.g. \"30m\" or \"1h\" (1m to 24h)", truncate(req.TTL))
		}
		ttl = d
	}
	token, info, err := s.ks.IssueEnrolToken(rc.r.Context(), req.NodeID, ttl)
	if err != nil {
		return err
	}
	rc.au.setDetail("node_id", info.NodeID)
	rc.au.setDetail("token_id", info.ID)
	s.log.Info("enrolment token issued", "node-id", info.NodeID, "token-id", info.ID, "expires", info.ExpiresAt, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, api.EnrolTokenResponse{Token: token, NodeID: info.NodeID, ExpiresAt: info.ExpiresAt})
	return nil
}

func (s *Server) handleListEnrolTokens(rc *reqCtx) error {
	out := api.EnrolTokenList{Tokens: []api.EnrolToken{}}
	for _, t := range s.ks.ListEnrolTokens() {
		out.Tokens = append(out.Tokens, api.EnrolToken{ID: t.ID, NodeID: t.NodeID, ExpiresAt: t.ExpiresAt, UsedAt: t.UsedAt})
	}
	writeJSON(rc.w, http.StatusOK, out)
	return nil
}

func (s *Server) handleRevokeEnrolToken(rc *reqCtx) error {
	rc.au.setDetail("token_id", rc.name)
	if err := s.ks.RevokeEnrolToken(rc.r.Context(), rc.name); err != nil {
		return err
	}
	s.log.Info("enrolment token revoked", "token-id", rc.name, "uid", rc.caller.UID)
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}

// auditRefusal records a peer refused at the cluster port (the cluster
// package rate-limits these per node id, path and reason).
func (s *Server) auditRefusal(r cluster.Refusal) {
	if !s.auditReady.Load() {
		return
	}
	s.auditEvent(&audit.Entry{Operation: "cluster-refused", Outcome: audit.OutcomeDenied, Detail: map[string]string{
		"remote": r.Remote, "cert_node_id": r.NodeID, "what": truncate(r.What), "reason": truncate(r.Reason)}})
}

// auditMembership records a join or removal the leader carried out.
func (s *Server) auditMembership(change, nodeID, address string) {
	if !s.auditReady.Load() {
		return
	}
	d := map[string]string{"change": change, "node_id": nodeID}
	if address != "" {
		d["address"] = address
	}
	s.auditEvent(&audit.Entry{Operation: "membership", Detail: d})
}

// originOf describes a request's caller for the leader's audit log.
func originOf(rc *reqCtx) cluster.Origin {
	o := cluster.Origin{RequestID: rc.id, Operation: operationFor(rc.r.Method, rc.r.URL.Path)}
	if rc.caller != nil {
		uid := int64(rc.caller.UID)
		o.UID, o.Unit = &uid, rc.caller.Unit
	}
	return o
}

// auditForwarded records on the leader a write a follower forwarded: the
// origin node (from its certificate) and the caller there.
func (s *Server) auditForwarded(f cluster.Forwarded) {
	if !s.auditReady.Load() {
		return
	}
	d := map[string]string{"origin_node_id": f.NodeID, "command": f.Op, "path": truncate(f.Path),
		"origin_request_id": f.Origin.RequestID, "origin_operation": f.Origin.Operation}
	if f.Origin.UID != nil {
		d["origin_uid"] = strconv.FormatInt(*f.Origin.UID, 10)
	}
	if f.Origin.Unit != "" {
		d["origin_unit"] = f.Origin.Unit
	}
	e := &audit.Entry{Operation: "forwarded-write", Detail: d}
	if f.Outcome != "ok" {
		e.Outcome = audit.OutcomeError
		d["error"] = f.Outcome
	}
	s.auditEvent(e)
}

// handleEnrol enrols this sealed member (docs/api.md "Node enrolment"): it
// makes a one-time HPKE key pair, asks an unsealed member for the root key
// with the token, seals the key with its own device and is unsealed.
func (s *Server) handleEnrol(rc *reqCtx) error {
	var req api.EnrolRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	if req.Token == "" {
		return badRequest("send {\"token\": \"coffer-enrol-…\"}: an admin issues one with `coffer operator enrol token create --node %s`", s.cfg.NodeID)
	}
	if !s.seal.HasDevice() {
		return badRequest("this node has no seal device configured, so it cannot be enrolled: add a seal \"pkcs11\" or seal \"tpm\" block to its config and restart it, or unseal it with shares (`coffer operator unseal`)")
	}
	if !s.ks.Initialized() {
		return &httpError{http.StatusServiceUnavailable, api.CodeSealed, "this node has no cluster state yet: join the cluster first (`coffer operator raft join ADDR --token -`), or wait until it has caught up"}
	}
	if !s.ks.Sealed() {
		// Nothing to do: the token is not used up.
		writeJSON(rc.w, http.StatusOK, s.statusFor(rc))
		return nil
	}
	e, err := s.seal.NewEnrolment(req.Token)
	if err != nil {
		if errors.Is(err, keystore.ErrInvalidToken) {
			s.auditEnrolRefusedHere(rc, "malformed token")
		}
		return err
	}
	rc.au.setDetail("token_id", e.TokenID)
	ct, err := s.node.Enrol(rc.r.Context(), req.Token, e.Public)
	if err != nil {
		switch {
		case errors.Is(err, cluster.ErrInvalidToken):
			return &httpError{http.StatusBadRequest, api.CodeInvalidToken, keystore.ErrInvalidToken.Error()}
		case errors.Is(err, cluster.ErrForbidden):
			return &httpError{http.StatusForbidden, api.CodePermissionDenied, err.Error()}
		case errors.Is(err, cluster.ErrNoLeader):
			return err
		}
		return &httpError{http.StatusServiceUnavailable, api.CodeNoLeader, err.Error()}
	}
	if err := s.completeEnrolment(rc, e, ct); err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, s.statusFor(rc))
	return nil
}

// completeEnrolment waits (bounded) until this node has the replicated
// keyring the root key must open, then seals the key with the device and
// unseals (seal.Manager.CompleteEnrolment).
func (s *Server) completeEnrolment(rc *reqCtx, e *seal.Enrolment, ct []byte) error {
	ctx, cancel := context.WithTimeout(rc.r.Context(), 30*time.Second)
	defer cancel()
	for !s.ks.Initialized() {
		select {
		case <-ctx.Done():
			return &httpError{http.StatusServiceUnavailable, api.CodeNoLeader, "joined, but the cluster state did not arrive in 30s; the token is used up: ask an admin for a new one and run `coffer operator enrol -` once the node has caught up"}
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := s.node.CatchUp(ctx); err != nil {
		s.log.Warn("enrol: raft log not yet applied", "error", err)
	}
	if err := s.seal.CompleteEnrolment(ctx, e, ct); err != nil {
		s.log.Error("enrolment failed", "token-id", e.TokenID, "error", err)
		return err
	}
	rc.au.setDetail("enrolled", "true")
	return nil
}

// enrolKey answers an enrolment on this (unsealed) node: the root key
// encrypted to the enrolling node's one-time HPKE key (cluster.Config).
func (s *Server) enrolKey(nodeID, token string, pub []byte) ([]byte, error) {
	id, ok := keystore.EnrolTokenID(token)
	if !ok {
		return nil, keystore.ErrInvalidToken
	}
	return s.seal.EncryptRootForEnrol(nodeID, id, pub)
}

// auditEnrol records on the answering node an enrolment it answered or
// refused: which node (its certificate), from where, which token (its id).
func (s *Server) auditEnrol(ev cluster.EnrolEvent) {
	if !s.auditReady.Load() {
		return
	}
	d := map[string]string{"node_id": ev.NodeID, "remote": ev.Remote}
	if ev.TokenID != "" {
		d["token_id"] = ev.TokenID
	}
	e := &audit.Entry{Operation: "enrol-answered", Detail: d}
	if ev.Refused != "" {
		e.Operation, e.Outcome = "enrol-refused", audit.OutcomeDenied
		d["reason"] = truncate(ev.Refused)
		if ev.TokenID != "" {
			// The caller only heard "invalid"; the admins reading this
			// log learn why.
			d["why"] = s.ks.EnrolTokenRefusal(ev.TokenID, ev.NodeID)
		}
	}
	s.auditEvent(e)
}

// auditEnrolRefusedHere records a token refused on the enrolling node
// itself before any member was asked.
func (s *Server) auditEnrolRefusedHere(rc *reqCtx, reason string) {
	rc.au.setDetail("refused", reason)
}
