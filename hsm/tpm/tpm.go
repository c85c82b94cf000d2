// Package tpm is the TPM 2.0 seal device: it seals the cluster root key as a
// TPM sealed data object under the TPM's storage root key (SRK), optionally
// bound to SHA-256 PCR values, so that only this machine's TPM — in the
// measured state it was in at seal time — can release it.
//
// # Keys and objects
//
// The SRK is the standard ECC P-256 storage primary (tpm2.ECCSRKTemplate)
// under the owner hierarchy. It is derived from the owner seed, so
// TPM2_CreatePrimary yields the same key every time and nothing needs to be
// persisted in the TPM's NV: Open creates it, Close flushes it. A blob
// records the SRK's name (Blob.KeyID); Unseal refuses a blob whose SRK name
// differs, which also pins the key the encrypted session is salted to.
//
// A seal is a keyedHash object (no sign, no decrypt; fixedTPM, fixedParent,
// noDA) whose sensitive data is SHA-256(aad) || secret. Without PCRs its
// empty authValue authorizes it; with PCRs userWithAuth is false and its
// authPolicy is TPM2_PolicyPCR over the selected SHA-256 PCRs at their values
// when Seal ran.
//
// # Binding the aad
//
// A TPM cannot attach arbitrary additional data to a sealed object. The two
// options are the object's authValue and the sealed data itself; this
// package seals the aad digest next to the secret and compares it in
// constant time after TPM2_Unseal. Reasons: the aad is not secret (cluster and
// node id), so an authValue would add no protection against anyone who can
// talk to the TPM; a PCR policy would need TPM2_PolicyAuthValue in addition;
// and go-tpm v0.9.8 truncates an authValue at its first zero byte when it
// computes session HMACs, which a digest hits about one time in eight. The
// cost is 32 of the 128 bytes a sealed object holds: secrets are limited to
// [MaxSecret] bytes.
//
// # Sessions
//
// Seal sends the secret in TPM2_Create through an HMAC session salted to the
// SRK with AES-128-CFB command parameter encryption; Unseal receives it
// through a session salted to the SRK with response parameter encryption (a
// policy session running TPM2_PolicyPCR when the blob is PCR-bound). The
// secret therefore never crosses the bus, or the simulator socket, in clear.
//
// # Connections
//
// Config.Device names a character device (/dev/tpmrm0, the kernel resource
// manager); Config.Address a simulator's command port ("host:port" or
// "unix:/path"), spoken to with the raw TPM 2.0 command stream that swtpm
// accepts. A simulator serves one client at a time and does not flush
// objects of a client that went away, so on every (re)connection to a
// simulator the device flushes transient objects and sessions left behind.
// When the connection breaks (the simulator was killed or restarted) the
// failing call returns [hsm.ErrDeviceUnavailable] and the next call
// reconnects; a call that finds its connection stale reconnects and retries
// once. [Device.Reopen] forces a reconnection.
package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/hsm"
)

// Kind is the device kind recorded in blobs and reported as seal_type.
const Kind = "tpm"

const (
	// maxSealedData is MAX_SYM_DATA, the most a TPM sealed object holds.
	maxSealedData = 128
	aadDigestSize = sha256.Size
	// MaxSecret is the largest secret Seal accepts: the sealed data also
	// carries the 32-byte aad digest.
	MaxSecret = maxSealedData - aadDigestSize

	nonceSize = 16 // session nonces: the minimum the TPM accepts, as go-tpm's tests use
	aesBits   = 128
)

// aadLabel separates the aad digest from any other SHA-256 use.
const aadLabel = "coffer-tpm-seal-aad-v1\x00"

// Config selects the TPM. Exactly one of Device and Address is set.
type Config struct {
	// Device is a TPM character device, e.g. /dev/tpmrm0.
	Device string
	// Address is a simulator command port: "host:port" (TCP, raw TPM command
	// stream) or "unix:/path/tpm.sock".
	Address string
	// PCRs optionally binds the sealed root key to these SHA-256 PCRs (0-23)
	// at the values they have when Seal runs.
	PCRs []int
}

// target is a validated Config address.
type target struct {
	device           string // set for a character device
	network, address string // set for a simulator: "tcp"/"unix" and its address
	display          string // what the operator wrote, for messages
}

// Validate checks cfg without touching the TPM, so that a configuration
// error is reported when the configuration is loaded. Open also validates.
// Its errors are *hsm.SettingError.
func (c Config) Validate() error {
	_, _, err := c.validate()
	return err
}

func (c Config) validate() (target, []int, error) {
	pcrs, err := normalisePCRs(c.PCRs)
	if err != nil {
		return target{}, nil, settingf("pcrs", "tpm seal: pcrs: %v; list SHA-256 PCR indexes between 0 and %d, each once", err, maxPCR)
	}
	switch {
	case c.Device != "" && c.Address != "":
		return target{}, nil, settingf("address", "tpm seal: both device and address are set; set device for a TPM (/dev/tpmrm0) or address for a simulator, not both")
	case c.Device != "":
		return target{device: c.Device, display: c.Device}, pcrs, nil
	case c.Address == "":
		return target{}, nil, settingf("", "tpm seal: neither device nor address is set; set device = \"/dev/tpmrm0\" (or address for a simulator, \"127.0.0.1:2321\" or \"unix:/path\") in the seal \"tpm\" block")
	case strings.HasPrefix(c.Address, "unix:"):
		path := strings.TrimPrefix(c.Address, "unix:")
		if path == "" {
			return target{}, nil, settingf("address", "tpm seal: address %q names no socket path; write it as \"unix:/path/tpm.sock\"", c.Address)
		}
		return target{network: "unix", address: path, display: c.Address}, pcrs, nil
	default:
		host, port, err := net.SplitHostPort(c.Address)
		if err != nil || host == "" {
			return target{}, nil, settingf("address", "tpm seal: address %q is neither \"host:port\" nor \"unix:/path\"", c.Address)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return target{}, nil, settingf("address", "tpm seal: address %q has an invalid port", c.Address)
		}
		return target{network: "tcp", address: c.Address, display: c.Address}, pcrs, nil
	}
}

// settingf is a Validate error about one setting of the seal "tpm" block.
func settingf(setting, format string, args ...any) error {
	return &hsm.SettingError{Setting: setting, Msg: fmt.Sprintf(format, args...)}
}

// srk is the storage root key loaded on the current connection.
type srk struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    tpm2.TPMTPublic
	id     string // Blob.KeyID: hex of the SRK's name digest
}

var (
	_ hsm.Device   = (*Device)(nil)
	_ hsm.Reopener = (*Device)(nil)
)

// Device is the TPM 2.0 seal device. It is safe for concurrent use: the TPM
// executes one command at a time, so every method holds the device's lock
// for the whole exchange.
type Device struct {
	target target
	pcrs   []int
	log    hclog.Logger

	// sem is a one-slot lock (a channel so that waiting honours ctx). It
	// guards every field below.
	sem    chan struct{}
	closed bool
	conn   *conn // nil when disconnected
	srk    *srk  // non-nil exactly when conn is

	// tap, when set by tests, sees every command and response.
	tap func(cmd, rsp []byte)
}

// Open validates cfg, connects to the TPM and loads the SRK. An unreachable
// TPM yields an error wrapping [hsm.ErrDeviceUnavailable]; a bad cfg an error
// naming the setting to fix.
func Open(ctx context.Context, cfg Config, log hclog.Logger) (*Device, error) {
	t, pcrs, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	d := &Device{target: t, pcrs: pcrs, log: log, sem: make(chan struct{}, 1)}
	if err := d.lock(ctx); err != nil {
		return nil, err
	}
	defer d.unlock()
	if err := d.connect(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// Kind returns "tpm".
func (d *Device) Kind() string { return Kind }

func (d *Device) lock(ctx context.Context) error {
	select {
	case d.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tpm seal: waiting for the TPM: %w", ctx.Err())
	}
}

func (d *Device) unlock() { <-d.sem }

func (d *Device) errClosed() error {
	return fmt.Errorf("tpm seal: device is closed: %w", hsm.ErrDeviceUnavailable)
}

// connect opens a connection and loads the SRK. Called with the lock held.
func (d *Device) connect(ctx context.Context) error {
	c, err := dial(ctx, d.target)
	if err != nil {
		return d.openErr(err)
	}
	c.tap = func(cmd, rsp []byte) {
		if d.tap != nil {
			d.tap(cmd, rsp)
		}
	}
	k, err := d.setup(c)
	if err != nil {
		_ = c.close()
		return d.openErr(err)
	}
	d.conn, d.srk = c, k
	d.log.Info("connected to the TPM", "address", d.target.display, "srk", k.id[:16], "pcrs", formatPCRs(d.pcrs))
	return nil
}

func (d *Device) openErr(err error) error {
	hint := ""
	if d.target.device == "" && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)) {
		hint = busyHint
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("tpm seal: opening the TPM at %s%s: %w", d.target.display, hint, err)
	}
	return fmt.Errorf("tpm seal: cannot open the TPM at %s: %v%s; check seal \"tpm\" device/address (for /dev/tpmrm0: the user needs to be in the tss group): %w",
		d.target.display, describe(err), hint, hsm.ErrDeviceUnavailable)
}

// busyHint explains the usual reason a simulator does not answer.
const busyHint = " (the simulator did not answer: it serves one client at a time; is another client, such as tpm2-tools or another cofferd, connected to it?)"

// describe gives a TPM or transport error a short explanation.
func describe(err error) string {
	var rc tpm2.TPMRC
	switch {
	case errors.Is(err, os.ErrPermission):
		return fmt.Sprintf("permission denied (%v)", err)
	case errors.Is(err, tpm2.TPMRCLockout):
		return "the TPM is in dictionary-attack lockout; wait for its lockout recovery time or clear it with the lockout authorization (tpm2_dictionarylockout --clear-lockout)"
	case errors.Is(err, tpm2.TPMRCBadAuth), errors.Is(err, tpm2.TPMRCAuthFail):
		return "the TPM's owner hierarchy has a password; Coffer needs empty owner authorization to derive its storage key"
	case errors.As(err, &rc):
		return "the TPM refused: " + rc.Error()
	}
	return err.Error()
}

// setup prepares a fresh connection: it clears what an earlier simulator
// client left behind and creates the SRK.
func (d *Device) setup(c *conn) (*srk, error) {
	create := func() (*tpm2.CreatePrimaryResponse, error) {
		return tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHOwner,
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}.Execute(c)
	}
	if c.nc != nil {
		if err := d.flushLeftovers(c); err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
			return nil, err
		}
	}
	cp, err := create()
	if errors.Is(err, tpm2.TPMRCInitialize) {
		// A simulator started without startup-clear waits for TPM2_Startup;
		// a real TPM gets it from firmware and never answers this way.
		if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(c); err != nil {
			return nil, fmt.Errorf("TPM2_Startup: %w", err)
		}
		cp, err = create()
	}
	if err != nil {
		return nil, fmt.Errorf("creating the storage root key: %w", err)
	}
	pub, err := cp.OutPublic.Contents()
	if err != nil {
		d.flush(c, cp.ObjectHandle)
		return nil, fmt.Errorf("reading the storage root key: %w", err)
	}
	return &srk{handle: cp.ObjectHandle, name: cp.Name, pub: *pub, id: srkID(cp.Name)}, nil
}

func srkID(name tpm2.TPM2BName) string {
	b := name.Buffer
	if len(b) > 2 {
		b = b[2:] // drop the nameAlg; what remains is the public area's digest
	}
	return hex.EncodeToString(b)
}

// flushLeftovers flushes transient objects and sessions that an earlier
// client of a simulator left loaded (a daemon that was killed). A simulator
// serves one connection at a time, so anything loaded now is not in use; left
// alone, each crash would take one of its three object slots.
func (d *Device) flushLeftovers(c *conn) error {
	n := 0
	for _, ht := range []tpm2.TPMHT{tpm2.TPMHTTransient, tpm2.TPMHTHMACSession, tpm2.TPMHTPolicySession} {
		rsp, err := tpm2.GetCapability{
			Capability:    tpm2.TPMCapHandles,
			Property:      uint32(ht) << 24,
			PropertyCount: 64,
		}.Execute(c)
		if err != nil {
			return fmt.Errorf("listing loaded handles: %w", err)
		}
		hl, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return fmt.Errorf("listing loaded handles: %w", err)
		}
		for _, h := range hl.Handle {
			// Loaded sessions are listed under the HMAC type whatever
			// their kind; never touch anything but objects and sessions.
			if t := tpm2.TPMHT(h >> 24); t != tpm2.TPMHTTransient && t != tpm2.TPMHTHMACSession && t != tpm2.TPMHTPolicySession {
				continue
			}
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(c); err == nil {
				n++
			}
		}
	}
	if n > 0 {
		d.log.Info("flushed TPM handles left by an earlier client", "address", d.target.display, "count", n)
	}
	return nil
}

// flush unloads a handle, best effort. It runs even when the operation's
// context was cancelled between commands, so that a cancelled call does not
// leak a TPM object slot; if it cannot run, the connection is dropped, which
// makes the resource manager or the next reconnection clean up.
func (d *Device) flush(c *conn, h tpm2.TPMHandle) {
	ctx := c.ctx
	c.ctx = context.WithoutCancel(ctx)
	defer func() { c.ctx = ctx }()
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(c); err != nil {
		var rc tpm2.TPMRC
		if !errors.As(err, &rc) && c.broken == nil {
			c.broken = err
		}
	}
}

// disconnect flushes the SRK and closes the connection. Called with the lock
// held.
func (d *Device) disconnect() {
	if d.conn == nil {
		return
	}
	if d.conn.broken == nil {
		d.conn.ctx = context.Background()
		d.flush(d.conn, d.srk.handle)
	}
	_ = d.conn.close()
	d.conn, d.srk = nil, nil
}

// do runs op against the TPM with the lock held, connecting first if needed.
// When op fails because a connection that predates this call turned out to
// be dead (the simulator restarted), it reconnects and runs op once more:
// Seal and Unseal have no side effects a second attempt could disturb.
func (d *Device) do(ctx context.Context, op func(c *conn, k *srk) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	if d.closed {
		return d.errClosed()
	}
	fresh := false
	if d.conn == nil {
		if err := d.connect(ctx); err != nil {
			return err
		}
		fresh = true
	}
	d.conn.ctx = ctx
	err := op(d.conn, d.srk)
	if d.conn.broken == nil {
		return err
	}
	// The connection is unusable; replace it on this call or the next.
	d.log.Warn("lost the connection to the TPM", "address", d.target.display, "error", d.conn.broken)
	d.disconnect()
	var te *transportError
	if err == nil || fresh || ctx.Err() != nil || !errors.As(err, &te) {
		return err
	}
	if err := d.connect(ctx); err != nil {
		return err
	}
	d.log.Info("reconnected to the TPM, retrying", "address", d.target.display)
	d.conn.ctx = ctx
	err = op(d.conn, d.srk)
	if d.conn.broken != nil {
		d.disconnect()
	}
	return err
}

// classify turns an error from a TPM exchange into one that follows the
// hsm.Device contract. refusal, when set, explains a TPM error response that
// is a property of the blob: such errors wrap hsm.ErrUnsealFailed.
func (d *Device) classify(c *conn, op string, err error, refusal string) error {
	var te *transportError
	var rc tpm2.TPMRC
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("tpm seal: %s: %w", op, err)
	case errors.As(err, &te):
		hint := " (the next call reconnects)"
		if d.target.device == "" && errors.Is(err, os.ErrDeadlineExceeded) {
			hint = busyHint
		}
		return fmt.Errorf("tpm seal: %s: %w at %s%s: %w", op, err, d.target.display, hint, hsm.ErrDeviceUnavailable)
	case errors.Is(err, tpm2.TPMRCLockout):
		return fmt.Errorf("tpm seal: %s: the TPM is in dictionary-attack lockout (too many failed authorizations) and refuses to use its keys; wait for its lockout recovery time to pass, or clear it with the lockout authorization (tpm2_dictionarylockout --clear-lockout), then retry: %w",
			op, hsm.ErrDeviceUnavailable)
	case errors.Is(err, tpm2.TPMRCHandle), errors.Is(err, tpm2.TPMRCReferenceH0):
		// Our SRK is gone from under us (TPM reset, or another client
		// flushed it): drop the connection so the next call recreates it.
		if c.broken == nil {
			c.broken = err
		}
		return fmt.Errorf("tpm seal: %s: the TPM no longer holds Coffer's storage key (%v); the next call reloads it: %w", op, err, hsm.ErrDeviceUnavailable)
	case errors.Is(err, tpm2.TPMRCPCRChanged):
		return fmt.Errorf("tpm seal: %s: PCRs changed while the TPM was checking them; retry: %w", op, hsm.ErrDeviceUnavailable)
	case errors.As(err, &rc) && rc.IsWarning():
		return fmt.Errorf("tpm seal: %s: the TPM is busy or out of resources (%v); retry later: %w", op, rc, hsm.ErrDeviceUnavailable)
	case errors.As(err, &rc) && refusal != "":
		return fmt.Errorf("tpm seal: %s: %s (%v): %w", op, refusal, rc, hsm.ErrUnsealFailed)
	case errors.As(err, &rc):
		return fmt.Errorf("tpm seal: %s: the TPM refused the command: %v: %w", op, rc, hsm.ErrDeviceUnavailable)
	default:
		// go-tpm failed locally, e.g. a response that fails HMAC
		// verification. The session state is unknown: start afresh.
		if c.broken == nil {
			c.broken = err
		}
		return fmt.Errorf("tpm seal: %s: %v: %w", op, err, hsm.ErrDeviceUnavailable)
	}
}

func aadDigest(aad []byte) []byte {
	h := sha256.New()
	h.Write([]byte(aadLabel))
	h.Write(aad)
	return h.Sum(nil)
}

func pcrSelection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// readPCRs returns the SHA-256 values of pcrs, in order. It reads one PCR per
// command: TPM2_PCR_Read returns at most eight digests, and this keeps the
// mapping between request and answer obvious.
func readPCRs(c *conn, pcrs []int) ([][]byte, error) {
	out := make([][]byte, len(pcrs))
	for i, p := range pcrs {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection([]int{p})}.Execute(c)
		if err != nil {
			return nil, err
		}
		if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != sha256.Size {
			return nil, fmt.Errorf("the TPM returned no SHA-256 value for PCR %d; enable the SHA-256 PCR bank (a firmware setting) or choose other pcrs", p)
		}
		out[i] = rsp.PCRValues.Digests[0].Buffer
	}
	return out, nil
}

// pcrPolicy is the policy digest of TPM2_PolicyPCR over pcrs at values.
func pcrPolicy(pcrs []int, values [][]byte) ([]byte, error) {
	h := sha256.New()
	for _, v := range values {
		h.Write(v)
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	pp := tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}, Pcrs: pcrSelection(pcrs)}
	if err := pp.Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// sealTemplate is the public area of a sealed data object.
func sealTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:    true,
			FixedParent: true,
			// noDA: a node retrying at every start must never push the TPM
			// into dictionary-attack lockout.
			NoDA: true,
			// With a policy, the policy is the only way in.
			UserWithAuth: len(policy) == 0,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
}

// Seal creates a TPM sealed data object under the SRK holding SHA-256(aad)
// and secret, bound to the configured PCRs at their current values. The
// blob's Data is the object's public and private areas; Meta records the
// PCRs. At most [MaxSecret] bytes can be sealed.
func (d *Device) Seal(ctx context.Context, secret, aad []byte) (hsm.Blob, error) {
	if len(secret) > MaxSecret {
		return hsm.Blob{}, fmt.Errorf("tpm seal: the secret is %d bytes; a TPM sealed object holds at most %d", len(secret), MaxSecret)
	}
	var blob hsm.Blob
	err := d.do(ctx, func(c *conn, k *srk) error {
		var policy []byte
		var meta map[string]string
		if len(d.pcrs) > 0 {
			values, err := readPCRs(c, d.pcrs)
			if err != nil {
				return d.classify(c, "seal: reading PCRs", err, "")
			}
			if policy, err = pcrPolicy(d.pcrs, values); err != nil {
				return fmt.Errorf("tpm seal: seal: computing the PCR policy: %w", err)
			}
			meta = map[string]string{metaPCRs: formatPCRs(d.pcrs), metaPCRValues: formatPCRValues(values)}
		}
		data := make([]byte, 0, aadDigestSize+len(secret))
		data = append(data, aadDigest(aad)...)
		data = append(data, secret...)
		defer clear(data)
		cr, err := tpm2.Create{
			ParentHandle: tpm2.AuthHandle{
				Handle: k.handle,
				Name:   k.name,
				// The secret travels in inSensitive, the first command
				// parameter: encrypt it under a key salted to the SRK.
				Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, nonceSize,
					tpm2.Salted(k.handle, k.pub),
					tpm2.AESEncryption(aesBits, tpm2.EncryptIn)),
			},
			InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
				Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: data}),
			}},
			InPublic: tpm2.New2B(sealTemplate(policy)),
		}.Execute(c)
		if err != nil {
			return d.classify(c, "seal", err, "")
		}
		blob = hsm.Blob{Kind: Kind, KeyID: k.id, Data: encodeBlob(cr.OutPublic, cr.OutPrivate), Meta: meta}
		return nil
	})
	if err != nil {
		return hsm.Blob{}, err
	}
	return blob, nil
}

// Unseal loads the blob's object under the SRK and unseals it through a
// session salted to the SRK with response encryption (a PCR policy session
// for a PCR-bound blob), then checks the aad. A blob this TPM cannot or will
// not open returns an error wrapping [hsm.ErrUnsealFailed]; when its PCR
// policy no longer holds the message says "PCR policy" and names the PCRs.
// The caller zeroes the returned secret.
func (d *Device) Unseal(ctx context.Context, b hsm.Blob, aad []byte) ([]byte, error) {
	if b.Kind != Kind {
		return nil, fmt.Errorf("tpm seal: the blob was sealed by a %q device, not %q: %w", b.Kind, Kind, hsm.ErrUnsealFailed)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("tpm seal: unseal: "+format+": %w", append(args, hsm.ErrUnsealFailed)...)
	}
	pub, priv, err := decodeBlob(b.Data)
	if err != nil {
		return nil, fail("the blob is damaged: %v", err)
	}
	pcrs, err := parsePCRs(b.Meta[metaPCRs])
	if err != nil {
		return nil, fail("the blob is damaged: %v", err)
	}
	pubArea, _ := pub.Contents() // decodeBlob checked it
	switch {
	case pubArea.Type != tpm2.TPMAlgKeyedHash:
		return nil, fail("the blob holds a TPM key, not a sealed data object")
	case len(pcrs) == 0 && !pubArea.ObjectAttributes.UserWithAuth:
		return nil, fail("the sealed object requires a policy but the blob records no PCRs (its meta was altered)")
	case len(pcrs) > 0 && len(pubArea.AuthPolicy.Buffer) == 0:
		return nil, fail("the blob records PCRs %s but the sealed object has no policy (its meta was altered)", formatPCRs(pcrs))
	}
	want := aadDigest(aad)

	var secret []byte
	err = d.do(ctx, func(c *conn, k *srk) error {
		if b.KeyID != "" && b.KeyID != k.id {
			return fail("the blob was sealed under TPM storage key %.16s…, but this TPM's is %.16s… (another TPM, or this TPM was cleared)", b.KeyID, k.id)
		}
		out, err := d.unseal(c, k, pub, priv, pcrs, parsePCRValues(b.Meta[metaPCRValues], len(pcrs)))
		if err != nil {
			return err
		}
		defer func() {
			clear(out)
			c.scrub()
		}()
		if len(out) < aadDigestSize || subtle.ConstantTimeCompare(out[:aadDigestSize], want) != 1 {
			return fail("the aad does not match: the root key was sealed for another cluster or node")
		}
		secret = bytes.Clone(out[aadDigestSize:])
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !slices.Equal(pcrs, d.pcrs) {
		d.log.Warn("the sealed root key is bound to other PCRs than configured; run `coffer operator reseal` to apply the configuration",
			"blob-pcrs", formatPCRs(pcrs), "config-pcrs", formatPCRs(d.pcrs))
	}
	return secret, nil
}

// unseal runs TPM2_Load and TPM2_Unseal and returns the sealed data.
func (d *Device) unseal(c *conn, k *srk, pub *tpm2.TPM2BPublic, priv *tpm2.TPM2BPrivate, pcrs []int, sealedValues [][]byte) ([]byte, error) {
	ld, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)},
		InPublic:     *pub,
		InPrivate:    *priv,
	}.Execute(c)
	if err != nil {
		return nil, d.classify(c, "unseal", err,
			"the blob does not load under this TPM's storage key: it was sealed on another TPM, the TPM was cleared since, or the blob is damaged")
	}
	defer d.flush(c, ld.ObjectHandle)

	opts := []tpm2.AuthOption{
		tpm2.Salted(k.handle, k.pub),
		tpm2.AESEncryption(aesBits, tpm2.EncryptOut),
	}
	var auth tpm2.Session
	if len(pcrs) > 0 {
		sess, closeSess, err := tpm2.PolicySession(c, tpm2.TPMAlgSHA256, nonceSize, opts...)
		if err != nil {
			return nil, d.classify(c, "unseal: starting a policy session", err, "")
		}
		defer func() {
			// closeSess flushes the session; run it like flush, even after
			// a cancellation between commands.
			ctx := c.ctx
			c.ctx = context.WithoutCancel(ctx)
			if err := closeSess(); err != nil && c.broken == nil {
				var rc tpm2.TPMRC
				if !errors.As(err, &rc) {
					c.broken = err
				}
			}
			c.ctx = ctx
		}()
		// An empty PcrDigest makes the TPM take the PCRs' current values;
		// TPM2_Unseal then fails if they differ from the sealed policy.
		if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrSelection(pcrs)}).Execute(c); err != nil {
			return nil, d.classify(c, "unseal: PolicyPCR", err, "the TPM refused the PCR policy")
		}
		auth = sess
	} else {
		auth = tpm2.HMAC(tpm2.TPMAlgSHA256, nonceSize, opts...)
	}
	us, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name, Auth: auth}}.Execute(c)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCPolicyFail) {
			return nil, fmt.Errorf("tpm seal: unseal: the TPM refused to unseal: the PCR policy no longer holds (%s); unseal with shares and run `coffer operator reseal`: %w",
				d.changedPCRs(c, pcrs, sealedValues), hsm.ErrUnsealFailed)
		}
		return nil, d.classify(c, "unseal", err, "the TPM refused to unseal the blob")
	}
	return us.OutData.Buffer, nil
}

// changedPCRs describes which PCRs differ from the values recorded at seal
// time, for the error message. Without recorded values it names them all.
func (d *Device) changedPCRs(c *conn, pcrs []int, sealed [][]byte) string {
	if sealed != nil {
		if now, err := readPCRs(c, pcrs); err == nil {
			var changed []int
			for i := range pcrs {
				if !bytes.Equal(now[i], sealed[i]) {
					changed = append(changed, pcrs[i])
				}
			}
			if len(changed) > 0 {
				return fmt.Sprintf("PCRs %s changed since the root key was sealed", formatPCRs(changed))
			}
		}
	}
	return fmt.Sprintf("PCRs %s no longer have the values the root key was sealed to", formatPCRs(pcrs))
}

// Health checks that the TPM answers and still holds the SRK (TPM2_ReadPublic
// of the SRK; no secret is touched). It reconnects if the connection was
// lost.
func (d *Device) Health(ctx context.Context) error {
	return d.do(ctx, func(c *conn, k *srk) error {
		rsp, err := tpm2.ReadPublic{ObjectHandle: k.handle}.Execute(c)
		if err != nil {
			return d.classify(c, "health", err, "")
		}
		if !bytes.Equal(rsp.Name.Buffer, k.name.Buffer) {
			c.broken = errors.New("the storage key handle names another key")
			return fmt.Errorf("tpm seal: health: the TPM's storage key changed (reset or cleared?); the next call reloads it: %w", hsm.ErrDeviceUnavailable)
		}
		return nil
	})
}

// Reopen drops the connection and connects again, recreating the SRK: for
// example after the simulator restarted, or before `coffer operator reseal`
// re-enrolls the device. It fails with [hsm.ErrDeviceUnavailable] after Close.
func (d *Device) Reopen(ctx context.Context) error {
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	if d.closed {
		return d.errClosed()
	}
	d.disconnect()
	return d.connect(ctx)
}

// Close flushes the SRK and closes the connection. It may be called more
// than once; afterwards every method returns [hsm.ErrDeviceUnavailable].
func (d *Device) Close() error {
	d.sem <- struct{}{}
	defer d.unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.disconnect()
	return nil
}
