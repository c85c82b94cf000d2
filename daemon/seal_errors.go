package daemon

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/seal"
)

// sealAPIError maps the seal lifecycle's errors (daemon/seal) to their
// status and code; ok is false for any other error.
func sealAPIError(err error) (status int, d api.ErrorDetail, ok bool) {
	msg := err.Error()
	switch {
	case errors.Is(err, seal.ErrInvalidRequest), errors.Is(err, seal.ErrNoDevice):
		return http.StatusBadRequest, api.ErrorDetail{Code: api.CodeBadRequest, Message: msg}, true
	case errors.Is(err, seal.ErrInvalidShare):
		return http.StatusBadRequest, api.ErrorDetail{Code: api.CodeInvalidShare, Message: msg}, true
	case errors.Is(err, seal.ErrDeviceUnavailable), errors.Is(err, seal.ErrEnrolFailed):
		// The operator has to fix the device: the message says what failed.
		return http.StatusInternalServerError, api.ErrorDetail{Code: api.CodeInternal, Message: msg}, true
	}
	return 0, api.ErrorDetail{}, false
}

// unsealDenied is the 403 for a caller who is neither an admin nor in the
// config's unseal.groups.
func unsealDenied(c *auth.Caller) error {
	who := "this caller"
	if c != nil {
		who = fmt.Sprintf("uid %d", c.UID)
	}
	return &httpError{http.StatusForbidden, api.CodePermissionDenied, who + " may not submit unseal shares or reset the unseal progress: only admins and members of the groups in the config's unseal { groups = [...] } may; ask an administrator to add you to one"}
}
