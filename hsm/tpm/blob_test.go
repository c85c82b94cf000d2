package tpm

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// testBlobData is a structurally valid blob: a real sealed-object public
// area and an opaque private area.
func testBlobData() []byte {
	return encodeBlob(tpm2.New2B(sealTemplate(nil)), tpm2.TPM2BPrivate{Buffer: bytes.Repeat([]byte{0xAB}, 64)})
}

func TestTPMDecodeBlob_RoundTrip(t *testing.T) {
	data := testBlobData()
	pub, priv, err := decodeBlob(data)
	if err != nil {
		t.Fatalf("decodeBlob: %v", err)
	}
	if got := encodeBlob(*pub, *priv); !bytes.Equal(got, data) {
		t.Fatal("decode then encode does not give back the input")
	}
	area, err := pub.Contents()
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := area.Type, tpm2.TPMAlgKeyedHash; got != exp {
		t.Errorf("type = %v, want %v", got, exp)
	}
}

func TestTPMDecodeBlob_Malformed(t *testing.T) {
	good := testBlobData()
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"empty", nil, "bad magic"},
		{"magic only", []byte("CTPM"), "bad magic"},
		{"other magic", append([]byte("XTPM"), good[4:]...), "bad magic"},
		{"other version", append([]byte("CTPM\x07"), good[5:]...), "layout version 7"},
		{"no public", []byte("CTPM\x01"), "public area truncated"},
		{"empty public", []byte("CTPM\x01\x00\x00"), "public area truncated"},
		{"short public", []byte("CTPM\x01\x00\x10abc"), "public area truncated"},
		{"garbage public", []byte("CTPM\x01\x00\x03abc\x00\x01x"), "public area"},
		{"no private", good[:len(good)-66], "private area truncated"},
		{"short private", good[:len(good)-1], "private area truncated"},
		{"trailing", append(slices.Clone(good), 1, 2), "2 trailing bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := decodeBlob(tt.data)
			if err == nil {
				t.Fatal("decodeBlob succeeded")
			}
			if !errors.Is(err, errBlobFormat) {
				t.Errorf("error %q does not wrap errBlobFormat", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func FuzzTPMDecodeBlob(f *testing.F) {
	f.Add(testBlobData())
	f.Add([]byte("CTPM\x01\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, priv, err := decodeBlob(data)
		if err != nil {
			if pub != nil || priv != nil {
				t.Fatal("decodeBlob returned a value with an error")
			}
			return
		}
		if got := encodeBlob(*pub, *priv); !bytes.Equal(got, data) {
			t.Fatalf("decode then encode changed the blob:\n%x\n%x", data, got)
		}
	})
}

func TestTPMParsePCRs(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr string
	}{
		{"", nil, ""},
		{"7", []int{7}, ""},
		{"16,7", []int{7, 16}, ""},
		{" 0, 23 ", []int{0, 23}, ""},
		{"24", nil, "out of range"},
		{"7,7", nil, "listed twice"},
		{"7,", nil, "not a PCR list"},
		{"seven", nil, "not a PCR list"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parsePCRs(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parsePCRs(%q) error = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parsePCRs(%q): %v", tt.in, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("parsePCRs(%q) = %v, want %v", tt.in, got, tt.want)
			}
			if len(got) > 0 {
				if back := formatPCRs(got); back != strings.ReplaceAll(formatPCRs(tt.want), " ", "") {
					t.Errorf("formatPCRs = %q", back)
				}
			}
		})
	}
}

func TestTPMParsePCRValues(t *testing.T) {
	v := [][]byte{{1, 2}, {3}}
	if got := parsePCRValues(formatPCRValues(v), 2); !slices.EqualFunc(got, v, bytes.Equal) {
		t.Errorf("round trip = %x, want %x", got, v)
	}
	for _, bad := range []struct {
		s string
		n int
	}{{"", 1}, {"0102", 2}, {"zz", 1}} {
		if got := parsePCRValues(bad.s, bad.n); got != nil {
			t.Errorf("parsePCRValues(%q, %d) = %x, want nil", bad.s, bad.n, got)
		}
	}
}
