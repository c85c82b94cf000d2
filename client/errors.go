package client

import "github.com/coffer-kms/coffer/api"

// APIError is an error answered by cofferd: the HTTP status, the API code
// (docs/api.md), the message (what went wrong and what to do; never a
// secret) and the request id, which is also in cofferd's audit log.
//
//	var ae *client.APIError
//	if errors.As(err, &ae) { log.Print(ae.Status, ae.Code, ae.RequestID) }
//
// errors.Is(err, client.ErrNotFound) etc. compare the code.
type APIError = api.Error

// Code is an API error code. The Err… sentinels are Codes: errors.Is(err,
// ErrSealed) is true when err is (or wraps) an *APIError with code sealed.
type Code string

func (c Code) Error() string { return "coffer: " + string(c) }

// APICode returns the code; *APIError's Is method compares it.
func (c Code) APICode() string { return string(c) }

// One sentinel per error code of docs/api.md.
const (
	ErrBadRequest         Code = api.CodeBadRequest
	ErrInvalidShare       Code = api.CodeInvalidShare
	ErrInvalidToken       Code = "invalid_token"
	ErrDecryptFailed      Code = api.CodeDecryptFailed
	ErrPermissionDenied   Code = api.CodePermissionDenied
	ErrNotFound           Code = api.CodeNotFound
	ErrMethodNotAllowed   Code = api.CodeMethodNotAllowed
	ErrAlreadyExists      Code = api.CodeAlreadyExists
	ErrKeyPendingDeletion Code = api.CodeKeyPendingDeletion
	ErrVersionDisabled    Code = api.CodeVersionDisabled
	ErrPendingDeletion    Code = "pending_deletion"
	ErrVersionConflict    Code = "version_conflict"
	ErrVersionDestroyed   Code = "version_destroyed"
	ErrTooLarge           Code = api.CodeTooLarge
	ErrTooManyRequests    Code = api.CodeTooManyRequests
	ErrSealed             Code = api.CodeSealed
	ErrNoLeader           Code = api.CodeNoLeader
	ErrOutcomeUnknown     Code = api.CodeOutcomeUnknown
	ErrAuditUnavailable   Code = api.CodeAuditUnavailable
	ErrInternal           Code = api.CodeInternal
)

// Codes lists every sentinel, in the order of docs/api.md's table.
var Codes = []Code{
	ErrBadRequest, ErrInvalidShare, ErrInvalidToken, ErrDecryptFailed,
	ErrPermissionDenied, ErrNotFound, ErrAlreadyExists, ErrKeyPendingDeletion,
	ErrVersionDisabled, ErrPendingDeletion, ErrVersionConflict,
	ErrVersionDestroyed, ErrTooLarge, ErrTooManyRequests, ErrSealed,
	ErrNoLeader, ErrOutcomeUnknown, ErrAuditUnavailable, ErrInternal,
	ErrMethodNotAllowed,
}

// retryable reports whether code means that the request did nothing and
// may be sent again as it is.
func retryable(code string) bool {
	switch Code(code) {
	case ErrSealed, ErrAuditUnavailable, ErrNoLeader, ErrTooManyRequests:
		return true
	}
	return false
}
