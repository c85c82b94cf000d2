package keystore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
)

// TestKeystore_XAESKey: an xaes256-gcm key wraps with 24-byte nonces,
// unwraps its own ciphertexts, refuses altered or truncated ones and
// another type's, and is never counted against a nonce budget.
func TestKeystore_XAESKey(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	if k := mustCreate(t, ks, "x", api.KeyTypeXAES256GCM); k.Type != api.KeyTypeXAES256GCM {
		t.Fatalf("type %q", k.Type)
	}
	mustCreate(t, ks, "g", "")
	ct, v := wrap1(t, ks, "x", []byte("secret"), []byte("ctx"))
	_, raw, err := ParseCiphertext(ct)
	if err != nil || v != 1 || len(raw) != 24+len("secret")+16 {
		t.Fatalf("xaes ciphertext: %d bytes, version %d, %v", len(raw), v, err)
	}
	if pt, err := unwrap1(ks, "x", ct, []byte("ctx")); err != nil || string(pt) != "secret" {
		t.Fatalf("unwrap = %q, %v", pt, err)
	}
	if _, err := unwrap1(ks, "x", ct, []byte("other")); err == nil {
		t.Fatal("wrong aad opened")
	}
	short := FormatCiphertext(1, raw[:30]) // long enough for a 96-bit type, not for xaes
	if _, err := unwrap1(ks, "x", short, nil); err == nil || !strings.Contains(err.Error(), "too short for a xaes256-gcm key") {
		t.Fatalf("truncated xaes ciphertext: %v", err)
	}
	gct, _ := wrap1(t, ks, "g", []byte("secret"), nil)
	if _, err := unwrap1(ks, "x", gct, nil); err == nil {
		t.Fatal("an aes256-gcm ciphertext opened under an xaes key")
	}
	for _, c := range ks.EncryptionCounts() {
		if c.Key == "x" {
			t.Fatalf("xaes key counted: %+v", c)
		}
	}
}

// TestKeystore_NonceBudget: wraps, rewraps and data keys of a 96-bit key
// are counted per version; reports from two nodes are summed; the key is
// due once the sum reaches the budget, rotates once, and its old
// ciphertexts still open.
func TestKeystore_NonceBudget(t *testing.T) {
	ctx := context.Background()
	d := &direct{}
	ks := New(Config{Proposer: d, NonceBudget: 10})
	d.ks = ks
	mustInit(t, ks)
	mustCreate(t, ks, "k", api.KeyTypeChaCha20Poly1305)
	var cts []string
	for i := 0; i < 4; i++ {
		ct, _ := wrap1(t, ks, "k", []byte("p"), nil)
		cts = append(cts, ct)
	}
	if _, err := ks.DataKey("k", 32, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Rewrap("k", []Item{{Ciphertext: cts[0]}}); err != nil {
		t.Fatal(err)
	}
	cs := ks.EncryptionCounts()
	if len(cs) != 1 || cs[0] != (EncryptionCount{Key: "k", Version: 1, Count: 6}) {
		t.Fatalf("counts %+v, want k v1 = 6", cs)
	}
	if err := ks.ReportEncryptions(ctx, "n1", "k", 1, 6); err != nil {
		t.Fatal(err)
	}
	if due := ks.NonceBudgetDue(); len(due) != 0 {
		t.Fatalf("due at 6 of 10: %v", due)
	}
	// A stale or lower report changes nothing.
	if err := ks.ReportEncryptions(ctx, "n1", "k", 1, 3); err != nil {
		t.Fatal(err)
	}
	// Another node's report is added.
	if err := ks.ReportEncryptions(ctx, "n2", "k", 1, 4); err != nil {
		t.Fatal(err)
	}
	if due := ks.NonceBudgetDue(); len(due) != 1 || due[0] != "k" {
		t.Fatalf("due at 6+4 of 10: %v", due)
	}
	ok, n, err := ks.RotateIfNonceBudget(ctx, "k")
	if err != nil || !ok || n != 10 {
		t.Fatalf("RotateIfNonceBudget = %v, %d, %v", ok, n, err)
	}
	if k, _ := ks.GetKey("k"); k.LatestVersion != 2 {
		t.Fatalf("latest version %d after the budget rotation", k.LatestVersion)
	}
	if ok, _, _ := ks.RotateIfNonceBudget(ctx, "k"); ok || len(ks.NonceBudgetDue()) != 0 {
		t.Fatal("rotated twice for one budget")
	}
	// A late report about version 1 does not count towards version 2.
	if err := ks.ReportEncryptions(ctx, "n3", "k", 1, 100); err != nil {
		t.Fatal(err)
	}
	if len(ks.NonceBudgetDue()) != 0 {
		t.Fatal("a report about the old version made the new one due")
	}
	for _, ct := range cts {
		if pt, err := unwrap1(ks, "k", ct, nil); err != nil || string(pt) != "p" {
			t.Fatalf("old ciphertext after the rotation: %q, %v", pt, err)
		}
	}
	_, v := wrap1(t, ks, "k", []byte("p"), nil)
	if cs := ks.EncryptionCounts(); v != 2 || len(cs) != 1 || cs[0] != (EncryptionCount{Key: "k", Version: 2, Count: 1}) {
		t.Fatalf("after rotation: version %d, counts %+v (version 1's count should be forgotten)", v, cs)
	}
	// Counts survive a seal and can be restored (never lowered).
	ks.Seal()
	ks.RestoreEncryptionCounts([]EncryptionCount{{Key: "k", Version: 2, Count: 7}, {Key: "k", Version: 2, Count: 3}})
	if cs := ks.EncryptionCounts(); len(cs) != 1 || cs[0].Count != 7 {
		t.Fatalf("restored counts %+v, want 7", cs)
	}
}

// TestNonceCounters_OnlyForUsedVersions: a node holds a counter only for a
// version it encrypted under (or restored at start), not one per key and
// version ever loaded (issue 15: that was 300,000 map entries for 100,000
// keys of 3 versions); a count survives the record's reloads and is
// counted again after a rotation under the new version.
func TestNonceCounters_OnlyForUsedVersions(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		name := fmt.Sprintf("k%d", i)
		mustCreate(t, ks, name, "")
		for r := 0; r < 2; r++ {
			if _, err := ks.RotateKey(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	counters := func() int { ks.nonces.mu.Lock(); defer ks.nonces.mu.Unlock(); return len(ks.nonces.m) }
	if n := counters(); n != 0 {
		t.Fatalf("%d counters for keys that never encrypted", n)
	}
	wrap1(t, ks, "k7", []byte("x"), nil)
	wrap1(t, ks, "k7", []byte("x"), nil)
	hour := "1h"
	if _, err := ks.UpdateKey(ctx, "k7", nil, &hour); err != nil { // a reload, same version
		t.Fatal(err)
	}
	wrap1(t, ks, "k7", []byte("x"), nil)
	if got := ks.EncryptionCounts(); len(got) != 1 || got[0] != (EncryptionCount{Key: "k7", Version: 3, Count: 3}) {
		t.Fatalf("counts %+v, want k7 v3: 3", got)
	}
	if _, err := ks.RotateKey(ctx, "k7"); err != nil {
		t.Fatal(err)
	}
	wrap1(t, ks, "k7", []byte("x"), nil)
	if got := ks.EncryptionCounts(); len(got) != 1 || got[0] != (EncryptionCount{Key: "k7", Version: 4, Count: 1}) {
		t.Fatalf("counts after rotation %+v, want k7 v4: 1", got)
	}
	if n := counters(); n != 1 {
		t.Fatalf("%d counters, want 1", n)
	}
}
