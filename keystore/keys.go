package keystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/internal/lockedmem"
)

// materialSize is the size of every named key version's material: both key
// types take 256-bit keys.
const materialSize = 32

// Limits on key configuration.
const (
	MinRotationPeriod    = time.Minute
	DefaultPendingWindow = 168 * time.Hour
	MinPendingWindow     = 24 * time.Hour
	MaxPendingWindow     = 365 * 24 * time.Hour
	// MaxVersions bounds a key's versions so that one key cannot grow its
	// record without limit (a rotation every minute for a week is ~10,000).
	MaxVersions = 10000
)

// keyMeta is a named key's record metadata; version material follows it in
// the record plaintext, one materialSize block per version in order.
type keyMeta struct {
	Name                 string        `json:"name"`
	Type                 string        `json:"type"`
	CreatedAt            unixTime      `json:"created_at"`
	RotationPeriod       time.Duration `json:"rotation_period"`
	MinDecryptionVersion int           `json:"min_decryption_version"`
	DeletionDate         *time.Time    `json:"deletion_date,omitempty"`
	Versions             unixTimes     `json:"versions"` // created_at of version i+1
	// NonceReports are the nodes' reported encryption counts (node id →
	// count) of version NonceVersion (nonce.go); a rotation clears them.
	NonceVersion int               `json:"nonce_version,omitempty"`
	NonceReports map[string]uint64 `json:"nonce_reports,omitempty"`
}

// namedKey is the decrypted, in-memory form of a key record.
type namedKey struct {
	meta keyMeta
	// material holds every version's key, version v at
	// [(v-1)*materialSize, v*materialSize): one locked buffer per key
	// rather than one per version (a buffer's header is on the Go heap,
	// 64 bytes, and each was a slot of its own; issue 15, memory). nil for
	// a key without versions.
	// It is held by value: a pointer to a separate Buf was another 64-byte
	// allocation per key (issue 15, memory round 2). namedKey is only ever
	// used by pointer, so the Buf is never copied.
	material lockedmem.Buf
	record   uint64 // record version, for compare-and-set
	// latestCtr counts this node's encryptions under the latest version
	// (nil for a type without a nonce budget, and until the first
	// encryption; nonce.go).
	latestCtr atomic.Pointer[atomic.Uint64]
}

func (k *namedKey) destroy() {
	k.material.Destroy()
}

func (k *namedKey) latest() int {
	return len(k.material.Bytes()) / materialSize
}

// versionKey is version v's material (1 <= v <= latest()), in locked
// memory: callers must not keep it past the read lock.
func (k *namedKey) versionKey(v int) []byte {
	return k.material.Bytes()[(v-1)*materialSize : v*materialSize : v*materialSize]
}

func (k *namedKey) info() api.Key {
	out := api.Key{
		Name:                 k.meta.Name,
		Type:                 k.meta.Type,
		LatestVersion:        k.latest(),
		MinDecryptionVersion: k.meta.MinDecryptionVersion,
		RotationPeriod:       FormatDuration(k.meta.RotationPeriod),
		CreatedAt:            k.meta.CreatedAt.Time(),
		Versions:             make([]api.KeyVersion, len(k.meta.Versions)),
	}
	for i := range k.meta.Versions {
		out.Versions[i] = api.KeyVersion{Version: i + 1, CreatedAt: k.meta.Versions.At(i)}
	}
	if k.meta.DeletionDate != nil {
		d := *k.meta.DeletionDate
		out.DeletionDate = &d
	}
	return out
}

// FormatDuration prints d compactly ("720h", "1h30m", "0s").
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func (ks *Keystore) openKeyRecordLocked(path string, e Entry) (*namedKey, error) {
	meta, keys, err := ks.openRecordLocked(path, e)
	if err != nil {
		return nil, err
	}
	defer zeroAll(keys)
	k := &namedKey{record: e.Version}
	if err := json.Unmarshal(meta, &k.meta); err != nil || len(k.meta.Versions) != len(keys) || keyPath(k.meta.Name) != path {
		return nil, fmt.Errorf("%w: key record %s", ErrCorrupt, path)
	}
	// The name is the tail of the record's path, which is the entries
	// map's key: one string per key for both maps and the metadata, not
	// three (issue 15, memory round 2).
	k.meta.Name = path[len(path)-len(k.meta.Name):]
	compactMeta(&k.meta)
	if len(keys) > 0 {
		if err := k.material.Alloc(len(keys) * materialSize); err != nil {
			return nil, err
		}
		for i, m := range keys {
			copy(k.material.Bytes()[i*materialSize:], m)
		}
	}
	return k, nil
}

// compactMeta trims what JSON decoding left larger than needed in a key
// that stays in memory for as long as the node is unsealed: the type is
// one of a few constants (not a string per key), and the versions slice
// exactly its length (append doubling left up to twice).
func compactMeta(m *keyMeta) {
	switch m.Type {
	case api.KeyTypeAES256GCM:
		m.Type = api.KeyTypeAES256GCM
	case api.KeyTypeChaCha20Poly1305:
		m.Type = api.KeyTypeChaCha20Poly1305
	case api.KeyTypeXAES256GCM:
		m.Type = api.KeyTypeXAES256GCM
	}
	if cap(m.Versions) > len(m.Versions) {
		m.Versions = slices.Clone(m.Versions)
	}
}

// ParseKeyType validates a key type; "" means the default, aes256-gcm.
func ParseKeyType(t string) (string, error) {
	switch t {
	case "":
		return api.KeyTypeAES256GCM, nil
	case api.KeyTypeAES256GCM, api.KeyTypeChaCha20Poly1305, api.KeyTypeXAES256GCM:
		return t, nil
	}
	return "", invalidf("unknown key type %q: use %q (default), %q (for keys that encrypt billions of times) or %q", t, api.KeyTypeAES256GCM, api.KeyTypeXAES256GCM, api.KeyTypeChaCha20Poly1305)
}

// ParseRotationPeriod validates a rotation period: "" or "0"/"0s" turn
// scheduled rotation off; otherwise at least MinRotationPeriod.
func ParseRotationPeriod(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, invalidf("rotation_period %q is not a duration: use a Go duration such as \"720h\" or \"30m\", or \"0s\" for none", truncate(s))
	}
	if d == 0 {
		return 0, nil
	}
	if d < MinRotationPeriod {
		return 0, invalidf("rotation_period %s is too short: the minimum is %s (or \"0s\" for no scheduled rotation)", FormatDuration(d), FormatDuration(MinRotationPeriod))
	}
	return d, nil
}

func validName(name string) error {
	if !api.ValidName(name) {
		return invalidf("invalid key name %q: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit", truncate(name))
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// ---- reads ----

// GetKey describes a key.
func (ks *Keystore) GetKey(name string) (api.Key, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return api.Key{}, ErrSealed
	}
	k := ks.keys[name]
	if k == nil {
		return api.Key{}, keyNotFound(name)
	}
	return k.info(), nil
}

// ListKeys returns the key names, sorted.
func (ks *Keystore) ListKeys() ([]string, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return nil, ErrSealed
	}
	return sortedKeys(ks.keys), nil
}

func keyNotFound(name string) error {
	return wrapf(ErrNotFound, "no key named %q: create it with `coffer key create %s`", truncate(name), truncate(name))
}

// ---- writes ----

// update runs a read-modify-write of the key record of name: fn gets a copy
// of the current metadata (nil when the key does not exist) and returns the
// new metadata, how many new versions to add, or delete = true to remove the
// record. fn must not have side effects: it may run again after a lost
// compare-and-set.
func (ks *Keystore) update(ctx context.Context, name string, fn func(cur *keyMeta) (next *keyMeta, addVersions int, del bool, err error)) (api.Key, error) {
	if err := validName(name); err != nil {
		return api.Key{}, err
	}
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	path := keyPath(name)
	var del bool
	err := retryCAS(func() error {
		ks.mu.RLock()
		if ks.root == nil {
			ks.mu.RUnlock()
			return ErrSealed
		}
		var cur *keyMeta
		var record uint64
		var material [][]byte
		if k := ks.keys[name]; k != nil {
			m := k.meta
			m.Versions = slices.Clone(k.meta.Versions)
			cur, record = &m, k.record
			for v := 1; v <= k.latest(); v++ {
				material = append(material, append([]byte(nil), k.versionKey(v)...))
			}
		} else if _, ok := ks.entries[path]; ok {
			// A record this node could not open: never overwrite it blindly.
			ks.mu.RUnlock()
			return fmt.Errorf("%w: key %q exists but cannot be read on this node", ErrCorrupt, name)
		} else {
			// A new record continues the path's counter (rollback.go).
			record = ks.tombs[path]
		}
		ks.mu.RUnlock()

		next, add, d, err := fn(cur)
		if err != nil {
			zeroAll(material)
			return err
		}
		del = d
		if del {
			zeroAll(material)
			err = ks.propose(ctx, &command{Op: opDelete, Path: path, Expect: record})
		} else {
			for i := 0; i < add; i++ {
				m := make([]byte, materialSize)
				if _, err := io.ReadFull(ks.cfg.Rand, m); err != nil {
					zeroAll(material)
					return fmt.Errorf("reading randomness: %w", err)
				}
				material = append(material, m)
			}
			meta, merr := json.Marshal(next)
			if merr != nil {
				zeroAll(material)
				return merr
			}
			err = ks.putRecord(ctx, path, record, meta, material)
			zeroAll(material)
		}
		return err
	})
	if err != nil || del {
		return api.Key{}, err
	}
	return ks.GetKey(name)
}

// CreateKey creates a named key with its first version.
func (ks *Keystore) CreateKey(ctx context.Context, name, typ, rotationPeriod string) (api.Key, error) {
	t, err := ParseKeyType(typ)
	if err != nil {
		return api.Key{}, err
	}
	rp, err := ParseRotationPeriod(rotationPeriod)
	if err != nil {
		return api.Key{}, err
	}
	return ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		if cur != nil {
			return nil, 0, false, wrapf(ErrAlreadyExists, "a key named %q already exists", name)
		}
		now := ks.cfg.Now().UTC()
		return &keyMeta{Name: name, Type: t, CreatedAt: unixTime(now.UnixNano()), RotationPeriod: rp, MinDecryptionVersion: 1, Versions: unixTimes{now.UnixNano()}}, 1, false, nil
	})
}

// RotateKey adds a version to a key; new wraps use it.
func (ks *Keystore) RotateKey(ctx context.Context, name string) (api.Key, error) {
	return ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		return ks.rotateMeta(name, cur)
	})
}

func (ks *Keystore) rotateMeta(name string, cur *keyMeta) (*keyMeta, int, bool, error) {
	if cur == nil {
		return nil, 0, false, keyNotFound(name)
	}
	if cur.DeletionDate != nil {
		return nil, 0, false, wrapf(ErrPendingDeletion, "key %q is scheduled for deletion on %s: restore it first (`coffer key restore %s`)", name, cur.DeletionDate.Format(time.RFC3339), name)
	}
	if len(cur.Versions) >= MaxVersions {
		return nil, 0, false, invalidf("key %q already has %d versions, the maximum: create a new key instead", name, MaxVersions)
	}
	cur.Versions = append(cur.Versions, ks.cfg.Now().UnixNano())
	cur.NonceVersion, cur.NonceReports = 0, nil // the new version starts afresh
	return cur, 1, false, nil
}

// RotateIfDue rotates a key if its rotation period has passed since its
// latest version (checked again inside the write, so two schedulers never
// rotate twice). It reports whether it rotated.
func (ks *Keystore) RotateIfDue(ctx context.Context, name string) (bool, error) {
	rotated := false
	_, err := ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		rotated = false
		if cur == nil || !ks.due(cur, ks.cfg.Now()) {
			return nil, 0, false, errNothingToDo
		}
		rotated = true
		return ks.rotateMeta(name, cur)
	})
	if errors.Is(err, errNothingToDo) {
		return false, nil
	}
	return rotated && err == nil, err
}

var errNothingToDo = errors.New("nothing to do")

func (ks *Keystore) due(m *keyMeta, now time.Time) bool {
	if m.RotationPeriod <= 0 || m.DeletionDate != nil || len(m.Versions) == 0 {
		return false
	}
	return !now.Before(m.Versions.At(len(m.Versions) - 1).Add(m.RotationPeriod))
}

// DueRotations lists keys whose rotation period has passed.
func (ks *Keystore) DueRotations(now time.Time) []string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var out []string
	for name, k := range ks.keys {
		if ks.due(&k.meta, now) {
			out = append(out, name)
		}
	}
	return out
}

// DuePurges lists keys whose deletion date has passed.
func (ks *Keystore) DuePurges(now time.Time) []string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var out []string
	for name, k := range ks.keys {
		if d := k.meta.DeletionDate; d != nil && !now.Before(*d) {
			out = append(out, name)
		}
	}
	return out
}

// UpdateKey changes min_decryption_version and/or rotation_period (nil
// leaves a field unchanged).
func (ks *Keystore) UpdateKey(ctx context.Context, name string, minDecryptionVersion *int, rotationPeriod *string) (api.Key, error) {
	var rp time.Duration
	if rotationPeriod != nil {
		var err error
		if rp, err = ParseRotationPeriod(*rotationPeriod); err != nil {
			return api.Key{}, err
		}
	}
	return ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		if cur == nil {
			return nil, 0, false, keyNotFound(name)
		}
		if v := minDecryptionVersion; v != nil {
			if *v < 1 || *v > len(cur.Versions) {
				return nil, 0, false, invalidf("min_decryption_version %d is out of range: key %q has versions 1 to %d", *v, name, len(cur.Versions))
			}
			cur.MinDecryptionVersion = *v
		}
		if rotationPeriod != nil {
			cur.RotationPeriod = rp
		}
		return cur, 0, false, nil
	})
}

// ParsePendingWindow validates a deletion window; "" means the default.
func ParsePendingWindow(s string) (time.Duration, error) {
	if s == "" {
		return DefaultPendingWindow, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, invalidf("pending_window %q is not a duration: use a Go duration such as \"168h\"", truncate(s))
	}
	if d < MinPendingWindow || d > MaxPendingWindow {
		return 0, invalidf("pending_window %s is out of range: use between %s and %s", FormatDuration(d), FormatDuration(MinPendingWindow), FormatDuration(MaxPendingWindow))
	}
	return d, nil
}

// DeleteKey schedules a key for deletion after window. Until then it can be
// restored; crypto on it fails with ErrPendingDeletion.
func (ks *Keystore) DeleteKey(ctx context.Context, name string, window time.Duration) (api.Key, error) {
	if window < MinPendingWindow || window > MaxPendingWindow {
		return api.Key{}, invalidf("pending_window %s is out of range: use between %s and %s", FormatDuration(window), FormatDuration(MinPendingWindow), FormatDuration(MaxPendingWindow))
	}
	return ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		if cur == nil {
			return nil, 0, false, keyNotFound(name)
		}
		if cur.DeletionDate != nil {
			// Re-scheduling could shorten the waiting period: refuse.
			return nil, 0, false, wrapf(ErrPendingDeletion, "key %q is already scheduled for deletion on %s: restore it first to change the window", name, cur.DeletionDate.Format(time.RFC3339))
		}
		d := ks.cfg.Now().UTC().Add(window)
		cur.DeletionDate = &d
		return cur, 0, false, nil
	})
}

// RestoreKey cancels a pending deletion. On a key that is not pending
// deletion it changes nothing and returns the key.
func (ks *Keystore) RestoreKey(ctx context.Context, name string) (api.Key, error) {
	k, err := ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		if cur == nil {
			return nil, 0, false, keyNotFound(name)
		}
		if cur.DeletionDate == nil {
			return nil, 0, false, errNothingToDo
		}
		cur.DeletionDate = nil
		return cur, 0, false, nil
	})
	if errors.Is(err, errNothingToDo) {
		return ks.GetKey(name)
	}
	return k, err
}

// PurgeKey removes a key whose deletion date has passed, with all its
// versions. It reports whether it purged.
func (ks *Keystore) PurgeKey(ctx context.Context, name string) (bool, error) {
	_, err := ks.update(ctx, name, func(cur *keyMeta) (*keyMeta, int, bool, error) {
		if cur == nil || cur.DeletionDate == nil || ks.cfg.Now().Before(*cur.DeletionDate) {
			return nil, 0, false, errNothingToDo
		}
		return nil, 0, true, nil
	})
	if errors.Is(err, errNothingToDo) {
		return false, nil
	}
	return err == nil, err
}

// ---- keyring ----

// RotateKeyring adds a keyring term and makes it active: new records are
// encrypted under it, older ones stay readable. It returns the new term.
func (ks *Keystore) RotateKeyring(ctx context.Context) (int, error) {
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	var next uint32
	err := retryCAS(func() error {
		kr, keys, err := ks.rlockKeyring()
		if err != nil {
			return err
		}
		expect := ks.keyringVersion
		next = 0
		for _, t := range kr.Terms {
			next = max(next, t.Term)
		}
		next++
		nk := make([]byte, barrierKeySize)
		if _, err := io.ReadFull(ks.cfg.Rand, nk); err != nil {
			ks.mu.RUnlock()
			zeroAll(keys)
			return fmt.Errorf("reading randomness: %w", err)
		}
		kr.Terms = append(kr.Terms, termMeta{Term: next, CreatedAt: ks.cfg.Now().UTC()})
		kr.Active = next
		blob, err := sealKeyring(ks.root.Bytes(), ks.seal.ClusterID, kr, append(keys, nk), ks.cfg.Rand)
		ks.mu.RUnlock()
		zeroAll(keys)
		clear(nk)
		if err != nil {
			return err
		}
		return ks.propose(ctx, &command{Op: opKeyring, Expect: expect, Keyring: blob})
	})
	if err != nil {
		return 0, err
	}
	return int(next), nil
}

// Term returns the active keyring term (0 while sealed).
func (ks *Keystore) Term() int {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return int(ks.active)
}

// ---- policies ----

// PutPolicy creates or replaces a policy. The caller validates it.
func (ks *Keystore) PutPolicy(ctx context.Context, name string, p api.Policy) error {
	if err := validName(name); err != nil {
		return err
	}
	p.Name = ""
	meta, err := json.Marshal(p)
	if err != nil {
		return err
	}
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	return retryCAS(func() error {
		ks.mu.RLock()
		expect := ks.recordVersionLocked(policyPath(name))
		ks.mu.RUnlock()
		return ks.putRecord(ctx, policyPath(name), expect, meta, nil)
	})
}

// GetPolicy returns a policy.
func (ks *Keystore) GetPolicy(name string) (api.Policy, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return api.Policy{}, ErrSealed
	}
	p, ok := ks.policies[name]
	if !ok {
		return api.Policy{}, wrapf(ErrNotFound, "no policy named %q", truncate(name))
	}
	p.Name = name
	return p, nil
}

// ListPolicies returns the policy names, sorted.
func (ks *Keystore) ListPolicies() ([]string, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return nil, ErrSealed
	}
	return sortedKeys(ks.policies), nil
}

// DeletePolicy removes a policy.
func (ks *Keystore) DeletePolicy(ctx context.Context, name string) error {
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	return retryCAS(func() error {
		ks.mu.RLock()
		if ks.root == nil {
			ks.mu.RUnlock()
			return ErrSealed
		}
		e, ok := ks.entries[policyPath(name)]
		ks.mu.RUnlock()
		if !ok {
			return wrapf(ErrNotFound, "no policy named %q", truncate(name))
		}
		return ks.propose(ctx, &command{Op: opDelete, Path: policyPath(name), Expect: e.Version})
	})
}
