package keystore

import (
	"bytes"
	"encoding/hex"
	"testing"

	"golang.org/x/crypto/sha3"
)

// TestXAES_Vectors are the test vectors of the C2SP specification
// (c2sp.org/XAES-256-GCM, "Test vectors").
func TestXAES_Vectors(t *testing.T) {
	for _, tv := range []struct {
		key       byte
		aad, want string
	}{
		{0x01, "", "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"},
		{0x03, "c2sp.org/XAES-256-GCM", "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"},
	} {
		a, err := newXAES(bytes.Repeat([]byte{tv.key}, 32))
		if err != nil {
			t.Fatal(err)
		}
		nonce, pt := []byte("ABCDEFGHIJKLMNOPQRSTUVWX"), []byte("XAES-256-GCM")
		ct := a.Seal(nil, nonce, pt, []byte(tv.aad))
		if got := hex.EncodeToString(ct); got != tv.want {
			t.Errorf("key %#x: ciphertext %s, want %s", tv.key, got, tv.want)
		}
		got, err := a.Open(nil, nonce, ct, []byte(tv.aad))
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("key %#x: open = %q, %v", tv.key, got, err)
		}
		ct[len(ct)-1] ^= 1
		if _, err := a.Open(nil, nonce, ct, []byte(tv.aad)); err == nil {
			t.Errorf("key %#x: a tampered ciphertext opened", tv.key)
		}
	}
}

// TestXAES_Accumulated is the C2SP accumulated randomized test: keys,
// nonces, plaintexts and aads drawn from a SHAKE-128 stream, the
// ciphertexts hashed with SHAKE-128 (10,000 iterations).
func TestXAES_Accumulated(t *testing.T) {
	const want = "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939"
	s, d := sha3.NewShake128(), sha3.NewShake128()
	for i := 0; i < 10_000; i++ {
		key, nonce, l := make([]byte, 32), make([]byte, 24), make([]byte, 1)
		s.Read(key)
		s.Read(nonce)
		s.Read(l)
		pt := make([]byte, int(l[0]))
		s.Read(pt)
		s.Read(l)
		aad := make([]byte, int(l[0]))
		s.Read(aad)
		a, err := newXAES(key)
		if err != nil {
			t.Fatal(err)
		}
		ct := a.Seal(nil, nonce, pt, aad)
		got, err := a.Open(nil, nonce, ct, aad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("iteration %d: open failed: %v", i, err)
		}
		d.Write(ct)
	}
	sum := make([]byte, 32)
	d.Read(sum)
	if got := hex.EncodeToString(sum); got != want {
		t.Fatalf("accumulated hash %s, want %s", got, want)
	}
}

// FuzzXAESOpen: an xaes256-gcm key's unwrap path on any input: never a
// panic, never a plaintext for a ciphertext that was not sealed under the
// key and aad. The seeds are added in code: the valid one is sealed under
// this run's key.
func FuzzXAESOpen(f *testing.F) {
	ks := newKS(f, nil)
	mustInit(f, ks)
	mustCreate(f, ks, "x", "xaes256-gcm")
	ct, _ := wrap1(f, ks, "x", []byte("seed"), []byte("aad"))
	f.Add(ct, []byte("aad"))
	f.Add(ct[:len(ct)-4], []byte("aad"))
	f.Add("coffer:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", []byte(nil))
	f.Add("coffer:v2:"+ct[len("coffer:v1:"):], []byte("aad"))
	f.Fuzz(func(t *testing.T, s string, aad []byte) {
		pt, err := unwrap1(ks, "x", s, aad)
		if err == nil && (s != ct || string(aad) != "aad" || string(pt) != "seed") {
			t.Fatalf("unwrap opened %q with aad %q", s, aad)
		}
	})
}
