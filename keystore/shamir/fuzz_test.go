package shamir

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, never returns a value with an
// error, and that whatever it accepts re-encodes to the canonical form of
// the input and parses back to the same raw share.
//
// Seeds: testdata/fuzz/FuzzParse and the known-answer vectors.
func FuzzParse(f *testing.F) {
	v := loadVectors(f)
	for _, sv := range v.Split {
		for _, e := range sv.Encoded {
			f.Add(e)
		}
	}
	for _, pv := range v.ParseOK {
		f.Add(pv.Input)
	}
	for _, pv := range v.ParseError {
		f.Add(pv.Input)
	}
	f.Fuzz(func(t *testing.T, s string) {
		raw, err := Parse(s)
		if err != nil {
			if raw != nil {
				t.Fatal("Parse returned a value along with its error")
			}
			if !errors.Is(err, ErrInvalidShare) {
				t.Fatalf("error %q does not wrap ErrInvalidShare", err)
			}
			return
		}
		if len(raw) < 2 || raw[0] == 0 || len(raw)-1 > MaxSecretLen {
			t.Fatalf("Parse accepted a raw share Split cannot make: %x", raw)
		}
		enc := Encode(raw)
		if want := canonicalForm(s); enc != want {
			t.Fatalf("Encode(Parse(%q)) = %q, want the canonical form %q", s, enc, want)
		}
		raw2, err := Parse(enc)
		if err != nil {
			t.Fatalf("Parse(Encode(raw)): %v", err)
		}
		if !bytes.Equal(raw, raw2) {
			t.Fatalf("Parse(Encode(Parse(s))) = %x, want %x", raw2, raw)
		}
	})
}

// canonicalForm is the documented normalisation of an accepted share.
func canonicalForm(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	body := strings.NewReplacer("-", "", " ", "").Replace(s[len(Prefix):])
	return Prefix + body
}

// FuzzCombine checks that Combine never panics on arbitrary share sets, never
// returns a value with an error, returns a secret of the shares' y length,
// and does not depend on the order of the shares.
//
// The input is decoded as: first byte k, the number of shares (k mod 9, so
// 0 to 8); the rest cut into k pieces of equal length, the last piece taking
// any remainder (which makes lengths differ).
//
// Seeds: testdata/fuzz/FuzzCombine and the known-answer vectors.
func FuzzCombine(f *testing.F) {
	v := loadVectors(f)
	for _, sv := range v.Split {
		if len(sv.Shares) > 8 {
			continue
		}
		var in []byte
		in = append(in, byte(sv.T))
		for _, s := range sv.Shares[:sv.T] {
			in = append(in, mustHex(f, s)...)
		}
		f.Add(in)
	}
	for _, cv := range v.CombineError {
		in := []byte{byte(len(cv.Shares))}
		for _, s := range cv.Shares {
			in = append(in, mustHex(f, s)...)
		}
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		k := int(data[0] % 9)
		rest := data[1:]
		shares := make([][]byte, k)
		if k > 0 {
			size := len(rest) / k
			for i := range k {
				end := (i + 1) * size
				if i == k-1 {
					end = len(rest)
				}
				shares[i] = rest[i*size : end]
			}
		}
		secret, err := Combine(shares)
		if err != nil {
			if secret != nil {
				t.Fatal("Combine returned a value along with its error")
			}
			if !errors.Is(err, ErrInvalidShare) {
				t.Fatalf("error %q does not wrap ErrInvalidShare", err)
			}
			return
		}
		if got, want := len(secret), len(shares[0])-1; got != want {
			t.Fatalf("secret is %d bytes, want %d", got, want)
		}
		rev := make([][]byte, k)
		for i, s := range shares {
			rev[k-1-i] = s
		}
		secret2, err := Combine(rev)
		if err != nil || !bytes.Equal(secret, secret2) {
			t.Fatalf("Combine depends on the order of the shares: %x vs %x, %v", secret, secret2, err)
		}
	})
}
