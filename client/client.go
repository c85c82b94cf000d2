// Package client is the Go client of Coffer's HTTP API over cofferd's unix
// socket (docs/api.md). The coffer CLI uses it; services use it to wrap,
// unwrap and encrypt data without writing HTTP by hand.
//
// A Client is safe for concurrent use. Every call takes a context. Errors
// from cofferd are *APIError values that errors.Is matches against the
// sentinels of this package (ErrSealed, ErrNotFound, …); a socket that
// cannot be reached gives a *ConnError.
//
// Calls are retried, with exponential backoff and within the context's
// deadline and Options.Retry.MaxElapsed, only when cofferd said the request
// did nothing: sealed, audit_unavailable, no_leader, too_many_requests
// (after Retry-After), or the connection was refused before anything was
// sent. outcome_unknown (a write that may or may not have been applied) is
// never retried: read, then decide.
//
// Plaintexts (Unwrap, DataKey, Decrypt) come back in []byte buffers that the
// client does not keep: zero them with clear() when done. The client zeroes
// its own copies (request bodies it encoded, raw answers).
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// DefaultSocket is where cofferd listens unless its config says otherwise.
const DefaultSocket = "/run/coffer/coffer.sock"

// maxResponse bounds how much of an answer the client reads. A request body
// is at most api.MaxBody and no answer is much larger than its request, so
// this only stops a runaway peer from exhausting memory.
const maxResponse = 4 * api.MaxBody

// Client talks to cofferd over its unix socket. It is safe for concurrent
// use; connections are kept alive and reused.
type Client struct {
	socket string
	tr     *http.Transport
	hc     *http.Client
	retry  RetryPolicy
}

// Options tune a Client. The zero value is the default.
type Options struct {
	// MaxConns bounds the pool of kept-alive connections (default 256). 1
	// also limits the client to one connection at a time.
	MaxConns int
	// Retry is the retry policy; nil means DefaultRetry. Use &NoRetry to
	// fail at once.
	Retry *RetryPolicy
}

// New returns a client for the cofferd socket at socketPath with the
// default options (DefaultRetry).
func New(socketPath string) *Client { return NewWithOptions(socketPath, Options{}) }

// NewFromEnv returns a client for the socket named by $COFFER_SOCKET, or
// DefaultSocket when it is unset: the same rule as the coffer CLI.
func NewFromEnv() *Client {
	s := os.Getenv(EnvSocket)
	if s == "" {
		s = DefaultSocket
	}
	return New(s)
}

// EnvSocket is the environment variable that names cofferd's socket.
const EnvSocket = "COFFER_SOCKET"

// NewWithOptions returns a client for the cofferd socket at socketPath.
func NewWithOptions(socketPath string, o Options) *Client {
	maxConns := o.MaxConns
	if maxConns <= 0 {
		maxConns = 256
	}
	retry := DefaultRetry
	if o.Retry != nil {
		retry = *o.Retry
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:        maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
		// Bodies are small JSON documents on a local socket: compression
		// only costs CPU, and it would skew bench figures.
		DisableCompression: true,
	}
	if maxConns == 1 {
		tr.MaxConnsPerHost = 1
	}
	return &Client{socket: socketPath, tr: tr, hc: &http.Client{Transport: tr}, retry: retry}
}

// Socket returns the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close closes the client's idle connections. The client stays usable.
func (c *Client) Close() { c.tr.CloseIdleConnections() }

// ConnError reports that cofferd could not be reached or the connection
// broke before an answer arrived. Its message says what to check.
type ConnError struct {
	Socket string
	Err    error
}

func (e *ConnError) Unwrap() error { return e.Err }

func (e *ConnError) Error() string {
	const hint = "is cofferd running? set --socket or COFFER_SOCKET"
	var op *net.OpError
	dial := errors.As(e.Err, &op) && op.Op == "dial"
	switch {
	case errors.Is(e.Err, syscall.ENOENT):
		return fmt.Sprintf("cannot reach cofferd at %s: no such file; %s", e.Socket, hint)
	case errors.Is(e.Err, syscall.ECONNREFUSED):
		return fmt.Sprintf("cannot reach cofferd at %s: connection refused (the socket file exists but nothing listens on it); %s", e.Socket, hint)
	case errors.Is(e.Err, syscall.EACCES), errors.Is(e.Err, syscall.EPERM):
		return fmt.Sprintf("cannot reach cofferd at %s: permission denied; your user must be in the socket's group (the group of the listener \"unix\" block in cofferd's config) or run coffer as root", e.Socket)
	case errors.Is(e.Err, syscall.ENOTSOCK):
		return fmt.Sprintf("cannot reach cofferd at %s: not a socket; set --socket or COFFER_SOCKET to cofferd's socket", e.Socket)
	case dial:
		return fmt.Sprintf("cannot reach cofferd at %s: %v; %s", e.Socket, op.Err, hint)
	default:
		return fmt.Sprintf("lost the connection to cofferd at %s before it answered: %v; check cofferd's log", e.Socket, e.Err)
	}
}

// Do sends one request and decodes the answer. It is the raw form of the
// typed methods, for endpoints they do not cover.
//
// body is sent as the request body: nil sends none, []byte and
// json.RawMessage are sent as they are (already JSON), an io.Reader is
// streamed (and never retried: it cannot be sent twice), anything else is
// encoded as JSON. out receives a 2xx answer: nil discards it, *[]byte
// receives the raw body bytes (the caller owns them and may zero them),
// anything else is decoded from JSON.
//
// A non-2xx answer is returned as an *APIError, with the response. The
// returned response's body has already been read and closed; use it for the
// status code and headers.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) (*http.Response, error) {
	resp, data, err := c.send(ctx, method, path, body)
	if err != nil {
		return resp, err
	}
	if o, ok := out.(*[]byte); ok {
		*o = data
		return resp, nil
	}
	// The answer may carry plaintext or data keys: zero the raw copy once
	// it is decoded.
	defer clear(data)
	if out == nil {
		return resp, nil
	}
	if err := DecodeAnswer(resp, method, path, data, out); err != nil {
		return resp, err
	}
	return resp, nil
}

// DecodeAnswer decodes a 2xx JSON body into out: the raw body Do returns
// with out = *[]byte, for a caller that keeps the bytes too (the CLI prints
// them with --format json). An empty or undecodable body is an *APIError
// with code internal naming the request.
func DecodeAnswer(resp *http.Response, method, path string, data []byte, out any) error {
	fail := func(format string, args ...any) error {
		return &APIError{Status: resp.StatusCode, Code: api.CodeInternal,
			Message: fmt.Sprintf(format, args...), RequestID: resp.Header.Get(api.HeaderRequestID)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return fail("cofferd answered %s %s with an empty body where JSON was expected", method, path)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fail("cannot read cofferd's answer to %s %s: %v; are the client and cofferd the same version?", method, path, err)
	}
	return nil
}

// send sends a request, retrying as the policy allows, and returns a 2xx
// answer's body (the caller owns and zeroes it) or the error: an *APIError
// for a non-2xx answer (with its response), a *ConnError or the context's
// error.
func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, []byte, error) {
	var payload []byte // sent again as it is on a retry
	var stream io.Reader
	replayable := true
	switch b := body.(type) {
	case nil:
	case []byte:
		payload = b
	case json.RawMessage:
		payload = b
	case io.Reader:
		stream, replayable = b, false
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			return nil, nil, fmt.Errorf("encode the %s %s request: %w", method, path, err)
		}
		// A JSON encoding made here may hold a plaintext: zero it after.
		defer clear(enc)
		payload = enc
	}
	r := c.newRetrier(ctx)
	for {
		rd, hasBody := stream, stream != nil
		if payload != nil {
			rd, hasBody = bytes.NewReader(payload), true
		}
		resp, data, err := c.roundTrip(ctx, method, path, rd, hasBody)
		if err == nil && resp.StatusCode >= 200 && resp.StatusCode <= 299 {
			return resp, data, nil
		}
		if err == nil {
			err = c.decodeError(resp, data)
			clear(data)
		}
		if !r.next(ctx, err, resp, replayable) {
			return resp, nil, err
		}
	}
}

// roundTrip sends one request and reads the whole answer, whatever its
// status. The caller owns (and zeroes) data. err is a transport error only.
func (c *Client) roundTrip(ctx context.Context, method, path string, rd io.Reader, hasBody bool) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://coffer"+path, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("build the %s %s request: %w", method, path, err)
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")

	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, nil, ctxErr
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, nil, &ConnError{Socket: c.socket, Err: err}
	}
	defer resp.Body.Close()

	data, err := ReadAllSecret(resp.Body, resp.ContentLength, maxResponse)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return resp, nil, ctxErr
		}
		return resp, nil, &ConnError{Socket: c.socket, Err: fmt.Errorf("read the answer to %s %s: %w", method, path, err)}
	}
	return resp, data, nil
}

// decodeError turns a non-2xx answer into a *APIError. A body that is not
// Coffer's error shape (a proxy, another server on the socket) still gives a
// clear error, with code internal.
func (c *Client) decodeError(resp *http.Response, data []byte) *APIError {
	e := &APIError{Status: resp.StatusCode, RequestID: resp.Header.Get(api.HeaderRequestID)}
	var body api.ErrorBody
	if err := json.Unmarshal(data, &body); err == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
		return e
	}
	e.Code = api.CodeInternal
	snippet := ""
	if s := bytes.TrimSpace(data); len(s) > 0 {
		if len(s) > 120 {
			s = s[:120]
		}
		snippet = " (" + strconv.Quote(string(s)) + ")"
	}
	e.Message = fmt.Sprintf("%s answered %q without a Coffer error body%s; is it cofferd's socket?", c.socket, resp.Status, snippet)
	return e
}

// ReadAllSecret reads r to its end, at most limit bytes (sizeHint, when
// known and positive, sizes the first buffer). Unlike io.ReadAll it zeroes
// every buffer it outgrows, so that no stray copy of a plaintext or share
// is left behind; the caller zeroes the result. The client reads answers
// with it; services can use it to read a secret from a file or a pipe.
func ReadAllSecret(r io.Reader, sizeHint, limit int64) ([]byte, error) {
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

// Status returns the node's status (GET /v1/sys/status).
func (c *Client) Status(ctx context.Context) (*api.Status, error) {
	var st api.Status
	if _, err := c.Do(ctx, http.MethodGet, api.PathStatus, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Health returns the node's status from GET /v1/sys/health. A node that is
// sealed (503) or not initialised (501) answers with the status body too:
// then Health returns that status and a *APIError with the HTTP status and
// code sealed.
func (c *Client) Health(ctx context.Context) (*api.Status, error) {
	resp, data, err := c.roundTrip(ctx, http.MethodGet, api.PathHealth, nil, false)
	if err != nil {
		return nil, err
	}
	ok := resp.StatusCode == http.StatusOK
	unhealthy := resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusNotImplemented
	var eb api.ErrorBody
	if !ok && (!unhealthy || (json.Unmarshal(data, &eb) == nil && eb.Error.Code != "")) {
		return nil, c.decodeError(resp, data)
	}
	var st api.Status
	if err := DecodeAnswer(resp, http.MethodGet, api.PathHealth, data, &st); err != nil {
		return nil, err
	}
	if ok {
		return &st, nil
	}
	msg := "the node is sealed"
	if !st.Initialized {
		msg = "the node is not initialised"
	}
	return &st, &APIError{Status: resp.StatusCode, Code: api.CodeSealed, Message: msg, RequestID: resp.Header.Get(api.HeaderRequestID)}
}

// Init initialises the cluster (POST /v1/sys/init). The answer holds the
// shares: show them once and drop them.
func (c *Client) Init(ctx context.Context, req api.InitRequest) (*api.InitResponse, error) {
	var out api.InitResponse
	if _, err := c.Do(ctx, http.MethodPost, api.PathInit, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Unseal submits one share (POST /v1/sys/unseal) and returns the status
// after it. The request body is built in a buffer that is zeroed afterwards;
// share itself stays the caller's to zero.
func (c *Client) Unseal(ctx context.Context, share []byte) (*api.Status, error) {
	body := api.UnsealBody(share)
	defer clear(body)
	var st api.Status
	if _, err := c.Do(ctx, http.MethodPost, api.PathUnseal, body, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// UnsealReset discards the shares submitted so far (POST /v1/sys/unseal
// with reset).
func (c *Client) UnsealReset(ctx context.Context) (*api.Status, error) {
	var st api.Status
	if _, err := c.Do(ctx, http.MethodPost, api.PathUnseal, api.UnsealRequest{Reset: true}, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Seal seals this node (POST /v1/sys/seal).
func (c *Client) Seal(ctx context.Context) error {
	_, err := c.Do(ctx, http.MethodPost, api.PathSeal, nil, nil)
	return err
}

// Reseal wraps the root key with this node's device again (POST
// /v1/sys/reseal).
func (c *Client) Reseal(ctx context.Context) error {
	_, err := c.Do(ctx, http.MethodPost, api.PathReseal, nil, nil)
	return err
}

// Rotate adds a keyring term (POST /v1/sys/rotate).
func (c *Client) Rotate(ctx context.Context) (*api.RotateResponse, error) {
	var out api.RotateResponse
	if _, err := c.Do(ctx, http.MethodPost, api.PathRotate, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) key(ctx context.Context, method, path string, body any) (*api.Key, error) {
	var k api.Key
	if _, err := c.Do(ctx, method, path, body, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// CreateKey creates a named key (POST /v1/keys).
func (c *Client) CreateKey(ctx context.Context, req api.CreateKeyRequest) (*api.Key, error) {
	return c.key(ctx, http.MethodPost, api.PathKeys, req)
}

// ListKeys returns the names of all keys, sorted (GET /v1/keys).
func (c *Client) ListKeys(ctx context.Context) ([]string, error) {
	var out api.KeyList
	if _, err := c.Do(ctx, http.MethodGet, api.PathKeys, nil, &out); err != nil {
		return nil, err
	}
	return out.Keys, nil
}

// GetKey describes a key (GET /v1/keys/{name}).
func (c *Client) GetKey(ctx context.Context, name string) (*api.Key, error) {
	return c.key(ctx, http.MethodGet, api.KeyPath(name), nil)
}

// UpdateKey changes a key's configuration (PATCH /v1/keys/{name}).
func (c *Client) UpdateKey(ctx context.Context, name string, req api.UpdateKeyRequest) (*api.Key, error) {
	return c.key(ctx, http.MethodPatch, api.KeyPath(name), req)
}

// RotateKey adds a key version (POST /v1/keys/{name}/rotate).
func (c *Client) RotateKey(ctx context.Context, name string) (*api.Key, error) {
	return c.key(ctx, http.MethodPost, api.KeyPath(name, "rotate"), nil)
}

// DeleteKey schedules a key's deletion after pendingWindow, a Go duration
// string; "" lets cofferd apply its default (168h).
func (c *Client) DeleteKey(ctx context.Context, name, pendingWindow string) (*api.Key, error) {
	return c.key(ctx, http.MethodDelete, deleteKeyPath(name, pendingWindow), nil)
}

func deleteKeyPath(name, pendingWindow string) string {
	p := api.KeyPath(name)
	if pendingWindow != "" {
		p += "?pending_window=" + url.QueryEscape(pendingWindow)
	}
	return p
}

// RestoreKey cancels a pending deletion (POST /v1/keys/{name}/restore).
func (c *Client) RestoreKey(ctx context.Context, name string) (*api.Key, error) {
	return c.key(ctx, http.MethodPost, api.KeyPath(name, "restore"), nil)
}

// Wrap encrypts plaintext (at most api.MaxPlaintext bytes) under the key's
// latest version.
func (c *Client) Wrap(ctx context.Context, key string, plaintext, aad []byte) (*api.WrapResult, error) {
	var out api.WrapResult
	if _, err := c.Do(ctx, http.MethodPost, api.KeyPath(key, "wrap"), api.WrapRequest{Plaintext: plaintext, AAD: aad}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// WrapBatch wraps several plaintexts in one request. Results come in the
// order of items; a failed item carries its Error.
func (c *Client) WrapBatch(ctx context.Context, key string, items []api.WrapItem) ([]api.WrapResult, error) {
	var out api.WrapBatchResponse
	if _, err := c.Do(ctx, http.MethodPost, api.KeyPath(key, "wrap"), api.WrapRequest{Batch: items}, &out); err != nil {
		return nil, err
	}
	if err := checkBatchLen(len(out.Batch), len(items)); err != nil {
		return nil, err
	}
	return out.Batch, nil
}

// Unwrap decrypts a ciphertext. The caller should zero the plaintext after
// use.
func (c *Client) Unwrap(ctx context.Context, key, ciphertext string, aad []byte) ([]byte, error) {
	var out api.UnwrapResult
	if _, err := c.Do(ctx, http.MethodPost, api.KeyPath(key, "unwrap"), api.CiphertextRequest{Ciphertext: ciphertext, AAD: aad}, &out); err != nil {
		return nil, err
	}
	return out.Plaintext, nil
}

// UnwrapBatch decrypts several ciphertexts in one request.
func (c *Client) UnwrapBatch(ctx context.Context, key string, items []api.CiphertextItem) ([]api.UnwrapResult, error) {
	var out api.UnwrapBatchResponse
	if _, err := c.Do(ctx, http.MethodPost, api.KeyPath(key, "unwrap"), api.CiphertextRequest{Batch: items}, &out); err != nil {
		return nil, err
	}
	if err := checkBatchLen(len(out.Batch), len(items)); err != nil {
		return nil, err
	}
	return out.Batch, nil
}

// Rewrap re-encrypts a ciphertext under the key's latest version; the
// plaintext never leaves cofferd.
func (c *Client) Rewrap(ctx context.Context, key, ciphertext string, aad []byte) (*api.WrapResult, error) {
	var out api.WrapResult
	if _, err := c.Do(ctx, http.MethodPost, api.KeyPath(key, "rewrap"), api.CiphertextRequest{Ciphertext: ciphertext, AAD: aad}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RewrapBatch rewraps several ciphertexts in one request.
func (c *Client) RewrapBatch(ctx context.Context, key string, items []api.CiphertextItem) ([]api.WrapResult, error) {
	var out api.WrapBatchResponse
	if _, err := c.Do(ctx, http.MethodPost, api.KeyPath(key, "rewrap"), api.CiphertextRequest{Batch: items}, &out); err != nil {
		return nil, err
	}
	if err := checkBatchLen(len(out.Batch), len(items)); err != nil {
		return nil, err
	}
	return out.Batch, nil
}

func checkBatchLen(got, want int) error {
	if got != want {
		return &APIError{Code: api.CodeInternal, Message: fmt.Sprintf("cofferd answered a batch of %d items with %d results; does the server support batches?", want, got)}
	}
	return nil
}

// DataKey returns a fresh data key and its ciphertext (POST
// /v1/keys/{name}/datakey). The caller should zero the plaintext.
func (c *Client) DataKey(ctx context.Context, key string, req api.DataKeyRequest) (*api.DataKeyResponse, error) {
	var out api.DataKeyResponse
	if _, err := c.Do(ctx, http.MethodPost, api.KeyPath(key, "datakey"), req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PutPolicy creates or replaces a policy (PUT /v1/policies/{name}).
func (c *Client) PutPolicy(ctx context.Context, name string, p api.Policy) (*api.Policy, error) {
	var out api.Policy
	if _, err := c.Do(ctx, http.MethodPut, api.PolicyPath(name), p, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListPolicies returns the names of all policies (GET /v1/policies).
func (c *Client) ListPolicies(ctx context.Context) ([]string, error) {
	var out api.PolicyList
	if _, err := c.Do(ctx, http.MethodGet, api.PathPolicies, nil, &out); err != nil {
		return nil, err
	}
	return out.Policies, nil
}

// GetPolicy returns a policy (GET /v1/policies/{name}).
func (c *Client) GetPolicy(ctx context.Context, name string) (*api.Policy, error) {
	var out api.Policy
	if _, err := c.Do(ctx, http.MethodGet, api.PolicyPath(name), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeletePolicy deletes a policy (DELETE /v1/policies/{name}).
func (c *Client) DeletePolicy(ctx context.Context, name string) error {
	_, err := c.Do(ctx, http.MethodDelete, api.PolicyPath(name), nil, nil)
	return err
}

// Download sends a GET and streams a successful answer's body into w
// without the size limit of Do (snapshots of large clusters are tens of
// megabytes). It returns the number of bytes written.
func (c *Client) Download(ctx context.Context, path string, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://coffer"+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return 0, ctxErr
		}
		return 0, &ConnError{Socket: c.socket, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
		return 0, c.decodeError(resp, data)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, &ConnError{Socket: c.socket, Err: fmt.Errorf("read the answer to GET %s: %w", path, err)}
	}
	return n, nil
}
