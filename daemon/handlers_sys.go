package daemon

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"

	"filippo.io/age"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/keystore"
	"github.com/coffer-kms/coffer/keystore/shamir"
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

// Share count limits: GF(2^8) has 255 non-zero x coordinates.
const maxShares = 255

func (s *Server) handleInit(rc *reqCtx) error {
	var req api.InitRequest
	if err := decodeOptional(rc, &req); err != nil {
		return err
	}
	if req.Shares == 0 && req.Threshold == 0 {
		req.Shares, req.Threshold = 5, 3
	}
	recipients, err := shareParams(req.Shares, req.Threshold, req.Recipients)
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

// shareParams validates a share count, threshold and age recipients (for
// init and rekey) and parses the recipients.
func shareParams(shares, threshold int, recipients []string) ([]age.Recipient, error) {
	switch {
	case shares < 1 || shares > maxShares:
		return nil, badRequest("shares must be between 1 and %d, got %d", maxShares, shares)
	case threshold < 1 || threshold > shares:
		return nil, badRequest("threshold must be between 1 and shares (%d), got %d", shares, threshold)
	case threshold == 1 && shares > 1:
		return nil, badRequest("threshold 1 with %d shares would make every share the whole root key: use a threshold of at least 2, or 1 share", shares)
	case len(recipients) != 0 && len(recipients) != shares:
		return nil, badRequest("%d recipients for %d shares: give exactly one age recipient per share, or none", len(recipients), shares)
	}
	out := make([]age.Recipient, len(recipients))
	for i, r := range recipients {
		rcp, err := shamir.ParseRecipient(r)
		if err != nil {
			return nil, badRequest("recipient %d: %v", i+1, err)
		}
		out[i] = rcp
	}
	return out, nil
}

// splitRoot splits root into encoded shares, age-encrypted to recipients
// when given.
func splitRoot(root []byte, shares, threshold int, recipients []age.Recipient) ([]string, error) {
	raw, err := shamir.Split(root, shares, threshold, rand.Reader)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(raw))
	for i, sh := range raw {
		out[i] = shamir.Encode(sh)
		clear(sh)
	}
	for i := range recipients {
		armored, err := shamir.EncryptShare(out[i], recipients[i])
		if err != nil {
			return nil, badRequest("encrypting share %d to its recipient: %v", i+1, err)
		}
		out[i] = armored
	}
	return out, nil
}

// Initialize creates the cluster's root key, splits it into shares
// (encrypted to recipients when given, one per share), seals it with the
// node's device if any, and commits the new cluster. The node ends up
// unsealed. Everything that can fail happens before the commit, so a failed
// init leaves the node uninitialised and can simply be retried.
func (s *Server) Initialize(ctx context.Context, shares, threshold int, recipients []age.Recipient) (api.InitResponse, error) {
	s.initMu.Lock()
	defer s.initMu.Unlock()
	if s.ks.Initialized() {
		return api.InitResponse{}, keystore.ErrAlreadyInitialized
	}
	root, err := s.ks.NewRootKey()
	if err != nil {
		return api.InitResponse{}, err
	}
	defer clear(root)
	clusterID, err := s.ks.NewClusterID()
	if err != nil {
		return api.InitResponse{}, err
	}
	encoded, err := splitRoot(root, shares, threshold, recipients)
	if err != nil {
		return api.InitResponse{}, err
	}
	resp := api.InitResponse{Shares: encoded, Encrypted: len(recipients) > 0}
	// The device seals into a staging file that replaces the node's blob
	// only once the init has committed: a refused init (a node whose raft
	// state is not replayed yet, a concurrent init) must not touch the blob
	// this node already has.
	staged := s.blobPath() + ".init"
	if s.seal != nil {
		if err := s.sealWithDeviceTo(ctx, staged, clusterID, root); err != nil {
			os.Remove(staged)
			return api.InitResponse{}, err
		}
	}
	if err := s.ks.Init(ctx, root, clusterID, shares, threshold); err != nil {
		if s.seal != nil {
			if errors.Is(err, cluster.ErrNoLeader) {
				// The outcome is unknown: the init may still commit, and
				// then this file is the only copy of its root key.
				s.log.Error("init: outcome unknown; keeping the device-sealed root key of the attempt", "path", staged, "cluster-id", clusterID)
			} else {
				os.Remove(staged)
			}
		}
		return api.InitResponse{}, err
	}
	if s.seal != nil {
		if err := os.Rename(staged, s.blobPath()); err != nil {
			s.log.Error("init: cannot store the device-sealed root key; run `coffer operator reseal`", "error", err)
		}
	}
	s.resetProgress()
	s.setSealedReason("")
	s.log.Info("cluster initialised", "cluster-id", clusterID, "shares", shares, "threshold", threshold, "encrypted-shares", resp.Encrypted, "device", s.seal != nil)
	s.AuditEvent("init", "cluster_id", clusterID, "shares", strconv.Itoa(shares), "threshold", strconv.Itoa(threshold), "encrypted_shares", strconv.FormatBool(resp.Encrypted))
	return resp, nil
}

func (s *Server) resetProgress() {
	s.unsealMu.Lock()
	defer s.unsealMu.Unlock()
	for _, sh := range s.shares {
		clear(sh)
	}
	s.shares = nil
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
		s.resetProgress()
		s.log.Info("unseal progress reset")
		writeJSON(rc.w, http.StatusOK, s.status())
		return nil
	}
	if req.Share == "" {
		return badRequest(`send {"share": "…"} or {"reset": true}`)
	}
	sc := s.ks.SealConfig()
	if sc == nil {
		return keystore.ErrNotInitialized
	}
	if !s.ks.Sealed() {
		writeJSON(rc.w, http.StatusOK, s.status())
		return nil
	}
	share, err := shamir.Parse(req.Share)
	if err != nil {
		// A mistyped share is refused on entry; earlier progress is kept.
		return err
	}
	if err := s.addShare(rc, sc, share); err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, s.status())
	return nil
}

// addShare records a share and unseals once the threshold is reached.
func (s *Server) addShare(rc *reqCtx, sc *keystore.SealConfig, share []byte) error {
	s.unsealMu.Lock()
	defer s.unsealMu.Unlock()
	if !s.ks.Sealed() {
		clear(share)
		return nil
	}
	for _, have := range s.shares {
		// The x coordinate (first byte) identifies a share; comparing whole
		// shares in constant time also catches an exact repeat.
		if have[0] == share[0] || subtle.ConstantTimeCompare(have, share) == 1 {
			clear(share)
			return &httpError{http.StatusBadRequest, api.CodeInvalidShare, fmt.Sprintf("share %d was already entered: enter a different share (progress %d of %d kept)", share[0], len(s.shares), sc.Threshold)}
		}
	}
	if len(s.shares) > 0 && len(s.shares[0]) != len(share) {
		clear(share)
		return &httpError{http.StatusBadRequest, api.CodeInvalidShare, fmt.Sprintf("this share has a different length from the ones entered before: it belongs to another cluster (progress %d of %d kept)", len(s.shares), sc.Threshold)}
	}
	s.shares = append(s.shares, share)
	s.log.Info("unseal share accepted", "progress", len(s.shares), "threshold", sc.Threshold)
	rc.au.setDetail("progress", strconv.Itoa(len(s.shares))+"/"+strconv.Itoa(sc.Threshold))
	if len(s.shares) < sc.Threshold {
		return nil
	}
	root, err := shamir.Combine(s.shares)
	for _, sh := range s.shares {
		clear(sh)
	}
	s.shares = nil
	if err != nil {
		return &httpError{http.StatusBadRequest, api.CodeInvalidShare, "the shares could not be combined; unseal progress was reset, start again: " + err.Error()}
	}
	err = s.ks.Unseal(root)
	clear(root)
	if errors.Is(err, keystore.ErrRootKeyMismatch) {
		s.log.Warn("unseal shares did not open the keyring; progress reset")
		return err
	}
	if err != nil {
		return err
	}
	s.setSealedReason("")
	s.manualSeal.Store(false)
	rc.au.setDetail("unsealed", "true")
	if s.seal != nil {
		// The node has a device but needed shares: the break-glass path.
		s.log.Warn("break-glass unseal with Shamir shares on a node with a seal device; run `coffer operator reseal` to enrol the device again", "seal-type", s.seal.kind)
		s.auditEvent(&audit.Entry{Operation: "break-glass-unseal", Caller: auditCaller(rc.caller), RequestID: rc.id, Detail: map[string]string{"seal_type": s.seal.kind}})
	} else {
		s.log.Info("unsealed with Shamir shares")
	}
	return nil
}

func (s *Server) handleSeal(rc *reqCtx) error {
	s.manualSeal.Store(true)
	s.ks.Seal()
	s.resetProgress()
	s.setSealedReason("sealed by an operator (uid " + fmt.Sprint(rc.caller.UID) + "): unseal with shares (`coffer operator unseal`)")
	s.log.Warn("node sealed by an operator", "uid", rc.caller.UID)
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) handleReseal(rc *reqCtx) error {
	if s.seal == nil {
		return badRequest("this node has no seal device configured: add a seal \"pkcs11\" or seal \"tpm\" block to its config and restart it")
	}
	dev, err := s.seal.reopen(rc.r.Context())
	if err != nil {
		return &httpError{http.StatusInternalServerError, api.CodeInternal, "the " + s.seal.kind + " seal device cannot be opened: " + err.Error() + "; check the device and run `coffer operator reseal` again"}
	}
	sc := s.ks.SealConfig()
	s.blobMu.Lock()
	err = s.ks.RootKey(func(root []byte) error {
		return s.sealWith(rc.r.Context(), dev, sc.ClusterID, root)
	})
	s.blobMu.Unlock()
	if err != nil {
		return err
	}
	s.setSealedReason("")
	s.log.Warn("root key resealed with this node's device; the next start will auto-unseal", "seal-type", s.seal.kind)
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
