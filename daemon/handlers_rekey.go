package daemon

import (
	"github.com/coffer-kms/coffer/api"
)

// handleRekey makes a new root key and new shares, authorised by T current
// shares (seal.Manager.Rekey).
func (s *Server) handleRekey(rc *reqCtx) error {
	var req api.RekeyRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	resp, err := s.seal.Rekey(rc.r.Context(), req.CurrentShares, req.Shares, req.Threshold, req.Recipients)
	if err != nil {
		return err
	}
	s.log.Warn("rekeyed: new root key and shares; the old shares no longer work", "shares", req.Shares, "threshold", req.Threshold, "uid", rc.caller.UID)
	writeShares(rc.w, resp.Shares, resp.Encrypted) // not encoding/json: zeroing.go
	return nil
}
