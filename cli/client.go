package cli

import (
	"fmt"
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

// decodeAnswer: client.DecodeAnswer.
var decodeAnswer = client.DecodeAnswer

// readAllSecret: client.ReadAllSecret (zeroes what it outgrows).
var readAllSecret = client.ReadAllSecret

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
