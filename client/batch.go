package client

import (
	"context"
	"encoding/base64"

	"github.com/coffer-kms/coffer/api"
)

// batchBudget is how many bytes of base64 payload one batch request carries
// at most: well under api.MaxBody (4 MiB), leaving room for the JSON around
// the items.
const batchBudget = api.MaxBody * 3 / 4

// ItemError returns a batch item's error as an *APIError (nil if the item
// succeeded), so that errors.Is(client.ItemError(r.Error), client.ErrDecryptFailed)
// works like for a single call.
func ItemError(d *api.ErrorDetail) error {
	if d == nil {
		return nil
	}
	return &APIError{Status: 200, Code: d.Code, Message: d.Message}
}

// split cuts n items of the given encoded sizes into runs that each fit one
// batch request (at most api.MaxBatch items and batchBudget bytes).
func split(n int, size func(i int) int) [][2]int {
	var runs [][2]int
	start, bytes := 0, 0
	for i := 0; i < n; i++ {
		s := size(i) + 64 // the item's JSON around its fields
		if i > start && (i-start == api.MaxBatch || bytes+s > batchBudget) {
			runs = append(runs, [2]int{start, i})
			start, bytes = i, 0
		}
		bytes += s
	}
	if n > start {
		runs = append(runs, [2]int{start, n})
	}
	return runs
}

// WrapAll wraps any number of plaintexts under key, in as few batch requests
// as the API's limits allow. Results come in the order of items; an item
// that failed carries its Error (see ItemError). If a request fails, WrapAll
// returns the results of the requests before it and the error: wrapping
// changes no state, so the caller may simply call again.
func (c *Client) WrapAll(ctx context.Context, key string, items []api.WrapItem) ([]api.WrapResult, error) {
	out := make([]api.WrapResult, 0, len(items))
	for _, r := range split(len(items), func(i int) int {
		return base64.StdEncoding.EncodedLen(len(items[i].Plaintext)) + base64.StdEncoding.EncodedLen(len(items[i].AAD))
	}) {
		res, err := c.WrapBatch(ctx, key, items[r[0]:r[1]])
		if err != nil {
			return out, err
		}
		out = append(out, res...)
	}
	return out, nil
}

// UnwrapAll unwraps any number of ciphertexts under key, in as few batch
// requests as the API's limits allow. Results come in the order of items;
// zero each Plaintext after use. On a failed request it returns the results
// so far and the error.
func (c *Client) UnwrapAll(ctx context.Context, key string, items []api.CiphertextItem) ([]api.UnwrapResult, error) {
	out := make([]api.UnwrapResult, 0, len(items))
	for _, r := range split(len(items), func(i int) int {
		return len(items[i].Ciphertext) + base64.StdEncoding.EncodedLen(len(items[i].AAD))
	}) {
		res, err := c.UnwrapBatch(ctx, key, items[r[0]:r[1]])
		if err != nil {
			return out, err
		}
		out = append(out, res...)
	}
	return out, nil
}

// RewrapAll rewraps any number of ciphertexts under key's latest version
// (for re-encrypting a table after a rotation).
func (c *Client) RewrapAll(ctx context.Context, key string, items []api.CiphertextItem) ([]api.WrapResult, error) {
	out := make([]api.WrapResult, 0, len(items))
	for _, r := range split(len(items), func(i int) int {
		return len(items[i].Ciphertext) + base64.StdEncoding.EncodedLen(len(items[i].AAD))
	}) {
		res, err := c.RewrapBatch(ctx, key, items[r[0]:r[1]])
		if err != nil {
			return out, err
		}
		out = append(out, res...)
	}
	return out, nil
}
