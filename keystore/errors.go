package keystore

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. The daemon maps them to API error codes with errors.Is;
// the wrapped messages (via InvalidError and fmt.Errorf %w) say what to do and
// never carry a secret.
var (
	// ErrSealed: the node holds no keys; unseal it first.
	ErrSealed = errors.New("the node is sealed: unseal it with `coffer operator unseal` (or let its seal device unseal it)")
	// ErrNotInitialized: the cluster has no root key yet.
	ErrNotInitialized = errors.New("the cluster is not initialised: run `coffer operator init`")
	// ErrAlreadyInitialized: init on an initialised cluster.
	ErrAlreadyInitialized = errors.New("the cluster is already initialised")
	// ErrRootKeyMismatch: a candidate root key (e.g. combined from shares)
	// does not open this cluster's keyring.
	ErrRootKeyMismatch = errors.New("the shares do not open this cluster's keyring: they belong to another cluster or another init/rekey; unseal progress was reset, start again with shares from this cluster")
	// ErrNotFound: no such key or policy.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: create of an existing key.
	ErrAlreadyExists = errors.New("already exists")
	// ErrPendingDeletion: crypto or rotation on a key scheduled for deletion.
	ErrPendingDeletion = errors.New("key is scheduled for deletion")
	// ErrVersionDisabled: a ciphertext below the key's min_decryption_version.
	ErrVersionDisabled = errors.New("key version is below the key's min_decryption_version")
	// ErrDecrypt: a ciphertext that cannot be opened, for whatever reason.
	ErrDecrypt = errors.New("ciphertext cannot be decrypted")
	// ErrUnknownVersion: a ciphertext names a version newer than this node
	// knows (another node may have rotated the key); it is a decrypt_failed
	// unless waiting for replication brings the version.
	ErrUnknownVersion = errors.New("ciphertext names an unknown key version")
	// ErrInvalid: a bad argument (name, type, duration, range).
	ErrInvalid = errors.New("invalid argument")
	// ErrTooLarge: a plaintext over api.MaxPlaintext.
	ErrTooLarge = errors.New("too large")
	// ErrConflict: a compare-and-set write lost a race; retried internally.
	ErrConflict = errors.New("concurrent update")
	// ErrCorrupt: committed state that does not decode or decrypt.
	ErrCorrupt = errors.New("stored state is corrupt")
)

// invalidf returns an error wrapping ErrInvalid with a message for the user.
func invalidf(format string, args ...any) error {
	return &wrapped{msg: fmt.Sprintf(format, args...), err: ErrInvalid}
}

// wrapf returns an error wrapping sentinel with a message for the user that
// replaces the sentinel's own text.
func wrapf(sentinel error, format string, args ...any) error {
	return &wrapped{msg: fmt.Sprintf(format, args...), err: sentinel}
}

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }

// ResponseCodec encodes Apply's answers for forwarding between nodes
// (cluster.Codec): a follower must get the same sentinel error as the
// leader's FSM returned.
type ResponseCodec struct{}

var codecErrors = map[string]error{
	"conflict":            ErrConflict,
	"already_initialized": ErrAlreadyInitialized,
	"not_initialized":     ErrNotInitialized,
	"invalid_token":       ErrInvalidToken,
	"not_found":           ErrNotFound,
	"unauthenticated":     ErrUnauthenticated,
}

// EncodeResponse turns nil or an Apply error into a string.
func (ResponseCodec) EncodeResponse(v any) string {
	err, _ := v.(error)
	if err == nil {
		return ""
	}
	for code, e := range codecErrors {
		if errors.Is(err, e) {
			return code
		}
	}
	return "corrupt:" + err.Error()
}

// Validate reports whether cmd is a command Apply can decode.
func (ResponseCodec) Validate(cmd []byte) error {
	inner, _, err := splitEnvelope(cmd)
	if err != nil {
		return err
	}
	_, err = DecodeCommand(inner)
	return err
}

// DecodeResponse is the inverse of EncodeResponse.
func (ResponseCodec) DecodeResponse(s string) any {
	if s == "" {
		return nil
	}
	if e, ok := codecErrors[s]; ok {
		return e
	}
	return fmt.Errorf("%w: %s", ErrCorrupt, strings.TrimPrefix(s, "corrupt:"))
}
