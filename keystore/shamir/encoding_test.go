package shamir

import (
	"bytes"
	"errors"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

const base32Alphabet = "abcdefghijklmnopqrstuvwxyz234567"

func TestEncode_RoundTrip(t *testing.T) {
	r := mrand.New(mrand.NewPCG(5, 6))
	for _, ylen := range []int{1, 2, 16, 31, 32, 33, 63, MaxSecretLen} {
		for range 20 {
			raw := make([]byte, 1+ylen)
			for i := range raw {
				raw[i] = byte(r.Uint32())
			}
			raw[0] = byte(1 + r.IntN(255))
			s := Encode(raw)
			if !strings.HasPrefix(s, Prefix) {
				t.Fatalf("Encode = %q, missing prefix", s)
			}
			if strings.ContainsAny(s[len(Prefix):], "=ABCDEFGHIJKLMNOPQRSTUVWXYZ018-") {
				t.Fatalf("Encode = %q, not lower-case unpadded base32", s)
			}
			got, err := Parse(s)
			if err != nil {
				t.Fatalf("Parse(Encode(%x)): %v", raw, err)
			}
			if !bytes.Equal(got, raw) {
				t.Fatalf("Parse(Encode(%x)) = %x", raw, got)
			}
		}
	}
}

// TestParse_Tolerance checks every accepted deviation from the canonical
// form, and that each gives the same raw share.
func TestParse_Tolerance(t *testing.T) {
	raw := append([]byte{3}, bytes.Repeat([]byte{0xa5}, 32)...)
	canon := Encode(raw)
	body := canon[len(Prefix):]
	group := func(sep string, n int) string {
		var parts []string
		for i := 0; i < len(body); i += n {
			parts = append(parts, body[i:min(i+n, len(body))])
		}
		return strings.Join(parts, sep)
	}
	for _, tt := range []struct{ name, in string }{
		{"canonical", canon},
		{"leading and trailing whitespace", " \t\n" + canon + " \r\n"},
		{"upper case", strings.ToUpper(canon)},
		{"mixed case", strings.ToUpper(canon[:20]) + canon[20:]},
		{"dash groups of 4", Prefix + group("-", 4)},
		{"space groups of 5", Prefix + group(" ", 5)},
		{"double spaces", Prefix + group("  ", 6)},
		{"dash and space mixed", Prefix + group(" - ", 8)},
		{"trailing dash", canon + "-"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !bytes.Equal(got, raw) {
				t.Fatalf("Parse = %x, want %x", got, raw)
			}
			if Encode(got) != canon {
				t.Fatalf("Encode(Parse(s)) is not the canonical form")
			}
		})
	}
}

// TestParse_SingleSubstitution changes every character of the base32 part
// of valid shares to every other base32 character; the checksum (or the
// canonical-encoding check, for the last character) must reject each.
func TestParse_SingleSubstitution(t *testing.T) {
	v := loadVectors(t)
	var shares []string
	for _, sv := range v.Split[:5] {
		shares = append(shares, sv.Encoded...)
	}
	for _, share := range shares {
		body := []byte(share[len(Prefix):])
		for i, orig := range body {
			for _, c := range []byte(base32Alphabet) {
				if c == orig {
					continue
				}
				body[i] = c
				s := Prefix + string(body)
				raw, err := Parse(s)
				if err == nil {
					t.Fatalf("Parse accepted %s with character %d changed", share, len(Prefix)+i+1)
				}
				if raw != nil || !errors.Is(err, ErrInvalidShare) {
					t.Fatalf("Parse: %x, %v", raw, err)
				}
				if !strings.Contains(err.Error(), "checksum mismatch") {
					t.Fatalf("a one-character typo gives %q, want a checksum mismatch", err)
				}
			}
			body[i] = orig
		}
	}
}

func TestParse_Truncation(t *testing.T) {
	v := loadVectors(t)
	share := v.Split[2].Encoded[0]
	for n := 0; n < len(share); n++ {
		if raw, err := Parse(share[:n]); err == nil || raw != nil {
			t.Fatalf("Parse accepted the first %d of %d characters", n, len(share))
		} else if !errors.Is(err, ErrInvalidShare) {
			t.Fatalf("error %q does not wrap ErrInvalidShare", err)
		}
	}
}

func TestParse_Rejects(t *testing.T) {
	canon := Encode(append([]byte{1}, bytes.Repeat([]byte{7}, 32)...))
	body := canon[len(Prefix):]
	for _, tt := range []struct{ name, in, want string }{
		{"no prefix", body, "not a Coffer share"},
		{"prefix without dashes", "coffershare1" + body, "not a Coffer share"},
		{"prefix with space", "coffer share 1 " + body, "not a Coffer share"},
		{"version 0", "coffer-share-0-" + body, "format version"},
		{"version 2", "COFFER-SHARE-2-" + body, "format version"},
		{"vault-style base64", "dGhpcyBpcyBub3QgYSBzaGFyZQ==", "not a Coffer share"},
		{"binary age file", "age-encryption.org/v1\n-> X25519 abc\n", "age-encrypted"},
		{"interior newline", canon[:40] + "\n" + canon[40:], "character 41"},
		{"interior tab", canon[:40] + "\t" + canon[40:], "character 41"},
		{"underscore", canon[:40] + "_" + canon[40:], "character 41"},
		{"dot", canon[:40] + "." + canon[40:], "character 41"},
		{"non-ASCII", canon[:40] + "é" + canon[40:], "character 41"},
		{"NUL", canon[:40] + "\x00" + canon[40:], "character 41"},
		{"padding", canon + "=", "character"},
		{"digit 8", canon[:30] + "8" + canon[31:], "character 31"},
		{"doubled share", canon + " " + canon, "character"},
		{"one extra character", canon + "a", "checksum mismatch"},
		{"two extra characters", canon + "aa", "wrong length"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := Parse(tt.in)
			if err == nil {
				t.Fatal("Parse accepted it")
			}
			if raw != nil || !errors.Is(err, ErrInvalidShare) {
				t.Fatalf("Parse = %x, %v", raw, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			assertNoShareInError(t, err, tt.in)
		})
	}
}
