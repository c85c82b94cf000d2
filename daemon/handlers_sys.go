package daemon

import (
	"context"
	"net/http"
	"strconv"

	"filippo.io/age"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/seal"
)

func (s *Server) handleStatus(rc *reqCtx) error {
	writeJSON(rc.w, http.StatusOK, s.statusFor(rc))
	return nil
}

func (s *Server) handleHealth(rc *reqCtx) error {
	st := s.statusFor(rc)
	code := http.StatusOK
	switch {
	case !st.Initialized:
		code = http.StatusNotImplemented
	case st.Sealed || st.LeaderID == "", st.AuditError != "":
		code = http.StatusServiceUnavailable
	}
	writeJSON(rc.w, code, st)
	return nil
}

func (s *Server) handleInit(rc *reqCtx) error {
	var req api.InitRequest
	if err := decodeOptional(rc, &req); err != nil {
		return err
	}
	if req.Shares == 0 && req.Threshold == 0 {
		req.Shares, req.Threshold = 5, 3
	}
	recipients, err := seal.ShareParams(req.Shares, req.Threshold, req.Recipients)
	if err != nil {
		return err
	}
	resp, err := s.Initialize(rc.r.Context(), req.Shares, req.Threshold, recipients)
	if err != nil {
		return err
	}
	writeShares(rc.w, resp.Shares, resp.Encrypted) // not encoding/json: zeroing.go
	return nil
}

// Initialize initialises the cluster (seal.Manager.Init) and records it in
// the audit log.
func (s *Server) Initialize(ctx context.Context, shares, threshold int, recipients []age.Recipient) (api.InitResponse, error) {
	resp, err := s.seal.Init(ctx, shares, threshold, recipients)
	if err != nil {
		return resp, err
	}
	s.AuditEvent("init", "cluster_id", s.ks.SealConfig().ClusterID, "shares", strconv.Itoa(shares), "threshold", strconv.Itoa(threshold), "encrypted_shares", strconv.FormatBool(resp.Encrypted))
	return resp, nil
}

func (s *Server) handleUnseal(rc *reqCtx) error {
	var req api.UnsealRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	if req.Reset {
		if req.Share != "" {
			return badRequest("send either a share or reset, not both")
		}
		s.seal.Reset()
		s.log.Info("unseal progress reset")
		writeJSON(rc.w, http.StatusOK, s.statusFor(rc)) // unseal-group members are not admins
		return nil
	}
	if req.Share == "" {
		return badRequest(`send {"share": "…"} or {"reset": true}`)
	}
	p, err := s.seal.AddShare(req.Share)
	if p.Accepted {
		rc.au.setDetail("progress", strconv.Itoa(p.Entered)+"/"+strconv.Itoa(p.Threshold))
	}
	if err != nil {
		return err
	}
	if p.Unsealed {
		rc.au.setDetail("unsealed", "true")
	}
	if p.BreakGlass {
		s.auditEvent(&audit.Entry{Operation: "break-glass-unseal", Caller: auditCaller(rc.caller), RequestID: rc.id, Detail: map[string]string{"seal_type": s.seal.Kind()}})
	}
	writeJSON(rc.w, http.StatusOK, s.statusFor(rc)) // unseal-group members are not admins
	return nil
}

func (s *Server) handleSeal(rc *reqCtx) error {
	s.seal.Seal(rc.caller.UID)
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) handleReseal(rc *reqCtx) error {
	if err := s.seal.Reseal(rc.r.Context()); err != nil {
		return err
	}
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) handleRotate(rc *reqCtx) error {
	term, err := s.ks.RotateKeyring(rc.r.Context())
	if err != nil {
		return err
	}
	s.log.Info("keyring rotated", "term", term)
	rc.au.setDetail("term", strconv.Itoa(term))
	writeJSON(rc.w, http.StatusOK, api.RotateResponse{Term: term})
	return nil
}
