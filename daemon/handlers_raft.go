package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/seal"
)

// raftRoutes are the /v1/sys/raft/* endpoints. Join and peer listing work
// on a sealed or uninitialised node: a node joins a cluster before it has
// any state to unseal (docs/api.md; docs/spec-changes.md says why
// the shared spec's "everything else answers 503 sealed" cannot hold).
var raftRoutes = map[string]map[string]route{
	"peers": {"GET": {accessAdminSealed, "", "raft-peers", (*Server).handleListPeers}},
	"join":  {"POST": {accessAdminSealed, "", "raft-join", (*Server).handleJoin}},
	// Not on a sealed node (docs/api.md: only the membership endpoints
	// work sealed); run it on any unsealed member.
	"transfer-leadership": {"POST": {accessAdmin, "", "raft-transfer-leadership", (*Server).handleTransferLeadership}},
	"snapshot":            {"GET": {accessAdmin, "", "raft-snapshot-save", (*Server).handleSnapshotSave}, "POST": {accessAdminSealed, "", "raft-snapshot-restore", (*Server).handleSnapshotRestore}},
}

var raftPeerRoutes = map[string]route{
	"DELETE": {accessAdminSealed, "", "raft-remove-peer", (*Server).handleRemovePeer},
}

// matchRaft routes "raft/…" below /v1/sys/.
func matchRaft(rest string) (map[string]route, string) {
	rest = strings.TrimPrefix(rest, "raft/")
	if id, ok := strings.CutPrefix(rest, "peers/"); ok && id != "" && !strings.Contains(id, "/") {
		return raftPeerRoutes, id
	}
	return raftRoutes[rest], ""
}

func (s *Server) handleListPeers(rc *reqCtx) error {
	peers, err := s.node.Peers()
	if err != nil {
		return err
	}
	out := api.PeerList{Peers: make([]api.Peer, 0, len(peers))}
	for _, p := range peers {
		out.Peers = append(out.Peers, api.Peer{ID: p.ID, Address: p.Address, Voter: p.Voter, Leader: p.Leader})
	}
	writeJSON(rc.w, http.StatusOK, out)
	return nil
}

func (s *Server) handleJoin(rc *reqCtx) error {
	var req api.JoinRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	if req.LeaderAddress == "" {
		return badRequest(`leader_address is required: the cluster address (host:port) of any member`)
	}
	rc.au.setDetail("leader_address", truncate(req.LeaderAddress))
	// A node with a seal device that joins with a token is enrolled in the
	// same step (handlers_enrol.go).
	var enrol *seal.Enrolment
	if req.Token != "" && s.seal.HasDevice() && s.ks.Sealed() {
		e, err := s.seal.NewEnrolment(req.Token)
		if err != nil {
			return err
		}
		enrol = e
		rc.au.setDetail("token_id", e.TokenID)
	}
	var pub []byte
	if enrol != nil {
		pub = enrol.Public
	}
	ct, err := s.node.JoinEnrol(rc.r.Context(), req.LeaderAddress, req.Token, pub)
	if err != nil {
		switch {
		case errors.Is(err, cluster.ErrNoLeader):
			return err
		case errors.Is(err, cluster.ErrInvalidToken):
			return &httpError{http.StatusBadRequest, api.CodeInvalidToken, err.Error()}
		case errors.Is(err, cluster.ErrForbidden):
			return &httpError{http.StatusForbidden, api.CodePermissionDenied, err.Error()}
		}
		// The cluster could not be reached or refused: no leader took
		// this node in.
		return &httpError{http.StatusServiceUnavailable, api.CodeNoLeader, err.Error()}
	}
	s.log.Info("joined the cluster", "via", req.LeaderAddress)
	if enrol != nil && ct != nil {
		if err := s.completeEnrolment(rc, enrol, ct); err != nil {
			return err
		}
	}
	writeJSON(rc.w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) handleRemovePeer(rc *reqCtx) error {
	if err := s.node.RemovePeer(rc.r.Context(), rc.name); err != nil {
		if errors.Is(err, cluster.ErrNoSuchPeer) {
			return &httpError{http.StatusNotFound, api.CodeNotFound, err.Error()}
		}
		return err
	}
	s.log.Warn("peer removed", "node-id", rc.name, "uid", rc.caller.UID)
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleSnapshotSave streams the replicated state. Key material in it stays
// encrypted under the keyring, and the keyring under the root key.
func (s *Server) handleSnapshotSave(rc *reqCtx) error {
	write := s.ks.SnapshotTo()
	rc.w.Header().Set("Content-Type", "application/octet-stream")
	rc.w.Header().Set("Content-Disposition", `attachment; filename="coffer.snap"`)
	rc.w.WriteHeader(http.StatusOK)
	if err := write(rc.w); err != nil {
		s.log.Error("writing a snapshot failed", "request-id", rc.id, "error", err)
	}
	return nil
}

// maxSnapshot bounds a restore upload (100,000 keys are about 60 MB).
const maxSnapshot = 1 << 30

func (s *Server) handleSnapshotRestore(rc *reqCtx) error {
	body := http.MaxBytesReader(rc.w, rc.r.Body, maxSnapshot)
	// The upload goes to a file, not memory: a restore of 100,000 keys × 3
	// versions is ~53 MB, and holding it whole (and the re-authenticated
	// copy for raft) put the leader's peak ~100 MB over its steady state
	// (issue 15, memory round 2). The files are in the data dir, mode
	// 0600 (the snapshot is encrypted records and sealed keyrings, as
	// raft's own snapshots there), and removed when the request ends.
	in, err := s.restoreTemp()
	if err != nil {
		return err
	}
	defer s.dropRestoreTemp(in)
	src := &readSide{r: body}
	if _, err := io.Copy(in, src); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(src.err, &mbe):
			return &httpError{http.StatusRequestEntityTooLarge, api.CodeTooLarge, "snapshot over 1 GiB"}
		case src.err != nil:
			return badRequest("reading the snapshot: %v", src.err)
		}
		return fmt.Errorf("storing the uploaded snapshot: %w", err)
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return err
	}
	out, err := s.restoreTemp()
	if err != nil {
		return err
	}
	defer s.dropRestoreTemp(out)
	// Checked before raft installs it everywhere, and its restore epoch
	// raised so that no command made before the restore can be replayed
	// after it (keystore/rollback.go).
	w := bufio.NewWriterSize(out, 256<<10)
	same, err := s.ks.PrepareRestoreStream(bufio.NewReaderSize(in, 256<<10), w)
	if err != nil {
		// A failed write to the temporary file is ours (bufio keeps its
		// error); anything else is the snapshot's.
		if werr := w.Flush(); werr != nil {
			return fmt.Errorf("storing the prepared snapshot: %w", werr)
		}
		return badRequest("%v", err)
	}
	snap := in
	if !same {
		if err := w.Flush(); err != nil {
			return fmt.Errorf("storing the prepared snapshot: %w", err)
		}
		snap = out
	}
	size, err := snap.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = snap.Seek(0, io.SeekStart)
	}
	if err != nil {
		return err
	}
	if err := s.node.Restore(bufio.NewReaderSize(snap, 256<<10), size); err != nil {
		if errors.Is(err, cluster.ErrNotLeaderForRestore) {
			return &httpError{http.StatusServiceUnavailable, api.CodeNoLeader, err.Error()}
		}
		return err
	}
	s.seal.Reset()
	s.log.Warn("cluster state restored from a snapshot", "bytes", size, "uid", rc.caller.UID)
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}

// readSide records its reader's error, so that a copy's failure is told
// apart: the client's upload (400) or the local disk (500).
type readSide struct {
	r   io.Reader
	err error
}

func (r *readSide) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// restoreTempPattern names a restore's temporary files in the data dir;
// ones left by a crash are removed at start (removeRestoreTemps).
const restoreTempPattern = ".restore-*.tmp"

// restoreTemp is a new temporary file for a restore, mode 0600.
func (s *Server) restoreTemp() (*os.File, error) {
	f, err := os.CreateTemp(s.cfg.DataDir, restoreTempPattern)
	if err != nil {
		return nil, fmt.Errorf("a temporary file for the snapshot: %w", err)
	}
	return f, nil
}

func (s *Server) dropRestoreTemp(f *os.File) {
	f.Close()
	if err := os.Remove(f.Name()); err != nil {
		s.log.Warn("removing a restore's temporary file", "path", f.Name(), "error", err)
	}
}

// removeRestoreTemps removes restore files a crash left in dir.
func removeRestoreTemps(dir string) {
	left, _ := filepath.Glob(filepath.Join(dir, restoreTempPattern))
	for _, p := range left {
		_ = os.Remove(p)
	}
}

func (s *Server) handleTransferLeadership(rc *reqCtx) error {
	var req api.TransferLeadershipRequest
	if err := decodeOptional(rc, &req); err != nil {
		return err
	}
	if req.ID != "" {
		if !api.ValidNodeID(req.ID) {
			return badRequest("id %q is not a valid node id (see `coffer operator raft list-peers`)", truncate(req.ID))
		}
		rc.au.setDetail("to", req.ID)
	}
	err := s.node.TransferLeadership(rc.r.Context(), req.ID)
	var te *cluster.TransferError
	switch {
	case errors.Is(err, cluster.ErrNoSuchPeer):
		return &httpError{http.StatusNotFound, api.CodeNotFound, err.Error()}
	case errors.As(err, &te):
		return badRequest("%s", te.Msg)
	case err != nil:
		return err
	}
	s.log.Info("leadership transfer requested", "to", req.ID, "uid", rc.caller.UID)
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}
