package keystore

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// TestKeystore_AuditHMAC: the audit HMAC is the documented derivation, the
// same on every node of the cluster, stable across keyring rotation and
// seal/unseal, different for another cluster, and refused while sealed.
func TestKeystore_AuditHMAC(t *testing.T) {
	ks := newKS(t, nil)
	root := mustInit(t, ks)
	h1, err := ks.AuditHMAC([]byte("db=billing"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h1, AuditHMACPrefix) || len(h1) != len(AuditHMACPrefix)+64 {
		t.Fatalf("hmac %q", h1)
	}
	// The documented derivation, from the term-1 key.
	ks.mu.RLock()
	k, _ := hkdf.Key(sha256.New, ks.terms[1].Bytes(), nil, "coffer-audit-hmac-v1", 32)
	ks.mu.RUnlock()
	m := hmac.New(sha256.New, k)
	m.Write([]byte("db=billing"))
	if got, exp := h1, AuditHMACPrefix+hex.EncodeToString(m.Sum(nil)); got != exp {
		t.Fatalf("hmac %s, want %s", got, exp)
	}
	if h, _ := ks.AuditHMAC([]byte("db=other")); h == h1 {
		t.Fatal("different inputs, same hmac")
	}

	// Another node of the same cluster (same replicated state).
	var buf bytes.Buffer
	ks.Snapshot().WriteTo(&buf)
	other := newKS(t, nil)
	if err := other.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := other.AuditHMAC([]byte("db=billing")); !errors.Is(err, ErrSealed) {
		t.Fatalf("sealed: %v", err)
	}
	if err := other.Unseal(root); err != nil {
		t.Fatal(err)
	}
	if h, _ := other.AuditHMAC([]byte("db=billing")); h != h1 {
		t.Fatalf("other node: %s, want %s", h, h1)
	}

	// Keyring rotation and seal/unseal keep it.
	if _, err := ks.RotateKeyring(context.Background()); err != nil {
		t.Fatal(err)
	}
	ks.Seal()
	if err := ks.Unseal(root); err != nil {
		t.Fatal(err)
	}
	if h, _ := ks.AuditHMAC([]byte("db=billing")); h != h1 {
		t.Fatalf("after rotation: %s, want %s", h, h1)
	}

	// Another cluster.
	third := newKS(t, nil)
	mustInit(t, third)
	if h, _ := third.AuditHMAC([]byte("db=billing")); h == h1 {
		t.Fatal("another cluster computes the same hmac")
	}
}

func BenchmarkAuditHMAC(b *testing.B) {
	ks := newKS(b, nil)
	mustInit(b, ks)
	aad := []byte("tenant=42;table=billing")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ks.AuditHMAC(aad); err != nil {
			b.Fatal(err)
		}
	}
}
