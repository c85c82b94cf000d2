package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/internal/lockedmem"
)

// direct applies proposals at once, as a single-node raft would.
type direct struct{ ks *Keystore }

func (d *direct) Propose(_ context.Context, cmd []byte) (any, error) { return d.ks.Apply(cmd), nil }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newKS(t testing.TB, clk *clock) *Keystore {
	t.Helper()
	d := &direct{}
	cfg := Config{Proposer: d}
	if clk != nil {
		cfg.Now = clk.now
	}
	d.ks = New(cfg)
	return d.ks
}

func mustInit(t testing.TB, ks *Keystore) []byte {
	t.Helper()
	root, err := ks.NewRootKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Init(context.Background(), root, "test-cluster", 5, 3); err != nil {
		t.Fatal(err)
	}
	return root
}

func mustCreate(t testing.TB, ks *Keystore, name, typ string) api.Key {
	t.Helper()
	k, err := ks.CreateKey(context.Background(), name, typ, "")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func wrap1(t testing.TB, ks *Keystore, name string, pt, aad []byte) (string, int) {
	t.Helper()
	r, err := ks.Wrap(name, []Item{{Plaintext: pt, AAD: aad}})
	if err != nil {
		t.Fatal(err)
	}
	if r[0].Err != nil {
		t.Fatal(r[0].Err)
	}
	return r[0].Ciphertext, r[0].Version
}

func unwrap1(ks *Keystore, name, ct string, aad []byte) ([]byte, error) {
	r, err := ks.Unwrap(name, []Item{{Ciphertext: ct, AAD: aad}})
	if err != nil {
		return nil, err
	}
	return r[0].Plaintext, r[0].Err
}

func TestKeystore_InitSealUnseal(t *testing.T) {
	ks := newKS(t, nil)
	if ks.Initialized() || !ks.Sealed() {
		t.Fatal("new keystore should be uninitialised and sealed")
	}
	if _, err := ks.CreateKey(context.Background(), "k", "", ""); !errors.Is(err, ErrSealed) {
		t.Fatalf("create while uninitialised: %v", err)
	}
	root := mustInit(t, ks)
	if ks.Sealed() {
		t.Fatal("init should leave the node unsealed")
	}
	if err := ks.Init(context.Background(), root, "test-cluster", 5, 3); !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("second init: %v", err)
	}
	mustCreate(t, ks, "k", "")
	ct, _ := wrap1(t, ks, "k", []byte("hello"), nil)

	live := lockedmem.InUse()
	ks.Seal()
	if !ks.Sealed() {
		t.Fatal("not sealed")
	}
	if got := lockedmem.InUse(); got >= live {
		t.Fatalf("seal released no locked memory: %d → %d", live, got)
	}
	if _, err := unwrap1(ks, "k", ct, nil); !errors.Is(err, ErrSealed) {
		t.Fatalf("unwrap while sealed: %v", err)
	}
	wrong := bytes.Repeat([]byte{7}, RootKeySize)
	if err := ks.Unseal(wrong); !errors.Is(err, ErrRootKeyMismatch) {
		t.Fatalf("wrong root: %v", err)
	}
	if !ks.Sealed() {
		t.Fatal("wrong root unsealed the node")
	}
	if err := ks.Unseal(root); err != nil {
		t.Fatal(err)
	}
	pt, err := unwrap1(ks, "k", ct, nil)
	if err != nil || string(pt) != "hello" {
		t.Fatalf("unwrap after unseal: %q %v", pt, err)
	}
	if err := ks.Unseal(wrong); err != nil {
		t.Fatalf("unseal on unsealed node should be a no-op, got %v", err)
	}
}

func TestKeystore_WrapUnwrap(t *testing.T) {
	for _, typ := range []string{api.KeyTypeAES256GCM, api.KeyTypeChaCha20Poly1305} {
		t.Run(typ, func(t *testing.T) {
			ks := newKS(t, nil)
			mustInit(t, ks)
			k := mustCreate(t, ks, "a", typ)
			if k.Type != typ || k.LatestVersion != 1 || k.MinDecryptionVersion != 1 {
				t.Fatalf("key = %+v", k)
			}
			mustCreate(t, ks, "b", typ)
			aad := []byte("context")
			ct, v := wrap1(t, ks, "a", []byte("secret"), aad)
			if v != 1 || !strings.HasPrefix(ct, "coffer:v1:") {
				t.Fatalf("ct %q v %d", ct, v)
			}
			pt, err := unwrap1(ks, "a", ct, aad)
			if err != nil || string(pt) != "secret" {
				t.Fatalf("unwrap: %q %v", pt, err)
			}
			// Every way a ciphertext can be wrong is decrypt_failed.
			flip := []byte(ct)
			flip[len(flip)-6] ^= 1
			for name, c := range map[string]struct {
				key, ct string
				aad     []byte
			}{
				"wrong aad":       {"a", ct, []byte("other")},
				"missing aad":     {"a", ct, nil},
				"another key":     {"b", ct, aad},
				"tampered":        {"a", string(flip), aad},
				"truncated":       {"a", ct[:len(ct)-8], aad},
				"foreign prefix":  {"a", "vault:v1:" + ct[10:], aad},
				"future version":  {"a", "coffer:v9:" + ct[10:], aad},
				"not base64":      {"a", "coffer:v1:@@@@", aad},
				"empty":           {"a", "", aad},
				"leading zero":    {"a", "coffer:v01:" + ct[10:], aad},
				"version missing": {"a", "coffer:v:" + ct[10:], aad},
			} {
				if _, err := unwrap1(ks, c.key, c.ct, c.aad); !errors.Is(err, ErrDecrypt) {
					t.Errorf("%s: err = %v, want ErrDecrypt", name, err)
				}
			}
		})
	}
}

func TestKeystore_RotateAndMinDecryption(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	ctx := context.Background()
	ct1, _ := wrap1(t, ks, "k", []byte("one"), nil)
	k, err := ks.RotateKey(ctx, "k")
	if err != nil || k.LatestVersion != 2 || len(k.Versions) != 2 {
		t.Fatalf("rotate: %+v %v", k, err)
	}
	ct2, v := wrap1(t, ks, "k", []byte("two"), nil)
	if v != 2 {
		t.Fatalf("new wraps should use version 2, got %d", v)
	}
	for ct, want := range map[string]string{ct1: "one", ct2: "two"} {
		if pt, err := unwrap1(ks, "k", ct, nil); err != nil || string(pt) != want {
			t.Fatalf("unwrap: %q %v", pt, err)
		}
	}
	// Rewrap moves an old ciphertext to the latest version.
	rr, err := ks.Rewrap("k", []Item{{Ciphertext: ct1}})
	if err != nil || rr[0].Err != nil || rr[0].Version != 2 {
		t.Fatalf("rewrap: %+v %v", rr, err)
	}
	two := 2
	if _, err := ks.UpdateKey(ctx, "k", &two, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := unwrap1(ks, "k", ct1, nil); !errors.Is(err, ErrVersionDisabled) {
		t.Fatalf("old version after min_decryption_version=2: %v", err)
	}
	if pt, err := unwrap1(ks, "k", rr[0].Ciphertext, nil); err != nil || string(pt) != "one" {
		t.Fatalf("rewrapped: %q %v", pt, err)
	}
	for _, bad := range []int{0, 3, -1} {
		b := bad
		if _, err := ks.UpdateKey(ctx, "k", &b, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("min_decryption_version %d: %v", bad, err)
		}
	}
	if k, _ := ks.GetKey("k"); k.MinDecryptionVersion != 2 {
		t.Fatalf("a refused update changed state: %+v", k)
	}
}

func TestKeystore_ScheduledRotationAndDeletion(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ks := newKS(t, clk)
	mustInit(t, ks)
	ctx := context.Background()
	if _, err := ks.CreateKey(ctx, "r", "", "1h"); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateKey(ctx, "bad", "", "10s"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("too-short rotation period: %v", err)
	}
	if due := ks.DueRotations(clk.now()); len(due) != 0 {
		t.Fatalf("due too early: %v", due)
	}
	clk.add(time.Hour)
	if due := ks.DueRotations(clk.now()); len(due) != 1 || due[0] != "r" {
		t.Fatalf("due = %v", due)
	}
	if ok, err := ks.RotateIfDue(ctx, "r"); !ok || err != nil {
		t.Fatalf("RotateIfDue: %v %v", ok, err)
	}
	if ok, err := ks.RotateIfDue(ctx, "r"); ok || err != nil {
		t.Fatalf("second RotateIfDue should do nothing: %v %v", ok, err)
	}
	if k, _ := ks.GetKey("r"); k.LatestVersion != 2 || k.RotationPeriod != "1h" {
		t.Fatalf("key = %+v", k)
	}

	// Deletion with a pending window.
	ct, _ := wrap1(t, ks, "r", []byte("x"), nil)
	if _, err := ks.DeleteKey(ctx, "r", time.Hour); !errors.Is(err, ErrInvalid) {
		t.Fatalf("window below minimum: %v", err)
	}
	k, err := ks.DeleteKey(ctx, "r", 48*time.Hour)
	if err != nil || k.DeletionDate == nil || !k.DeletionDate.Equal(clk.now().Add(48*time.Hour)) {
		t.Fatalf("delete: %+v %v", k, err)
	}
	if _, err := unwrap1(ks, "r", ct, nil); !errors.Is(err, ErrPendingDeletion) {
		t.Fatalf("unwrap pending deletion: %v", err)
	}
	if _, err := ks.DeleteKey(ctx, "r", 24*time.Hour); !errors.Is(err, ErrPendingDeletion) {
		t.Fatalf("re-delete should not shorten the window: %v", err)
	}
	if _, err := ks.RotateKey(ctx, "r"); !errors.Is(err, ErrPendingDeletion) {
		t.Fatalf("rotate pending deletion: %v", err)
	}
	if due := ks.DueRotations(clk.now().Add(10 * time.Hour)); len(due) != 0 {
		t.Fatalf("a key pending deletion is never due for rotation: %v", due)
	}
	if k, err := ks.RestoreKey(ctx, "r"); err != nil || k.DeletionDate != nil {
		t.Fatalf("restore: %+v %v", k, err)
	}
	if pt, err := unwrap1(ks, "r", ct, nil); err != nil || string(pt) != "x" {
		t.Fatalf("unwrap after restore: %v", err)
	}
	if _, err := ks.DeleteKey(ctx, "r", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if ok, _ := ks.PurgeKey(ctx, "r"); ok {
		t.Fatal("purged before the deletion date")
	}
	clk.add(24 * time.Hour)
	if due := ks.DuePurges(clk.now()); len(due) != 1 {
		t.Fatalf("DuePurges = %v", due)
	}
	if ok, err := ks.PurgeKey(ctx, "r"); !ok || err != nil {
		t.Fatalf("purge: %v %v", ok, err)
	}
	if _, err := ks.GetKey("r"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purged key still there: %v", err)
	}
	// The name can be used again.
	mustCreate(t, ks, "r", "")
}

func TestKeystore_BadInputChangesNothing(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	ctx := context.Background()
	mustCreate(t, ks, "k", "")
	for _, c := range []struct {
		name, typ, rp string
		want          error
	}{
		{"", "", "", ErrInvalid},
		{"-bad", "", "", ErrInvalid},
		{"a/b", "", "", ErrInvalid},
		{strings.Repeat("a", 129), "", "", ErrInvalid},
		{"ok", "rsa", "", ErrInvalid},
		{"ok", "", "forever", ErrInvalid},
		{"k", "", "", ErrAlreadyExists},
	} {
		if _, err := ks.CreateKey(ctx, c.name, c.typ, c.rp); !errors.Is(err, c.want) {
			t.Errorf("CreateKey(%q,%q,%q) = %v, want %v", c.name, c.typ, c.rp, err, c.want)
		}
	}
	if names, _ := ks.ListKeys(); len(names) != 1 {
		t.Fatalf("keys = %v", names)
	}
	big := make([]byte, api.MaxPlaintext+1)
	r, _ := ks.Wrap("k", []Item{{Plaintext: big}, {Plaintext: []byte("ok")}})
	if !errors.Is(r[0].Err, ErrTooLarge) || r[1].Err != nil {
		t.Fatalf("batch: %v / %v", r[0].Err, r[1].Err)
	}
	if _, err := ks.Wrap("nope", []Item{{}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrap unknown key: %v", err)
	}
	if _, err := ks.DataKey("k", 8, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("datakey 8 bytes: %v", err)
	}
}

func TestKeystore_DataKey(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	r, err := ks.DataKey("k", 32, []byte("a"))
	if err != nil || len(r.Plaintext) != 32 {
		t.Fatalf("datakey: %v", err)
	}
	pt, err := unwrap1(ks, "k", r.Ciphertext, []byte("a"))
	if err != nil || !bytes.Equal(pt, r.Plaintext) {
		t.Fatalf("unwrap of data key: %v", err)
	}
}

func TestKeystore_KeyringRotation(t *testing.T) {
	ks := newKS(t, nil)
	root := mustInit(t, ks)
	ctx := context.Background()
	mustCreate(t, ks, "old", "")
	ct, _ := wrap1(t, ks, "old", []byte("x"), nil)
	term, err := ks.RotateKeyring(ctx)
	if err != nil || term != 2 || ks.Term() != 2 {
		t.Fatalf("rotate keyring: %d %v", term, err)
	}
	mustCreate(t, ks, "new", "")
	snap := ks.Snapshot()
	if snap.Entries["keys/old"].Term != 1 || snap.Entries["keys/new"].Term != 2 {
		t.Fatalf("terms: old %d new %d", snap.Entries["keys/old"].Term, snap.Entries["keys/new"].Term)
	}
	ks.Seal()
	if err := ks.Unseal(root); err != nil {
		t.Fatal(err)
	}
	if pt, err := unwrap1(ks, "old", ct, nil); err != nil || string(pt) != "x" {
		t.Fatalf("old record after keyring rotation: %v", err)
	}
	if _, err := ks.GetKey("new"); err != nil {
		t.Fatal(err)
	}
}

func TestKeystore_SnapshotRestore(t *testing.T) {
	ks := newKS(t, nil)
	root := mustInit(t, ks)
	mustCreate(t, ks, "k", api.KeyTypeChaCha20Poly1305)
	ct, _ := wrap1(t, ks, "k", []byte("x"), nil)
	if err := ks.PutPolicy(context.Background(), "p", api.Policy{Keys: []string{"k"}, Operations: []string{"wrap"}}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := ks.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	// No key material in the snapshot in clear.
	ks.RootKey(func(r []byte) error {
		if bytes.Contains(buf.Bytes(), r) {
			t.Fatal("root key in snapshot")
		}
		return nil
	})
	if bytes.Contains(buf.Bytes(), []byte(`"k"`)) && bytes.Contains(buf.Bytes(), []byte("chacha")) {
		t.Fatal("key metadata in clear in snapshot")
	}
	other := newKS(t, nil)
	if err := other.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	if !other.Initialized() || !other.Sealed() {
		t.Fatal("restored keystore should be initialised and sealed")
	}
	if err := other.Unseal(root); err != nil {
		t.Fatal(err)
	}
	if pt, err := unwrap1(other, "k", ct, nil); err != nil || string(pt) != "x" {
		t.Fatalf("unwrap after restore: %v", err)
	}
	if p, err := other.GetPolicy("p"); err != nil || p.Keys[0] != "k" {
		t.Fatalf("policy after restore: %+v %v", p, err)
	}
	if err := other.Restore(strings.NewReader("{not json")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore garbage: %v", err)
	}
}

func TestKeystore_Policies(t *testing.T) {
	var mu sync.Mutex
	var seen map[string]api.Policy
	d := &direct{}
	ks := New(Config{Proposer: d, OnPolicies: func(m map[string]api.Policy) { mu.Lock(); seen = m; mu.Unlock() }})
	d.ks = ks
	root := mustInit(t, ks)
	ctx := context.Background()
	p := api.Policy{Subjects: api.Subjects{UIDs: []uint32{1001}}, Keys: []string{"billing-*"}, Operations: []string{"wrap"}}
	if err := ks.PutPolicy(ctx, "billing", p); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen["billing"].Keys[0] != "billing-*" {
		t.Fatalf("OnPolicies saw %v", seen)
	}
	p.Operations = append(p.Operations, "unwrap")
	if err := ks.PutPolicy(ctx, "billing", p); err != nil {
		t.Fatal(err)
	}
	got, _ := ks.GetPolicy("billing")
	if len(got.Operations) != 2 || got.Name != "billing" {
		t.Fatalf("policy = %+v", got)
	}
	ks.Seal()
	if seen != nil {
		t.Fatal("seal should clear policies")
	}
	ks.Unseal(root)
	if len(seen) != 1 {
		t.Fatalf("unseal should publish policies: %v", seen)
	}
	if err := ks.DeletePolicy(ctx, "billing"); err != nil {
		t.Fatal(err)
	}
	if err := ks.DeletePolicy(ctx, "billing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if len(seen) != 0 {
		t.Fatalf("after delete: %v", seen)
	}
}

func TestApply_ConflictChangesNothing(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	before := ks.Snapshot().Entries["keys/k"]
	stale := signed(t, ks, &command{Op: opPut, Path: "keys/k", Expect: 0, Entry: &Entry{Version: 1, Term: 1, Data: []byte("junk")}})
	if err := ks.Apply(stale); !errors.Is(err.(error), ErrConflict) {
		t.Fatalf("stale put: %v", err)
	}
	if after := ks.Snapshot().Entries["keys/k"]; !bytes.Equal(after.Data, before.Data) {
		t.Fatal("a refused command changed state")
	}
	for _, bad := range []string{"", "{}", `{"f":1,"op":"explode"}`, `{"f":2,"op":"put"}`, `{"f":1,"op":"put","path":"x","expect":3,"entry":{"v":1}}`, "null"} {
		if r := ks.Apply([]byte(bad)); r == nil {
			t.Errorf("Apply(%q) accepted", bad)
		}
	}
}

func TestKeystore_ConcurrentWrapAndSeal(t *testing.T) {
	ks := newKS(t, nil)
	root := mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := ks.Wrap("k", []Item{{Plaintext: []byte("x")}})
				if err != nil {
					if !errors.Is(err, ErrSealed) {
						t.Error(err)
					}
					continue
				}
				if pt, err := unwrap1(ks, "k", r[0].Ciphertext, nil); err != nil && !errors.Is(err, ErrSealed) {
					t.Error(err)
				} else if err == nil && string(pt) != "x" {
					t.Error("wrong plaintext")
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		ks.Seal()
		if err := ks.Unseal(root); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", time.Hour: "1h", 90 * time.Minute: "1h30m", 720 * time.Hour: "720h", 30 * time.Second: "30s"} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func BenchmarkWrap(b *testing.B) {
	for _, size := range []int{32, 4096} {
		for _, typ := range []string{api.KeyTypeAES256GCM, api.KeyTypeXAES256GCM, api.KeyTypeChaCha20Poly1305} {
			b.Run(fmt.Sprintf("%s/%dB", typ, size), func(b *testing.B) {
				ks := newKS(b, nil)
				mustInit(b, ks)
				mustCreate(b, ks, "k", typ)
				items := []Item{{Plaintext: make([]byte, size)}}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := ks.Wrap("k", items); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	for _, size := range []int{32, 4096} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			ks := newKS(b, nil)
			mustInit(b, ks)
			mustCreate(b, ks, "k", "")
			ct, _ := wrap1(b, ks, "k", make([]byte, size), nil)
			items := []Item{{Ciphertext: ct}}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				r, err := ks.Unwrap("k", items)
				if err != nil || r[0].Err != nil {
					b.Fatal(err, r[0].Err)
				}
			}
		})
	}
}

// BenchmarkWrap_ManyKeys shows that wrap cost does not grow with the number
// of keys (a map lookup).
func BenchmarkWrap_ManyKeys(b *testing.B) {
	for _, n := range []int{1, 100000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			ks := newKS(b, nil)
			mustInit(b, ks)
			for i := 0; i < n; i++ {
				mustCreate(b, ks, fmt.Sprintf("k%d", i), "")
			}
			items := []Item{{Plaintext: make([]byte, 32)}}
			b.ResetTimer()
			for b.Loop() {
				if _, err := ks.Wrap("k0", items); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkWrapBatch100(b *testing.B) {
	ks := newKS(b, nil)
	mustInit(b, ks)
	mustCreate(b, ks, "k", "")
	items := make([]Item, 100)
	for i := range items {
		items[i].Plaintext = make([]byte, 32)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ks.Wrap("k", items); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "items/s")
}
