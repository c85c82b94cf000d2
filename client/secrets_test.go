package client_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/coffer-kms/coffer/client"
)

// TestSecrets drives every secret helper against the real dev node,
// including the typed errors of a cas conflict, a destroyed version and a
// pending deletion.
func TestSecrets(t *testing.T) {
	c := client.NewFromEnv()
	defer c.Close()
	ctx := context.Background()
	const name = "client-test-secret"
	v1 := []byte("first\x00value\n")
	zero := 0
	w, err := c.PutSecret(ctx, name, v1, &zero)
	if err != nil || w.Version != 1 {
		t.Fatalf("put v1: %+v %v", w, err)
	}
	if _, err := c.PutSecret(ctx, name, []byte("x"), &zero); !errors.Is(err, client.ErrVersionConflict) {
		t.Fatalf("cas 0 on an existing secret: %v, want ErrVersionConflict", err)
	}
	one := 1
	if w, err := c.PutSecret(ctx, name, []byte("second"), &one); err != nil || w.Version != 2 {
		t.Fatalf("put v2: %+v %v", w, err)
	}
	got, err := c.GetSecret(ctx, name, 1)
	if err != nil || !bytes.Equal(got.Value, v1) || got.Version != 1 {
		t.Fatalf("get v1: %+v %v", got, err)
	}
	clear(got.Value)
	if got, err := c.GetSecret(ctx, name, 0); err != nil || string(got.Value) != "second" {
		t.Fatalf("get latest: %+v %v", got, err)
	}
	names, err := c.ListSecrets(ctx)
	if err != nil || !slices.Contains(names, name) {
		t.Fatalf("list: %v %v", names, err)
	}
	if m, err := c.SetSecretMaxVersions(ctx, name, 5); err != nil || m.MaxVersions != 5 {
		t.Fatalf("max versions: %+v %v", m, err)
	}
	if _, err := c.DestroySecretVersions(ctx, name, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSecret(ctx, name, 1); !errors.Is(err, client.ErrVersionDestroyed) {
		t.Fatalf("destroyed version: %v, want ErrVersionDestroyed", err)
	}
	m, err := c.SecretMetadata(ctx, name)
	if err != nil || m.LatestVersion != 2 || !m.Versions[0].Destroyed {
		t.Fatalf("metadata: %+v %v", m, err)
	}
	if m, err := c.DeleteSecret(ctx, name, "48h"); err != nil || m.DeletionDate == nil {
		t.Fatalf("delete: %+v %v", m, err)
	}
	if _, err := c.GetSecret(ctx, name, 0); !errors.Is(err, client.ErrPendingDeletion) {
		t.Fatalf("read while pending deletion: %v, want ErrPendingDeletion", err)
	}
	if m, err := c.RestoreSecret(ctx, name); err != nil || m.DeletionDate != nil {
		t.Fatalf("restore: %+v %v", m, err)
	}
}
