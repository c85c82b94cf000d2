package shamir

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// vectors mirrors testdata/vectors.json, which testdata/vectors.py makes
// with an independent (table-based) implementation.
type vectors struct {
	GFMul []struct {
		A, B, Product string
		Comment       string
	} `json:"gf_mul"`
	GFInv []struct {
		A, Inverse string
	} `json:"gf_inv"`
	Split []struct {
		Comment string
		Secret  string
		N, T    int
		// RandSeed documents how vectors.py derived Rand; Rand is the
		// exact coefficient stream Split reads.
		RandSeed string `json:"rand_seed"`
		Rand     string
		Shares   []string
		Encoded  []string
	} `json:"split"`
	ParseOK []struct {
		Comment, Input, Raw string
	} `json:"parse_ok"`
	ParseError []struct {
		Comment, Input, Error string
	} `json:"parse_error"`
	CombineError []struct {
		Comment string
		Shares  []string
		Error   string
	} `json:"combine_error"`
}

func loadVectors(t testing.TB) *vectors {
	t.Helper()
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("testdata/vectors.json: %v", err)
	}
	return &v
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q in vectors: %v", s, err)
	}
	return b
}

func mustByte(t testing.TB, s string) byte {
	t.Helper()
	b := mustHex(t, s)
	if len(b) != 1 {
		t.Fatalf("want one byte, got %q", s)
	}
	return b[0]
}

func TestVectors_GF(t *testing.T) {
	v := loadVectors(t)
	for _, m := range v.GFMul {
		t.Run("mul_"+m.A+"_"+m.B, func(t *testing.T) {
			a, b, want := mustByte(t, m.A), mustByte(t, m.B), mustByte(t, m.Product)
			if got := gfMul(a, b); got != want {
				t.Errorf("%s: gfMul(%#02x, %#02x) = %#02x, want %#02x", m.Comment, a, b, got, want)
			}
		})
	}
	for _, m := range v.GFInv {
		t.Run("inv_"+m.A, func(t *testing.T) {
			a, want := mustByte(t, m.A), mustByte(t, m.Inverse)
			if got := gfInv(a); got != want {
				t.Errorf("gfInv(%#02x) = %#02x, want %#02x", a, got, want)
			}
		})
	}
}

func TestVectors_Split(t *testing.T) {
	v := loadVectors(t)
	for i, sv := range v.Split {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			secret := mustHex(t, sv.Secret)
			rnd := mustHex(t, sv.Rand)
			r := bytes.NewReader(rnd)
			shares, err := Split(secret, sv.N, sv.T, r)
			if err != nil {
				t.Fatalf("%s: Split: %v", sv.Comment, err)
			}
			if r.Len() != 0 {
				t.Errorf("%s: Split left %d coefficient bytes unread", sv.Comment, r.Len())
			}
			if got, exp := len(shares), len(sv.Shares); got != exp {
				t.Fatalf("%s: %d shares, want %d", sv.Comment, got, exp)
			}
			for j, s := range shares {
				if got, exp := hex.EncodeToString(s), sv.Shares[j]; got != exp {
					t.Errorf("%s: share %d = %s, want %s", sv.Comment, j+1, got, exp)
				}
				if got, exp := Encode(s), sv.Encoded[j]; got != exp {
					t.Errorf("%s: Encode(share %d) = %s, want %s", sv.Comment, j+1, got, exp)
				}
			}

			// The stored shares, decoded from their text, combine to the
			// stored secret: first T, last T, and all of them.
			raws := make([][]byte, len(sv.Encoded))
			for j, e := range sv.Encoded {
				raw, err := Parse(e)
				if err != nil {
					t.Fatalf("%s: Parse(encoded share %d): %v", sv.Comment, j+1, err)
				}
				if !bytes.Equal(raw, mustHex(t, sv.Shares[j])) {
					t.Fatalf("%s: Parse(encoded share %d) does not give the stored share", sv.Comment, j+1)
				}
				raws[j] = raw
			}
			for name, set := range map[string][][]byte{
				"first t": raws[:sv.T],
				"last t":  raws[len(raws)-sv.T:],
				"all":     raws,
			} {
				got, err := Combine(set)
				if err != nil {
					t.Fatalf("%s: Combine(%s): %v", sv.Comment, name, err)
				}
				if !bytes.Equal(got, secret) {
					t.Errorf("%s: Combine(%s) does not give the stored secret", sv.Comment, name)
				}
			}
		})
	}
}

func TestVectors_Parse(t *testing.T) {
	v := loadVectors(t)
	for _, pv := range v.ParseOK {
		t.Run("ok/"+pv.Comment, func(t *testing.T) {
			raw, err := Parse(pv.Input)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got, exp := hex.EncodeToString(raw), pv.Raw; got != exp {
				t.Errorf("Parse = %s, want %s", got, exp)
			}
		})
	}
	for _, pv := range v.ParseError {
		t.Run("error/"+pv.Comment, func(t *testing.T) {
			raw, err := Parse(pv.Input)
			if err == nil {
				t.Fatalf("Parse accepted it")
			}
			if raw != nil {
				t.Errorf("Parse returned a value along with its error")
			}
			if !errors.Is(err, ErrInvalidShare) {
				t.Errorf("error %q does not wrap ErrInvalidShare", err)
			}
			if !strings.Contains(err.Error(), pv.Error) {
				t.Errorf("error %q does not contain %q", err, pv.Error)
			}
			assertNoShareInError(t, err, pv.Input)
		})
	}
}

func TestVectors_CombineError(t *testing.T) {
	v := loadVectors(t)
	for _, cv := range v.CombineError {
		t.Run(cv.Comment, func(t *testing.T) {
			shares := make([][]byte, len(cv.Shares))
			for i, s := range cv.Shares {
				shares[i] = mustHex(t, s)
			}
			secret, err := Combine(shares)
			if err == nil {
				t.Fatalf("Combine accepted it")
			}
			if secret != nil {
				t.Errorf("Combine returned a value along with its error")
			}
			if !errors.Is(err, ErrInvalidShare) {
				t.Errorf("error %q does not wrap ErrInvalidShare", err)
			}
			if !strings.Contains(err.Error(), cv.Error) {
				t.Errorf("error %q does not contain %q", err, cv.Error)
			}
		})
	}
}

// assertNoShareInError fails if err's message contains any 8-character run
// of the base32 part of input: errors must never echo a share.
func assertNoShareInError(t *testing.T, err error, input string) {
	t.Helper()
	body := strings.ToLower(strings.TrimSpace(input))
	if strings.HasPrefix(body, "-----") || strings.HasPrefix(body, "age-encryption.org/") {
		return // an age file, not a share
	}
	body = sharePrefix.ReplaceAllString(body, "")
	msg := strings.ToLower(err.Error())
	const window = 8
	for i := 0; i+window <= len(body); i++ {
		w := body[i : i+window]
		if strings.ContainsAny(w, " \t\r\n") {
			continue
		}
		if strings.Contains(msg, w) {
			t.Fatalf("error message echoes part of the share (%q): %q", w, msg)
		}
	}
}

// sharePrefix matches the prefix of a share of any format version.
var sharePrefix = regexp.MustCompile(`^coffer-share(-[^-]*-)?`)
