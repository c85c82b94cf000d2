package keystore

import (
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"sync"
	"unsafe"

	"github.com/coffer-kms/coffer/api"
)

// Streaming batch operations (issue 15). Wrap, Unwrap and Rewrap return one
// Result per item, each with a ciphertext string or a plaintext slice of
// its own; for a batch of 100 that is a few hundred small allocations and
// a second pass to encode them. The *Each functions below hand each
// item's result to a callback instead, in item order, from buffers shared
// by the whole batch: the daemon encodes it straight into its answer. The
// results and per-item errors are those of Wrap, Unwrap and Rewrap (the
// tests compare them item by item).
//
// emit runs under the keystore's read lock: it must not call back into the
// keystore. The slice it gets is valid only during the call; a plaintext
// is zeroed right after it.

// EmitFunc receives item i's result: for wrap and rewrap out is the raw
// ciphertext (nonce ‖ sealed data ‖ tag, formatted by AppendCiphertext),
// for unwrap the plaintext; version is the key version used. err is the
// item's error (out is nil and version 0 then, as in a Result).
type EmitFunc func(i, version int, out []byte, err error)

// AppendCiphertext appends the ciphertext string of raw under version
// ("coffer:v<N>:<base64>", as FormatCiphertext) to dst.
func AppendCiphertext(dst []byte, version int, raw []byte) []byte {
	dst = append(dst, CiphertextPrefix...)
	dst = strconv.AppendInt(dst, int64(version), 10)
	dst = append(dst, ':')
	return base64.StdEncoding.AppendEncode(dst, raw)
}

// batchBufs are one batch call's scratch buffers, grown to its largest
// item. raw holds one sealed item at a time, ct one decoded ciphertext, pt
// one opened plaintext (zeroed after each item and at the end).
type batchBufs struct {
	nonces []byte
	raw    []byte
	ct     []byte
	pt     []byte
}

// batchPool recycles batchBufs: only pt ever holds a secret, and it is
// zeroed before the buffers go back. Buffers grown for a large item are
// not kept.
var batchPool = sync.Pool{New: func() any { return new(batchBufs) }}

func getBatchBufs() *batchBufs { return batchPool.Get().(*batchBufs) }

func (b *batchBufs) release() {
	clear(b.pt[:cap(b.pt)])
	if cap(b.nonces) > 64<<10 || cap(b.raw) > 4<<10 || cap(b.ct) > 4<<10 || cap(b.pt) > 4<<10 {
		*b = batchBufs{}
	}
	batchPool.Put(b)
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// readNonces reads n nonces of size ns with one read of the random source:
// a read per item cost as much as the item's AES-GCM.
func (ks *Keystore) readNonces(b *batchBufs, n, ns int) error {
	b.nonces = grow(b.nonces, n*ns)
	if _, err := io.ReadFull(ks.cfg.Rand, b.nonces); err != nil {
		return fmt.Errorf("reading randomness: %w", err)
	}
	return nil
}

func tooLarge(n int) error {
	return wrapf(ErrTooLarge, "plaintext is %d bytes, over the %d-byte limit: wrap a data key (`coffer datakey`) and encrypt large data with it", n, api.MaxPlaintext)
}

// sealInto seals pt with the given nonce into b.raw (nonce ‖ ciphertext ‖ tag).
func (b *batchBufs) sealInto(c *aeadCache, v int, nonce, pt, aad []byte) ([]byte, error) {
	a, err := c.get(v)
	if err != nil {
		return nil, err
	}
	ns := a.NonceSize()
	b.raw = grow(b.raw, ns+len(pt)+a.Overhead())
	copy(b.raw, nonce[:ns])
	return a.Seal(b.raw[:ns], b.raw[:ns], pt, aad), nil
}

// openInto is openData decoding into b.ct and opening into b.pt.
func (b *batchBufs) openInto(c *aeadCache, name, ct string, aad []byte) ([]byte, int, error) {
	v, body, err := splitCiphertext(ct)
	if err != nil {
		return nil, 0, err
	}
	b.ct = grow(b.ct, strictB64.DecodedLen(len(body)))
	// Decode takes a []byte; the string's bytes are only read.
	n, derr := strictB64.Decode(b.ct, unsafe.Slice(unsafe.StringData(body), len(body)))
	if derr != nil {
		return nil, 0, errCiphertextBase64
	}
	raw := b.ct[:n]
	if len(raw) < dataNonceSize+dataTagSize {
		return nil, 0, errCiphertextShort
	}
	// The plaintext goes to the batch's buffer (an outgrown one holds no
	// plaintext: each is cleared after its item); a failed Open may have
	// written into it.
	b.pt = grow(b.pt, len(raw))
	pt, err := openRaw(c, name, v, raw, aad, b.pt[:0])
	if err != nil {
		clear(b.pt)
		return nil, v, err
	}
	return pt, v, nil
}

// WrapEach is Wrap streaming its results to emit. The nonces of the batch
// come from one read of the random source, and the nonce budget counts
// every item sealed (before sealing it).
func (ks *Keystore) WrapEach(name string, items []Item, emit EmitFunc) error {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, err := ks.keyFor(name)
	if err != nil {
		return err
	}
	c := aeadCache{k: k}
	v := k.latest()
	a, aerr := c.get(v)
	sealable := 0
	for i := range items {
		if len(items[i].Plaintext) <= api.MaxPlaintext {
			sealable++
		}
	}
	b := getBatchBufs()
	defer b.release()
	if aerr == nil && sealable > 0 {
		aerr = ks.readNonces(b, sealable, a.NonceSize())
	}
	if aerr == nil && sealable > 0 {
		ks.countEncryptions(k, uint64(sealable)) // the nonce budget (nonce.go)
	}
	next := 0
	for i := range items {
		pt := items[i].Plaintext
		if len(pt) > api.MaxPlaintext {
			emit(i, 0, nil, tooLarge(len(pt)))
			continue
		}
		if aerr != nil {
			emit(i, 0, nil, aerr)
			continue
		}
		ns := a.NonceSize()
		raw, err := b.sealInto(&c, v, b.nonces[next*ns:(next+1)*ns], pt, items[i].AAD)
		next++
		if err != nil {
			emit(i, 0, nil, err)
			continue
		}
		emit(i, v, raw, nil)
	}
	return nil
}

// UnwrapEach is Unwrap streaming its results to emit; each plaintext is
// zeroed once emit returns.
func (ks *Keystore) UnwrapEach(name string, items []Item, emit EmitFunc) error {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, err := ks.keyFor(name)
	if err != nil {
		return err
	}
	c := aeadCache{k: k}
	b := getBatchBufs()
	defer b.release()
	for i := range items {
		pt, v, err := b.openInto(&c, name, items[i].Ciphertext, items[i].AAD)
		if err != nil {
			emit(i, 0, nil, err)
			continue
		}
		emit(i, v, pt, nil)
		clear(pt)
	}
	return nil
}

// RewrapEach is Rewrap streaming its results to emit: each ciphertext is
// opened and sealed again under the latest version, the plaintext zeroed
// in between items. The nonces of the batch come from one read.
func (ks *Keystore) RewrapEach(name string, items []Item, emit EmitFunc) error {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, err := ks.keyFor(name)
	if err != nil {
		return err
	}
	c := aeadCache{k: k}
	v := k.latest()
	b := getBatchBufs()
	defer b.release()
	a, aerr := c.get(v)
	if aerr == nil {
		aerr = ks.readNonces(b, len(items), a.NonceSize())
	}
	for i := range items {
		pt, _, err := b.openInto(&c, name, items[i].Ciphertext, items[i].AAD)
		if err != nil {
			emit(i, 0, nil, err)
			continue
		}
		switch {
		case len(pt) > api.MaxPlaintext:
			err = tooLarge(len(pt))
		case aerr != nil:
			err = aerr
		}
		if err != nil {
			clear(pt)
			emit(i, 0, nil, err)
			continue
		}
		ks.countEncryption(k) // the nonce budget (nonce.go)
		ns := a.NonceSize()
		raw, err := b.sealInto(&c, v, b.nonces[i*ns:(i+1)*ns], pt, items[i].AAD)
		clear(pt)
		if err != nil {
			emit(i, 0, nil, err)
			continue
		}
		emit(i, v, raw, nil)
	}
	return nil
}
