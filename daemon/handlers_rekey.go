package daemon

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore/shamir"
)

// rekeyRequest is the body of POST /v1/sys/rekey.
type rekeyRequest struct {
	CurrentShares []string `json:"current_shares"`
	Shares        int      `json:"shares"`
	Threshold     int      `json:"threshold"`
	Recipients    []string `json:"recipients,omitempty"`
}

// handleRekey makes a new root key and new shares, authorised by T current
// shares. The old shares stop working; the keyring is re-encrypted under the
// new root key and every unsealed node switches to it (and reseals it with
// its device). Everything that can fail happens before the commit.
func (s *Server) handleRekey(rc *reqCtx) error {
	var req rekeyRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	sc := s.ks.SealConfig()
	if len(req.CurrentShares) < sc.Threshold {
		return &httpError{http.StatusBadRequest, api.CodeInvalidShare, "rekey needs " + strconv.Itoa(sc.Threshold) + " current shares (current_shares), got " + strconv.Itoa(len(req.CurrentShares))}
	}
	recipients, err := shareParams(req.Shares, req.Threshold, req.Recipients)
	if err != nil {
		return err
	}
	raw := make([][]byte, 0, len(req.CurrentShares))
	defer func() {
		for _, r := range raw {
			clear(r)
		}
	}()
	for i, sh := range req.CurrentShares {
		b, err := shamir.Parse(sh)
		if err != nil {
			return &httpError{http.StatusBadRequest, api.CodeInvalidShare, "current share " + strconv.Itoa(i+1) + ": " + err.Error()}
		}
		raw = append(raw, b)
	}
	old, err := shamir.Combine(raw)
	if err != nil {
		return &httpError{http.StatusBadRequest, api.CodeInvalidShare, "the current shares cannot be combined: " + err.Error()}
	}
	err = s.ks.VerifyRoot(old)
	clear(old)
	if err != nil {
		return err // ErrRootKeyMismatch → invalid_share
	}

	root, err := s.ks.NewRootKey()
	if err != nil {
		return err
	}
	defer clear(root)
	shares, err := splitRoot(root, req.Shares, req.Threshold, recipients)
	if err != nil {
		return err
	}
	if err := s.ks.Rekey(rc.r.Context(), root, req.Shares, req.Threshold); err != nil {
		return err
	}
	s.log.Warn("rekeyed: new root key and shares; the old shares no longer work", "shares", req.Shares, "threshold", req.Threshold, "uid", rc.caller.UID)
	writeShares(rc.w, shares, len(recipients) > 0) // not encoding/json: zeroing.go
	return nil
}

// resealAfterRekey seals the new root key with this node's device after a
// rekey (called by the keystore on every unsealed node), so that its next
// start still auto-unseals.
func (s *Server) resealAfterRekey() {
	if s.seal == nil {
		return
	}
	// Tracked, so that Close does not close the device under it.
	s.goBackground(s.resealNewRoot)
}

func (s *Server) resealNewRoot() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clusterID := s.ks.SealConfig().ClusterID
	s.blobMu.Lock()
	err := s.ks.RootKey(func(root []byte) error {
		return s.sealWithDevice(ctx, clusterID, root)
	})
	s.blobMu.Unlock()
	if err != nil {
		s.log.Error("rekey: could not seal the new root key with this node's device; run `coffer operator reseal`", "error", err)
		return
	}
	s.log.Info("rekey: the new root key is sealed with this node's device", "seal-type", s.seal.kind)
}
