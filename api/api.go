// Package api holds the JSON request and response types of the Coffer HTTP
// API (docs/api.md) and its error codes. Both the daemon and the CLI import
// it, so the wire format is defined in exactly one place.
//
// Binary fields ([]byte) travel as standard base64 with padding, which is what
// encoding/json does for []byte.
package api

import (
	"fmt"
	"time"
)

// Error codes (docs/api.md, "Conventions").
const (
	CodeBadRequest         = "bad_request"
	CodeInvalidShare       = "invalid_share"
	CodeDecryptFailed      = "decrypt_failed"
	CodePermissionDenied   = "permission_denied"
	CodeNotFound           = "not_found"
	CodeMethodNotAllowed   = "method_not_allowed"
	CodeAlreadyExists      = "already_exists"
	CodeKeyPendingDeletion = "key_pending_deletion"
	CodeVersionDisabled    = "version_disabled"
	CodeTooLarge           = "too_large"
	CodeSealed             = "sealed"
	CodeNoLeader           = "no_leader"
	CodeInternal           = "internal"
	// CodeAuditUnavailable (503): the node cannot write its audit log (disk
	// full, permission, I/O error) and refuses what it cannot record: see
	// docs/audit.md.
	CodeAuditUnavailable = "audit_unavailable"
)

// Limits (docs/api.md, "Conventions").
const (
	MaxPlaintext   = 64 << 10
	MaxBody        = 4 << 20
	MaxBatch       = 10000
	MinDataKeyLen  = 16
	MaxDataKeyLen  = 64
	DefaultDataKey = 32
)

// CodeTooManyRequests (429): the caller's or the node's connection cap is
// reached; the answer carries Retry-After.
const CodeTooManyRequests = "too_many_requests"

// MaxOpenBody bounds the body of an open endpoint (unseal) and of any
// request whose caller is not yet known to be allowed: MaxBody applies only
// once the grant check passed, so that callers without a grant cannot make
// the daemon buffer megabytes each.
const MaxOpenBody = 4 << 10

// KeyTypeXAES256GCM is C2SP XAES-256-GCM: 192-bit random nonces, for keys
// that encrypt billions of times (no nonce budget, no forced rotation).
const KeyTypeXAES256GCM = "xaes256-gcm"

// Key types.
const (
	KeyTypeAES256GCM        = "aes256-gcm"
	KeyTypeChaCha20Poly1305 = "chacha20-poly1305"
)

// Policy operations.
const (
	OpWrap    = "wrap"
	OpUnwrap  = "unwrap"
	OpRewrap  = "rewrap"
	OpDatakey = "datakey"
	OpRead    = "read"
	OpCreate  = "create"
	OpRotate  = "rotate"
	OpUpdate  = "update"
	OpDelete  = "delete"
)

// Operations lists every policy operation, in the order of docs/api.md
// (the key operations, then the secret operations of api/secrets.go).
var Operations = []string{OpWrap, OpUnwrap, OpRewrap, OpDatakey, OpRead, OpCreate, OpRotate, OpUpdate, OpDelete,
	OpSecretRead, OpSecretWrite, OpSecretDelete}

// ValidName reports whether s is a valid key or policy name:
// ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$.
func ValidName(s string) bool { return validIdent(s, 128) }

// ValidNodeID reports whether s is a valid node id (config node_id, the
// node of a cluster certificate): ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$.
func ValidNodeID(s string) bool { return validIdent(s, 64) }

func validIdent(s string, maxLen int) bool {
	if len(s) == 0 || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// HeaderRequestID is set on every response.
const HeaderRequestID = "X-Request-Id"

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the code and human message of an error. The message says
// what went wrong and what to do; it never carries a secret.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error is an API error as seen by a client: the HTTP status plus the body.
type Error struct {
	Status    int
	Code      string
	Message   string
	RequestID string
}

func (e *Error) Error() string {
	if e.RequestID != "" {
		return fmt.Sprintf("%s: %s (request %s)", e.Code, e.Message, e.RequestID)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Status is the body of GET /v1/sys/status, /v1/sys/health and of unseal.
type Status struct {
	Initialized  bool   `json:"initialized"`
	Sealed       bool   `json:"sealed"`
	SealType     string `json:"seal_type"`
	Threshold    int    `json:"threshold"`
	Shares       int    `json:"shares"`
	Progress     int    `json:"progress"`
	ClusterID    string `json:"cluster_id"`
	NodeID       string `json:"node_id"`
	LeaderID     string `json:"leader_id"`
	IsLeader     bool   `json:"is_leader"`
	Version      string `json:"version"`
	SealedReason string `json:"sealed_reason"`
	// UnsealNonce changes whenever an unseal attempt starts (its first
	// share) or is reset: a client entering shares sees that the progress
	// it counts on is no longer its own.
	UnsealNonce string `json:"unseal_nonce"`
	AuditSeq    uint64 `json:"audit_seq"`
	AuditHash   string `json:"audit_hash"`
	// AuditError is set while the node cannot write its audit log and so
	// refuses every audited request: what failed and what to do. Empty when
	// the log is writable.
	AuditError string `json:"audit_error,omitempty"`
	// SealDeviceError is set while the node's seal device is failing (also
	// when the node is unsealed and still serving from memory): what failed
	// and what to do. Empty when healthy or with no device.
	SealDeviceError string `json:"seal_device_error,omitempty"`
}

// InitRequest is the body of POST /v1/sys/init.
type InitRequest struct {
	Shares     int      `json:"shares"`
	Threshold  int      `json:"threshold"`
	Recipients []string `json:"recipients,omitempty"`
}

// InitResponse is the answer to POST /v1/sys/init.
type InitResponse struct {
	Shares    []string `json:"shares"`
	Encrypted bool     `json:"encrypted"`
}

// UnsealRequest is the body of POST /v1/sys/unseal.
type UnsealRequest struct {
	Share string `json:"share,omitempty"`
	Reset bool   `json:"reset,omitempty"`
}

// AuditHashRequest is the body of POST /v1/sys/audit-hash.
type AuditHashRequest struct {
	Input string `json:"input"`
}

// AuditHashResponse is its answer: the value as the audit log records it.
type AuditHashResponse struct {
	Hash string `json:"hash"`
}

// RotateResponse is the answer to POST /v1/sys/rotate.
type RotateResponse struct {
	Term int `json:"term"`
}

// CreateKeyRequest is the body of POST /v1/keys.
type CreateKeyRequest struct {
	Name           string `json:"name"`
	Type           string `json:"type,omitempty"`
	RotationPeriod string `json:"rotation_period,omitempty"`
}

// UpdateKeyRequest is the body of PATCH /v1/keys/{name}. Absent fields are
// left unchanged. RotationPeriod "0s" (or "0") turns scheduled rotation off.
type UpdateKeyRequest struct {
	MinDecryptionVersion *int    `json:"min_decryption_version,omitempty"`
	RotationPeriod       *string `json:"rotation_period,omitempty"`
}

// KeyList is the answer to GET /v1/keys.
type KeyList struct {
	Keys []string `json:"keys"`
}

// Key describes a named key. It never carries key material.
type Key struct {
	Name                 string       `json:"name"`
	Type                 string       `json:"type"`
	LatestVersion        int          `json:"latest_version"`
	MinDecryptionVersion int          `json:"min_decryption_version"`
	Versions             []KeyVersion `json:"versions"`
	RotationPeriod       string       `json:"rotation_period"`
	DeletionDate         *time.Time   `json:"deletion_date"`
	CreatedAt            time.Time    `json:"created_at"`
}

// KeyVersion is one version of a named key.
type KeyVersion struct {
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
}

// WrapRequest is the body of POST /v1/keys/{name}/wrap: either one item
// (Plaintext, AAD) or Batch.
type WrapRequest struct {
	Plaintext []byte     `json:"plaintext,omitempty"`
	AAD       []byte     `json:"aad,omitempty"`
	Batch     []WrapItem `json:"batch,omitempty"`
}

// WrapItem is one item of a wrap batch.
type WrapItem struct {
	Plaintext []byte `json:"plaintext"`
	AAD       []byte `json:"aad,omitempty"`
}

// CiphertextRequest is the body of unwrap and rewrap: one item or Batch.
type CiphertextRequest struct {
	Ciphertext string           `json:"ciphertext,omitempty"`
	AAD        []byte           `json:"aad,omitempty"`
	Batch      []CiphertextItem `json:"batch,omitempty"`
}

// CiphertextItem is one item of an unwrap or rewrap batch.
type CiphertextItem struct {
	Ciphertext string `json:"ciphertext"`
	AAD        []byte `json:"aad,omitempty"`
}

// WrapResult is the answer to wrap and rewrap (and one batch item of them).
type WrapResult struct {
	Ciphertext string       `json:"ciphertext,omitempty"`
	KeyVersion int          `json:"key_version,omitempty"`
	Error      *ErrorDetail `json:"error,omitempty"`
}

// UnwrapResult is the answer to unwrap (and one batch item of it).
type UnwrapResult struct {
	Plaintext []byte       `json:"plaintext,omitempty"`
	Error     *ErrorDetail `json:"error,omitempty"`
}

// WrapBatchResponse is the answer to a wrap or rewrap batch.
type WrapBatchResponse struct {
	Batch []WrapResult `json:"batch"`
}

// UnwrapBatchResponse is the answer to an unwrap batch.
type UnwrapBatchResponse struct {
	Batch []UnwrapResult `json:"batch"`
}

// DataKeyRequest is the body of POST /v1/keys/{name}/datakey. Nil fields take
// their defaults (32 bytes, plaintext included).
type DataKeyRequest struct {
	Bytes            *int   `json:"bytes,omitempty"`
	AAD              []byte `json:"aad,omitempty"`
	IncludePlaintext *bool  `json:"include_plaintext,omitempty"`
}

// DataKeyResponse is the answer to datakey.
type DataKeyResponse struct {
	Plaintext  []byte `json:"plaintext,omitempty"`
	Ciphertext string `json:"ciphertext"`
	KeyVersion int    `json:"key_version"`
}

// Policy grants operations on key-name patterns to subjects.
type Policy struct {
	// Name is set in answers; in a PUT body it may be omitted or must equal
	// the name in the path.
	Name     string   `json:"name,omitempty"`
	Subjects Subjects `json:"subjects"`
	Keys     []string `json:"keys"`
	// Secrets are glob patterns of secret names, for the secret_*
	// operations.
	Secrets    []string `json:"secrets,omitempty"`
	Operations []string `json:"operations"`
}

// Subjects are the callers a policy applies to; a caller matches when it
// matches any one of them.
type Subjects struct {
	UIDs   []uint32 `json:"uids"`
	GIDs   []uint32 `json:"gids"`
	Users  []string `json:"users"`
	Groups []string `json:"groups"`
	Units  []string `json:"units"`
}

// PolicyList is the answer to GET /v1/policies.
type PolicyList struct {
	Policies []string `json:"policies"`
}
