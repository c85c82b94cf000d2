package pkcs11

import (
	"errors"
	"fmt"
	"strings"

	p11 "github.com/miekg/pkcs11"

	"github.com/coffer-kms/coffer/hsm"
)

// ckrAEADDecryptFailed is CKR_AEAD_DECRYPT_FAILED from PKCS#11 3.0, which
// miekg/pkcs11 v1.1.2 does not define; 3.0 modules report a bad GCM tag with
// it.
const ckrAEADDecryptFailed = 0x35

// deviceError is the error every exported function returns for a device
// failure: a complete, user-facing message (never a PIN or a secret) that
// wraps the hsm sentinel, for errors.Is, and the PKCS#11 return value where
// there is one, for errors.As with pkcs11.Error.
type deviceError struct {
	msg   string
	kind  error // hsm.ErrDeviceUnavailable or hsm.ErrUnsealFailed
	cause error // a pkcs11.Error, or nil
	// pin is set when the token refused the PIN: the error then also
	// wraps hsm.ErrPINRefused.
	pin bool
}

func (e *deviceError) Error() string { return e.msg }

func (e *deviceError) Unwrap() []error {
	errs := []error{e.kind}
	if e.pin {
		errs = append(errs, hsm.ErrPINRefused)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// pinRefused returns an error wrapping hsm.ErrDeviceUnavailable and
// hsm.ErrPINRefused (and cause).
func pinRefused(cause error, format string, args ...any) error {
	err := newDeviceError(hsm.ErrDeviceUnavailable, cause, format, args...)
	err.(*deviceError).pin = true
	return err
}

// unavailable returns an error wrapping hsm.ErrDeviceUnavailable. When
// cause is a PKCS#11 error its name is added to the message, so that an
// operator can look it up.
func unavailable(cause error, format string, args ...any) error {
	return newDeviceError(hsm.ErrDeviceUnavailable, cause, format, args...)
}

// unsealFailed returns an error wrapping hsm.ErrUnsealFailed.
func unsealFailed(cause error, format string, args ...any) error {
	return newDeviceError(hsm.ErrUnsealFailed, cause, format, args...)
}

func newDeviceError(kind, cause error, format string, args ...any) error {
	msg := "pkcs11 seal: " + fmt.Sprintf(format, args...)
	// A refused blob is explained by the message; the module's code for it
	// (SoftHSM: CKR_GENERAL_ERROR) would only mislead.
	if name := ckrName(cause); name != "" && kind == hsm.ErrDeviceUnavailable {
		msg += " (" + name + ")"
	}
	return &deviceError{msg: msg, kind: kind, cause: cause}
}

// ckrName returns the CKR_ name of a PKCS#11 error, "" for other errors.
func ckrName(err error) string {
	var e p11.Error
	if !errors.As(err, &e) {
		return ""
	}
	// pkcs11.Error prints as "pkcs11: 0xA0: CKR_PIN_INCORRECT".
	s := e.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR 0x%X", uint(e))
}

// isCode reports whether err is (or wraps) one of the PKCS#11 return values.
func isCode(err error, codes ...uint) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	for _, c := range codes {
		if uint(e) == c {
			return true
		}
	}
	return false
}

// isRecoverable reports whether err means that the session, the login or
// the key handle is gone while the token itself may still be there, so that
// a new session, a new login and a new key lookup may succeed. SoftHSM
// answers CKR_OBJECT_HANDLE_INVALID for the key once the token logs out or
// is deleted.
func isRecoverable(err error) bool {
	return isCode(err,
		p11.CKR_SESSION_HANDLE_INVALID,
		p11.CKR_SESSION_CLOSED,
		p11.CKR_TOKEN_NOT_PRESENT,
		p11.CKR_TOKEN_NOT_RECOGNIZED,
		p11.CKR_DEVICE_REMOVED,
		p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_KEY_HANDLE_INVALID,
		p11.CKR_OBJECT_HANDLE_INVALID,
		p11.CKR_SLOT_ID_INVALID,
	)
}

// isTokenGone reports whether err says that the token left its slot.
func isTokenGone(err error) bool {
	return isCode(err, p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_DEVICE_REMOVED, p11.CKR_SLOT_ID_INVALID, p11.CKR_TOKEN_NOT_RECOGNIZED)
}

// isAuthFailure reports whether a C_Decrypt error means that the GCM tag did
// not verify: the data, the aad or the key is not the one sealed with.
// SoftHSM 2.6 answers CKR_GENERAL_ERROR for a bad tag and for truncated
// data, so that code counts too (C_DecryptInit has already accepted the key
// and parameters when C_Decrypt runs).
func isAuthFailure(err error) bool {
	return isCode(err,
		p11.CKR_ENCRYPTED_DATA_INVALID,
		p11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		p11.CKR_GENERAL_ERROR,
		ckrAEADDecryptFailed,
	)
}
