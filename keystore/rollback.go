package keystore

import (
	"fmt"
	"io"
)

// No rollback, no replay (issue 9). Commands are authenticated (cmdauth.go)
// but an authenticated command stays authentic forever: whoever holds an
// old log entry (a stolen disk, a member's certificate) could send it
// again. What stops it is that every precondition a command can meet is
// met once only:
//
//   - a record's version (its compare-and-set counter, bound into the
//     record's AAD with its path and keyring term) only grows, also across
//     a delete: a delete leaves a tombstone with the next version, and a
//     record created again under that path continues from it. So neither a
//     replayed put or delete nor an old record put back after a delete can
//     apply (the user-visible key versions of a key created again still
//     start at 1: they live in the record, not in this counter).
//   - the keyring's version only grows (rotation, rekey).
//   - a snapshot restore is the one way back, admin only and audited: it
//     raises the restore epoch (PrepareRestore), and every command carries
//     the epoch its proposer saw, so commands made before the restore
//     (which could match the restored counters again) are refused.
//
// Tombstones are kept for ever (a path and a number per deleted name).

// recordVersionLocked is the current counter of path: its record's
// version, or the tombstone's after a delete.
func (ks *Keystore) recordVersionLocked(path string) uint64 {
	if e, ok := ks.entries[path]; ok {
		return e.Version
	}
	return ks.tombs[path]
}

// PrepareRestoreStream validates a snapshot read from r for a restore into
// this cluster and writes it to w with its restore epoch raised above both
// its own and the current one, so that commands proposed before the
// restore no longer apply, and authenticated again (snapauth.go). On an
// initialised cluster it needs the node unsealed (the snapshot's MAC is
// checked and made here). same reports that the snapshot is to be
// restored as it came (a fresh node, which verifies it at unseal); then
// nothing is written to w. It streams so that a restore's upload need not
// be in memory (twice: as it came and as answered) on top of its decoded
// state (issue 15, memory round 2).
func (ks *Keystore) PrepareRestoreStream(r io.Reader, w io.Writer) (same bool, err error) {
	s, err := ks.validateRestoreFrom(r)
	if err != nil {
		return false, err
	}
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.seal == nil {
		return true, nil
	}
	if ks.root == nil {
		return false, fmt.Errorf("%w: restore the snapshot on an unsealed node (it checks and re-authenticates the snapshot)", ErrSealed)
	}
	if _, err := ks.checkSnapshotLocked(s, true); err != nil {
		return false, err
	}
	s.Epoch = max(s.Epoch, ks.epoch) + 1
	k, err := ks.macKeyLocked()
	if err != nil {
		return false, err
	}
	defer clear(k)
	return false, s.writeJSON(w, k)
}
