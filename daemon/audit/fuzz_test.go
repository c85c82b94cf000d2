package audit

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseLine: the line parser behind `coffer audit verify` never panics,
// never returns an entry with an error, and accepts only lines that are
// exactly what Encode writes for the entry it returns. The verifier, fed
// the same bytes as a file, never panics either and reports bad input as a
// *VerifyError. Seeds: testdata/fuzz/FuzzParseLine (a valid line, each
// kind of tampering, junk).
func FuzzParseLine(f *testing.F) {
	for _, l := range chain(1, GenesisHash, 2) {
		f.Add(bytes.TrimSuffix(l, []byte("\n")))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := ParseLine(line)
		if (e == nil) == (err == nil) {
			t.Fatalf("ParseLine = %v, %v: want exactly one of entry and error", e, err)
		}
		if err == nil {
			hash := e.Hash
			if got := Encode(e); !bytes.Equal(got, append(append([]byte(nil), line...), '\n')) || e.Hash != hash {
				t.Fatalf("accepted a line that does not encode back to itself:\n%q\n%q", line, got)
			}
		}
		var v Verifier
		verr := v.Verify("fuzz", bytes.NewReader(line))
		var ve *VerifyError
		if verr != nil && !errors.As(verr, &ve) {
			t.Fatalf("Verify = %v, want nil or a *VerifyError", verr)
		}
		if verr == nil && len(line) > 0 && line[len(line)-1] != '\n' {
			t.Fatalf("Verify accepted a file without a final newline")
		}
		verr = v.Verify("fuzz2", bytes.NewReader(append(append([]byte(nil), line...), '\n')))
		if verr != nil && !errors.As(verr, &ve) {
			t.Fatalf("Verify = %v, want nil or a *VerifyError", verr)
		}
	})
}
