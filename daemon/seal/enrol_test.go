package seal

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/keystore"
)

func testToken(id string) string {
	return keystore.TokenPrefix + id + "-" + strings.Repeat("Q", 43)
}

// TestEnrol_RootKeyBoundToNodeTokenAndKey: the root key sent for one node
// id, token id or one-time key opens for no other; a tampered answer is
// refused; each failure leaves the node sealed and its blob untouched. The
// right answer is sealed with the device (the blob replaced) and unseals.
func TestEnrol_RootKeyBoundToNodeTokenAndKey(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, true)
	m.mustInit(t, 3, 2)
	blob := filepath.Join(m.dir, "seal-blob.json")
	// The serving side runs on an unsealed node; the same Manager plays
	// both sides (the bindings, not the transport, are under test).
	tok := testToken("0123456789abcdef")
	e, err := m.NewEnrolment(tok)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Public) != 1216 || e.TokenID != "0123456789abcdef" {
		t.Fatalf("enrolment key %d bytes, token id %q", len(e.Public), e.TokenID)
	}
	good, err := m.EncryptRootForEnrol("n1", e.TokenID, e.Public)
	if err != nil {
		t.Fatal(err)
	}
	otherNode, _ := m.EncryptRootForEnrol("n2", e.TokenID, e.Public)
	otherToken, _ := m.EncryptRootForEnrol("n1", "fedcba9876543210", e.Public)
	e2, _ := m.NewEnrolment(tok)
	otherKey, _ := m.EncryptRootForEnrol("n1", e.TokenID, e2.Public)
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-1] ^= 1
	if _, err := m.EncryptRootForEnrol("n1", e.TokenID, e.Public[:100]); err == nil {
		t.Error("a truncated public key was accepted")
	}

	m.Seal(0)
	os.Remove(blob)
	for name, ct := range map[string][]byte{"another node id": otherNode, "another token": otherToken, "another key": otherKey, "tampered": tampered, "empty": nil} {
		if err := m.CompleteEnrolment(ctx, e, ct); !errors.Is(err, ErrEnrolFailed) {
			t.Errorf("%s: %v, want ErrEnrolFailed", name, err)
		}
		if !m.ks.Sealed() {
			t.Fatalf("%s unsealed the node", name)
		}
		if _, err := os.Stat(blob); err == nil {
			t.Fatalf("%s wrote a blob", name)
		}
	}
	if err := m.CompleteEnrolment(ctx, e, good); err != nil {
		t.Fatal(err)
	}
	if m.ks.Sealed() {
		t.Fatal("still sealed after enrolment")
	}
	// The blob it wrote unseals the next start.
	m.Seal(0)
	m.manualSeal.Store(false)
	m.AutoUnseal(ctx)
	if m.ks.Sealed() {
		t.Fatalf("the enrolled blob does not auto-unseal: %+v", m.status())
	}
}

func TestEnrol_RefusedWithoutDeviceOrWithMalformedToken(t *testing.T) {
	m := newTestManager(t, false)
	m.mustInit(t, 3, 2)
	if _, err := m.NewEnrolment(testToken("0123456789abcdef")); !errors.Is(err, ErrNoDevice) {
		t.Errorf("no device: %v, want ErrNoDevice", err)
	}
	d := newTestManager(t, true)
	for _, tok := range []string{"", "coffer-enrol-", "coffer-enrol-xyz-abc", testToken("0123456789abcdeg"), "x" + testToken("0123456789abcdef")} {
		if _, err := d.NewEnrolment(tok); !errors.Is(err, keystore.ErrInvalidToken) {
			t.Errorf("token %q: %v, want ErrInvalidToken", tok, err)
		}
	}
}
