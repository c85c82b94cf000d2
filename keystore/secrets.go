package keystore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/internal/lockedmem"
)

// Secrets (docs/api.md, "Secrets") are named, versioned values.
//
// Each secret is one record at "secrets/<name>", written and removed with
// the same put/delete commands, barrier and compare-and-set as keys and
// policies, so that whatever authenticates or orders those commands covers
// secrets too. The record's metadata lists the versions; each live
// version's value is sealed on its own under a keyring term, with AAD
// "coffer-secret-v1" 0x00 name 0x00 uint64be(version) uint32be(term), and
// the whole record is then sealed again as every record is. So a value
// cannot be moved to another secret or version, and the in-memory view
// holds only metadata and sealed values: a value is opened (into locked
// memory) only to answer a read, and zeroed after.
//
// Versions beyond max_versions are dropped from the record, oldest first;
// destroyed versions keep their metadata (destroyed: true) without a value.
// A version number that is no longer listed (trimmed) or is destroyed reads
// as ErrVersionDestroyed.

// Secret errors (the daemon maps them to the API codes of the same names).
var (
	// ErrSecretPendingDeletion: the value of, or a write to, a secret
	// scheduled for deletion (API code pending_deletion).
	ErrSecretPendingDeletion = errors.New("secret is scheduled for deletion")
	// ErrVersionConflict: a cas write whose cas is not the latest version.
	ErrVersionConflict = errors.New("secret version conflict")
	// ErrVersionDestroyed: the value of that version was destroyed.
	ErrVersionDestroyed = errors.New("secret version destroyed")
)

const secretPrefix = "secrets/"

func secretPath(name string) string { return secretPrefix + name }

// secretVersion is one version in a secret record.
type secretVersion struct {
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Destroyed bool      `json:"destroyed,omitempty"`
	// Term and Value: the value sealed under that keyring term (nonce ||
	// ciphertext || tag); empty once destroyed.
	Term  uint32 `json:"term,omitempty"`
	Value []byte `json:"value,omitempty"`
}

// secretMeta is a secret record's plaintext (it carries sealed values only).
type secretMeta struct {
	Name         string          `json:"name"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	MaxVersions  int             `json:"max_versions"`
	Latest       int             `json:"latest"`
	DeletionDate *time.Time      `json:"deletion_date,omitempty"`
	Versions     []secretVersion `json:"versions"` // ascending
}

// secretRec is the decrypted form of a secret record (values stay sealed).
type secretRec struct {
	meta   secretMeta
	record uint64
}

func (m *secretMeta) clone() *secretMeta {
	c := *m
	c.Versions = append([]secretVersion(nil), m.Versions...)
	if m.DeletionDate != nil {
		d := *m.DeletionDate
		c.DeletionDate = &d
	}
	return &c
}

func (m *secretMeta) info() api.SecretMetadata {
	out := api.SecretMetadata{
		Name: m.Name, LatestVersion: m.Latest, MaxVersions: m.MaxVersions,
		CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt,
		Versions: make([]api.SecretVersion, len(m.Versions)),
	}
	for i, v := range m.Versions {
		out.Versions[i] = api.SecretVersion{Version: v.Version, CreatedAt: v.CreatedAt, Destroyed: v.Destroyed}
	}
	if m.DeletionDate != nil {
		d := *m.DeletionDate
		out.DeletionDate = &d
	}
	return out
}

// trim drops the oldest versions beyond MaxVersions.
func (m *secretMeta) trim() {
	if n := len(m.Versions) - m.MaxVersions; n > 0 {
		m.Versions = append([]secretVersion(nil), m.Versions[n:]...)
	}
}

func secretValueAAD(name string, version int, term uint32) []byte {
	a := make([]byte, 0, len("coffer-secret-v1")+2+len(name)+12)
	a = append(a, "coffer-secret-v1\x00"...)
	a = append(a, name...)
	a = append(a, 0)
	a = binary.BigEndian.AppendUint64(a, uint64(version))
	return binary.BigEndian.AppendUint32(a, term)
}

func validSecretName(name string) error {
	if !api.ValidName(name) {
		return invalidf("invalid secret name %q: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit", truncate(name))
	}
	return nil
}

func secretNotFound(name string) error {
	return wrapf(ErrNotFound, "no secret named %q: store one with `coffer secret put %s FILE`", truncate(name), truncate(name))
}

func secretPending(name string, d *time.Time) error {
	return wrapf(ErrSecretPendingDeletion, "secret %q is scheduled for deletion on %s: restore it first (`coffer secret restore %s`)", name, d.Format(time.RFC3339), name)
}

// loadSecretRecordLocked decrypts a secret record into the unsealed view.
func (ks *Keystore) loadSecretRecordLocked(path string, e Entry) error {
	meta, keys, err := ks.openRecordLocked(path, e)
	if err != nil {
		return err
	}
	zeroAll(keys)
	r := &secretRec{record: e.Version}
	if err := json.Unmarshal(meta, &r.meta); err != nil || secretPath(r.meta.Name) != path {
		return fmt.Errorf("%w: secret record %s", ErrCorrupt, path)
	}
	if ks.secrets == nil {
		ks.secrets = map[string]*secretRec{}
	}
	ks.secrets[r.meta.Name] = r
	return nil
}

// ---- reads ----

// SecretValue is a secret version's value in locked memory; the caller
// must Destroy it once the value is written out.
type SecretValue struct {
	Name      string
	Version   int
	CreatedAt time.Time
	Value     *lockedmem.Buf
}

// Destroy zeroes the value.
func (v *SecretValue) Destroy() {
	if v != nil {
		v.Value.Destroy()
	}
}

// GetSecret opens version (0: the latest) of a secret.
func (ks *Keystore) GetSecret(name string, version int) (*SecretValue, error) {
	if version < 0 {
		return nil, invalidf("version %d is out of range: versions start at 1", version)
	}
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return nil, ErrSealed
	}
	r := ks.secrets[name]
	if r == nil {
		return nil, secretNotFound(name)
	}
	m := &r.meta
	if m.DeletionDate != nil {
		return nil, secretPending(name, m.DeletionDate)
	}
	if version == 0 {
		version = m.Latest
	}
	if version > m.Latest {
		return nil, wrapf(ErrNotFound, "secret %q has no version %d: its latest is %d", name, version, m.Latest)
	}
	var sv *secretVersion
	for i := range m.Versions {
		if m.Versions[i].Version == version {
			sv = &m.Versions[i]
		}
	}
	if sv == nil || sv.Destroyed || len(sv.Value) == 0 {
		return nil, wrapf(ErrVersionDestroyed, "version %d of secret %q was destroyed: its value is gone for good", version, name)
	}
	tk := ks.terms[sv.Term]
	if tk == nil || len(sv.Value) < gcmNonceSize {
		return nil, fmt.Errorf("%w: secret %s version %d uses unknown keyring term %d", ErrCorrupt, name, version, sv.Term)
	}
	g, err := newGCM(tk.Bytes())
	if err != nil {
		return nil, err
	}
	n := len(sv.Value) - gcmNonceSize - g.Overhead()
	if n <= 0 {
		return nil, fmt.Errorf("%w: secret %s version %d truncated", ErrCorrupt, name, version)
	}
	buf, err := lockedmem.New(n)
	if err != nil {
		return nil, err
	}
	// Open decrypts into buf's memory (capacity n, so no reallocation).
	if _, err := g.Open(buf.Bytes()[:0], sv.Value[:gcmNonceSize], sv.Value[gcmNonceSize:], secretValueAAD(name, version, sv.Term)); err != nil {
		buf.Destroy()
		return nil, fmt.Errorf("%w: secret %s version %d does not authenticate", ErrCorrupt, name, version)
	}
	return &SecretValue{Name: name, Version: version, CreatedAt: sv.CreatedAt, Value: buf}, nil
}

// SecretMetadata describes a secret (also one pending deletion).
func (ks *Keystore) SecretMetadata(name string) (api.SecretMetadata, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return api.SecretMetadata{}, ErrSealed
	}
	r := ks.secrets[name]
	if r == nil {
		return api.SecretMetadata{}, secretNotFound(name)
	}
	return r.meta.info(), nil
}

// ListSecrets returns the secret names, sorted.
func (ks *Keystore) ListSecrets() ([]string, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return nil, ErrSealed
	}
	out := make([]string, 0, len(ks.secrets))
	for n := range ks.secrets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// ---- writes ----

// updateSecret runs a read-modify-write of a secret record: fn gets a copy
// of the current metadata (nil if none) and returns the next metadata, or
// del to remove the record. fn must have no side effects besides sealing
// values: it may run again after a lost compare-and-set.
func (ks *Keystore) updateSecret(ctx context.Context, name string, fn func(cur *secretMeta) (next *secretMeta, del bool, err error)) (*secretMeta, error) {
	if err := validSecretName(name); err != nil {
		return nil, err
	}
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	path := secretPath(name)
	var next *secretMeta
	err := retryCAS(func() error {
		ks.mu.RLock()
		if ks.root == nil {
			ks.mu.RUnlock()
			return ErrSealed
		}
		var cur *secretMeta
		var record uint64
		if r := ks.secrets[name]; r != nil {
			cur, record = r.meta.clone(), r.record
		} else if _, ok := ks.entries[path]; ok {
			ks.mu.RUnlock()
			return fmt.Errorf("%w: secret %q exists but cannot be read on this node", ErrCorrupt, name)
		} else {
			// A new record continues the path's counter (rollback.go).
			record = ks.tombs[path]
		}
		ks.mu.RUnlock()

		n, del, err := fn(cur)
		if err != nil {
			return err
		}
		next = n
		if del {
			return ks.propose(ctx, &command{Op: opDelete, Path: path, Expect: record})
		}
		meta, err := json.Marshal(n)
		if err != nil {
			return err
		}
		return ks.putRecord(ctx, path, record, meta, nil)
	})
	if err != nil {
		return nil, err
	}
	return next, nil
}

// sealSecretValue seals value for name/version under the active term.
func (ks *Keystore) sealSecretValue(name string, version int, value []byte) (uint32, []byte, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return 0, nil, ErrSealed
	}
	g, err := newGCM(ks.terms[ks.active].Bytes())
	if err != nil {
		return 0, nil, err
	}
	out := make([]byte, gcmNonceSize, gcmNonceSize+len(value)+g.Overhead())
	if _, err := io.ReadFull(ks.cfg.Rand, out); err != nil {
		return 0, nil, fmt.Errorf("reading randomness: %w", err)
	}
	return ks.active, g.Seal(out, out[:gcmNonceSize], value, secretValueAAD(name, version, ks.active)), nil
}

// PutSecret adds a version holding value (the first write creates the
// secret). With cas, the write happens only if *cas is the latest version
// (0: the secret must not exist), else ErrVersionConflict. value is not
// kept; the caller zeroes it.
func (ks *Keystore) PutSecret(ctx context.Context, name string, value []byte, cas *int) (api.SecretWriteResponse, error) {
	if len(value) == 0 {
		return api.SecretWriteResponse{}, invalidf("the secret value is empty: store at least one byte")
	}
	if len(value) > api.MaxSecretValue {
		return api.SecretWriteResponse{}, wrapf(ErrTooLarge, "the secret value is %d bytes, over the limit of %d: store a data key's ciphertext instead and keep the data elsewhere", len(value), api.MaxSecretValue)
	}
	if cas != nil && *cas < 0 {
		return api.SecretWriteResponse{}, invalidf("cas %d is out of range: use the latest version, or 0 for a secret that must not exist yet", *cas)
	}
	var out api.SecretWriteResponse
	_, err := ks.updateSecret(ctx, name, func(cur *secretMeta) (*secretMeta, bool, error) {
		now := ks.cfg.Now().UTC()
		latest := 0
		if cur != nil {
			latest = cur.Latest
			if cur.DeletionDate != nil {
				return nil, false, secretPending(name, cur.DeletionDate)
			}
		}
		if cas != nil && *cas != latest {
			if cur == nil {
				return nil, false, wrapf(ErrVersionConflict, "cas %d does not match: secret %q does not exist (use cas 0 to create it)", *cas, name)
			}
			return nil, false, wrapf(ErrVersionConflict, "cas %d does not match the latest version of secret %q, %d: read it again and retry", *cas, name, latest)
		}
		if cur == nil {
			cur = &secretMeta{Name: name, CreatedAt: now, MaxVersions: api.DefaultSecretMaxVersions}
		}
		v := cur.Latest + 1
		term, sealed, err := ks.sealSecretValue(name, v, value)
		if err != nil {
			return nil, false, err
		}
		cur.Latest, cur.UpdatedAt = v, now
		cur.Versions = append(cur.Versions, secretVersion{Version: v, CreatedAt: now, Term: term, Value: sealed})
		cur.trim()
		out = api.SecretWriteResponse{Name: name, Version: v, CreatedAt: now}
		return cur, false, nil
	})
	if err != nil {
		return api.SecretWriteResponse{}, err
	}
	return out, nil
}

// UpdateSecretMetadata changes max_versions (1 to 100); versions beyond it
// are destroyed, oldest first.
func (ks *Keystore) UpdateSecretMetadata(ctx context.Context, name string, maxVersions int) (api.SecretMetadata, error) {
	if maxVersions < 1 || maxVersions > api.MaxSecretMaxVersionsLimit {
		return api.SecretMetadata{}, invalidf("max_versions %d is out of range: use 1 to %d", maxVersions, api.MaxSecretMaxVersionsLimit)
	}
	m, err := ks.updateSecret(ctx, name, func(cur *secretMeta) (*secretMeta, bool, error) {
		if cur == nil {
			return nil, false, secretNotFound(name)
		}
		if cur.DeletionDate != nil {
			return nil, false, secretPending(name, cur.DeletionDate)
		}
		cur.MaxVersions = maxVersions
		cur.UpdatedAt = ks.cfg.Now().UTC()
		cur.trim()
		return cur, false, nil
	})
	if err != nil {
		return api.SecretMetadata{}, err
	}
	return m.info(), nil
}

// DestroySecretVersions erases the values of versions for good; their
// metadata stays, marked destroyed. Versions already destroyed are
// accepted; a version the secret never had is an error.
func (ks *Keystore) DestroySecretVersions(ctx context.Context, name string, versions []int) (api.SecretMetadata, error) {
	if len(versions) == 0 {
		return api.SecretMetadata{}, invalidf("no versions to destroy: list them, e.g. {\"versions\": [1, 2]}")
	}
	if len(versions) > api.MaxSecretMaxVersionsLimit*10 {
		return api.SecretMetadata{}, invalidf("too many versions (%d) in one destroy", len(versions))
	}
	m, err := ks.updateSecret(ctx, name, func(cur *secretMeta) (*secretMeta, bool, error) {
		if cur == nil {
			return nil, false, secretNotFound(name)
		}
		for _, v := range versions {
			if v < 1 || v > cur.Latest {
				return nil, false, invalidf("secret %q has no version %d: its versions are 1 to %d", name, v, cur.Latest)
			}
		}
		changed := false
		for i := range cur.Versions {
			sv := &cur.Versions[i]
			for _, v := range versions {
				if sv.Version == v && !sv.Destroyed {
					sv.Destroyed, sv.Value, sv.Term, changed = true, nil, 0, true
				}
			}
		}
		if !changed {
			return nil, false, errNothingToDo
		}
		cur.UpdatedAt = ks.cfg.Now().UTC()
		return cur, false, nil
	})
	if errors.Is(err, errNothingToDo) {
		return ks.SecretMetadata(name)
	}
	if err != nil {
		return api.SecretMetadata{}, err
	}
	return m.info(), nil
}

// DeleteSecret schedules a secret for deletion after window (at least
// MinPendingWindow). Until then it can be restored; its value cannot be
// read and it cannot be written.
func (ks *Keystore) DeleteSecret(ctx context.Context, name string, window time.Duration) (api.SecretMetadata, error) {
	if window < MinPendingWindow || window > MaxPendingWindow {
		return api.SecretMetadata{}, invalidf("pending_window %s is out of range: use between %s and %s", FormatDuration(window), FormatDuration(MinPendingWindow), FormatDuration(MaxPendingWindow))
	}
	m, err := ks.updateSecret(ctx, name, func(cur *secretMeta) (*secretMeta, bool, error) {
		if cur == nil {
			return nil, false, secretNotFound(name)
		}
		if cur.DeletionDate != nil {
			return nil, false, wrapf(ErrSecretPendingDeletion, "secret %q is already scheduled for deletion on %s: restore it first to change the window", name, cur.DeletionDate.Format(time.RFC3339))
		}
		now := ks.cfg.Now().UTC()
		d := now.Add(window)
		cur.DeletionDate, cur.UpdatedAt = &d, now
		return cur, false, nil
	})
	if err != nil {
		return api.SecretMetadata{}, err
	}
	return m.info(), nil
}

// RestoreSecret cancels a pending deletion (a no-op on a secret that is
// not pending deletion).
func (ks *Keystore) RestoreSecret(ctx context.Context, name string) (api.SecretMetadata, error) {
	m, err := ks.updateSecret(ctx, name, func(cur *secretMeta) (*secretMeta, bool, error) {
		if cur == nil {
			return nil, false, secretNotFound(name)
		}
		if cur.DeletionDate == nil {
			return nil, false, errNothingToDo
		}
		cur.DeletionDate, cur.UpdatedAt = nil, ks.cfg.Now().UTC()
		return cur, false, nil
	})
	if errors.Is(err, errNothingToDo) {
		return ks.SecretMetadata(name)
	}
	if err != nil {
		return api.SecretMetadata{}, err
	}
	return m.info(), nil
}

// DueSecretPurges lists secrets whose deletion date has passed.
func (ks *Keystore) DueSecretPurges(now time.Time) []string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var out []string
	for name, r := range ks.secrets {
		if d := r.meta.DeletionDate; d != nil && !now.Before(*d) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// PurgeSecret erases a secret whose deletion date has passed (by the
// keystore's clock, checked again inside the write), with all its
// versions. It reports whether it purged.
func (ks *Keystore) PurgeSecret(ctx context.Context, name string) (bool, error) {
	_, err := ks.updateSecret(ctx, name, func(cur *secretMeta) (*secretMeta, bool, error) {
		if cur == nil || cur.DeletionDate == nil || ks.cfg.Now().Before(*cur.DeletionDate) {
			return nil, false, errNothingToDo
		}
		return nil, true, nil
	})
	if errors.Is(err, errNothingToDo) {
		return false, nil
	}
	return err == nil, err
}

// isSecretPath reports whether a record path is a secret's.
func isSecretPath(path string) bool { return strings.HasPrefix(path, secretPrefix) }
