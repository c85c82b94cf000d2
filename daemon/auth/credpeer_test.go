package auth

import (
	"strings"
	"testing"
)

func TestParseCredentialAddress(t *testing.T) {
	good := map[string]CredentialRequest{
		"@1f2e3d4c5b6a7988/unit/billing.service/db-password": {Unit: "billing.service", ID: "db-password"},
		"@0/unit/a@b.service/x":                              {Unit: "a@b.service", ID: "x"},
		`@ff/unit/a\x2db.service/tls.key`:                    {Unit: `a\x2db.service`, ID: "tls.key"},
	}
	for in, want := range good {
		got, err := ParseCredentialAddress(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{
		"", "@", "/run/x.sock", "1f/unit/a.service/x", "@/unit/a.service/x", "@1F/unit/a.service/x",
		"@12345678901234567/unit/a.service/x", "@1/unit/a.service", "@1/unit/a.service/", "@1/unit//x",
		"@1/unit/a.service/x/y", "@1/unit/a/x", "@1/unit/a b.service/x", "@1/unit/a.service/.x",
		"@1/unit/a.service/x\x00", "@1/units/a.service/x", "@1/unit/.service/x",
	} {
		if r, err := ParseCredentialAddress(in); err == nil {
			t.Errorf("%q parsed as %+v", in, r)
		}
	}
}

// FuzzParseCredentialAddress: any address the peer binds either parses to
// a valid unit and ID that rebuild it, or is refused; never a panic.
func FuzzParseCredentialAddress(f *testing.F) {
	for _, s := range []string{"@1f2e/unit/billing.service/db-password", "@", "@1/unit/a.service/x/y", "@1/unit/a@b.service/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseCredentialAddress(s)
		if err != nil {
			if r != (CredentialRequest{}) {
				t.Fatalf("result %+v alongside an error", r)
			}
			return
		}
		if !strings.HasSuffix(s, "/unit/"+r.Unit+"/"+r.ID) || strings.ContainsAny(r.Unit+r.ID, "/\x00") {
			t.Fatalf("%q parsed as %+v", s, r)
		}
		if checkUnitName(r.Unit) != nil {
			t.Fatalf("invalid unit %q accepted", r.Unit)
		}
	})
}
