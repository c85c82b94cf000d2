package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/client"
)

// Codes of errors that happen in coffer itself, not in cofferd, printed
// with --format json (docs/spec-changes.md).
const (
	codeUsage       = "usage"       // a mistake on the command line (exit 2)
	codeUnreachable = "unreachable" // cofferd's socket cannot be reached
	codeInterrupted = "interrupted" // SIGINT/SIGTERM
	codeLocal       = "local_error" // anything else local (a file, a terminal)
)

// jsonError is the API's error body, plus the request id when cofferd gave
// one (the same id as in its audit log).
type jsonError struct {
	Error struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"request_id,omitempty"`
	} `json:"error"`
}

// printJSONError prints err on stderr as one JSON document shaped like the
// API's error body and returns the exit status.
func (e *env) printJSONError(err error) int {
	var je jsonError
	status := ExitError
	var ae *api.Error
	var ue *usageError
	var ce *client.ConnError
	switch {
	case errors.As(err, &ae):
		je.Error.Code, je.Error.RequestID = ae.Code, ae.RequestID
		je.Error.Message = ae.Message
		if outer := err.Error(); outer != ae.Error() {
			// Keep what coffer was doing ("unwrap the envelope's data
			// key with key …") in front of cofferd's message.
			je.Error.Message = strings.TrimSuffix(outer, ae.Error()) + ae.Message
		}
	case errors.As(err, &ue):
		je.Error.Code, je.Error.Message, status = codeUsage, ue.msg, ExitUsage
	case errors.Is(err, client.ErrEnvelope):
		// The API's code for any ciphertext that cannot be opened.
		je.Error.Code, je.Error.Message = api.CodeDecryptFailed, err.Error()
	case errors.As(err, &ce):
		je.Error.Code, je.Error.Message = codeUnreachable, err.Error()
	case errors.Is(err, context.Canceled):
		je.Error.Code, je.Error.Message = codeInterrupted, "interrupted"
	default:
		je.Error.Code, je.Error.Message = codeLocal, err.Error()
	}
	out, _ := json.Marshal(je)
	fmt.Fprintf(e.stderr, "%s\n", out)
	return status
}

// wantsJSON reports whether --format json (or $COFFER_FORMAT=json) is in
// effect, read from the raw command line so that errors found while parsing
// it are printed as JSON too.
func wantsJSON(args []string) bool {
	v := os.Getenv(EnvFormat)
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return v == "json"
		case a == "--format" || a == "-format":
			if i+1 < len(args) {
				v = args[i+1]
				i++
			}
		case strings.HasPrefix(a, "--format="), strings.HasPrefix(a, "-format="):
			v = a[strings.IndexByte(a, '=')+1:]
		}
	}
	return v == "json"
}
