package keystore

import (
	"bytes"
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

// FuzzDecodeCommand: arbitrary log entries never panic Apply, and none
// changes the state: commands are authenticated by the keyring (a fuzzer,
// like a member's certificate without the root key, cannot make a MAC), so
// every input is refused, in the legacy format, the envelope format, or
// with an enrolment body.
func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"f":1,"op":"put","path":"keys/a","expect":0,"entry":{"v":1,"t":1,"d":"AAAA"}}`))
	f.Add([]byte(`{"f":1,"op":"delete","path":"keys/a","expect":1}`))
	f.Add([]byte(`{"f":1,"op":"keyring","expect":1,"keyring":"AAAA"}`))
	f.Add([]byte(`{"f":1,"op":"init","seal":{"cluster_id":"x","shares":1,"threshold":1},"keyring":"AAAA"}`))
	f.Add([]byte(`{"f":1,"op":"enrol","enrol":{"do":"deny","node_id":"n2","now":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"f":1,"op":"enrol","enrol":{"do":"issue","token":{"id":"00","node_id":"n","purpose":"join","hash":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-02T00:00:00Z"},"now":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"f":2,"mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","cmd":{"f":1,"op":"delete","path":"keys/a","expect":1}}`))
	f.Add([]byte(`{"f":2,"mac":"","cmd":null}`))
	f.Add([]byte(`{}`))
	ks := newKS(f, nil)
	mustInit(f, ks)
	mustCreate(f, ks, "a", "")
	before := ks.Snapshot()
	var want bytes.Buffer
	before.WriteTo(&want)
	f.Fuzz(func(t *testing.T, b []byte) {
		if r := ks.Apply(b); r == nil {
			t.Fatalf("an unauthenticated command was applied: %q", b)
		}
		if err := ks.VerifyCommand(b); err == nil {
			t.Fatalf("the leader's check passed an unauthenticated command: %q", b)
		}
		var got bytes.Buffer
		ks.Snapshot().WriteTo(&got)
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("a refused command changed state: %q", b)
		}
	})
}
