package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func putS(t *testing.T, ks *Keystore, name, value string, cas *int) int {
	t.Helper()
	r, err := ks.PutSecret(context.Background(), name, []byte(value), cas)
	if err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
	return r.Version
}

func getS(ks *Keystore, name string, v int) (string, int, error) {
	sv, err := ks.GetSecret(name, v)
	if err != nil {
		return "", 0, err
	}
	defer sv.Destroy()
	return string(sv.Value.Bytes()), sv.Version, nil
}

func intp(i int) *int { return &i }

func TestSecretVersionsAndCas(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	ctx := context.Background()
	bin := "pa\x00ss\nword"
	if v := putS(t, ks, "db-password", bin, intp(0)); v != 1 {
		t.Fatalf("first version = %d", v)
	}
	if _, err := ks.PutSecret(ctx, "db-password", []byte("x"), intp(0)); !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("cas 0 on existing secret: %v", err)
	}
	if _, err := ks.PutSecret(ctx, "other", []byte("x"), intp(3)); !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("cas 3 on missing secret: %v", err)
	}
	if v := putS(t, ks, "db-password", "second", intp(1)); v != 2 {
		t.Fatalf("second version = %d", v)
	}
	if _, err := ks.PutSecret(ctx, "db-password", []byte("x"), intp(1)); !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("stale cas: %v", err)
	}
	if got, v, err := getS(ks, "db-password", 0); err != nil || got != "second" || v != 2 {
		t.Fatalf("latest = %q v%d %v", got, v, err)
	}
	if got, _, err := getS(ks, "db-password", 1); err != nil || got != bin {
		t.Fatalf("v1 = %q %v", got, err)
	}
	if _, _, err := getS(ks, "db-password", 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("v3: %v", err)
	}
	if _, _, err := getS(ks, "nope", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	for _, bad := range []string{"", "a/b", ".x", strings.Repeat("a", 129)} {
		if _, err := ks.PutSecret(ctx, bad, []byte("x"), nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	if _, err := ks.PutSecret(ctx, "e", nil, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty value: %v", err)
	}
	if _, err := ks.PutSecret(ctx, "big", make([]byte, 64<<10+1), nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too large: %v", err)
	}
	if _, err := ks.PutSecret(ctx, "big", make([]byte, 64<<10), nil); err != nil {
		t.Errorf("64 KiB: %v", err)
	}
	names, _ := ks.ListSecrets()
	if strings.Join(names, ",") != "big,db-password" {
		t.Fatalf("list = %v", names)
	}
}

func TestSecretMaxVersionsAndDestroy(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	ctx := context.Background()
	for i := 1; i <= 12; i++ {
		putS(t, ks, "s", "v"+string(rune('a'+i)), nil)
	}
	m, err := ks.SecretMetadata("s")
	if err != nil {
		t.Fatal(err)
	}
	if m.LatestVersion != 12 || m.MaxVersions != 10 || len(m.Versions) != 10 || m.Versions[0].Version != 3 {
		t.Fatalf("metadata after 12 writes: %+v", m)
	}
	if _, _, err := getS(ks, "s", 2); !errors.Is(err, ErrVersionDestroyed) {
		t.Fatalf("trimmed version: %v", err)
	}
	if _, _, err := getS(ks, "s", 3); err != nil {
		t.Fatalf("oldest kept: %v", err)
	}
	m, err = ks.UpdateSecretMetadata(ctx, "s", 2)
	if err != nil || len(m.Versions) != 2 || m.Versions[0].Version != 11 {
		t.Fatalf("max_versions 2: %+v %v", m, err)
	}
	for _, bad := range []int{0, 101} {
		if _, err := ks.UpdateSecretMetadata(ctx, "s", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("max_versions %d: %v", bad, err)
		}
	}
	m, err = ks.DestroySecretVersions(ctx, "s", []int{11})
	if err != nil || !m.Versions[0].Destroyed || m.Versions[1].Destroyed {
		t.Fatalf("destroy: %+v %v", m, err)
	}
	if _, _, err := getS(ks, "s", 11); !errors.Is(err, ErrVersionDestroyed) {
		t.Fatalf("destroyed read: %v", err)
	}
	if _, _, err := getS(ks, "s", 12); err != nil {
		t.Fatalf("v12: %v", err)
	}
	if _, err := ks.DestroySecretVersions(ctx, "s", []int{13}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("destroy unknown version: %v", err)
	}
	// The destroyed value is gone from the replicated state, not only hidden.
	ks.mu.RLock()
	for _, v := range ks.secrets["s"].meta.Versions {
		if v.Version == 11 && len(v.Value) != 0 {
			t.Error("destroyed version still holds a sealed value")
		}
	}
	ks.mu.RUnlock()
}

func TestSecretDeletionWindowRestorePurge(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ks := newKS(t, clk)
	mustInit(t, ks)
	ctx := context.Background()
	putS(t, ks, "s", "old", nil)
	putS(t, ks, "s", "value", nil)
	if _, err := ks.DeleteSecret(ctx, "s", time.Hour); !errors.Is(err, ErrInvalid) {
		t.Fatalf("1h window: %v", err)
	}
	m, err := ks.DeleteSecret(ctx, "s", 24*time.Hour)
	if err != nil || m.DeletionDate == nil || !m.DeletionDate.Equal(clk.now().Add(24*time.Hour)) {
		t.Fatalf("delete: %+v %v", m, err)
	}
	if _, _, err := getS(ks, "s", 0); !errors.Is(err, ErrSecretPendingDeletion) {
		t.Fatalf("read while pending: %v", err)
	}
	if _, err := ks.PutSecret(ctx, "s", []byte("x"), nil); !errors.Is(err, ErrSecretPendingDeletion) {
		t.Fatalf("write while pending: %v", err)
	}
	if _, err := ks.SecretMetadata("s"); err != nil {
		t.Fatalf("metadata while pending: %v", err)
	}
	if _, err := ks.UpdateSecretMetadata(ctx, "s", 3); !errors.Is(err, ErrSecretPendingDeletion) {
		t.Fatalf("metadata write while pending: %v", err)
	}
	if _, err := ks.DestroySecretVersions(ctx, "s", []int{1}); err != nil {
		t.Fatalf("destroy while pending: %v", err)
	}
	if _, err := ks.RestoreSecret(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if got, _, err := getS(ks, "s", 0); err != nil || got != "value" {
		t.Fatalf("after restore: %q %v", got, err)
	}
	if _, err := ks.DeleteSecret(ctx, "s", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	clk.add(23 * time.Hour)
	if due := ks.DueSecretPurges(clk.now()); len(due) != 0 {
		t.Fatalf("due early: %v", due)
	}
	if ok, err := ks.PurgeSecret(ctx, "s"); ok || err != nil {
		t.Fatalf("early purge: %v %v", ok, err)
	}
	clk.add(time.Hour)
	if due := ks.DueSecretPurges(clk.now()); len(due) != 1 {
		t.Fatalf("due: %v", due)
	}
	if ok, err := ks.PurgeSecret(ctx, "s"); !ok || err != nil {
		t.Fatalf("purge: %v %v", ok, err)
	}
	if _, err := ks.SecretMetadata("s"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after purge: %v", err)
	}
	if _, ok := ks.Snapshot().Entries[secretPath("s")]; ok {
		t.Fatal("purged secret still in the replicated state")
	}
	// The name can be used again, from version 1.
	if v := putS(t, ks, "s", "new", intp(0)); v != 1 {
		t.Fatalf("recreated version %d", v)
	}
}

// A sealed value moved to another secret or version does not open: the AAD
// binds name and version.
func TestSecretValueBoundToNameAndVersion(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	putS(t, ks, "a", "alpha", nil)
	putS(t, ks, "a", "alpha2", nil)
	putS(t, ks, "b", "beta", nil)
	ks.mu.Lock()
	a, b := ks.secrets["a"], ks.secrets["b"]
	b.meta.Versions[0].Value = a.meta.Versions[0].Value // a v1 into b v1
	a.meta.Versions[1].Value = a.meta.Versions[0].Value // a v1 into a v2
	ks.mu.Unlock()
	if _, _, err := getS(ks, "b", 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("value moved to another name: %v", err)
	}
	if _, _, err := getS(ks, "a", 2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("value moved to another version: %v", err)
	}
}

// Values are never in clear in the replicated state or a snapshot, and a
// snapshot restored into another keystore (same root) reads them back; a
// sealed keystore answers ErrSealed.
func TestSecretSnapshotAndSeal(t *testing.T) {
	ks := newKS(t, nil)
	root := mustInit(t, ks)
	marker := "S3CRET-MARKER-\x00-value"
	putS(t, ks, "s", marker, nil)
	var buf bytes.Buffer
	if _, err := ks.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte("S3CRET-MARKER")) {
		t.Fatal("secret value in clear in the snapshot")
	}
	var snap Snapshot
	if err := json.Unmarshal(buf.Bytes(), &snap); err != nil {
		t.Fatal(err)
	}
	ks2 := newKS(t, nil)
	if err := ks2.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	if err := ks2.Unseal(root); err != nil {
		t.Fatal(err)
	}
	if got, _, err := getS(ks2, "s", 0); err != nil || got != marker {
		t.Fatalf("after restore: %v", err)
	}
	ks2.Seal()
	if _, _, err := getS(ks2, "s", 0); !errors.Is(err, ErrSealed) {
		t.Fatalf("sealed read: %v", err)
	}
	if _, err := ks2.ListSecrets(); !errors.Is(err, ErrSealed) {
		t.Fatalf("sealed list: %v", err)
	}
	// A keyring rotation leaves old values readable; new ones use the new term.
	if _, err := ks.RotateKeyring(context.Background()); err != nil {
		t.Fatal(err)
	}
	putS(t, ks, "s", "after-rotate", nil)
	if got, _, err := getS(ks, "s", 1); err != nil || got != marker {
		t.Fatalf("old term value: %v", err)
	}
	if got, _, err := getS(ks, "s", 2); err != nil || got != "after-rotate" {
		t.Fatalf("new term value: %q %v", got, err)
	}
}
