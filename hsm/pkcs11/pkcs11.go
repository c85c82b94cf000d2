// Package pkcs11 is the PKCS#11 seal device: it seals the cluster root key
// with AES-256-GCM under a key that lives in an HSM token and never leaves it
// (CKA_SENSITIVE, not CKA_EXTRACTABLE).
//
// The device key is an AES secret key found on the token by its label;
// [Open] can create it (C_GenerateKey inside the token). Seal is C_Encrypt
// with CKM_AES_GCM, a 128-bit tag and a fresh random 96-bit IV that this
// package generates (SoftHSM, for one, never generates one and accepts an
// empty IV, which would repeat nonces). A blob's Data is IV || ciphertext ||
// tag.
//
// PKCS#11 rules this package is built around:
//
//   - C_Initialize may be called once per process and module: modules are
//     kept in a process-wide registry, initialised when the first Device
//     opens and finalised when the last one closes (or by Reopen, to rescan
//     the slots for a replaced token).
//   - A session must not be used by two threads at once (SoftHSM aborts the
//     process): each operation takes a session of its own from a small
//     per-Device pool.
//   - Login is per application and token, not per session: the Device logs
//     in once and every session shares the login. A PIN the token rejects is
//     never tried again until Reopen, so a daemon cannot lock the token by
//     retrying.
//   - Sessions and handles die when the token goes away. An operation that
//     meets a dead session, login or key handle reconnects once (new
//     session, login, key lookup) and retries; if the token is gone it
//     reports [hsm.ErrDeviceUnavailable] and says what to do.
//
// The PIN is copied at Open and zeroed by Close. miekg/pkcs11 passes it to the
// module through a short-lived C copy that it frees without zeroing, and it
// returns unsealed secrets through C memory freed the same way; neither is
// within this package's reach.
package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	p11 "github.com/miekg/pkcs11"

	"github.com/coffer-kms/coffer/hsm"
)

// Kind is the device kind recorded in blobs and reported as seal_type.
const Kind = "pkcs11"

// Mechanism names the sealing mechanism in a blob's Meta["mechanism"].
const Mechanism = "CKM_AES_GCM"

// Meta keys of a blob.
const (
	MetaTokenLabel = "token_label"
	MetaMechanism  = "mechanism"
)

const (
	ivSize      = 12  // the GCM standard nonce, 96 bits
	tagBits     = 128 // full-size GCM tag
	tagSize     = tagBits / 8
	keyBytes    = 32 // AES-256
	maxLabelLen = 32 // CK_TOKEN_INFO.label is 32 bytes
	// maxSessions bounds the sessions a Device has open at once (and so the
	// concurrent operations on it): real HSMs limit sessions per token, and
	// on SoftHSM more sessions than cores add nothing.
	maxSessions = 8
	sessionMode = p11.CKF_SERIAL_SESSION | p11.CKF_RW_SESSION
)

// loginAttempts counts C_Login calls in this process, so that tests can
// check that a rejected PIN is not retried.
var loginAttempts atomic.Int64

// Config selects the module, token and key of a PKCS#11 seal device.
type Config struct {
	Library     string // path of the PKCS#11 module .so
	TokenLabel  string
	PIN         []byte // user PIN; copied by Open (the caller zeroes its own); never logged or put in an error
	KeyLabel    string
	GenerateKey bool // create the AES-256 device key if the token lacks it
}

// Validate checks the settings a config file gives (not the PIN, which is
// read at open) without loading the library, so that a configuration error
// is reported when the configuration is loaded. Its errors are
// *hsm.SettingError. Open also validates.
func (c Config) Validate() error {
	setting := func(name, format string, args ...any) error {
		return &hsm.SettingError{Setting: name, Msg: "pkcs11 seal: " + fmt.Sprintf(format, args...)}
	}
	switch {
	case c.Library == "":
		return setting("library", "no PKCS#11 library given: set library in the seal \"pkcs11\" block to the PKCS#11 module, e.g. library = \"/usr/lib/softhsm/libsofthsm2.so\"")
	case c.TokenLabel == "":
		return setting("token_label", "no token label given: set token_label in the seal \"pkcs11\" block, e.g. token_label = \"coffer\"")
	case len(c.TokenLabel) > maxLabelLen:
		return setting("token_label", "token_label %q is %d bytes, but PKCS#11 token labels hold at most %d", c.TokenLabel, len(c.TokenLabel), maxLabelLen)
	case c.KeyLabel == "":
		return setting("key_label", "no key label given: set key_label in the seal \"pkcs11\" block, e.g. key_label = \"coffer-seal\"")
	}
	return nil
}

func (c *Config) validate() error {
	if err := c.Validate(); err != nil {
		return &deviceError{msg: err.Error(), kind: hsm.ErrDeviceUnavailable}
	}
	if len(c.PIN) == 0 {
		return unavailable(nil, "no user PIN for token %q: set pin_file or pin_env in the seal \"pkcs11\" block", c.TokenLabel)
	}
	return nil
}

var (
	_ hsm.Device   = (*Device)(nil)
	_ hsm.Reopener = (*Device)(nil)
)

// Device is a PKCS#11 seal device. It is safe for concurrent use.
type Device struct {
	libName    string
	tokenLabel string
	keyLabel   string
	generate   bool
	log        hclog.Logger
	lib        *library

	// opMu is held shared by every operation and exclusively by Reopen and
	// Close, which therefore wait for operations in flight.
	opMu   sync.RWMutex
	closed bool // guarded by opMu

	// sem bounds the sessions in use.
	sem chan struct{}

	// mu guards the connection state below. Connecting (which may log in)
	// happens under it, so that concurrent operations that all lost their
	// session reconnect, and try the PIN, only once.
	mu        sync.Mutex
	pin       []byte // our copy; zeroed by Close
	pinErr    error  // set when the token rejected the PIN; cleared by Reopen
	gen       uint64 // library generation of slot, key and sessions
	epoch     uint64 // bumped whenever the state below is dropped
	ready     bool   // slot, key and login are valid
	everReady bool   // the token has been found once (for messages)
	slot      uint
	key       p11.ObjectHandle
	idle      []p11.SessionHandle
}

// session is a pooled session with the state it belongs to.
type session struct {
	h          p11.SessionHandle
	gen, epoch uint64
}

// Open loads the module (once per process), finds the token labelled
// cfg.TokenLabel, logs in with cfg.PIN and finds the AES key labelled
// cfg.KeyLabel, creating it when it is missing and cfg.GenerateKey is set.
// It fails at once, with an error wrapping hsm.ErrDeviceUnavailable that
// says what to fix, when any of these steps fails; a rejected PIN is tried
// exactly once. log may be nil.
func Open(ctx context.Context, cfg Config, log hclog.Logger) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	lib, err := acquireLibrary(cfg.Library, cfg.TokenLabel)
	if err != nil {
		return nil, err
	}
	d := &Device{
		libName:    cfg.Library,
		tokenLabel: cfg.TokenLabel,
		keyLabel:   cfg.KeyLabel,
		generate:   cfg.GenerateKey,
		log:        log,
		lib:        lib,
		sem:        make(chan struct{}, maxSessions),
		pin:        bytes.Clone(cfg.PIN),
	}
	lib.mu.RLock()
	d.mu.Lock()
	err = d.connectLocked(cfg.GenerateKey)
	slot := d.slot
	d.mu.Unlock()
	lib.mu.RUnlock()
	if err != nil {
		d.Close()
		return nil, err
	}
	log.Info("PKCS#11 seal device opened", "library", cfg.Library, "token-label", cfg.TokenLabel, "key-label", cfg.KeyLabel, "slot", slot)
	return d, nil
}

// Kind returns "pkcs11".
func (d *Device) Kind() string { return Kind }

// KeyID returns the label of the device key, which is what a blob records.
func (d *Device) KeyID() string { return d.keyLabel }

// Seal encrypts secret with the token's key (AES-GCM, fresh random IV)
// binding aad. The blob's Data is IV || ciphertext || tag.
func (d *Device) Seal(ctx context.Context, secret, aad []byte) (hsm.Blob, error) {
	var data []byte
	err := d.do(ctx, func(s p11.SessionHandle, key p11.ObjectHandle) error {
		// A fresh IV per attempt: a retry may run under another key.
		iv := make([]byte, ivSize)
		if _, err := rand.Read(iv); err != nil {
			return unavailable(nil, "cannot generate an IV: %v", err)
		}
		params := p11.NewGCMParams(iv, aad, tagBits)
		defer params.Free() // only after Encrypt: the module may write its IV back
		if err := d.lib.ctx.EncryptInit(s, gcm(params), key); err != nil {
			return err
		}
		ct, err := d.lib.ctx.Encrypt(s, secret)
		if err != nil {
			return err
		}
		// Some modules (CloudHSM) ignore the IV they are given and write
		// their own into the parameters; the blob must carry the one used.
		if used := params.IV(); len(used) == ivSize {
			iv = used
		}
		if len(ct) != len(secret)+tagSize {
			return unavailable(nil, "C_Encrypt with CKM_AES_GCM on token %q returned %d bytes for a %d-byte secret, want ciphertext and a %d-byte tag; this module's GCM output is not supported", d.tokenLabel, len(ct), len(secret), tagSize)
		}
		data = append(iv, ct...)
		return nil
	})
	if err != nil {
		return hsm.Blob{}, d.opError("seal with", err)
	}
	return hsm.Blob{
		Kind:  Kind,
		KeyID: d.keyLabel,
		Data:  data,
		Meta:  map[string]string{MetaTokenLabel: d.tokenLabel, MetaMechanism: Mechanism},
	}, nil
}

// Unseal decrypts a blob made by Seal with the same key and aad. A refusal
// that is a property of the blob wraps hsm.ErrUnsealFailed; a device that
// cannot be used wraps hsm.ErrDeviceUnavailable. The caller zeroes the
// returned secret.
func (d *Device) Unseal(ctx context.Context, b hsm.Blob, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.Kind != Kind {
		return nil, unsealFailed(nil, "the blob was sealed by a %q device, not %q", b.Kind, Kind)
	}
	if b.KeyID != "" && b.KeyID != d.keyLabel {
		return nil, unsealFailed(nil, "the blob was sealed with the key labelled %q, but this device uses key_label %q", b.KeyID, d.keyLabel)
	}
	if m := b.Meta[MetaMechanism]; m != "" && m != Mechanism {
		return nil, unsealFailed(nil, "the blob was sealed with mechanism %s, which this version does not support (only %s)", m, Mechanism)
	}
	if len(b.Data) < ivSize+tagSize {
		return nil, unsealFailed(nil, "the blob is truncated (%d bytes, at least %d expected)", len(b.Data), ivSize+tagSize)
	}
	iv, ct := b.Data[:ivSize], b.Data[ivSize:]
	var secret []byte
	err := d.do(ctx, func(s p11.SessionHandle, key p11.ObjectHandle) error {
		params := p11.NewGCMParams(iv, aad, tagBits)
		defer params.Free()
		if err := d.lib.ctx.DecryptInit(s, gcm(params), key); err != nil {
			return err
		}
		pt, err := d.lib.ctx.Decrypt(s, ct)
		if err != nil {
			if isAuthFailure(err) {
				other := ""
				if t := b.Meta[MetaTokenLabel]; t != "" && t != d.tokenLabel {
					other = fmt.Sprintf("; it was sealed on token %q", t)
				}
				return unsealFailed(err, "the blob does not open with key %q on token %q and this aad (tampered, sealed for another cluster or node, or by another key with the same label%s)", d.keyLabel, d.tokenLabel, other)
			}
			return err
		}
		secret = pt
		return nil
	})
	if err != nil {
		clear(secret)
		return nil, d.opError("unseal with", err)
	}
	return secret, nil
}

// Health checks, without touching a secret, that the token is there, the
// session and login work and the key is still on the token (C_GetAttributeValue
// of its label), reconnecting once if needed.
func (d *Device) Health(ctx context.Context) error {
	err := d.do(ctx, func(s p11.SessionHandle, key p11.ObjectHandle) error {
		_, err := d.lib.ctx.GetAttributeValue(s, key, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil)})
		return err
	})
	if err != nil {
		return d.opError("use", err)
	}
	return nil
}

// Reopen finalises and re-initialises the module, then finds the token and
// the key again (creating the key if it is missing and the Config asked for
// GenerateKey), so that a token replaced while the daemon runs is found;
// SoftHSM, for one, scans its tokens only at C_Initialize. It also lifts
// the refusal to log in after a rejected PIN, trying the PIN once more.
// Other Devices on the same module lose their sessions and login and
// reconnect on their next operation.
func (d *Device) Reopen(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if d.closed {
		return errClosed()
	}
	d.lib.mu.Lock()
	defer d.lib.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropLocked() // close our sessions while their handles are still ours
	d.pinErr = nil
	if err := d.lib.reinitLocked(); err != nil {
		return err
	}
	if err := d.connectLocked(d.generate); err != nil {
		return err
	}
	d.log.Info("PKCS#11 library re-initialised and seal device reconnected", "library", d.libName, "token-label", d.tokenLabel, "key-label", d.keyLabel, "slot", d.slot)
	return nil
}

// Close closes the Device's sessions, logs out of the token when no other
// Device of this process uses it, zeroes the PIN and finalises the module
// when this was its last Device. It waits for operations in flight and may
// be called more than once.
func (d *Device) Close() error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	registry.mu.Lock()
	defer registry.mu.Unlock()
	last := d.lib.releaseTokenLocked(d.tokenLabel)
	d.lib.mu.RLock()
	d.mu.Lock()
	if last && d.ready && d.gen == d.lib.gen && d.lib.initialized {
		d.logoutLocked()
	}
	d.dropLocked()
	clear(d.pin)
	d.pin, d.pinErr = nil, nil
	d.mu.Unlock()
	d.lib.mu.RUnlock()
	return d.lib.releaseLocked()
}

// logoutLocked ends this process's login on the token. The caller has
// checked that no other Device of this process uses the token, since the
// login is shared by all of them.
func (d *Device) logoutLocked() {
	s, err := d.anySessionLocked()
	if err != nil {
		return // the token is gone: so is the login
	}
	if err := d.lib.ctx.Logout(s); err != nil && !isCode(err, p11.CKR_USER_NOT_LOGGED_IN) && !isRecoverable(err) {
		d.log.Warn("PKCS#11 logout failed", "token-label", d.tokenLabel, "error", err)
	}
}

func (d *Device) anySessionLocked() (p11.SessionHandle, error) {
	if len(d.idle) > 0 {
		return d.idle[0], nil
	}
	s, err := d.lib.ctx.OpenSession(d.slot, sessionMode)
	if err != nil {
		return 0, err
	}
	d.idle = append(d.idle, s)
	return s, nil
}

func errClosed() error {
	return unavailable(nil, "the device is closed")
}

// gcm returns the CKM_AES_GCM mechanism with params.
func gcm(params *p11.GCMParams) []*p11.Mechanism {
	return []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
}

// do runs op on a session of its own with the current key handle. When op
// fails because the session, the login or the key handle is gone, it
// reconnects and runs op once more.
func (d *Device) do(ctx context.Context, op func(s p11.SessionHandle, key p11.ObjectHandle) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	if d.closed {
		return errClosed()
	}
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-d.sem }()
	d.lib.mu.RLock()
	defer d.lib.mu.RUnlock()
	for attempt := 0; ; attempt++ {
		s, key, err := d.getSession()
		if err != nil {
			return err
		}
		err = op(s.h, key)
		d.putSession(s, err != nil)
		if err == nil || !isRecoverable(err) || attempt > 0 {
			return err
		}
		d.log.Warn("PKCS#11 session, login or key handle lost; reconnecting and retrying once", "token-label", d.tokenLabel, "error", err)
		d.invalidate(s)
	}
}

// getSession returns an idle session or a new one, connecting first when
// the Device is not connected (or the module was re-initialised).
func (d *Device) getSession() (session, p11.ObjectHandle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen != d.lib.gen {
		d.dropLocked()
	}
	if !d.ready {
		if err := d.connectLocked(false); err != nil {
			return session{}, 0, err
		}
		d.log.Info("reconnected to the PKCS#11 token", "token-label", d.tokenLabel, "slot", d.slot)
	}
	if n := len(d.idle); n > 0 {
		h := d.idle[n-1]
		d.idle = d.idle[:n-1]
		return session{h: h, gen: d.gen, epoch: d.epoch}, d.key, nil
	}
	h, err := d.lib.ctx.OpenSession(d.slot, sessionMode)
	if err != nil {
		if !isRecoverable(err) {
			return session{}, 0, unavailable(err, "cannot open a session on token %q in %s", d.tokenLabel, d.libName)
		}
		// The slot or token went away: reconnect, which finds the token
		// wherever it is now and leaves one idle session.
		d.dropLocked()
		if err := d.connectLocked(false); err != nil {
			return session{}, 0, err
		}
		h = d.idle[0]
		d.idle = d.idle[:0]
	}
	return session{h: h, gen: d.gen, epoch: d.epoch}, d.key, nil
}

// putSession returns a session to the pool, or closes it when the operation
// on it failed (its state is unknown), when the Device reconnected since it
// was taken, or when the pool is full. A session from before a module
// re-initialisation is forgotten: its handle may now name another Device's
// session.
func (d *Device) putSession(s session, failed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.gen != d.lib.gen || !d.lib.initialized {
		return
	}
	if failed || s.epoch != d.epoch || len(d.idle) >= maxSessions {
		_ = d.lib.ctx.CloseSession(s.h) // best effort: it may be dead already
		return
	}
	d.idle = append(d.idle, s.h)
}

// invalidate drops the connection that s belonged to, unless another
// operation has already replaced it.
func (d *Device) invalidate(s session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.gen == d.gen && s.epoch == d.epoch {
		d.dropLocked()
	}
}

// dropLocked closes the idle sessions (when their handles are still ours)
// and marks the Device as not connected.
func (d *Device) dropLocked() {
	if d.gen == d.lib.gen && d.lib.initialized {
		for _, h := range d.idle {
			_ = d.lib.ctx.CloseSession(h) // best effort: it may be dead already
		}
	}
	d.idle = nil
	d.ready = false
	d.key = 0
	d.epoch++
}

// connectLocked finds the token, opens a session, logs in (unless this
// process already is) and finds the key, generating it if allowed. The
// caller holds d.lib.mu (shared or exclusive) and d.mu.
func (d *Device) connectLocked(generate bool) error {
	d.dropLocked()
	if !d.lib.initialized {
		return unavailable(nil, "the PKCS#11 library %s is not initialised (its re-initialisation failed): fix the cause, then run `coffer operator reseal`", d.libName)
	}
	if d.pinErr != nil {
		return d.pinErr
	}
	slot, info, err := d.findTokenLocked()
	if err != nil {
		return err
	}
	if info.Flags&p11.CKF_USER_PIN_LOCKED != 0 {
		d.pinErr = d.pinLockedError()
		return d.pinErr
	}
	if info.Flags&p11.CKF_USER_PIN_INITIALIZED == 0 {
		return unavailable(nil, "token %q has no user PIN yet: set one with the SO PIN (pkcs11-tool --module %s --token-label %s --login --login-type so --init-pin)", d.tokenLabel, d.libName, d.tokenLabel)
	}
	s, err := d.lib.ctx.OpenSession(slot, sessionMode)
	if err != nil {
		if isTokenGone(err) {
			return d.notPresentError(err)
		}
		return unavailable(err, "cannot open a session on token %q in %s", d.tokenLabel, d.libName)
	}
	ok := false
	defer func() {
		if !ok {
			_ = d.lib.ctx.CloseSession(s)
		}
	}()
	if err := d.loginLocked(s); err != nil {
		return err
	}
	key, err := d.findKeyLocked(s, generate)
	if err != nil {
		return err
	}
	ok = true
	d.slot, d.key, d.gen = slot, key, d.lib.gen
	d.ready, d.everReady = true, true
	d.idle = append(d.idle, s)
	return nil
}

// findTokenLocked returns the slot holding the one initialised token
// labelled d.tokenLabel.
func (d *Device) findTokenLocked() (uint, p11.TokenInfo, error) {
	slots, err := d.lib.ctx.GetSlotList(true)
	if err != nil {
		return 0, p11.TokenInfo{}, unavailable(err, "cannot list the slots of %s", d.libName)
	}
	var (
		labels []string
		found  []uint
		info   p11.TokenInfo
	)
	for _, slot := range slots {
		ti, err := d.lib.ctx.GetTokenInfo(slot)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			// A token being removed, or a free slot (SoftHSM always
			// offers one).
			continue
		}
		label := strings.TrimRight(ti.Label, " \x00")
		labels = append(labels, fmt.Sprintf("%q", label))
		if label == d.tokenLabel {
			found = append(found, slot)
			info = ti
		}
	}
	switch len(found) {
	case 1:
		return found[0], info, nil
	case 0:
		if d.everReady {
			return 0, info, d.notPresentError(nil)
		}
		list := "none"
		if len(labels) > 0 {
			list = strings.Join(labels, ", ")
		}
		return 0, info, unavailable(nil, "no token labelled %q in any slot of %s (slots with tokens: %s): check token_label or initialise the token (softhsm2-util --init-token --free --label %s, or the HSM vendor's tool)", d.tokenLabel, d.libName, list, d.tokenLabel)
	default:
		return 0, info, unavailable(nil, "%d tokens in %s are labelled %q (slots %v), so the seal token is ambiguous: give each token a unique label", len(found), d.libName, d.tokenLabel, found)
	}
}

func (d *Device) notPresentError(cause error) error {
	return unavailable(cause, "token %q is not present in %s: reconnect it, or unseal with shares and reseal with a new token", d.tokenLabel, d.libName)
}

func (d *Device) wrongPINError(cause error) error {
	return pinRefused(cause, "the HSM rejected the PIN for token %q: check pin_file/pin_env; cofferd will not retry it (to avoid locking the token)", d.tokenLabel)
}

func (d *Device) pinLockedError() error {
	return pinRefused(p11.Error(p11.CKR_PIN_LOCKED), "the user PIN of token %q is locked after too many wrong PINs: unlock it with the SO PIN (pkcs11-tool --login --login-type so --init-pin, or the HSM vendor's tool), or unseal with shares and reseal with another token", d.tokenLabel)
}

// loginLocked logs the process in to the token, once: login state is per
// application and token, so a session opened after another Device of this
// process logged in is already a user session.
func (d *Device) loginLocked(s p11.SessionHandle) error {
	if si, err := d.lib.ctx.GetSessionInfo(s); err == nil &&
		(si.State == p11.CKS_RO_USER_FUNCTIONS || si.State == p11.CKS_RW_USER_FUNCTIONS) {
		return nil
	}
	loginAttempts.Add(1)
	// Login takes a string. A string that aliases our copy of the PIN
	// avoids one more copy that could not be zeroed; the module does not
	// keep it past the call, and d.mu keeps Close from zeroing it meanwhile.
	err := d.lib.ctx.Login(s, p11.CKU_USER, unsafe.String(unsafe.SliceData(d.pin), len(d.pin)))
	switch {
	case err == nil, isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN):
		return nil
	case isCode(err, p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE):
		d.pinErr = d.wrongPINError(err)
		d.log.Error("the HSM rejected the PIN; not retrying it until the device is reopened", "token-label", d.tokenLabel)
		return d.pinErr
	case isCode(err, p11.CKR_PIN_LOCKED):
		d.pinErr = d.pinLockedError()
		d.log.Error("the token's user PIN is locked", "token-label", d.tokenLabel)
		return d.pinErr
	case isCode(err, p11.CKR_PIN_EXPIRED):
		return unavailable(err, "the user PIN of token %q has expired: change it (pkcs11-tool --change-pin) and update pin_file/pin_env", d.tokenLabel)
	case isCode(err, p11.CKR_USER_PIN_NOT_INITIALIZED):
		return unavailable(err, "token %q has no user PIN yet: set one with the SO PIN (pkcs11-tool --login --login-type so --init-pin)", d.tokenLabel)
	case isCode(err, p11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN):
		return unavailable(err, "another user (the security officer) is logged in to token %q in this process: log it out first", d.tokenLabel)
	case isTokenGone(err):
		return d.notPresentError(err)
	default:
		return unavailable(err, "cannot log in to token %q", d.tokenLabel)
	}
}

// findKeyLocked returns the one AES key labelled d.keyLabel, creating it if
// there is none and generate is set.
func (d *Device) findKeyLocked(s p11.SessionHandle, generate bool) (p11.ObjectHandle, error) {
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_LABEL, d.keyLabel),
	}
	if err := d.lib.ctx.FindObjectsInit(s, tmpl); err != nil {
		return 0, d.keySearchError(err)
	}
	// Two are enough to tell "one" from "ambiguous".
	objs, _, err := d.lib.ctx.FindObjects(s, 2)
	if ferr := d.lib.ctx.FindObjectsFinal(s); err == nil {
		err = ferr
	}
	if err != nil {
		return 0, d.keySearchError(err)
	}
	switch len(objs) {
	case 0:
		if !generate && d.everReady && d.generate {
			// Keys are created only by Open and Reopen, never behind an
			// operation's back.
			return 0, unavailable(nil, "the key %q is no longer on token %q: run `coffer operator reseal` to create a new one (blobs sealed with the old key need shares)", d.keyLabel, d.tokenLabel)
		}
		if !generate {
			return 0, unavailable(nil, "token %q has no AES key labelled %q: set generate_key = true in the seal \"pkcs11\" block to create it, or check key_label", d.tokenLabel, d.keyLabel)
		}
		return d.generateKeyLocked(s)
	case 1:
		return objs[0], d.checkKeyLocked(s, objs[0])
	default:
		return 0, unavailable(nil, "token %q holds more than one AES key labelled %q, so the seal key is ambiguous: delete the extra keys (keep the one that sealed the root key) or use another key_label", d.tokenLabel, d.keyLabel)
	}
}

func (d *Device) keySearchError(err error) error {
	if isTokenGone(err) {
		return d.notPresentError(err)
	}
	return unavailable(err, "cannot search token %q for the key labelled %q", d.tokenLabel, d.keyLabel)
}

// generateKeyLocked creates the AES-256 device key inside the token: a
// token object that only this token can use, for encrypt and decrypt only.
func (d *Device) generateKeyLocked(s p11.SessionHandle) (p11.ObjectHandle, error) {
	key, err := d.lib.ctx.GenerateKey(s,
		[]*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)},
		keyTemplate(d.keyLabel))
	if err != nil {
		if isTokenGone(err) {
			return 0, d.notPresentError(err)
		}
		return 0, unavailable(err, "cannot create the AES-256 key %q on token %q (C_GenerateKey with CKM_AES_KEY_GEN)", d.keyLabel, d.tokenLabel)
	}
	d.log.Info("created the seal key on the token", "token-label", d.tokenLabel, "key-label", d.keyLabel)
	return key, nil
}

// keyTemplate is the template of a generated device key.
func keyTemplate(label string) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, keyBytes),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		// Everything else off: SoftHSM, for one, would allow verify by
		// default.
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_VERIFY, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, []byte(label)),
	}
}

// checkKeyLocked refuses a key that cannot seal and warns about a key that
// could leave the token (one created outside Coffer).
func (d *Device) checkKeyLocked(s p11.SessionHandle, key p11.ObjectHandle) error {
	attrs, err := d.lib.ctx.GetAttributeValue(s, key, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_ENCRYPT, nil),
		p11.NewAttribute(p11.CKA_DECRYPT, nil),
		p11.NewAttribute(p11.CKA_SENSITIVE, nil),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
		p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
	})
	if err != nil {
		if isTokenGone(err) {
			return d.notPresentError(err)
		}
		d.log.Warn("cannot read the seal key's attributes; not checking them", "token-label", d.tokenLabel, "key-label", d.keyLabel, "error", err)
		return nil
	}
	if !attrBool(attrs[0].Value) || !attrBool(attrs[1].Value) {
		return unavailable(nil, "the key %q on token %q does not allow both encrypt and decrypt (CKA_ENCRYPT/CKA_DECRYPT): use another key_label with generate_key = true", d.keyLabel, d.tokenLabel)
	}
	if !attrBool(attrs[2].Value) || attrBool(attrs[3].Value) {
		d.log.Warn("the seal key can leave the token (not CKA_SENSITIVE, or CKA_EXTRACTABLE); create a new one with generate_key = true under another key_label", "token-label", d.tokenLabel, "key-label", d.keyLabel)
	}
	if n := attrUlong(attrs[4].Value); n != keyBytes {
		d.log.Warn("the seal key is not AES-256", "token-label", d.tokenLabel, "key-label", d.keyLabel, "key-bytes", n)
	}
	return nil
}

func attrBool(v []byte) bool { return len(v) > 0 && v[0] != 0 }

// attrUlong decodes a CK_ULONG attribute, which modules return in the
// platform's size and byte order.
func attrUlong(v []byte) uint64 {
	switch len(v) {
	case 8:
		return binary.NativeEndian.Uint64(v)
	case 4:
		return uint64(binary.NativeEndian.Uint32(v))
	}
	return 0
}

// opError turns an operation's error into one that says what to do.
func (d *Device) opError(what string, err error) error {
	if _, ok := err.(*deviceError); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	switch {
	case isTokenGone(err):
		return d.notPresentError(err)
	case isRecoverable(err):
		return unavailable(err, "lost the session or the key %q on token %q twice in a row: check the token, or unseal with shares and reseal with a new token", d.keyLabel, d.tokenLabel)
	case isCode(err, p11.CKR_MECHANISM_INVALID, p11.CKR_MECHANISM_PARAM_INVALID):
		return unavailable(err, "token %q does not support %s with a 96-bit IV and a 128-bit tag", d.tokenLabel, Mechanism)
	case isCode(err, p11.CKR_KEY_FUNCTION_NOT_PERMITTED, p11.CKR_KEY_TYPE_INCONSISTENT):
		return unavailable(err, "the key %q on token %q cannot be used for %s: use another key_label with generate_key = true", d.keyLabel, d.tokenLabel, Mechanism)
	}
	return unavailable(err, "cannot %s the key %q on token %q", what, d.keyLabel, d.tokenLabel)
}
