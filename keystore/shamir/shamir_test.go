package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

// TestGF_Properties checks the field axioms over all elements.
func TestGF_Properties(t *testing.T) {
	// The reference is the table-free textbook definition, computed on
	// polynomials as integers, to check gfMul independently of its masks.
	ref := func(a, b byte) byte {
		var p uint16
		for i := range 8 {
			if b>>i&1 == 1 {
				p ^= uint16(a) << i
			}
		}
		for i := 15; i >= 8; i-- {
			if p>>i&1 == 1 {
				p ^= 0x11b << (i - 8)
			}
		}
		return byte(p)
	}
	for a := range 256 {
		for b := range 256 {
			x, y := byte(a), byte(b)
			if got, exp := gfMul(x, y), ref(x, y); got != exp {
				t.Fatalf("gfMul(%#02x, %#02x) = %#02x, want %#02x", x, y, got, exp)
			}
			if gfMul(x, y) != gfMul(y, x) {
				t.Fatalf("gfMul not commutative for %#02x, %#02x", x, y)
			}
		}
	}
	// Associativity and distributivity on a sample (all triples would be
	// 16M multiplications, too slow under -race).
	r := mrand.New(mrand.NewPCG(1, 2))
	for range 20000 {
		a, b, c := byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())
		if gfMul(gfMul(a, b), c) != gfMul(a, gfMul(b, c)) {
			t.Fatalf("gfMul not associative for %#02x, %#02x, %#02x", a, b, c)
		}
		if gfMul(a, b^c) != gfMul(a, b)^gfMul(a, c) {
			t.Fatalf("gfMul not distributive for %#02x, %#02x, %#02x", a, b, c)
		}
	}
	if gfInv(0) != 0 {
		t.Errorf("gfInv(0) = %#02x, want 0", gfInv(0))
	}
	for a := 1; a < 256; a++ {
		x := byte(a)
		inv := gfInv(x)
		if got := gfMul(x, inv); got != 1 {
			t.Fatalf("%#02x · gfInv(%#02x) = %#02x, want 1", x, x, got)
		}
		if gfInv(inv) != x {
			t.Fatalf("gfInv(gfInv(%#02x)) != %#02x", x, x)
		}
	}
}

// TestSplitCombine_AllSubsets splits random secrets for every N ≤ 6 and
// every allowed T, and checks that every subset of at least T shares gives
// the secret back and every nonempty subset of fewer than T does not.
func TestSplitCombine_AllSubsets(t *testing.T) {
	for n := 1; n <= 6; n++ {
		for thr := 1; thr <= n; thr++ {
			if thr == 1 && n > 1 {
				continue
			}
			t.Run(fmt.Sprintf("%d-of-%d", thr, n), func(t *testing.T) {
				secret := make([]byte, 32)
				rand.Read(secret)
				shares, err := Split(secret, n, thr, rand.Reader)
				if err != nil {
					t.Fatalf("Split: %v", err)
				}
				for i, s := range shares {
					if got, exp := s[0], byte(i+1); got != exp {
						t.Fatalf("share %d has x = %d, want %d", i+1, got, exp)
					}
					if got, exp := len(s), 1+len(secret); got != exp {
						t.Fatalf("share %d is %d bytes, want %d", i+1, got, exp)
					}
				}
				for mask := 1; mask < 1<<n; mask++ {
					var subset [][]byte
					for i := range n {
						if mask>>i&1 == 1 {
							subset = append(subset, shares[i])
						}
					}
					got, err := Combine(subset)
					if err != nil {
						t.Fatalf("Combine(subset %b): %v", mask, err)
					}
					if enough := len(subset) >= thr; enough != bytes.Equal(got, secret) {
						t.Fatalf("Combine of %d shares (subset %b) with threshold %d: gives secret = %v", len(subset), mask, thr, !enough)
					}
					// Order does not matter.
					rev := make([][]byte, len(subset))
					for i, s := range subset {
						rev[len(subset)-1-i] = s
					}
					got2, err := Combine(rev)
					if err != nil || !bytes.Equal(got, got2) {
						t.Fatalf("Combine depends on share order (subset %b)", mask)
					}
				}
			})
		}
	}
}

func TestSplitCombine_LargeN(t *testing.T) {
	secret := []byte("a 32-byte secret for 255 shares")
	shares, err := Split(secret, MaxShares, 5, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := mrand.New(mrand.NewPCG(3, 4))
	for range 50 {
		perm := r.Perm(MaxShares)
		subset := [][]byte{shares[perm[0]], shares[perm[1]], shares[perm[2]], shares[perm[3]], shares[perm[4]]}
		got, err := Combine(subset)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("Combine of 5 of 255 shares: %x, %v", got, err)
		}
		if got, _ := Combine(subset[:4]); bytes.Equal(got, secret) {
			t.Fatal("4 of 255 shares with threshold 5 gave the secret")
		}
	}
}

func TestSplit_DevModeSingleShare(t *testing.T) {
	secret := []byte("dev mode root key, 32 bytes long")
	shares, err := Split(secret, 1, 1, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := shares[0], append([]byte{1}, secret...); !bytes.Equal(got, exp) {
		t.Fatalf("single share = %x, want %x", got, exp)
	}
	got, err := Combine(shares)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Combine(single share) = %x, %v", got, err)
	}
}

func TestSplit_InvalidParameters(t *testing.T) {
	secret := make([]byte, 32)
	zeros := func() io.Reader { return bytes.NewReader(make([]byte, 4096)) }
	for _, tt := range []struct {
		name   string
		secret []byte
		n, t   int
		rand   io.Reader
		want   string
	}{
		{"empty secret", nil, 3, 2, zeros(), "empty"},
		{"secret too long", make([]byte, MaxSecretLen+1), 3, 2, zeros(), "at most 64 bytes"},
		{"no shares", secret, 0, 0, zeros(), "number of shares"},
		{"too many shares", secret, 256, 2, zeros(), "number of shares"},
		{"negative shares", secret, -1, 2, zeros(), "number of shares"},
		{"zero threshold", secret, 3, 0, zeros(), "threshold must be"},
		{"threshold above n", secret, 3, 4, zeros(), "threshold must be"},
		{"threshold 1 with 3 shares", secret, 3, 1, zeros(), "only allowed with a single share"},
		{"no random source", secret, 3, 2, nil, "no random source"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			shares, err := Split(tt.secret, tt.n, tt.t, tt.rand)
			if err == nil {
				t.Fatal("Split accepted it")
			}
			if shares != nil {
				t.Error("Split returned shares along with its error")
			}
			if !errors.Is(err, ErrInvalidParameters) {
				t.Errorf("error %q does not wrap ErrInvalidParameters", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// retainingReader remembers the buffers it filled, to check that Split
// zeroes its coefficients.
type retainingReader struct{ bufs [][]byte }

func (r *retainingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i*7 + 1) // never all zero
	}
	r.bufs = append(r.bufs, p)
	return len(p), nil
}

func TestSplit_ZeroesCoefficients(t *testing.T) {
	r := &retainingReader{}
	if _, err := Split(make([]byte, 32), 5, 3, r); err != nil {
		t.Fatal(err)
	}
	if len(r.bufs) == 0 {
		t.Fatal("Split read nothing")
	}
	for _, b := range r.bufs {
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Fatal("coefficient buffer not zeroed after Split")
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("entropy source broken") }

func TestSplit_RandError(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    io.Reader
	}{
		{"failing", failingReader{}},
		{"short", bytes.NewReader(make([]byte, 10))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			shares, err := Split(make([]byte, 32), 3, 2, tt.r)
			if err == nil || shares != nil {
				t.Fatalf("Split = %v, %v; want an error", shares, err)
			}
			if !strings.Contains(err.Error(), "random polynomial coefficients") {
				t.Errorf("error %q does not say what failed", err)
			}
		})
	}
}

func TestCombine_TooManyShares(t *testing.T) {
	shares := make([][]byte, MaxShares+1)
	for i := range shares {
		shares[i] = []byte{byte(i), 0}
	}
	if _, err := Combine(shares); err == nil || !errors.Is(err, ErrInvalidShare) {
		t.Fatalf("Combine of 256 shares: %v", err)
	}
}

func BenchmarkCombine_3of5(b *testing.B) {
	shares, err := Split(make([]byte, 32), 5, 3, rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Combine(shares[:3]); err != nil {
			b.Fatal(err)
		}
	}
}
