// Package soft is the DEVELOPMENT seal device. IT IS NOT HARDWARE.
//
// It keeps its 256-bit key in a plain file (mode 0600) and seals with
// AES-256-GCM in process memory. Anyone who can read the key file, or the
// daemon's memory, can unseal the root key. It exists so that `make run`, unit
// tests of higher layers and a laptop demo need no HSM or TPM; the daemon
// refuses it unless the configuration says `dev = true`. Production nodes use
// hsm/pkcs11 or hsm/tpm.
package soft

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/internal/atomicfile"
)

// Kind is the device kind recorded in blobs and reported as seal_type.
const Kind = "soft"

// Warning is what the daemon should log when it opens this device.
const Warning = "the soft seal device is NOT hardware: its key is a plain file on disk and protects nothing beyond file permissions; use it for development only"

// KeySize is the size of the key in the key file: AES-256.
const KeySize = 32

const nonceSize = 12 // the GCM standard nonce, 96 bits, fresh per seal

var _ hsm.Device = (*Device)(nil)

// Device is the file-backed development seal device. It is safe for
// concurrent use.
type Device struct {
	keyFile string
	keyID   string

	mu  sync.RWMutex
	key []byte // nil once closed; zeroed by Close
}

// Validate checks the seal "soft" block's key_file setting without touching
// the file. Its errors are *hsm.SettingError. Open also checks it.
func Validate(keyFile string) error {
	if keyFile == "" {
		return &hsm.SettingError{Setting: "key_file", Msg: "soft seal: no key file given; set key_file in the seal \"soft\" block, e.g. key_file = \"dev-seal.key\""}
	}
	return nil
}

// Open loads the 32-byte key from keyFile, or, when keyFile does not exist,
// creates a new random key there (mode 0600, parent directories 0700, written
// atomically so that a crash never leaves a half-written key). It refuses a
// key file that group or others may access, that is not a regular file, or
// that does not hold exactly 32 bytes.
func Open(keyFile string) (*Device, error) {
	if err := Validate(keyFile); err != nil {
		return nil, err
	}
	key, err := loadKey(keyFile)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = createKey(keyFile)
	}
	if err != nil {
		return nil, err
	}
	return &Device{keyFile: keyFile, keyID: keyID(key), key: key}, nil
}

func loadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("soft seal: cannot open key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("soft seal: cannot stat key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("soft seal: key file %s is not a regular file (%s); point key_file at a regular file or at a path that does not exist yet", path, st.Mode().Type())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("soft seal: key file %s has mode %04o, which lets group or others read it; run: chmod 600 %s", path, perm, path)
	}
	if st.Size() != KeySize {
		return nil, fmt.Errorf("soft seal: key file %s holds %d bytes, want %d; it is not a Coffer soft seal key (move it away to create a new key; blobs sealed with the old key then need shares to unseal)", path, st.Size(), KeySize)
	}
	// Read one byte more than expected so that a file that changed size
	// after Stat is caught rather than silently truncated.
	buf := make([]byte, KeySize+1)
	n, err := io.ReadFull(f, buf)
	if n != KeySize || !errors.Is(err, io.ErrUnexpectedEOF) {
		clear(buf)
		if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("soft seal: key file %s changed size while being read; retry", path)
		}
		return nil, fmt.Errorf("soft seal: cannot read key file: %w", err)
	}
	return buf[:KeySize:KeySize], nil
}

// createKey writes a new random key to path atomically and durably
// (internal/atomicfile).
func createKey(path string) ([]byte, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("soft seal: cannot create key directory: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("soft seal: cannot generate key: %w", err)
	}
	fail := func(err error) ([]byte, error) {
		clear(key)
		return nil, err
	}
	// WriteNew, not Write: if another process created the key in the
	// meantime, replacing it would orphan its blobs.
	if err := atomicfile.WriteNew(path, key, 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			clear(key)
			return loadKey(path)
		}
		return fail(fmt.Errorf("soft seal: cannot write key file: %w", err))
	}
	return key, nil
}

// keyID is a short, non-secret fingerprint of the key so that a blob sealed
// by another soft key is reported as such.
func keyID(key []byte) string {
	h := sha256.New()
	h.Write([]byte("coffer-soft-seal-key-id-v1\x00"))
	h.Write(key)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Kind returns "soft". A soft-sealed node is NOT protected by hardware.
func (d *Device) Kind() string { return Kind }

// KeyID returns the non-secret fingerprint of the device key.
func (d *Device) KeyID() string { return d.keyID }

func (d *Device) aead() (cipher.AEAD, error) {
	if d.key == nil {
		return nil, fmt.Errorf("soft seal: device is closed: %w", hsm.ErrDeviceUnavailable)
	}
	// The cipher is built per call rather than kept, so that its expanded
	// key schedule lives only as long as one operation.
	block, err := aes.NewCipher(d.key)
	if err != nil {
		return nil, fmt.Errorf("soft seal: %w", err)
	}
	return cipher.NewGCM(block)
}

// Seal encrypts secret with AES-256-GCM under a fresh random 96-bit nonce,
// binding aad. The blob's Data is nonce || ciphertext || tag.
func (d *Device) Seal(ctx context.Context, secret, aad []byte) (hsm.Blob, error) {
	if err := ctx.Err(); err != nil {
		return hsm.Blob{}, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	g, err := d.aead()
	if err != nil {
		return hsm.Blob{}, err
	}
	out := make([]byte, nonceSize, nonceSize+len(secret)+g.Overhead())
	if _, err := rand.Read(out); err != nil {
		return hsm.Blob{}, fmt.Errorf("soft seal: cannot generate nonce: %w", err)
	}
	out = g.Seal(out, out[:nonceSize], secret, aad)
	return hsm.Blob{Kind: Kind, KeyID: d.keyID, Data: out}, nil
}

// Unseal opens a blob made by Seal with the same key and aad. Every refusal
// wraps hsm.ErrUnsealFailed. The caller zeroes the returned secret.
func (d *Device) Unseal(ctx context.Context, b hsm.Blob, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.Kind != Kind {
		return nil, fmt.Errorf("soft seal: the blob was sealed by a %q device, not %q: %w", b.Kind, Kind, hsm.ErrUnsealFailed)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	g, err := d.aead()
	if err != nil {
		return nil, err
	}
	if b.KeyID != "" && b.KeyID != d.keyID {
		return nil, fmt.Errorf("soft seal: the blob was sealed with soft key %s, but %s holds key %s: %w", b.KeyID, d.keyFile, d.keyID, hsm.ErrUnsealFailed)
	}
	if len(b.Data) < nonceSize+g.Overhead() {
		return nil, fmt.Errorf("soft seal: the blob is truncated (%d bytes): %w", len(b.Data), hsm.ErrUnsealFailed)
	}
	secret, err := g.Open(nil, b.Data[:nonceSize], b.Data[nonceSize:], aad)
	if err != nil {
		return nil, fmt.Errorf("soft seal: the blob does not open with this key and aad (tampered, or sealed for another cluster or node): %w", hsm.ErrUnsealFailed)
	}
	return secret, nil
}

// Health reports whether the device is open and its key file is still in
// place (without it the node would not auto-unseal after a restart).
func (d *Device) Health(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.RLock()
	closed := d.key == nil
	d.mu.RUnlock()
	if closed {
		return fmt.Errorf("soft seal: device is closed: %w", hsm.ErrDeviceUnavailable)
	}
	if _, err := os.Stat(d.keyFile); err != nil {
		return fmt.Errorf("soft seal: key file is gone, the node will not auto-unseal after a restart (%v): %w", err, hsm.ErrDeviceUnavailable)
	}
	return nil
}

// Close zeroes the in-memory key. It is safe to call more than once.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.key)
	d.key = nil
	return nil
}
