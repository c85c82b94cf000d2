package keystore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/coffer-kms/coffer/api"
)

// collected is what a batch function emitted for one item.
type collected struct {
	version int
	out     []byte
	err     error
}

func collect(t *testing.T, run func(EmitFunc) error, n int) []collected {
	t.Helper()
	got := make([]collected, 0, n)
	err := run(func(i, v int, out []byte, err error) {
		if i != len(got) {
			t.Fatalf("emitted item %d after %d items", i, len(got))
		}
		got = append(got, collected{v, bytes.Clone(out), err})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("emitted %d items of %d", len(got), n)
	}
	return got
}

func sameErr(a, b error) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	return a == nil || (a.Error() == b.Error() && errors.Is(a, ErrDecrypt) == errors.Is(b, ErrDecrypt) &&
		errors.Is(a, ErrUnknownVersion) == errors.Is(b, ErrUnknownVersion) && errors.Is(a, ErrTooLarge) == errors.Is(b, ErrTooLarge) &&
		errors.Is(a, ErrVersionDisabled) == errors.Is(b, ErrVersionDisabled))
}

// TestKeystore_BatchEachSameResults: WrapEach, UnwrapEach and RewrapEach
// give item for item what Wrap, Unwrap and Rewrap give — the same errors
// (message and kind), plaintexts and versions, and ciphertexts that open —
// for every key type, with items that fail in every way mixed in.
func TestKeystore_BatchEachSameResults(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{api.KeyTypeAES256GCM, api.KeyTypeXAES256GCM, api.KeyTypeChaCha20Poly1305} {
		t.Run(typ, func(t *testing.T) {
			ks := newKS(t, nil)
			mustInit(t, ks)
			mustCreate(t, ks, "k", typ)
			mustCreate(t, ks, "other", typ)
			ct1, _ := wrap1(t, ks, "k", []byte("version one"), []byte("ctx"))
			if _, err := ks.RotateKey(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			ct2, _ := wrap1(t, ks, "k", []byte("version two"), nil)
			empty, _ := wrap1(t, ks, "k", []byte{}, nil)
			foreign, _ := wrap1(t, ks, "other", []byte("x"), nil)
			_, raw, _ := ParseCiphertext(ct2)
			future := FormatCiphertext(9, raw)
			tampered := FormatCiphertext(2, append(bytes.Clone(raw[:len(raw)-1]), raw[len(raw)-1]^1))

			wrapItems := []Item{
				{Plaintext: []byte("a")}, {Plaintext: make([]byte, api.MaxPlaintext+1)}, {Plaintext: []byte{}, AAD: []byte("x")},
				{Plaintext: bytes.Repeat([]byte{7}, 1000), AAD: []byte("y")}, {Plaintext: []byte("b")},
			}
			want, err := ks.Wrap("k", wrapItems)
			if err != nil {
				t.Fatal(err)
			}
			got := collect(t, func(e EmitFunc) error { return ks.WrapEach("k", wrapItems, e) }, len(wrapItems))
			for i := range want {
				if !sameErr(got[i].err, want[i].Err) || got[i].version != want[i].Version {
					t.Fatalf("wrap item %d: %d %v, Wrap %d %v", i, got[i].version, got[i].err, want[i].Version, want[i].Err)
				}
				if got[i].err != nil {
					continue
				}
				ct := string(AppendCiphertext(nil, got[i].version, got[i].out))
				if len(ct) != len(want[i].Ciphertext) || !strings.HasPrefix(ct, "coffer:v2:") {
					t.Fatalf("wrap item %d: %q, Wrap gave %q", i, ct, want[i].Ciphertext)
				}
				pt, err := unwrap1(ks, "k", ct, wrapItems[i].AAD)
				if err != nil || !bytes.Equal(pt, wrapItems[i].Plaintext) {
					t.Fatalf("wrap item %d does not open: %q %v", i, pt, err)
				}
			}

			ctItems := []Item{
				{Ciphertext: ct1, AAD: []byte("ctx")}, {Ciphertext: ct1}, {Ciphertext: ct2}, {Ciphertext: empty},
				{Ciphertext: foreign}, {Ciphertext: future}, {Ciphertext: tampered}, {Ciphertext: "coffer:v2:!!!!"},
				{Ciphertext: "coffer:v2:AAAA"}, {Ciphertext: "nope"}, {Ciphertext: "coffer:v02:AAAA"}, {Ciphertext: ct2 + "\n"},
				{Ciphertext: ""},
			}
			for _, minVersion := range []int{1, 2} {
				if _, err := ks.UpdateKey(ctx, "k", &minVersion, nil); err != nil {
					t.Fatal(err)
				}
				wantU, err := ks.Unwrap("k", ctItems)
				if err != nil {
					t.Fatal(err)
				}
				gotU := collect(t, func(e EmitFunc) error { return ks.UnwrapEach("k", ctItems, e) }, len(ctItems))
				for i := range wantU {
					if !sameErr(gotU[i].err, wantU[i].Err) || gotU[i].version != wantU[i].Version || !bytes.Equal(gotU[i].out, wantU[i].Plaintext) {
						t.Fatalf("min %d unwrap item %d: %d %q %v, Unwrap %d %q %v", minVersion, i, gotU[i].version, gotU[i].out, gotU[i].err, wantU[i].Version, wantU[i].Plaintext, wantU[i].Err)
					}
				}
				wantR, err := ks.Rewrap("k", ctItems)
				if err != nil {
					t.Fatal(err)
				}
				gotR := collect(t, func(e EmitFunc) error { return ks.RewrapEach("k", ctItems, e) }, len(ctItems))
				for i := range wantR {
					if !sameErr(gotR[i].err, wantR[i].Err) || gotR[i].version != wantR[i].Version {
						t.Fatalf("min %d rewrap item %d: %d %v, Rewrap %d %v", minVersion, i, gotR[i].version, gotR[i].err, wantR[i].Version, wantR[i].Err)
					}
					if gotR[i].err != nil {
						continue
					}
					was, _ := unwrap1(ks, "k", ctItems[i].Ciphertext, ctItems[i].AAD)
					pt, err := unwrap1(ks, "k", string(AppendCiphertext(nil, gotR[i].version, gotR[i].out)), ctItems[i].AAD)
					if err != nil || !bytes.Equal(pt, was) {
						t.Fatalf("rewrap item %d does not open to the old plaintext: %q %v", i, pt, err)
					}
				}
			}
			for _, run := range []func(EmitFunc) error{
				func(e EmitFunc) error { return ks.WrapEach("nope", wrapItems, e) },
				func(e EmitFunc) error { return ks.UnwrapEach("nope", ctItems, e) },
				func(e EmitFunc) error { return ks.RewrapEach("nope", ctItems, e) },
			} {
				if err := run(func(int, int, []byte, error) { t.Fatal("emitted for a missing key") }); !errors.Is(err, ErrNotFound) {
					t.Fatalf("missing key: %v", err)
				}
			}
		})
	}
}

// countingReader counts the reads of the random source.
type countingReader struct{ reads, bytes atomic.Int64 }

func (r *countingReader) Read(p []byte) (int, error) {
	r.reads.Add(1)
	r.bytes.Add(int64(len(p)))
	return rand.Read(p)
}

// TestKeystore_BatchNonces: a wrap batch reads all its nonces at once, they
// all differ, and the nonce budget counts every item sealed (and none that
// was refused) — as a rewrap batch counts every item it seals again.
func TestKeystore_BatchNonces(t *testing.T) {
	rnd := &countingReader{}
	d := &direct{}
	ks := New(Config{Proposer: d, Rand: rnd})
	d.ks = ks
	mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	items := make([]Item, 100)
	for i := range items {
		items[i].Plaintext = []byte("same plaintext")
	}
	items[50].Plaintext = make([]byte, api.MaxPlaintext+1)
	reads := rnd.reads.Load()
	nonces := map[string]bool{}
	var cts []string
	err := ks.WrapEach("k", items, func(i, v int, raw []byte, err error) {
		if i == 50 {
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("item 50: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		nonces[string(raw[:dataNonceSize])] = true
		cts = append(cts, string(AppendCiphertext(nil, v, raw)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := rnd.reads.Load() - reads; n != 1 {
		t.Fatalf("%d reads of the random source for one batch, want 1", n)
	}
	if len(nonces) != 99 {
		t.Fatalf("%d distinct nonces for 99 items", len(nonces))
	}
	if cs := ks.EncryptionCounts(); len(cs) != 1 || cs[0].Count != 99 {
		t.Fatalf("counts %+v, want 99", cs)
	}
	rw := []Item{{Ciphertext: cts[0]}, {Ciphertext: "coffer:v1:AAAA"}, {Ciphertext: cts[1]}}
	if err := ks.RewrapEach("k", rw, func(int, int, []byte, error) {}); err != nil {
		t.Fatal(err)
	}
	if cs := ks.EncryptionCounts(); len(cs) != 1 || cs[0].Count != 101 {
		t.Fatalf("counts after rewrap %+v, want 101", cs)
	}
}

// failingReader is a random source that fails.
type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// A failing random source fails every item (as Wrap does), and nothing is
// counted against the budget.
func TestKeystore_BatchRandomFailure(t *testing.T) {
	d := &direct{}
	ks := New(Config{Proposer: d})
	d.ks = ks
	mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	ks.cfg.Rand = failingReader{}
	items := []Item{{Plaintext: []byte("a")}, {Plaintext: []byte("b")}}
	want, _ := ks.Wrap("k", items)
	got := collect(t, func(e EmitFunc) error { return ks.WrapEach("k", items, e) }, 2)
	for i := range got {
		if got[i].err == nil || !sameErr(got[i].err, want[i].Err) {
			t.Fatalf("item %d: %v, Wrap %v", i, got[i].err, want[i].Err)
		}
	}
	if cs := ks.EncryptionCounts(); len(cs) != 0 {
		t.Fatalf("counted %+v", cs)
	}
}

func BenchmarkWrapEach100(b *testing.B) {
	ks := newKS(b, nil)
	mustInit(b, ks)
	mustCreate(b, ks, "k", "")
	items := make([]Item, 100)
	for i := range items {
		items[i].Plaintext = make([]byte, 32)
	}
	out := make([]byte, 0, 16<<10)
	b.ReportAllocs()
	for b.Loop() {
		out = out[:0]
		if err := ks.WrapEach("k", items, func(_, v int, raw []byte, _ error) { out = AppendCiphertext(out, v, raw) }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "items/s")
}

func BenchmarkUnwrapEach100(b *testing.B) {
	for _, each := range []bool{false, true} {
		b.Run(fmt.Sprintf("each=%v", each), func(b *testing.B) {
			ks := newKS(b, nil)
			mustInit(b, ks)
			mustCreate(b, ks, "k", "")
			items := make([]Item, 100)
			for i := range items {
				items[i].Ciphertext, _ = wrap1(b, ks, "k", make([]byte, 32), nil)
			}
			b.ReportAllocs()
			for b.Loop() {
				if each {
					if err := ks.UnwrapEach("k", items, func(int, int, []byte, error) {}); err != nil {
						b.Fatal(err)
					}
				} else if _, err := ks.Unwrap("k", items); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzUnwrapEach: for any ciphertext string, UnwrapEach and RewrapEach
// (which decode it into a shared buffer) fail or succeed as Unwrap and
// Rewrap do, with the same error.
func FuzzUnwrapEach(f *testing.F) {
	ks := newKS(f, nil)
	mustInit(f, ks)
	mustCreate(f, ks, "k", "")
	ct, _ := wrap1(f, ks, "k", []byte("fuzz"), nil)
	for _, s := range []string{ct, ct[:len(ct)-2], ct + "=", "coffer:v1:", "coffer:v0:AAAA", "coffer:v2:" + ct[10:], "coffer:v1:" + strings.Repeat("A", 40) + "\n", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		items := []Item{{Ciphertext: s}}
		want, err := ks.Unwrap("k", items)
		if err != nil {
			t.Fatal(err)
		}
		got := collect(t, func(e EmitFunc) error { return ks.UnwrapEach("k", items, e) }, 1)
		if !sameErr(got[0].err, want[0].Err) || !bytes.Equal(got[0].out, want[0].Plaintext) {
			t.Fatalf("%q: UnwrapEach %q %v, Unwrap %q %v", s, got[0].out, got[0].err, want[0].Plaintext, want[0].Err)
		}
		wantR, _ := ks.Rewrap("k", items)
		gotR := collect(t, func(e EmitFunc) error { return ks.RewrapEach("k", items, e) }, 1)
		if !sameErr(gotR[0].err, wantR[0].Err) || gotR[0].version != wantR[0].Version {
			t.Fatalf("%q: RewrapEach %v, Rewrap %v", s, gotR[0].err, wantR[0].Err)
		}
	})
}

// The version bound of the hand-written number parsing in
// splitCiphertext: 1 to 2^31-1, as strconv.ParseInt(…, 10, 32) allowed.
func TestParseCiphertext_VersionBounds(t *testing.T) {
	body := strings.Repeat("A", 40)
	for s, ok := range map[string]bool{
		"coffer:v2147483647:" + body: true, "coffer:v2147483648:" + body: false, "coffer:v9999999999:" + body: false,
		"coffer:v1:" + body: true, "coffer:v0:" + body: false, "coffer:v07:" + body: false, "coffer:v:" + body: false,
		"coffer:v1:" + body[:20] + "\r" + body[20:]: false, "coffer:v1:" + body + "\n": false,
	} {
		if _, _, err := ParseCiphertext(s); (err == nil) != ok {
			t.Errorf("%q: %v", s, err)
		}
	}
}
