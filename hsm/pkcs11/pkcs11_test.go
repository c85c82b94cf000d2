package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/hsm/hsmtest"
	softhsmtest "github.com/coffer-kms/coffer/softhsm-test"
)

// storeDir is this test process's SoftHSM token store. SoftHSM reads
// SOFTHSM2_CONF once per C_Initialize, so it is set once, here; every test
// adds its tokens to the store under labels of its own before it opens a
// device (the library is finalised whenever no device is open, so the next
// Open rescans the store).
var storeDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "coffer-pkcs11-test-")
	if err != nil {
		log.Fatal(err)
	}
	conf, err := softhsmtest.WriteConf(dir)
	if err != nil {
		log.Fatal(err)
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	storeDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var labelSeq atomic.Int64

// newToken adds a token with a label unique in the store.
func newToken(t testing.TB) *softhsmtest.Token {
	t.Helper()
	return softhsmtest.AddToken(t, storeDir, fmt.Sprintf("coffer-t%d", labelSeq.Add(1)))
}

func config(tk *softhsmtest.Token, keyLabel string, generate bool) Config {
	return Config{
		Library:     tk.Library,
		TokenLabel:  tk.Label,
		PIN:         []byte(tk.PIN),
		KeyLabel:    keyLabel,
		GenerateKey: generate,
	}
}

func mustOpen(t testing.TB, cfg Config) *Device {
	t.Helper()
	d, err := Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

var randomBytes = hsmtest.RandomBytes

// withSession runs f on a session of d's, as the package itself would.
func withSession(t testing.TB, d *Device, f func(s p11.SessionHandle)) {
	t.Helper()
	d.lib.mu.RLock()
	defer d.lib.mu.RUnlock()
	s, _, err := d.getSession()
	if err != nil {
		t.Fatalf("getSession: %v", err)
	}
	f(s.h)
	d.putSession(s, false)
}

func TestSeal_RoundTrip(t *testing.T) {
	tk := newToken(t)
	d := mustOpen(t, config(tk, "coffer-seal", true))
	ctx := context.Background()
	tests := []struct {
		name   string
		secret []byte
		aad    []byte
	}{
		{"root key", randomBytes(t, 32), hsm.SealAAD("cluster-1", "node1")},
		{"no aad", randomBytes(t, 32), nil},
		{"one byte", []byte{7}, []byte("a")},
		{"empty secret", []byte{}, []byte("a")},
		{"large", randomBytes(t, 4096), hsm.SealAAD("c", "n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := d.Seal(ctx, tt.secret, tt.aad)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if b.Kind != Kind || b.KeyID != "coffer-seal" {
				t.Errorf("blob kind %q key id %q, want %q %q", b.Kind, b.KeyID, Kind, "coffer-seal")
			}
			if b.Meta[MetaTokenLabel] != tk.Label || b.Meta[MetaMechanism] != "CKM_AES_GCM" {
				t.Errorf("blob meta = %v", b.Meta)
			}
			if got, exp := len(b.Data), ivSize+len(tt.secret)+tagSize; got != exp {
				t.Errorf("len(Data) = %d, want %d (iv || ciphertext || tag)", got, exp)
			}
			if len(tt.secret) >= 16 && bytes.Contains(b.Data, tt.secret) {
				t.Error("blob contains the secret in clear")
			}
			got, err := d.Unseal(ctx, b, tt.aad)
			if err != nil {
				t.Fatalf("Unseal: %v", err)
			}
			if !bytes.Equal(got, tt.secret) {
				t.Error("Unseal returned another secret")
			}
		})
	}
}

func TestSeal_FreshIV(t *testing.T) {
	d := mustOpen(t, config(newToken(t), "k", true))
	ctx := context.Background()
	secret, aad := randomBytes(t, 32), hsm.SealAAD("c", "n")
	seen := map[string]bool{}
	ivs := map[string]bool{}
	for i := 0; i < 4; i++ {
		b, err := d.Seal(ctx, secret, aad)
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(b.Data)] || ivs[string(b.Data[:ivSize])] {
			t.Fatal("two seals of the same secret produced the same IV or blob")
		}
		seen[string(b.Data)], ivs[string(b.Data[:ivSize])] = true, true
	}
}

func TestUnseal_Refuses(t *testing.T) {
	tk := newToken(t)
	other := newToken(t) // same key label, another token: another key
	d := mustOpen(t, config(tk, "k", true))
	d2 := mustOpen(t, config(other, "k", true))
	ctx := context.Background()
	secret, aad := randomBytes(t, 32), hsm.SealAAD("c", "n")
	b, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}
	fromOther, err := d2.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) hsm.Blob {
		c := b
		c.Data = bytes.Clone(b.Data)
		c.Data[i] ^= 1
		return c
	}
	with := func(f func(*hsm.Blob)) hsm.Blob {
		c := b
		c.Data = bytes.Clone(b.Data)
		c.Meta = map[string]string{MetaTokenLabel: tk.Label, MetaMechanism: Mechanism}
		f(&c)
		return c
	}
	hsmtest.CheckRefusals(t, d, []hsmtest.Refusal{
		{Name: "other aad (other node)", Blob: b, AAD: hsm.SealAAD("c", "n2"), WantErr: "does not open with key"},
		{Name: "no aad", Blob: b, AAD: nil, WantErr: "does not open with key"},
		{Name: "iv flipped", Blob: flip(0), AAD: aad, WantErr: "does not open with key"},
		{Name: "ciphertext flipped", Blob: flip(ivSize), AAD: aad, WantErr: "does not open with key"},
		{Name: "tag flipped", Blob: flip(len(b.Data) - 1), AAD: aad, WantErr: "does not open with key"},
		{Name: "truncated", Blob: with(func(c *hsm.Blob) { c.Data = c.Data[:ivSize+tagSize-1] }), AAD: aad, WantErr: "truncated"},
		{Name: "tag cut", Blob: with(func(c *hsm.Blob) { c.Data = c.Data[:len(c.Data)-4] }), AAD: aad, WantErr: "does not open with key"},
		{Name: "empty", Blob: with(func(c *hsm.Blob) { c.Data = nil }), AAD: aad, WantErr: "truncated"},
		{Name: "other kind", Blob: with(func(c *hsm.Blob) { c.Kind = "tpm" }), AAD: aad, WantErr: `sealed by a "tpm" device`},
		{Name: "other key label", Blob: with(func(c *hsm.Blob) { c.KeyID = "old-key" }), AAD: aad, WantErr: `key labelled "old-key"`},
		{Name: "other mechanism", Blob: with(func(c *hsm.Blob) { c.Meta[MetaMechanism] = "CKM_AES_CBC_PAD" }), AAD: aad, WantErr: "CKM_AES_CBC_PAD"},
		{Name: "other token's key", Blob: fromOther, AAD: aad, WantErr: fmt.Sprintf("it was sealed on token %q", other.Label)},
	})
	// The device keeps working after refusals.
	if _, err := d.Unseal(ctx, b, aad); err != nil {
		t.Fatalf("Unseal of the good blob after refusals: %v", err)
	}
}

func TestOpen_GeneratesKey(t *testing.T) {
	tk := newToken(t)
	ctx := context.Background()
	cfg := config(tk, "coffer-seal", true)
	d := mustOpen(t, cfg)
	secret, aad := randomBytes(t, 32), hsm.SealAAD("c", "n")
	b, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("attributes from inside", func(t *testing.T) {
		withSession(t, d, func(s p11.SessionHandle) {
			attrs, err := d.lib.ctx.GetAttributeValue(s, d.key, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_TOKEN, nil),
				p11.NewAttribute(p11.CKA_PRIVATE, nil),
				p11.NewAttribute(p11.CKA_SENSITIVE, nil),
				p11.NewAttribute(p11.CKA_ALWAYS_SENSITIVE, nil),
				p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
				p11.NewAttribute(p11.CKA_NEVER_EXTRACTABLE, nil),
				p11.NewAttribute(p11.CKA_ENCRYPT, nil),
				p11.NewAttribute(p11.CKA_DECRYPT, nil),
				p11.NewAttribute(p11.CKA_WRAP, nil),
				p11.NewAttribute(p11.CKA_SIGN, nil),
				p11.NewAttribute(p11.CKA_VERIFY, nil),
				p11.NewAttribute(p11.CKA_DERIVE, nil),
				p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
				p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
				p11.NewAttribute(p11.CKA_ID, nil),
				p11.NewAttribute(p11.CKA_LABEL, nil),
			})
			if err != nil {
				t.Fatal(err)
			}
			want := []bool{true, true, true, true, false, true, true, true, false, false, false, false}
			names := []string{"TOKEN", "PRIVATE", "SENSITIVE", "ALWAYS_SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE", "ENCRYPT", "DECRYPT", "WRAP", "SIGN", "VERIFY", "DERIVE"}
			for i, w := range want {
				if got := attrBool(attrs[i].Value); got != w {
					t.Errorf("CKA_%s = %v, want %v", names[i], got, w)
				}
			}
			if n := attrUlong(attrs[12].Value); n != 32 {
				t.Errorf("CKA_VALUE_LEN = %d, want 32", n)
			}
			if kt := attrUlong(attrs[13].Value); kt != p11.CKK_AES {
				t.Errorf("CKA_KEY_TYPE = %d, want CKK_AES", kt)
			}
			if string(attrs[14].Value) != "coffer-seal" || string(attrs[15].Value) != "coffer-seal" {
				t.Errorf("CKA_ID %q, CKA_LABEL %q, want both %q", attrs[14].Value, attrs[15].Value, "coffer-seal")
			}
			_, err = d.lib.ctx.GetAttributeValue(s, d.key, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
			if !isCode(err, p11.CKR_ATTRIBUTE_SENSITIVE) {
				t.Errorf("reading CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
		})
	})

	t.Run("attributes from outside (pkcs11-tool)", func(t *testing.T) {
		out := pkcs11Tool(t, tk, "--login", "--pin", tk.PIN, "--list-objects", "--type", "secrkey")
		for _, want := range []string{"AES length 32", "coffer-seal", "sensitive", "always sensitive", "never extractable", "local"} {
			if !strings.Contains(out, want) {
				t.Errorf("pkcs11-tool output lacks %q:\n%s", want, out)
			}
		}
		if n := strings.Count(out, "Secret Key Object"); n != 1 {
			t.Errorf("pkcs11-tool lists %d secret keys, want 1:\n%s", n, out)
		}
		for _, line := range strings.Split(out, "\n") {
			line = strings.TrimSpace(line)
			if u, ok := strings.CutPrefix(line, "Usage:"); ok && strings.TrimSpace(u) != "encrypt, decrypt" {
				t.Errorf("key usage %q, want only encrypt, decrypt", strings.TrimSpace(u))
			}
		}
	})

	t.Run("reopen finds the same key", func(t *testing.T) {
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		d2 := mustOpen(t, cfg)
		got, err := d2.Unseal(ctx, b, aad)
		if err != nil {
			t.Fatalf("Unseal after reopening: %v", err)
		}
		if !bytes.Equal(got, secret) {
			t.Error("Unseal after reopening returned another secret")
		}
		if out := pkcs11Tool(t, tk, "--login", "--pin", tk.PIN, "--list-objects", "--type", "secrkey"); strings.Count(out, "Secret Key Object") != 1 {
			t.Errorf("a second Open generated another key:\n%s", out)
		}
	})
}

// pkcs11Tool runs OpenSC's pkcs11-tool on tk.
func pkcs11Tool(t *testing.T, tk *softhsmtest.Token, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		msg := "pkcs11-tool is missing: install softhsm2 opensc (make deps)"
		if os.Getenv("COFFER_SKIP_DEVICE_TESTS") == "1" {
			t.Skip(msg)
		}
		t.Fatal(msg)
	}
	cmd := exec.Command("pkcs11-tool", append([]string{"--module", tk.Library, "--token-label", tk.Label}, args...)...)
	cmd.Env = append(os.Environ(), tk.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	return string(out)
}

func TestOpen_Errors(t *testing.T) {
	tk := newToken(t)
	notModule := filepath.Join(t.TempDir(), "libnot-pkcs11.so")
	if err := os.WriteFile(notModule, []byte("not a shared object"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := config(tk, "k", false)
	tests := []struct {
		name    string
		cfg     func(c *Config)
		wantErr []string
	}{
		{"key missing, no generate", func(c *Config) {},
			[]string{fmt.Sprintf(`token %q has no AES key labelled "k"`, tk.Label), "generate_key = true"}},
		{"token missing", func(c *Config) { c.TokenLabel = "no-such-token" },
			[]string{`no token labelled "no-such-token" in any slot of ` + tk.Library, "slots with tokens: ", fmt.Sprintf("%q", tk.Label), "check token_label", "softhsm2-util --init-token"}},
		{"library missing", func(c *Config) { c.Library = "/nonexistent/libpkcs11.so" },
			[]string{"cannot load the PKCS#11 library /nonexistent/libpkcs11.so: file not found", `check seal "pkcs11" library`}},
		{"not a module", func(c *Config) { c.Library = notModule },
			[]string{"cannot load the PKCS#11 library " + notModule + ": not a PKCS#11 module", `check seal "pkcs11" library`}},
		{"library is a directory", func(c *Config) { c.Library = t.TempDir() },
			[]string{"not a regular file"}},
		{"no library", func(c *Config) { c.Library = "" }, []string{"no PKCS#11 library given"}},
		{"no token label", func(c *Config) { c.TokenLabel = "" }, []string{"set token_label"}},
		{"token label too long", func(c *Config) { c.TokenLabel = strings.Repeat("x", 33) }, []string{"at most 32"}},
		{"no key label", func(c *Config) { c.KeyLabel = "" }, []string{"set key_label"}},
		{"no PIN", func(c *Config) { c.PIN = nil }, []string{"no user PIN", "pin_file or pin_env"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.cfg(&cfg)
			d, err := Open(context.Background(), cfg, nil)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, hsm.ErrDeviceUnavailable) {
				t.Errorf("error %v does not wrap hsm.ErrDeviceUnavailable", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q, want it to contain %q", err, w)
				}
			}
			// The library path is the test's own (a temp dir's random
			// digits can contain "1234"): look for the PIN elsewhere.
			if strings.Contains(strings.ReplaceAll(err.Error(), cfg.Library, ""), tk.PIN) {
				t.Errorf("error %q contains the PIN", err)
			}
		})
	}
	t.Run("library released after failures", func(t *testing.T) {
		registry.mu.Lock()
		defer registry.mu.Unlock()
		for _, lib := range registry.libs {
			if lib.refs != 0 {
				t.Errorf("library %s has %d references after failed Opens", lib.name, lib.refs)
			}
		}
	})
}

func TestOpen_DuplicateKeyLabel(t *testing.T) {
	tk := newToken(t)
	d := mustOpen(t, config(tk, "dup", true))
	withSession(t, d, func(s p11.SessionHandle) {
		if _, err := d.lib.ctx.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, keyTemplate("dup")); err != nil {
			t.Fatal(err)
		}
	})
	_, err := Open(context.Background(), config(tk, "dup", true), nil)
	if err == nil || !errors.Is(err, hsm.ErrDeviceUnavailable) || !strings.Contains(err.Error(), `more than one AES key labelled "dup"`) {
		t.Fatalf("Open with two keys labelled dup: %v", err)
	}
}

func TestOpen_WrongPIN(t *testing.T) {
	tk := newToken(t)
	const wrong = "987654"
	cfg := config(tk, "k", true)
	cfg.PIN = []byte(wrong)
	before := loginAttempts.Load()
	_, err := Open(context.Background(), cfg, nil)
	if err == nil {
		t.Fatal("Open with a wrong PIN succeeded")
	}
	if n := loginAttempts.Load() - before; n != 1 {
		t.Errorf("Open tried the PIN %d times, want 1", n)
	}
	want := fmt.Sprintf(`the HSM rejected the PIN for token %q: check pin_file/pin_env; cofferd will not retry it (to avoid locking the token)`, tk.Label)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q, want it to contain %q", err, want)
	}
	if !errors.Is(err, hsm.ErrDeviceUnavailable) || !errors.Is(err, hsm.ErrPINRefused) || !errors.Is(err, p11.Error(p11.CKR_PIN_INCORRECT)) {
		t.Errorf("error %v: want hsm.ErrDeviceUnavailable, hsm.ErrPINRefused and CKR_PIN_INCORRECT", err)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), tk.PIN) {
		t.Errorf("error %q contains a PIN", err)
	}
	// One wrong try did not lock the token: the right PIN still works.
	mustOpen(t, config(tk, "k", true))
}

// TestDevice_WrongPINNotRetried changes the PIN under an open device (as if
// pin_file was edited and the token's PIN changed, then the login was lost)
// and checks that operations stop at the first rejection.
func TestDevice_WrongPINNotRetried(t *testing.T) {
	tk := newToken(t)
	d := mustOpen(t, config(tk, "k", true))
	ctx := context.Background()
	secret, aad := randomBytes(t, 32), hsm.SealAAD("c", "n")
	b, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.pin = []byte("000000")
	d.mu.Unlock()
	withSession(t, d, func(s p11.SessionHandle) {
		if err := d.lib.ctx.Logout(s); err != nil {
			t.Fatal(err)
		}
	})
	before := loginAttempts.Load()
	for i := 0; i < 5; i++ {
		_, err := d.Seal(ctx, secret, aad)
		if err == nil || !errors.Is(err, hsm.ErrDeviceUnavailable) || !strings.Contains(err.Error(), "the HSM rejected the PIN") {
			t.Fatalf("Seal %d after the PIN changed: %v", i, err)
		}
	}
	if _, err := d.Unseal(ctx, b, aad); !errors.Is(err, hsm.ErrDeviceUnavailable) {
		t.Errorf("Unseal after the PIN changed: %v, want hsm.ErrDeviceUnavailable", err)
	}
	if err := d.Health(ctx); !errors.Is(err, hsm.ErrDeviceUnavailable) {
		t.Errorf("Health after the PIN changed: %v, want hsm.ErrDeviceUnavailable", err)
	}
	if n := loginAttempts.Load() - before; n != 1 {
		t.Fatalf("the device tried the PIN %d times, want 1", n)
	}
	// Reopen tries again (once), and with the right PIN recovers.
	if err := d.Reopen(ctx); err == nil || !strings.Contains(err.Error(), "rejected the PIN") {
		t.Fatalf("Reopen with the wrong PIN: %v", err)
	}
	d.mu.Lock()
	d.pin = []byte(tk.PIN)
	d.mu.Unlock()
	if err := d.Reopen(ctx); err != nil {
		t.Fatalf("Reopen with the right PIN: %v", err)
	}
	if got, err := d.Unseal(ctx, b, aad); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Unseal after Reopen: %v", err)
	}
}

// TestDevice_Recovers checks that an operation that meets a dead session,
// login or key handle reconnects and succeeds, logging in once.
func TestDevice_Recovers(t *testing.T) {
	tk := newToken(t)
	d := mustOpen(t, config(tk, "k", true))
	ctx := context.Background()
	secret, aad := randomBytes(t, 32), hsm.SealAAD("c", "n")
	b, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		breakIt   func(s p11.SessionHandle) error
		wantLogin int64
	}{
		// Closing every session also ends the login.
		{"sessions closed", func(p11.SessionHandle) error { return d.lib.ctx.CloseAllSessions(d.slot) }, 1},
		{"logged out", func(s p11.SessionHandle) error { return d.lib.ctx.Logout(s) }, 1},
		// The pool holds one session, the process's last on the token:
		// closing it ends the login as well.
		{"session closed", func(s p11.SessionHandle) error { return d.lib.ctx.CloseSession(s) }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Fill the pool, so that the next operation takes a pooled session.
			if err := d.Health(ctx); err != nil {
				t.Fatal(err)
			}
			d.lib.mu.RLock()
			d.mu.Lock()
			s := d.idle[len(d.idle)-1]
			err := tt.breakIt(s)
			d.mu.Unlock()
			d.lib.mu.RUnlock()
			if err != nil {
				t.Fatal(err)
			}
			before := loginAttempts.Load()
			got, err := d.Unseal(ctx, b, aad)
			if err != nil {
				t.Fatalf("Unseal after %s: %v", tt.name, err)
			}
			if !bytes.Equal(got, secret) {
				t.Fatal("Unseal returned another secret")
			}
			if n := loginAttempts.Load() - before; n != tt.wantLogin {
				t.Errorf("logged in %d times, want %d", n, tt.wantLogin)
			}
			if err := d.Health(ctx); err != nil {
				t.Errorf("Health after recovering: %v", err)
			}
		})
	}
}

// TestDevice_RecoversConcurrently checks that operations that all lose
// their sessions at once reconnect, and log in, only once.
func TestDevice_RecoversConcurrently(t *testing.T) {
	d := mustOpen(t, config(newToken(t), "k", true))
	ctx := context.Background()
	secret, aad := randomBytes(t, 32), hsm.SealAAD("c", "n")
	b, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}
	// Put maxSessions sessions in the pool.
	d.lib.mu.RLock()
	var taken []session
	for i := 0; i < maxSessions; i++ {
		s, _, err := d.getSession()
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, s)
	}
	for _, s := range taken {
		d.putSession(s, false)
	}
	if err := d.lib.ctx.CloseAllSessions(d.slot); err != nil {
		t.Fatal(err)
	}
	d.lib.mu.RUnlock()

	before := loginAttempts.Load()
	var wg sync.WaitGroup
	errs := make(chan error, maxSessions)
	for i := 0; i < maxSessions; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := d.Unseal(ctx, b, aad)
			if err == nil && !bytes.Equal(got, secret) {
				err = errors.New("Unseal returned another secret")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := loginAttempts.Load() - before; n != 1 {
		t.Errorf("logged in %d times, want 1", n)
	}
}

func TestDevice_TokenDeletedAndReplaced(t *testing.T) {
	tk := newToken(t)
	cfg := config(tk, "k", true)
	d := mustOpen(t, cfg)
	ctx := context.Background()
	secret, aad := randomBytes(t, 32), hsm.SealAAD("c", "n")
	old, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatal(err)
	}

	softhsmtest.DeleteToken(t, tk)
	notPresent := fmt.Sprintf("token %q is not present in %s: reconnect it, or unseal with shares and reseal with a new token", tk.Label, tk.Library)
	checks := []struct {
		name string
		op   func() error
	}{
		{"Seal", func() error { _, err := d.Seal(ctx, secret, aad); return err }},
		{"Unseal", func() error { _, err := d.Unseal(ctx, old, aad); return err }},
		{"Health", func() error { return d.Health(ctx) }},
		{"Reopen", func() error { return d.Reopen(ctx) }},
		{"Seal after Reopen", func() error { _, err := d.Seal(ctx, secret, aad); return err }},
	}
	for _, c := range checks {
		t.Run("gone/"+c.name, func(t *testing.T) {
			err := c.op()
			if err == nil {
				t.Fatal("succeeded without the token")
			}
			if !errors.Is(err, hsm.ErrDeviceUnavailable) || errors.Is(err, hsm.ErrUnsealFailed) {
				t.Errorf("error %v: want hsm.ErrDeviceUnavailable only", err)
			}
			if !strings.Contains(err.Error(), notPresent) {
				t.Errorf("error %q, want it to contain %q", err, notPresent)
			}
		})
	}

	// A new token with the same label (a replaced HSM): Reopen finds it and
	// generates a new key; the old blob no longer opens.
	softhsmtest.AddToken(t, storeDir, tk.Label)
	if err := d.Reopen(ctx); err != nil {
		t.Fatalf("Reopen after replacing the token: %v", err)
	}
	if err := d.Health(ctx); err != nil {
		t.Fatalf("Health after Reopen: %v", err)
	}
	b, err := d.Seal(ctx, secret, aad)
	if err != nil {
		t.Fatalf("Seal after Reopen: %v", err)
	}
	if got, err := d.Unseal(ctx, b, aad); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Unseal after Reopen: %v", err)
	}
	if _, err := d.Unseal(ctx, old, aad); !errors.Is(err, hsm.ErrUnsealFailed) {
		t.Fatalf("Unseal of a blob from the old token: %v, want hsm.ErrUnsealFailed", err)
	}
}

// TestConformance runs the hsm.Device contract's suite on SoftHSM2 tokens;
// after the concurrency test the session pool must be bounded.
func TestConformance(t *testing.T) {
	open := func(t *testing.T) hsm.Device { return mustOpen(t, config(newToken(t), "k", true)) }
	// SoftHSM lists the tokens at C_Initialize: the other device's token
	// must exist before the first device of a subtest loads the library.
	other := newToken(t)
	hsmtest.Run(t, hsmtest.Config{
		Open: open,
		// Same key label, another token: another key.
		Other: func(t *testing.T) hsm.Device { return mustOpen(t, config(other, "k", true)) },
		AfterConcurrent: func(t *testing.T, d hsm.Device) {
			dev := d.(*Device)
			dev.mu.Lock()
			idle := len(dev.idle)
			dev.mu.Unlock()
			if idle > maxSessions {
				t.Errorf("%d idle sessions, want at most %d", idle, maxSessions)
			}
		},
		Rounds: 25,
	})
}

// TestDevice_SharedLibrary checks that devices in one process share the
// module and the token login without breaking each other.
func TestDevice_SharedLibrary(t *testing.T) {
	tkA, tkB := newToken(t), newToken(t) // both before the library is initialised
	ctx := context.Background()
	a := mustOpen(t, config(tkA, "k", true))
	a2 := mustOpen(t, config(tkA, "k2", true)) // same token, another key
	b := mustOpen(t, config(tkB, "k", true))
	if a.lib != b.lib {
		t.Fatal("two devices on one module got two library instances")
	}
	roundTrip := func(t *testing.T, d *Device) {
		t.Helper()
		secret, aad := randomBytes(t, 32), []byte("aad")
		blob, err := d.Seal(ctx, secret, aad)
		if err != nil {
			t.Fatalf("Seal on %s/%s: %v", d.tokenLabel, d.keyLabel, err)
		}
		if got, err := d.Unseal(ctx, blob, aad); err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("Unseal on %s/%s: %v", d.tokenLabel, d.keyLabel, err)
		}
	}
	roundTrip(t, a)
	roundTrip(t, a2)
	roundTrip(t, b)

	// Reopen of one re-initialises the module: the others reconnect.
	if err := b.Reopen(ctx); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, a)
	roundTrip(t, a2)
	roundTrip(t, b)

	// Closing a does not log a2 out of their shared token.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	roundTrip(t, a2)
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, b)
	lib := b.lib
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	registry.mu.Lock()
	refs := lib.refs
	registry.mu.Unlock()
	lib.mu.RLock()
	initialized := lib.initialized
	lib.mu.RUnlock()
	if initialized || refs != 0 {
		t.Errorf("after the last Close: initialized=%v refs=%d, want finalised", initialized, refs)
	}
}

// TestDevice_Closed: Open copies the PIN (the caller may zero its own) and
// Close zeroes the copy; errors after Close say "closed". The rest of
// Close's contract is in the conformance suite.
func TestDevice_Closed(t *testing.T) {
	tk := newToken(t)
	cfg := config(tk, "k", true)
	d, err := Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	clear(cfg.PIN)
	ctx := context.Background()
	if err := d.Reopen(ctx); err != nil {
		t.Fatalf("Reopen after the caller zeroed its PIN: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if d.pin != nil {
		t.Error("Close kept the PIN")
	}
	if err := d.Health(ctx); !errors.Is(err, hsm.ErrDeviceUnavailable) || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Health after Close: %v, want hsm.ErrDeviceUnavailable (closed)", err)
	}
}

// TestOpen_ContextCanceled: Open honours its context before loading the
// library (the methods' cancellation is in the conformance suite).
func TestOpen_ContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Open(ctx, Config{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Open: %v, want context.Canceled", err)
	}
}

// go test -run '^$' -bench . ./hsm/pkcs11/
func BenchmarkSeal(b *testing.B) {
	d := mustOpen(b, config(newToken(b), "k", true))
	ctx := context.Background()
	secret, aad := randomBytes(b, 32), hsm.SealAAD("cluster", "node")
	for b.Loop() {
		if _, err := d.Seal(ctx, secret, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnseal(b *testing.B) {
	d := mustOpen(b, config(newToken(b), "k", true))
	ctx := context.Background()
	secret, aad := randomBytes(b, 32), hsm.SealAAD("cluster", "node")
	blob, err := d.Seal(ctx, secret, aad)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		got, err := d.Unseal(ctx, blob, aad)
		if err != nil {
			b.Fatal(err)
		}
		clear(got)
	}
}
