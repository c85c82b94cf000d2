package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/coffer-kms/coffer/api"
)

// Secrets (docs/api.md, "Secrets"; docs/secrets.md): named, versioned
// values kept encrypted in the cluster. A write is retried only where
// cofferd said it did nothing (see the package comment); a value comes back
// in a buffer the caller owns and should zero.

// PutSecret stores value as the secret's next version (the first write
// creates the secret). With cas non-nil the write succeeds only if *cas is
// the latest version (0: the secret must not exist yet); otherwise
// errors.Is(err, ErrVersionConflict).
func (c *Client) PutSecret(ctx context.Context, name string, value []byte, cas *int) (*api.SecretWriteResponse, error) {
	var out api.SecretWriteResponse
	if _, err := c.Do(ctx, http.MethodPut, api.SecretPath(name), api.PutSecretRequest{Value: value, Cas: cas}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetSecret returns a version of the secret (0: the latest). The caller
// owns Value and should zero it when done. A destroyed version is
// ErrVersionDestroyed, a secret pending deletion ErrPendingDeletion.
func (c *Client) GetSecret(ctx context.Context, name string, version int) (*api.SecretValue, error) {
	p := api.SecretPath(name)
	if version != 0 {
		p += "?version=" + strconv.Itoa(version)
	}
	var out api.SecretValue
	if _, err := c.Do(ctx, http.MethodGet, p, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListSecrets returns the names of the secrets the caller may read.
func (c *Client) ListSecrets(ctx context.Context) ([]string, error) {
	var out api.SecretList
	if _, err := c.Do(ctx, http.MethodGet, api.PathSecrets, nil, &out); err != nil {
		return nil, err
	}
	return out.Secrets, nil
}

func (c *Client) secretMeta(ctx context.Context, method, path string, body any) (*api.SecretMetadata, error) {
	var out api.SecretMetadata
	if _, err := c.Do(ctx, method, path, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SecretMetadata returns the secret's versions and settings, never a value.
func (c *Client) SecretMetadata(ctx context.Context, name string) (*api.SecretMetadata, error) {
	return c.secretMeta(ctx, http.MethodGet, api.SecretPath(name, "metadata"), nil)
}

// SetSecretMaxVersions changes how many versions are kept (1–100); the
// oldest beyond it are destroyed.
func (c *Client) SetSecretMaxVersions(ctx context.Context, name string, n int) (*api.SecretMetadata, error) {
	return c.secretMeta(ctx, http.MethodPatch, api.SecretPath(name, "metadata"), api.UpdateSecretMetadataRequest{MaxVersions: &n})
}

// DestroySecretVersions erases those versions' values for good.
func (c *Client) DestroySecretVersions(ctx context.Context, name string, versions ...int) (*api.SecretMetadata, error) {
	return c.secretMeta(ctx, http.MethodPost, api.SecretPath(name, "destroy"), api.DestroySecretRequest{Versions: versions})
}

// DeleteSecret schedules the secret's erasure after pendingWindow, a Go
// duration string of at least 24h; "" lets cofferd apply its default
// (168h).
func (c *Client) DeleteSecret(ctx context.Context, name, pendingWindow string) (*api.SecretMetadata, error) {
	p := api.SecretPath(name)
	if pendingWindow != "" {
		p += "?pending_window=" + url.QueryEscape(pendingWindow)
	}
	return c.secretMeta(ctx, http.MethodDelete, p, nil)
}

// RestoreSecret cancels a pending deletion.
func (c *Client) RestoreSecret(ctx context.Context, name string) (*api.SecretMetadata, error) {
	return c.secretMeta(ctx, http.MethodPost, api.SecretPath(name, "restore"), nil)
}
