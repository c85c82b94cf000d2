package soft

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/hsm/hsmtest"
)

func mustOpen(t *testing.T) (*Device, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sub", "dev-seal.key")
	d, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

func TestOpen_CreatesKeyFile(t *testing.T) {
	d, path := mustOpen(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := st.Mode().Perm(), os.FileMode(0o600); got != exp {
		t.Errorf("key file mode = %04o, want %04o", got, exp)
	}
	if got, exp := st.Size(), int64(KeySize); got != exp {
		t.Errorf("key file size = %d, want %d", got, exp)
	}
	dst, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := dst.Mode().Perm(), os.FileMode(0o700); got != exp {
		t.Errorf("key dir mode = %04o, want %04o", got, exp)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("key dir holds %d entries, want only the key file (temp file left behind?)", len(entries))
	}

	// Reopening loads the same key: a blob sealed before opens after.
	ctx := context.Background()
	aad := hsm.SealAAD("c", "n")
	b, err := d.Seal(ctx, []byte("root key"), aad)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer d2.Close()
	if d2.KeyID() != d.KeyID() {
		t.Errorf("reopened key id %s, want %s", d2.KeyID(), d.KeyID())
	}
	got, err := d2.Unseal(ctx, b, aad)
	if err != nil {
		t.Fatalf("unseal after reopen: %v", err)
	}
	if !bytes.Equal(got, []byte("root key")) {
		t.Error("unseal after reopen returned another secret")
	}
}

func TestOpen_Refuses(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, path string)
		wantErr string
	}{
		{
			name: "group readable",
			setup: func(t *testing.T, path string) {
				writeFile(t, path, make([]byte, KeySize), 0o640)
			},
			wantErr: "has mode 0640, which lets group or others read it; run: chmod 600",
		},
		{
			name: "world readable",
			setup: func(t *testing.T, path string) {
				writeFile(t, path, make([]byte, KeySize), 0o604)
			},
			wantErr: "has mode 0604",
		},
		{
			name: "too short",
			setup: func(t *testing.T, path string) {
				writeFile(t, path, make([]byte, 16), 0o600)
			},
			wantErr: "holds 16 bytes, want 32",
		},
		{
			name: "too long",
			setup: func(t *testing.T, path string) {
				writeFile(t, path, make([]byte, 33), 0o600)
			},
			wantErr: "holds 33 bytes, want 32",
		},
		{
			name: "directory",
			setup: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "is not a regular file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "seal.key")
			tt.setup(t, path)
			d, err := Open(path)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded, want error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Open error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	if _, err := Open(""); err == nil || !strings.Contains(err.Error(), "key_file") {
		t.Errorf("Open(\"\") error = %v, want one naming key_file", err)
	}
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; set it exactly.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestSealUnseal(t *testing.T) {
	d, _ := mustOpen(t)
	other, _ := mustOpen(t)
	ctx := context.Background()
	secret := []byte("0123456789abcdef0123456789abcdef")
	aad := hsm.SealAAD("cluster-1", "node1")

	b, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}
	if b.Kind != "soft" || b.KeyID != d.KeyID() {
		t.Fatalf("blob kind/key = %q/%q, want soft/%s", b.Kind, b.KeyID, d.KeyID())
	}
	if bytes.Contains(b.Data, secret) {
		t.Fatal("blob data contains the secret in clear")
	}
	if got, exp := len(b.Data), 12+len(secret)+16; got != exp {
		t.Fatalf("blob data is %d bytes, want nonce+ct+tag = %d", got, exp)
	}
	b2, _ := d.Seal(ctx, secret, aad)
	if bytes.Equal(b.Data[:12], b2.Data[:12]) {
		t.Fatal("two seals reused a nonce")
	}

	// Refusals with soft's own layout (nonce || ciphertext || tag); the
	// generic ones are in the conformance suite.
	tampered := func(i int) hsm.Blob {
		c := b
		c.Data = bytes.Clone(b.Data)
		c.Data[i] ^= 1
		return c
	}
	hsmtest.CheckRefusals(t, d, []hsmtest.Refusal{
		{Name: "tampered nonce", Blob: tampered(0), AAD: aad},
		{Name: "tampered ciphertext", Blob: tampered(20), AAD: aad},
		{Name: "truncated below nonce and tag", Blob: hsm.Blob{Kind: "soft", Data: b.Data[:27]}, AAD: aad},
	})
	hsmtest.CheckRefusals(t, other, []hsmtest.Refusal{
		{Name: "other key, key id kept", Blob: b, AAD: aad},
		{Name: "other key, no key id", Blob: hsm.Blob{Kind: "soft", Data: b.Data}, AAD: aad},
	})
}

// TestConformance runs the hsm.Device contract's suite on the soft device.
func TestConformance(t *testing.T) {
	open := func(t *testing.T) hsm.Device { d, _ := mustOpen(t); return d }
	hsmtest.Run(t, hsmtest.Config{Open: open, Other: open})
}

// TestClose_ZeroesKey: Close zeroes the key (the rest of Close's contract
// is in the conformance suite).
func TestClose_ZeroesKey(t *testing.T) {
	d, _ := mustOpen(t)
	key := d.key
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(key, make([]byte, KeySize)) {
		t.Error("Close did not zero the key")
	}
}

func TestHealth_KeyFileGone(t *testing.T) {
	d, path := mustOpen(t)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := d.Health(context.Background()); !errors.Is(err, hsm.ErrDeviceUnavailable) {
		t.Fatalf("Health = %v, want ErrDeviceUnavailable", err)
	}
}

func TestOpen_ConcurrentCreateAgrees(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seal.key")
	const n = 4
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := Open(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = d.KeyID()
			d.Close()
		}()
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if ids[i] != ids[0] {
			t.Fatalf("concurrent Open created different keys: %v", ids)
		}
	}
}
