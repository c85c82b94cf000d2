package keystore

import (
	"crypto/cipher"
	"encoding/base64"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/coffer-kms/coffer/api"
)

// CiphertextPrefix starts every data ciphertext.
const CiphertextPrefix = "coffer:v"

const (
	dataNonceSize = 12 // aes256-gcm and chacha20-poly1305; xaes256-gcm: 24
	dataTagSize   = 16
)

// Item is one input of a crypto operation: Plaintext for wrap, Ciphertext
// for unwrap and rewrap, and an optional AAD.
type Item struct {
	Plaintext  []byte
	Ciphertext string
	AAD        []byte
}

// Result is one output of a crypto operation. Err is per item (ErrDecrypt,
// ErrVersionDisabled, ErrTooLarge, ErrInvalid); request-level failures come
// back as the operation's error instead.
type Result struct {
	Plaintext  []byte
	Ciphertext string
	Version    int
	Err        error
}

// FormatCiphertext encodes a data ciphertext.
func FormatCiphertext(version int, raw []byte) string {
	b := make([]byte, 0, len(CiphertextPrefix)+11+base64.StdEncoding.EncodedLen(len(raw)))
	b = append(b, CiphertextPrefix...)
	b = strconv.AppendInt(b, int64(version), 10)
	b = append(b, ':')
	b = base64.StdEncoding.AppendEncode(b, raw)
	// b is never written again: share its memory instead of copying it.
	return unsafe.String(unsafe.SliceData(b), len(b))
}

var strictB64 = base64.StdEncoding.Strict()

// ParseCiphertext decodes "coffer:v<N>:<base64>" strictly: N decimal in
// 1..2^31-1 without leading zeros, canonical padded base64, at least a nonce
// and a tag. Every failure wraps ErrDecrypt.
func ParseCiphertext(s string) (version int, raw []byte, err error) {
	v, body, err := splitCiphertext(s)
	if err != nil {
		return 0, nil, err
	}
	raw, derr := strictB64.DecodeString(body)
	if derr != nil {
		return 0, nil, errCiphertextBase64
	}
	if len(raw) < dataNonceSize+dataTagSize {
		return 0, nil, errCiphertextShort
	}
	return v, raw, nil
}

var (
	errCiphertextBase64 = wrapf(ErrDecrypt, "ciphertext body is not valid base64: it was truncated or altered")
	errCiphertextShort  = wrapf(ErrDecrypt, "ciphertext is too short: it was truncated")
)

// splitCiphertext checks "coffer:v<N>:" and returns N and the base64 body
// (ParseCiphertext; the batch functions decode the body into a buffer).
func splitCiphertext(s string) (version int, body string, err error) {
	if len(s) < len(CiphertextPrefix) || s[:len(CiphertextPrefix)] != CiphertextPrefix {
		return 0, "", wrapf(ErrDecrypt, "ciphertext does not start with %q: pass the ciphertext exactly as wrap returned it", CiphertextPrefix)
	}
	rest := s[len(CiphertextPrefix):]
	// N by hand (strconv.ParseInt(…, 10, 32) was a tenth of an unwrap
	// batch): at most 11 digits, so v cannot overflow before the check.
	i, v := 0, int64(0)
	for i < len(rest) && i < 11 && rest[i] >= '0' && rest[i] <= '9' {
		v = v*10 + int64(rest[i]-'0')
		i++
	}
	if i == 0 || i >= len(rest) || rest[i] != ':' || (rest[0] == '0') || v < 1 || v > math.MaxInt32 {
		return 0, "", wrapf(ErrDecrypt, "ciphertext has a malformed version: expected coffer:v<N>:<base64>")
	}
	body = rest[i+1:]
	// encoding/base64 skips \r and \n even in strict mode; a ciphertext has
	// exactly one spelling, so refuse them. (Two IndexByte scans: ContainsAny
	// goes byte by byte and cost more than the AES-GCM of a short item.)
	if strings.IndexByte(body, '\r') >= 0 || strings.IndexByte(body, '\n') >= 0 {
		return 0, "", wrapf(ErrDecrypt, "ciphertext body is not valid base64: it contains a line break")
	}
	return int(v), body, nil
}

func newAEAD(typ string, key []byte) (cipher.AEAD, error) {
	switch typ {
	case api.KeyTypeChaCha20Poly1305:
		return chacha20poly1305.New(key)
	case api.KeyTypeXAES256GCM:
		return newXAES(key)
	default:
		return newGCM(key)
	}
}

// keyFor looks up a usable key under the read lock the caller holds.
func (ks *Keystore) keyFor(name string) (*namedKey, error) {
	if ks.root == nil {
		return nil, ErrSealed
	}
	k := ks.keys[name]
	if k == nil {
		return nil, keyNotFound(name)
	}
	if d := k.meta.DeletionDate; d != nil {
		return nil, wrapf(ErrPendingDeletion, "key %q is scheduled for deletion on %s: restore it (`coffer key restore %s`) to use it", name, d.Format(time.RFC3339), name)
	}
	return k, nil
}

// aeadCache builds each version's AEAD at most once per request. The AEADs
// are not kept across requests: their expanded keys live on the Go heap,
// while the key material itself stays in locked memory.
type aeadCache struct {
	k    *namedKey
	v    int
	aead cipher.AEAD
	more map[int]cipher.AEAD
	// left is how many more ciphertexts the call will format (a hint);
	// scratch holds one sealed item at a time and out the formatted
	// ciphertexts: the items of a batch share a few allocations instead
	// of two each. Neither is secret (nonce, ciphertext, tag).
	left    int
	scratch []byte
	out     []byte
}

// format is FormatCiphertext into c.out. A returned string's bytes are
// never written again (later ones are appended after them, or to a new
// chunk), so it may share c.out's memory.
func (c *aeadCache) format(v int, raw []byte) string {
	n := len(CiphertextPrefix) + 11 + base64.StdEncoding.EncodedLen(len(raw))
	if cap(c.out)-len(c.out) < n {
		c.out = make([]byte, 0, n*min(max(c.left, 1), 64))
	}
	start := len(c.out)
	c.out = append(c.out, CiphertextPrefix...)
	c.out = strconv.AppendInt(c.out, int64(v), 10)
	c.out = append(c.out, ':')
	c.out = base64.StdEncoding.AppendEncode(c.out, raw)
	c.left--
	b := c.out[start:len(c.out):len(c.out)]
	return unsafe.String(unsafe.SliceData(b), len(b))
}

func (c *aeadCache) get(v int) (cipher.AEAD, error) {
	if c.aead != nil && c.v == v {
		return c.aead, nil
	}
	if a := c.more[v]; a != nil {
		return a, nil
	}
	a, err := newAEAD(c.k.meta.Type, c.k.versionKey(v))
	if err != nil {
		return nil, err
	}
	if c.aead == nil {
		c.v, c.aead = v, a
	} else {
		if c.more == nil {
			c.more = map[int]cipher.AEAD{}
		}
		c.more[v] = a
	}
	return a, nil
}

func (ks *Keystore) sealData(c *aeadCache, v int, pt, aad []byte) (string, error) {
	if len(pt) > api.MaxPlaintext {
		return "", wrapf(ErrTooLarge, "plaintext is %d bytes, over the %d-byte limit: wrap a data key (`coffer datakey`) and encrypt large data with it", len(pt), api.MaxPlaintext)
	}
	a, err := c.get(v)
	if err != nil {
		return "", err
	}
	ns := a.NonceSize()
	if need := ns + len(pt) + a.Overhead(); cap(c.scratch) < need {
		c.scratch = make([]byte, 0, need)
	}
	raw := c.scratch[:ns]
	if _, err := io.ReadFull(ks.cfg.Rand, raw); err != nil {
		return "", fmt.Errorf("reading randomness: %w", err)
	}
	if v == c.k.latest() {
		ks.countEncryption(c.k) // the nonce budget of a 96-bit-nonce version (nonce.go)
	}
	raw = a.Seal(raw, raw[:ns], pt, aad)
	return c.format(v, raw), nil
}

func (ks *Keystore) openData(c *aeadCache, name, ct string, aad []byte) ([]byte, int, error) {
	v, raw, err := ParseCiphertext(ct)
	if err != nil {
		return nil, 0, err
	}
	pt, err := openRaw(c, name, v, raw, aad, nil)
	return pt, v, err
}

// openRaw opens raw (nonce || ciphertext || tag) of version v of c's key,
// appending the plaintext to dst: the checks and errors of every unwrap,
// single or batch.
func openRaw(c *aeadCache, name string, v int, raw, aad, dst []byte) ([]byte, error) {
	k := c.k
	if v > k.latest() {
		return nil, &wrapped{msg: fmt.Sprintf("ciphertext names version %d but key %q has versions 1 to %d: it was produced by another key", v, name, k.latest()), err: unknownVersion{}}
	}
	if v < k.meta.MinDecryptionVersion {
		return nil, wrapf(ErrVersionDisabled, "ciphertext version %d is below key %q's min_decryption_version %d: lower it with `coffer key update %s --min-decryption-version %d` if this is intended", v, name, k.meta.MinDecryptionVersion, name, v)
	}
	a, err := c.get(v)
	if err != nil {
		return nil, err
	}
	ns := a.NonceSize()
	if len(raw) < ns+a.Overhead() {
		return nil, wrapf(ErrDecrypt, "ciphertext is too short for a %s key: it was truncated or produced by another key", k.meta.Type)
	}
	pt, err := a.Open(dst, raw[:ns], raw[ns:], aad)
	if err != nil {
		return nil, wrapf(ErrDecrypt, "ciphertext does not authenticate under key %q version %d: it was tampered with, produced by another key, or the aad differs", name, v)
	}
	return pt, nil
}

// Wrap encrypts each item's plaintext under the key's latest version.
func (ks *Keystore) Wrap(name string, items []Item) ([]Result, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, err := ks.keyFor(name)
	if err != nil {
		return nil, err
	}
	c := aeadCache{k: k, left: len(items)}
	v := k.latest()
	out := make([]Result, len(items))
	for i := range items {
		ct, err := ks.sealData(&c, v, items[i].Plaintext, items[i].AAD)
		if err != nil {
			out[i].Err = err
			continue
		}
		out[i] = Result{Ciphertext: ct, Version: v}
	}
	return out, nil
}

// Unwrap decrypts each item's ciphertext. The caller zeroes the returned
// plaintexts once written out.
func (ks *Keystore) Unwrap(name string, items []Item) ([]Result, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, err := ks.keyFor(name)
	if err != nil {
		return nil, err
	}
	c := aeadCache{k: k}
	out := make([]Result, len(items))
	for i := range items {
		pt, v, err := ks.openData(&c, name, items[i].Ciphertext, items[i].AAD)
		if err != nil {
			out[i].Err = err
			continue
		}
		out[i] = Result{Plaintext: pt, Version: v}
	}
	return out, nil
}

// Rewrap decrypts each ciphertext and encrypts it again under the latest
// version, without the plaintext leaving this function.
func (ks *Keystore) Rewrap(name string, items []Item) ([]Result, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, err := ks.keyFor(name)
	if err != nil {
		return nil, err
	}
	c := aeadCache{k: k, left: len(items)}
	v := k.latest()
	out := make([]Result, len(items))
	for i := range items {
		pt, _, err := ks.openData(&c, name, items[i].Ciphertext, items[i].AAD)
		if err != nil {
			out[i].Err = err
			continue
		}
		ct, err := ks.sealData(&c, v, pt, items[i].AAD)
		clear(pt)
		if err != nil {
			out[i].Err = err
			continue
		}
		out[i] = Result{Ciphertext: ct, Version: v}
	}
	return out, nil
}

// DataKey makes n random bytes and wraps them under the latest version. The
// caller zeroes the returned plaintext.
func (ks *Keystore) DataKey(name string, n int, aad []byte) (Result, error) {
	if n < api.MinDataKeyLen || n > api.MaxDataKeyLen {
		return Result{}, invalidf("bytes %d is out of range: use %d to %d", n, api.MinDataKeyLen, api.MaxDataKeyLen)
	}
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, err := ks.keyFor(name)
	if err != nil {
		return Result{}, err
	}
	pt := make([]byte, n)
	if _, err := io.ReadFull(ks.cfg.Rand, pt); err != nil {
		return Result{}, fmt.Errorf("reading randomness: %w", err)
	}
	c := aeadCache{k: k}
	ct, err := ks.sealData(&c, k.latest(), pt, aad)
	if err != nil {
		clear(pt)
		return Result{}, err
	}
	return Result{Plaintext: pt, Ciphertext: ct, Version: k.latest()}, nil
}

// unknownVersion is both ErrDecrypt (what the caller is told) and
// ErrUnknownVersion (what the daemon waits on before telling it).
type unknownVersion struct{}

func (unknownVersion) Error() string { return ErrUnknownVersion.Error() }
func (unknownVersion) Is(target error) bool {
	return target == ErrDecrypt || target == ErrUnknownVersion
}
