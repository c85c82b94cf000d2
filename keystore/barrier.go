package keystore

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/coffer-kms/coffer/internal/lockedmem"
)

const (
	barrierKeySize = 32
	gcmNonceSize   = 12
)

// termMeta describes one keyring term; its key travels separately.
type termMeta struct {
	Term      uint32    `json:"term"`
	CreatedAt time.Time `json:"created_at"`
}

// keyringPlain is the keyring's metadata; term keys follow it in the same
// order as Terms.
type keyringPlain struct {
	Active uint32     `json:"active"`
	Terms  []termMeta `json:"terms"`
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// packPlain builds uvarint(len(meta)) || meta || keys... into a fresh buffer
// that the caller zeroes.
func packPlain(meta []byte, keys [][]byte) []byte {
	n := binary.MaxVarintLen64 + len(meta)
	for _, k := range keys {
		n += len(k)
	}
	out := make([]byte, 0, n)
	out = binary.AppendUvarint(out, uint64(len(meta)))
	out = append(out, meta...)
	for _, k := range keys {
		out = append(out, k...)
	}
	return out
}

// unpackPlain splits a plaintext into meta and keys of keySize bytes each.
// The returned slices alias p.
func unpackPlain(p []byte, keySize int) (meta []byte, keys [][]byte, err error) {
	l, n := binary.Uvarint(p)
	if n <= 0 || l > uint64(len(p)-n) {
		return nil, nil, fmt.Errorf("%w: bad record framing", ErrCorrupt)
	}
	meta = p[n : n+int(l)]
	rest := p[n+int(l):]
	if len(rest)%keySize != 0 {
		return nil, nil, fmt.Errorf("%w: bad key section length", ErrCorrupt)
	}
	for len(rest) > 0 {
		keys = append(keys, rest[:keySize:keySize])
		rest = rest[keySize:]
	}
	return meta, keys, nil
}

func keyringAAD(clusterID string) []byte {
	return append([]byte("coffer-keyring-v1\x00"), clusterID...)
}

// sealKeyring encrypts the keyring under root.
func sealKeyring(root []byte, clusterID string, kr *keyringPlain, termKeys [][]byte, rnd io.Reader) ([]byte, error) {
	meta, err := json.Marshal(kr)
	if err != nil {
		return nil, err
	}
	plain := packPlain(meta, termKeys)
	defer clear(plain)
	g, err := newGCM(root)
	if err != nil {
		return nil, err
	}
	out := make([]byte, gcmNonceSize, gcmNonceSize+len(plain)+g.Overhead())
	if _, err := io.ReadFull(rnd, out); err != nil {
		return nil, fmt.Errorf("reading randomness: %w", err)
	}
	return g.Seal(out, out[:gcmNonceSize], plain, keyringAAD(clusterID)), nil
}

// openKeyring decrypts the keyring. The returned keys are in a fresh buffer
// the caller must zero (zeroAll). A wrong root key gives ErrRootKeyMismatch.
func openKeyring(root []byte, clusterID string, blob []byte) (*keyringPlain, [][]byte, error) {
	if len(root) != RootKeySize || len(blob) < gcmNonceSize {
		return nil, nil, ErrRootKeyMismatch
	}
	g, err := newGCM(root)
	if err != nil {
		return nil, nil, err
	}
	plain, err := g.Open(nil, blob[:gcmNonceSize], blob[gcmNonceSize:], keyringAAD(clusterID))
	if err != nil {
		return nil, nil, ErrRootKeyMismatch
	}
	meta, keys, err := unpackPlain(plain, barrierKeySize)
	if err != nil {
		clear(plain)
		return nil, nil, err
	}
	var kr keyringPlain
	if err := json.Unmarshal(meta, &kr); err != nil || len(kr.Terms) != len(keys) || len(keys) == 0 {
		clear(plain)
		return nil, nil, fmt.Errorf("%w: keyring metadata", ErrCorrupt)
	}
	return &kr, keys, nil
}

// loadKeyringLocked opens the stored keyring with root and replaces the term
// keys in locked memory.
func (ks *Keystore) loadKeyringLocked(root []byte) error {
	kr, keys, err := openKeyring(root, ks.seal.ClusterID, ks.keyring)
	if err != nil {
		return err
	}
	defer zeroAll(keys)
	terms := make(map[uint32]*lockedmem.Buf, len(keys))
	for i, k := range keys {
		b, err := lockedmem.Copy(k)
		if err != nil {
			for _, t := range terms {
				t.Destroy()
			}
			return err
		}
		terms[kr.Terms[i].Term] = b
	}
	if terms[kr.Active] == nil {
		for _, t := range terms {
			t.Destroy()
		}
		return fmt.Errorf("%w: active term %d missing from keyring", ErrCorrupt, kr.Active)
	}
	for _, t := range ks.terms {
		t.Destroy()
	}
	ks.terms, ks.termMeta, ks.active = terms, kr.Terms, kr.Active
	return nil
}

func recordAAD(path string, version uint64, term uint32) []byte {
	a := make([]byte, 0, len("coffer-record-v1")+2+len(path)+12)
	a = append(a, "coffer-record-v1\x00"...)
	a = append(a, path...)
	a = append(a, 0)
	a = binary.BigEndian.AppendUint64(a, version)
	a = binary.BigEndian.AppendUint32(a, term)
	return a
}

// sealRecordLocked encrypts meta || keys for path at the given record version
// under the active term.
func (ks *Keystore) sealRecordLocked(path string, version uint64, meta []byte, keys [][]byte) (Entry, error) {
	tk := ks.terms[ks.active]
	g, err := newGCM(tk.Bytes())
	if err != nil {
		return Entry{}, err
	}
	plain := packPlain(meta, keys)
	defer clear(plain)
	out := make([]byte, gcmNonceSize, gcmNonceSize+len(plain)+g.Overhead())
	if _, err := io.ReadFull(ks.cfg.Rand, out); err != nil {
		return Entry{}, fmt.Errorf("reading randomness: %w", err)
	}
	out = g.Seal(out, out[:gcmNonceSize], plain, recordAAD(path, version, ks.active))
	return Entry{Version: version, Term: ks.active, Data: out}, nil
}

// openRecordLocked decrypts a record. The returned plaintext slices alias a
// fresh buffer; the caller zeroes the keys (zeroAll) once copied.
func (ks *Keystore) openRecordLocked(path string, e Entry) (meta []byte, keys [][]byte, err error) {
	tk := ks.terms[e.Term]
	if tk == nil {
		return nil, nil, fmt.Errorf("%w: record %s uses unknown keyring term %d", ErrCorrupt, path, e.Term)
	}
	if len(e.Data) < gcmNonceSize {
		return nil, nil, fmt.Errorf("%w: record %s truncated", ErrCorrupt, path)
	}
	g, err := newGCM(tk.Bytes())
	if err != nil {
		return nil, nil, err
	}
	plain, err := g.Open(nil, e.Data[:gcmNonceSize], e.Data[gcmNonceSize:], recordAAD(path, e.Version, e.Term))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: record %s does not authenticate", ErrCorrupt, path)
	}
	meta, keys, err = unpackPlain(plain, materialSize)
	if err != nil {
		clear(plain)
		return nil, nil, err
	}
	return meta, keys, nil
}
