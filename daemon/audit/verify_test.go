package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// chain returns n valid lines (with newlines) starting at seq first with
// prev_hash prev.
func chain(first uint64, prev string, n int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		e := sampleEntry()
		e.Seq, e.PrevHash = first+uint64(i), prev
		e.KeyVersion = i + 1
		out = append(out, Encode(e))
		prev = e.Hash
	}
	return out
}

func join(lines [][]byte) []byte { return bytes.Join(lines, nil) }

func TestVerify_Tampering(t *testing.T) {
	lines := chain(1, GenesisHash, 10)
	full := join(lines)
	without := func(i ...int) []byte {
		var out [][]byte
		for j, l := range lines {
			drop := false
			for _, k := range i {
				drop = drop || j == k-1
			}
			if !drop {
				out = append(out, l)
			}
		}
		return join(out)
	}
	replaceLine := func(n int, f func([]byte) []byte) []byte {
		out := append([][]byte(nil), lines...)
		out[n-1] = f(out[n-1])
		return join(out)
	}
	for _, c := range []struct {
		name string
		data []byte
		line int
		kind string
		in   string // part of the reason
	}{
		{"edit a field", replaceLine(4, func(l []byte) []byte {
			return bytes.Replace(l, []byte(`"key_version":4`), []byte(`"key_version":9`), 1)
		}), 4, KindEdited, "edited"},
		{"edit a field and recompute its hash", replaceLine(4, func(l []byte) []byte {
			return append(rehash(t, bytes.Replace(bytes.TrimSuffix(l, []byte("\n")), []byte(`"outcome":"ok"`), []byte(`"outcome":"error"`), 1)), '\n')
		}), 5, KindEdited, "line 4"},
		{"delete a line", without(5), 5, KindDeleted, "1 entry (seq 5)"},
		{"delete three lines", without(5, 6, 7), 5, KindDeleted, "3 entries (seq 5 to 7)"},
		{"swap two lines", join(append(append(append([][]byte(nil), lines[:2]...), lines[3], lines[2]), lines[4:]...)), 3, KindReordered, "reordered"},
		{"duplicate a line", join(append(append(append([][]byte(nil), lines[:5]...), lines[4]), lines[5:]...)), 6, KindReordered, "duplicated"},
		{"truncate the middle of the file", append(append([]byte(nil), full[:bytes.Index(full, lines[5])+100]...), full[bytes.Index(full, lines[7])+200:]...), 6, KindTruncated, "truncated"},
		{"cut the last line short", full[:len(full)-40], 10, KindTruncated, "no newline"},
		{"blank line", join(append(append(append([][]byte(nil), lines[:3]...), []byte("\n")), lines[3:]...)), 4, KindMalformed, "empty"},
		{"first line's prev_hash edited", replaceLine(1, func(l []byte) []byte {
			return append(rehash(t, bytes.Replace(bytes.TrimSuffix(l, []byte("\n")), []byte(GenesisHash), []byte(lines[1][len(lines[1])-74:len(lines[1])-3]), 1)), '\n')
		}), 1, KindEdited, "start the chain"},
		{"line too long", append(append([]byte(nil), full...), bytes.Repeat([]byte("x"), MaxLine+10)...), 11, KindMalformed, "longer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var v Verifier
			err := v.Verify("audit.log", bytes.NewReader(c.data))
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("Verify = %v, want a *VerifyError", err)
			}
			if ve.Line != c.line || ve.Kind != c.kind || !strings.Contains(ve.Reason, c.in) {
				t.Fatalf("got line %d kind %s: %v\nwant line %d kind %s, reason containing %q", ve.Line, ve.Kind, err, c.line, c.kind, c.in)
			}
			if !strings.HasPrefix(err.Error(), fmt.Sprintf("audit.log:%d: ", c.line)) {
				t.Fatalf("message %q does not start with FILE:LINE", err)
			}
		})
	}
}

func TestVerify_Good(t *testing.T) {
	lines := chain(1, GenesisHash, 10)
	var v Verifier
	if err := v.Verify("a", bytes.NewReader(join(lines))); err != nil {
		t.Fatal(err)
	}
	s := v.Summary()
	last, _ := ParseLine(bytes.TrimSuffix(lines[9], []byte("\n")))
	if s.Entries != 10 || s.FirstSeq != 1 || s.LastSeq != 10 || s.LastHash != last.Hash {
		t.Fatalf("summary %+v", s)
	}

	// Empty input.
	var e Verifier
	if err := e.Verify("empty", bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	if s := e.Summary(); s.Entries != 0 || s.LastSeq != 0 || s.LastHash != GenesisHash {
		t.Fatalf("empty summary %+v", s)
	}
}

// TestVerify_RotatedFiles: a chain spread over two files verifies in
// order, and a file that continues a rotated one verifies alone (it says
// where it starts), but not in the wrong order.
func TestVerify_RotatedFiles(t *testing.T) {
	dir := t.TempDir()
	lines := chain(1, GenesisHash, 8)
	old, cur := filepath.Join(dir, "audit.log.1"), filepath.Join(dir, "audit.log")
	os.WriteFile(old, join(lines[:5]), 0o600)
	os.WriteFile(cur, join(lines[5:]), 0o600)
	s, err := VerifyFiles(old, cur)
	if err != nil || s.Entries != 8 || s.FirstSeq != 1 || s.LastSeq != 8 {
		t.Fatalf("VerifyFiles(old, new) = %+v, %v", s, err)
	}
	s, err = VerifyFiles(cur)
	if err != nil || s.Entries != 3 || s.FirstSeq != 6 {
		t.Fatalf("VerifyFiles(new) = %+v, %v", s, err)
	}
	_, err = VerifyFiles(cur, old)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.File != old || ve.Line != 1 || ve.Kind != KindReordered {
		t.Fatalf("wrong order: %v", err)
	}
	if _, err := VerifyFiles(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// TestVerify_CutAtEnd: a log cut at its end still verifies; only the
// comparison with the writer's head (the node's audit_seq/audit_hash)
// shows it.
func TestVerify_CutAtEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openTest(t, Config{Path: path})
	for i := 0; i < 6; i++ {
		mustAppend(t, w, "wrap")
	}
	seq, hash := w.Head()
	data, _ := os.ReadFile(path)
	lines := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(path, join(lines[:4]), 0o600)
	s, err := VerifyFiles(path)
	if err != nil {
		t.Fatalf("a cut log still verifies on its own: %v", err)
	}
	if s.LastSeq == seq || s.LastHash == hash {
		t.Fatalf("verify summary %+v matches the head %d %s after a cut", s, seq, hash)
	}
}
