package keystore

import (
	"context"
	"errors"
	"maps"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/coffer-kms/coffer/api"
)

// Nonce budget (docs/api.md, "Keys"; docs/threat-model.md, "Nonce
// budget"). aes256-gcm and chacha20-poly1305 draw a random 96-bit nonce per
// encryption. After q encryptions under one key version, the chance that
// two nonces collide is about q²/2^97; a GCM nonce collision reveals the
// GHASH key and allows forgeries. So a version is rotated before its
// encryptions, summed over the cluster's nodes, reach DefaultNonceBudget =
// 2^32 (collision chance 2^-33), keeping the risk below 2^-32.
//
// Each node counts its own encryptions per version (an atomic add on the
// wrap path), persists the count (the daemon, with a reservation so that a
// crash can only over-count) and reports it into the key's replicated
// record; the leader rotates a version whose reported sum reached the
// budget. xaes256-gcm keys (192-bit nonces) are not counted.

// DefaultNonceBudget is the encryptions per version of a 96-bit-nonce key
// after which the leader rotates it.
const DefaultNonceBudget = 1 << 32

// EncryptionCount is this node's count of encryptions under one version.
type EncryptionCount struct {
	Key     string `json:"key"`
	Version int    `json:"version"`
	Count   uint64 `json:"count"`
}

type encKey struct {
	name    string
	version int
}

// nonceCounters are this node's counts; they are node-local, never
// replicated, and outlive the key records (which are replaced on every
// update) and sealing.
type nonceCounters struct {
	mu sync.Mutex
	m  map[encKey]*atomic.Uint64
}

func (nc *nonceCounters) get(name string, version int) *atomic.Uint64 {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	if nc.m == nil {
		nc.m = map[encKey]*atomic.Uint64{}
	}
	k := encKey{name, version}
	c := nc.m[k]
	if c == nil {
		c = new(atomic.Uint64)
		nc.m[k] = c
	}
	return c
}

// forgetUnused drops the counter of a version that no longer takes
// encryptions if this node never encrypted under it: such a count can never
// matter, and keeping one per rotation grew the map by a counter per
// version ever made (EncryptionCounts prunes the others later).
func (nc *nonceCounters) forgetUnused(name string, version int) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	k := encKey{name, version}
	if c := nc.m[k]; c != nil && c.Load() == 0 {
		delete(nc.m, k)
	}
}

// countsNonces reports whether a key type's versions have a nonce budget.
func countsNonces(typ string) bool { return typ != api.KeyTypeXAES256GCM }

// attachCounterLocked points a freshly loaded key at the counter of its
// latest version (under ks.mu) if this node has one (it encrypted under
// it, or restored its count at start). Otherwise the first encryption
// makes it (countEncryption): a counter per key that never encrypts on
// this node was a map entry and an allocation per key (issue 15, memory).
func (ks *Keystore) attachCounterLocked(k *namedKey) {
	if countsNonces(k.meta.Type) && k.latest() > 0 {
		if c := ks.nonces.lookup(k.meta.Name, k.latest()); c != nil {
			k.latestCtr.Store(c)
		}
	}
}

// countEncryption counts one encryption under k's latest version. It runs
// under ks.mu's read lock, possibly in many requests at once: they all get
// the same counter from the map (made by the first), so none is lost.
func (ks *Keystore) countEncryption(k *namedKey) { ks.countEncryptions(k, 1) }

// countEncryptions counts n encryptions under k's latest version with one
// add (a wrap batch counts every item it will seal before sealing).
func (ks *Keystore) countEncryptions(k *namedKey, n uint64) {
	c := k.latestCtr.Load()
	if c == nil {
		if !countsNonces(k.meta.Type) || k.latest() == 0 {
			return
		}
		c = ks.nonces.get(k.meta.Name, k.latest())
		k.latestCtr.Store(c)
	}
	c.Add(n)
}

func (nc *nonceCounters) lookup(name string, version int) *atomic.Uint64 {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	return nc.m[encKey{name, version}]
}

// NonceBudget is the rotation threshold in use (Config.NonceBudget or
// DefaultNonceBudget).
func (ks *Keystore) NonceBudget() uint64 {
	if ks.cfg.NonceBudget > 0 {
		return ks.cfg.NonceBudget
	}
	return DefaultNonceBudget
}

// EncryptionCounts returns this node's counts, sorted. While unsealed it
// also forgets the counts of versions that no longer take encryptions (a
// deleted key, or not the latest version): they can no longer matter.
func (ks *Keystore) EncryptionCounts() []EncryptionCount {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	ks.nonces.mu.Lock()
	defer ks.nonces.mu.Unlock()
	var out []EncryptionCount
	for k, c := range ks.nonces.m {
		if ks.root != nil {
			if nk := ks.keys[k.name]; nk == nil || nk.latest() != k.version {
				delete(ks.nonces.m, k)
				continue
			}
		}
		if n := c.Load(); n > 0 {
			out = append(out, EncryptionCount{Key: k.name, Version: k.version, Count: n})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Version < out[j].Version
	})
	return out
}

// RestoreEncryptionCounts raises this node's counts to the persisted ones
// (at start; a count never goes down).
func (ks *Keystore) RestoreEncryptionCounts(cs []EncryptionCount) {
	for _, c := range cs {
		if c.Key == "" || c.Version < 1 {
			continue
		}
		ctr := ks.nonces.get(c.Key, c.Version)
		for {
			cur := ctr.Load()
			if cur >= c.Count || ctr.CompareAndSwap(cur, c.Count) {
				break
			}
		}
	}
}

// ReportEncryptions records this node's count for a version in the key's
// replicated record, for the leader to sum. A report about a version that
// is no longer the latest, or not above what is recorded, changes nothing.
func (ks *Keystore) ReportEncryptions(ctx context.Context, nodeID, name string, version int, count uint64) error {
	_, err := ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		if cur == nil || cur.DeletionDate != nil || len(cur.Versions) != version || !countsNonces(cur.Type) {
			return nil, 0, false, errNothingToDo
		}
		reports := map[string]uint64{}
		if cur.NonceVersion == version {
			maps.Copy(reports, cur.NonceReports) // cur shares the live map
		}
		if reports[nodeID] >= count {
			return nil, 0, false, errNothingToDo
		}
		reports[nodeID] = count
		cur.NonceVersion, cur.NonceReports = version, reports
		return cur, 0, false, nil
	})
	if errors.Is(err, errNothingToDo) {
		return nil
	}
	return err
}

// reportedEncryptions is the cluster's reported sum for the latest version.
func reportedEncryptions(m *keyMeta) uint64 {
	if m.NonceVersion != len(m.Versions) {
		return 0
	}
	var sum uint64
	for _, n := range m.NonceReports {
		sum += n
	}
	return sum
}

// NonceBudgetDue lists the keys whose latest version's reported
// encryptions reached the budget.
func (ks *Keystore) NonceBudgetDue() []string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var out []string
	for name, k := range ks.keys {
		if countsNonces(k.meta.Type) && k.meta.DeletionDate == nil && reportedEncryptions(&k.meta) >= ks.NonceBudget() {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// RotateIfNonceBudget rotates a key whose latest version reached the nonce
// budget (checked again inside the write, so two leaders in a row never
// rotate twice). It reports whether it rotated and the reported count.
func (ks *Keystore) RotateIfNonceBudget(ctx context.Context, name string) (bool, uint64, error) {
	rotated, seen := false, uint64(0)
	_, err := ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		rotated = false
		if cur == nil || cur.DeletionDate != nil || !countsNonces(cur.Type) {
			return nil, 0, false, errNothingToDo
		}
		if seen = reportedEncryptions(cur); seen < ks.NonceBudget() {
			return nil, 0, false, errNothingToDo
		}
		rotated = true
		return ks.rotateMeta(name, cur)
	})
	if errors.Is(err, errNothingToDo) {
		return false, seen, nil
	}
	return rotated && err == nil, seen, err
}
