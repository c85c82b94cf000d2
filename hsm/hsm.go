// Package hsm defines the seal device contract: the small interface through
// which a Coffer node wraps its cluster root key with a key that lives in a
// device it owns (a PKCS#11 HSM, a TPM 2.0, or, for development only, a file).
//
// The implementations live below this package: hsm/pkcs11, hsm/tpm and
// hsm/soft. The daemon talks to them only through [Device], so that a node can
// change its device (and re-enroll it with `coffer operator reseal`) without
// the rest of Coffer noticing.
//
// A sealed root key is stored as a [Blob] in a node-local file under the data
// directory. It is never replicated: each node seals the root key with its own
// device, and a blob only opens on the device (and device key) that made it.
// Every device binds the same additional data, [SealAAD], so a blob made for
// one cluster or node is refused by another even if the device key is shared.
package hsm

import (
	"context"
	"encoding/binary"
	"errors"
)

// Blob is a secret sealed by a device. Its content is opaque to everyone but
// the device kind that produced it. It is stored node-locally as JSON; Data
// travels as standard base64.
type Blob struct {
	// Kind is the [Device.Kind] of the device that sealed the blob. A device
	// refuses a blob of another kind.
	Kind string `json:"kind"`
	// KeyID names the device key that sealed the blob (a token key label, a
	// key fingerprint, …) so that a mismatch can be reported as such rather
	// than as a generic failure. It is informational, never a secret.
	KeyID string `json:"key_id,omitempty"`
	// Data is the sealed secret in the device kind's own format.
	Data []byte `json:"data"`
	// Meta carries device-specific, non-secret parameters needed to unseal
	// (for example the PCR selection of a TPM policy).
	Meta map[string]string `json:"meta,omitempty"`
}

// Device is a seal device: it seals a secret (the cluster root key) under a
// key that it holds, and unseals blobs that it sealed.
//
// Contract:
//
//   - Kind returns a constant: "pkcs11", "tpm" or "soft". It is what a [Blob]
//     records and what GET /v1/sys/status reports as seal_type.
//   - Seal encrypts secret with authenticated additional data aad and returns
//     a blob with Kind set. It does not retain or modify secret or aad; the
//     caller zeroes secret afterwards. Every Seal uses fresh randomness, so
//     two seals of the same secret differ.
//   - Unseal returns the secret of a blob sealed by this device with the same
//     aad. The returned slice is new and owned by the caller, who must zero it
//     after use. Any refusal that is a property of the blob (another kind,
//     another device key, tampered data, different aad, a TPM policy that no
//     longer holds) returns an error wrapping [ErrUnsealFailed]; retrying will
//     not help and the node must be unsealed with shares.
//   - A device that cannot be reached or used right now (library not loaded,
//     token removed, TPM busy, device closed) returns an error wrapping
//     [ErrDeviceUnavailable] from any method; the caller may retry later.
//   - Health checks that the device and its key are usable without touching a
//     secret. It is cheap enough to call from a status endpoint.
//   - Every method honours ctx cancellation where the device allows it.
//   - All methods are safe for concurrent use. Close releases the device
//     (sessions, handles, in-memory key material); it may be called more than
//     once, and after it every other method returns [ErrDeviceUnavailable].
//   - Errors never contain secret material or PINs.
//
// A device backed by real hardware must not be able to export its key: the
// only way to use it is through Seal and Unseal.
type Device interface {
	Kind() string
	Seal(ctx context.Context, secret, aad []byte) (Blob, error)
	Unseal(ctx context.Context, b Blob, aad []byte) ([]byte, error)
	Health(ctx context.Context) error
	Close() error
}

var (
	// ErrUnsealFailed means the device refused to unseal a blob: it was sealed
	// by another device kind or key, it was tampered with, the aad differs,
	// or a device policy (such as TPM PCRs) no longer holds. Retrying does
	// not help; unseal the node with shares and run `coffer operator reseal`.
	ErrUnsealFailed = errors.New("the seal device refused to unseal the root key")

	// ErrDeviceUnavailable means the device cannot be used right now: it is
	// missing, unreachable, misconfigured or closed. The operation may
	// succeed later, once the device is back.
	ErrDeviceUnavailable = errors.New("the seal device is unavailable")

	// ErrPINRefused means the device refused its PIN (wrong, invalid or
	// locked). It comes wrapped together with [ErrDeviceUnavailable].
	// Trying the same PIN again cannot help and costs one of the few wrong
	// attempts a real HSM allows before it locks the PIN: the caller waits
	// for an operator (who may fix the PIN) before it opens the device again.
	ErrPINRefused = errors.New("the seal device refused the PIN")
)

// Reopener is the optional capability of devices that can drop their
// connection and find the device again (a replaced token, a restarted TPM)
// without being closed and opened anew. After a successful Reopen the
// device is usable as if just opened; a failed Reopen leaves it unusable
// until the next Reopen. It is safe for concurrent use with the other
// methods.
type Reopener interface {
	Reopen(ctx context.Context) error
}

// SettingError is a device configuration error found by a device's
// Validate (before the device is touched): Setting names the config
// attribute at fault ("" for the block as a whole), so that the config
// loader can point at its line; Error is the whole message.
type SettingError struct {
	Setting string
	Msg     string
}

func (e *SettingError) Error() string { return e.Msg }

// sealAADLabel versions the AAD layout; a future layout must use a new label.
const sealAADLabel = "coffer-device-seal-v1"

// SealAAD returns the additional authenticated data that every device binds
// to the sealed root key: the label "coffer-device-seal-v1", the cluster id
// and the node id, each preceded by its length as a 4-byte big-endian
// integer. The length prefixes make the encoding unambiguous, so that no two
// different (clusterID, nodeID) pairs produce the same bytes.
func SealAAD(clusterID, nodeID string) []byte {
	fields := []string{sealAADLabel, clusterID, nodeID}
	n := 0
	for _, f := range fields {
		n += 4 + len(f)
	}
	out := make([]byte, 0, n)
	for _, f := range fields {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}
