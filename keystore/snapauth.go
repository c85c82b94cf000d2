package keystore

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
)

// Snapshot authentication (issue 9). Raft's InstallSnapshot and an admin's
// restore replace a node's whole state, outside the log, so a snapshot is
// authenticated like a command (cmdauth.go):
//
//	MAC = HMAC-SHA256(K, "coffer-snapshot-v1" 0x00 cluster-id 0x00 SHA-256(body))
//
// where body is the snapshot's JSON without its mac field. A snapshot
// written by an unsealed node carries it.
//
// On restore, once the cluster authenticates commands: an unsealed node
// refuses a snapshot whose MAC is missing or wrong (its state is
// unchanged). A sealed node cannot check: it keeps the digest and MAC
// (pendingSnap) and verifies them at unseal, refusing to unseal on a
// forgery, as for commands. A snapshot from another node (RestoreRemote)
// must carry a MAC. The node's own snapshot restored at start may have been
// taken while it was sealed: it carries, instead of a MAC, the proof of the
// snapshot it grew from (Pending) plus the commands applied since
// (Unverified); the local disk is trusted as much as the raft log on it.

type snapProof struct {
	Digest []byte `json:"digest"`
	MAC    []byte `json:"mac"`
}

const snapMACDomain = "coffer-snapshot-v1"

func snapshotMAC(k []byte, clusterID string, digest []byte) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(snapMACDomain))
	m.Write([]byte{0})
	m.Write([]byte(clusterID))
	m.Write([]byte{0})
	m.Write(digest)
	return m.Sum(nil)
}

// authenticate sets s.MAC under k.
func (s *Snapshot) authenticate(k []byte) error {
	if s.Seal == nil {
		return nil
	}
	d, err := s.digest()
	if err != nil {
		return err
	}
	s.MAC = snapshotMAC(k, s.Seal.ClusterID, d)
	return nil
}

// checkSnapshotLocked decides whether s may be restored; ks.mu is held.
// It returns the proof to verify at unseal on a sealed node.
func (ks *Keystore) checkSnapshotLocked(s *Snapshot, remote bool) (*snapProof, error) {
	if s.Seal == nil || !(s.AuthOn || ks.authOn) {
		return nil, nil // nothing to protect yet, or a snapshot of an older version
	}
	mac := s.MAC
	d, err := s.digest()
	if err != nil {
		return nil, err
	}
	if ks.root != nil {
		k, err := ks.macKeyLocked()
		if err != nil {
			return nil, err
		}
		defer clear(k)
		if mac == nil || !hmac.Equal(mac, snapshotMAC(k, s.Seal.ClusterID, d)) {
			return nil, fmt.Errorf("%w: the snapshot is not authenticated by this cluster's keyring (missing or wrong MAC)", ErrUnauthenticated)
		}
		return nil, nil
	}
	switch {
	case mac != nil:
		return &snapProof{Digest: d, MAC: mac}, nil
	case remote:
		return nil, fmt.Errorf("%w: a snapshot from another node must be authenticated (written by an unsealed node)", ErrUnauthenticated)
	}
	return s.Pending, nil
}

// verifyPendingSnapLocked checks, at unseal, the snapshot restored while
// sealed. ks.mu is held, the keyring loaded.
func (ks *Keystore) verifyPendingSnapLocked() error {
	p := ks.pendingSnap
	if p == nil {
		return nil
	}
	k, err := ks.macKeyLocked()
	if err != nil {
		return err
	}
	defer clear(k)
	if !hmac.Equal(p.MAC, snapshotMAC(k, ks.seal.ClusterID, p.Digest)) {
		return fmt.Errorf("%w: the snapshot this node restored while sealed was forged: remove it, wipe its data_dir and join it again", ErrUnauthenticated)
	}
	ks.pendingSnap = nil
	return nil
}
