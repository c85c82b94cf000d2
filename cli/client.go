package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/client"
)

// The CLI's client is the public client package; these names keep the
// CLI's commands (and branches written against cli.Client) unchanged.
type (
	Client    = client.Client
	ConnError = client.ConnError
)

// DefaultSocket is where cofferd listens unless its config says otherwise.
const DefaultSocket = client.DefaultSocket

// NewClient returns the CLI's client for the socket: no retries (an
// operator wants to see at once that a node is sealed or has no leader).
func NewClient(socketPath string) *Client { return newClient(socketPath, 0) }

// newClient returns a client whose pool holds at most maxConns connections
// (0: the default); the bench gives each worker a client with one so that
// every worker keeps exactly one connection of its own.
func newClient(socketPath string, maxConns int) *Client {
	return client.NewWithOptions(socketPath, client.Options{MaxConns: maxConns, Retry: &client.NoRetry})
}

// decodeAnswer decodes a 2xx JSON body into out.
func decodeAnswer(resp *http.Response, method, path string, data []byte, out any) error {
	fail := func(format string, args ...any) error {
		return &api.Error{Status: resp.StatusCode, Code: api.CodeInternal,
			Message: fmt.Sprintf(format, args...), RequestID: resp.Header.Get(api.HeaderRequestID)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return fail("cofferd answered %s %s with an empty body where JSON was expected", method, path)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fail("cannot read cofferd's answer to %s %s: %v; are coffer and cofferd the same version?", method, path, err)
	}
	return nil
}

// readAllSecret: client.ReadAllSecret (zeroes what it outgrows).
var readAllSecret = client.ReadAllSecret

// unsealBody encodes {"share": share} without making a string copy of the
// share (json.Marshal would, and strings cannot be zeroed).
func unsealBody(share []byte) []byte {
	const hex = "0123456789abcdef"
	b := make([]byte, 0, len(share)+16)
	b = append(b, `{"share":"`...)
	for _, ch := range share {
		switch {
		case ch == '"' || ch == '\\':
			b = append(b, '\\', ch)
		case ch < 0x20 || ch == 0x7f:
			b = append(b, '\\', 'u', '0', '0', hex[ch>>4], hex[ch&0xf])
		default:
			// Bytes >= 0x80 pass through: valid UTF-8 stays valid, and
			// cofferd refuses anything else as a bad share.
			b = append(b, ch)
		}
	}
	return append(b, `"}`...)
}

func checkBatchLen(got, want int) error {
	if got != want {
		return &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("cofferd answered a batch of %d items with %d results; does the server support batches?", want, got)}
	}
	return nil
}

func deleteKeyPath(name, pendingWindow string) string {
	p := api.KeyPath(name)
	if pendingWindow != "" {
		p += "?pending_window=" + url.QueryEscape(pendingWindow)
	}
	return p
}
