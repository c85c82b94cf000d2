package daemon

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/audit"
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

// matchEnrol routes "enrol/tokens[/{id}]" below /v1/sys/.
func matchEnrol(rest string) (map[string]route, string) {
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
