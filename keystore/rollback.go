package keystore

import (
	"bytes"
	"fmt"
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

// PrepareRestore validates a snapshot for a restore into this cluster and
// returns it with its restore epoch raised above both its own and the
// current one, so that commands proposed before the restore no longer
// apply, and authenticated again (snapauth.go). On an initialised cluster
// it needs the node unsealed (the snapshot's MAC is checked and made
// here). A fresh node takes the snapshot as it is: it verifies it at
// unseal.
func (ks *Keystore) PrepareRestore(data []byte) ([]byte, error) {
	// One decode, and the answer written in one pass into a buffer of
	// the right size: a restore of 100,000 keys × 3 versions is ~53 MB,
	// and each extra copy of it was that much more heap on the leader.
	s, err := ks.validateRestore(data)
	if err != nil {
		return nil, err
	}
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.seal == nil {
		return data, nil
	}
	if ks.root == nil {
		return nil, fmt.Errorf("%w: restore the snapshot on an unsealed node (it checks and re-authenticates the snapshot)", ErrSealed)
	}
	if _, err := ks.checkSnapshotLocked(s, true); err != nil {
		return nil, err
	}
	s.Epoch = max(s.Epoch, ks.epoch) + 1
	k, err := ks.macKeyLocked()
	if err != nil {
		return nil, err
	}
	defer clear(k)
	out := bytes.NewBuffer(make([]byte, 0, len(data)+256))
	if err := s.writeJSON(out, k); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
