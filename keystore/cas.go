package keystore

import "errors"

// casRetries bounds how often a compare-and-set write that lost a race to
// another writer (ErrConflict) is built again from the new state: writers
// on one node are serialised by writeMu, so a conflict means a write from
// another node, and a few retries settle it.
const casRetries = 5

// retryCAS runs attempt, which reads the current state, builds one
// compare-and-set write from it and proposes it, and runs it again while it
// loses the race, at most casRetries more times. attempt must have no side
// effects besides its write: it may run again. The last error is returned
// (ErrConflict if every attempt lost).
func retryCAS(attempt func() error) error {
	for i := 0; ; i++ {
		err := attempt()
		if errors.Is(err, ErrConflict) && i < casRetries {
			continue
		}
		return err
	}
}

// rlockKeyring read-locks ks.mu and opens the keyring, for a write that
// builds a new keyring from the current one. On success ks.mu stays
// read-locked (the caller unlocks it, and zeroes keys); on error it is
// unlocked (ErrSealed while sealed).
func (ks *Keystore) rlockKeyring() (*keyringPlain, [][]byte, error) {
	ks.mu.RLock()
	if ks.root == nil {
		ks.mu.RUnlock()
		return nil, nil, ErrSealed
	}
	kr, keys, err := openKeyring(ks.root.Bytes(), ks.seal.ClusterID, ks.keyring)
	if err != nil {
		ks.mu.RUnlock()
		return nil, nil, err
	}
	return kr, keys, nil
}
