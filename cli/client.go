package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
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

// readAllSecret reads r to its end, at most limit bytes. Unlike io.ReadAll
// it zeroes every buffer it outgrows, so that no stray copy of a plaintext
// is left behind; the caller zeroes the result.
func readAllSecret(r io.Reader, sizeHint, limit int64) ([]byte, error) {
	n := 512
	if sizeHint > 0 && sizeHint < limit {
		n = int(sizeHint) + 1 // +1 so the final Read can report io.EOF without growing
	}
	buf := make([]byte, 0, n)
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				clear(buf)
				return nil, fmt.Errorf("more than %d bytes", limit)
			}
			nb := make([]byte, len(buf), min(int64(2*cap(buf)), limit+1))
			copy(nb, buf)
			clear(buf)
			buf = nb
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			clear(buf)
			return nil, err
		}
	}
}

// Paths of the API (docs/api.md). Names are path-escaped so that a bad
// name is refused by cofferd with bad_request rather than routed elsewhere.
const (
	pathStatus   = "/v1/sys/status"
	pathHealth   = "/v1/sys/health"
	pathInit     = "/v1/sys/init"
	pathUnseal   = "/v1/sys/unseal"
	pathSeal     = "/v1/sys/seal"
	pathReseal   = "/v1/sys/reseal"
	pathRotate   = "/v1/sys/rotate"
	pathKeys     = "/v1/keys"
	pathPolicies = "/v1/policies"
)

func keyPath(name string, op ...string) string {
	p := pathKeys + "/" + url.PathEscape(name)
	for _, s := range op {
		p += "/" + s
	}
	return p
}

func policyPath(name string) string { return pathPolicies + "/" + url.PathEscape(name) }

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
	p := keyPath(name)
	if pendingWindow != "" {
		p += "?pending_window=" + url.QueryEscape(pendingWindow)
	}
	return p
}
