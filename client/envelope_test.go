package client

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/envelope")

// Fixed inputs of the test vectors (never a real key).
var (
	vecDataKey = bytes.Repeat([]byte{0x42}, 32)
	vecSalt    = []byte("0123456789abcdef")
	vecWrapped = "coffer:v1:dGVzdC12ZWN0b3ItZGF0YS1rZXk="
)

// pattern is the plaintext of the vectors: byte i is i mod 251.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func seal(t testing.TB, plaintext []byte, dataKey []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := newEnvelopeWriter(&buf, "backup", 3, vecWrapped, dataKey, vecSalt)
	if err != nil {
		t.Fatal(err)
	}
	// Uneven writes, so that chunking does not depend on how data arrives.
	for p := plaintext; len(p) > 0; {
		n := min(len(p), 1000+len(p)%7777)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func open(envelope, dataKey []byte) ([]byte, error) {
	br := bufio.NewReaderSize(bytes.NewReader(envelope), envEncChunk+1)
	h, err := ReadEnvelopeHeader(br)
	if err != nil {
		return nil, err
	}
	r, err := newEnvelopeReader(br, h, dataKey)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

var sizes = []int{0, 1, EnvelopeChunkSize - 1, EnvelopeChunkSize, EnvelopeChunkSize + 1, 2 * EnvelopeChunkSize, 3*EnvelopeChunkSize + 17}

func TestEnvelope_RoundTrip(t *testing.T) {
	for _, n := range sizes {
		pt := pattern(n)
		env := seal(t, pt, vecDataKey)
		chunks := max(1, (n+EnvelopeChunkSize-1)/EnvelopeChunkSize)
		hdr := len(EnvelopeMagic) + 1 + len("backup") + 4 + 2 + len(vecWrapped) + envSaltSize
		if want := hdr + n + chunks*envTagSize; len(env) != want {
			t.Errorf("%d bytes: envelope of %d bytes, want %d", n, len(env), want)
		}
		got, err := open(env, vecDataKey)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: %v (got %d bytes)", n, err, len(got))
		}
	}
}

// chunkAt returns the offset of chunk i in env (every chunk but the last
// is full).
func chunkAt(env []byte, i int) int {
	return len(env) - envelopeBody(env) + i*envEncChunk
}

func envelopeBody(env []byte) int {
	h, err := ReadEnvelopeHeader(bytes.NewReader(env))
	if err != nil {
		panic(err)
	}
	return len(env) - len(h.raw)
}

// TestEnvelope_Refused: every way of damaging an envelope is refused with
// ErrEnvelope and a message that says what is wrong.
func TestEnvelope_Refused(t *testing.T) {
	pt := pattern(3*EnvelopeChunkSize + 100) // chunks 0..3
	env := seal(t, pt, vecDataKey)
	c0, c1, c2 := chunkAt(env, 0), chunkAt(env, 1), chunkAt(env, 2)
	cases := []struct {
		name, want string
		mut        func([]byte) []byte
	}{
		{"tampered chunk", "chunk 1 does not authenticate", func(b []byte) []byte { b[c1+100] ^= 1; return b }},
		{"tampered tag", "chunk 2 does not authenticate", func(b []byte) []byte { b[c2+envEncChunk-1] ^= 0x80; return b }},
		{"tampered header key version", "chunk 0 does not authenticate", func(b []byte) []byte { b[len(EnvelopeMagic)+1+len("backup")+3] ^= 1; return b }},
		{"tampered salt", "chunk 0 does not authenticate", func(b []byte) []byte { b[c0-1] ^= 1; return b }},
		{"truncated at a chunk boundary", "truncated: it ends after chunk 2", func(b []byte) []byte { return b[:chunkAt(b, 3)] }},
		{"truncated inside a chunk", "chunk 3 does not authenticate: the envelope was cut", func(b []byte) []byte { return b[:len(b)-10] }},
		{"truncated to a stub", "less than its 16-byte tag", func(b []byte) []byte { return b[:chunkAt(b, 3)+5] }},
		{"truncated after the header", "no chunk after the header", func(b []byte) []byte { return b[:c0] }},
		{"truncated header", "header is truncated", func(b []byte) []byte { return b[:c0-3] }},
		{"reordered chunks", "chunk 1 does not authenticate", func(b []byte) []byte {
			out := append([]byte{}, b[:c1]...)
			out = append(out, b[c2:c2+envEncChunk]...)
			out = append(out, b[c1:c1+envEncChunk]...)
			return append(out, b[c2+envEncChunk:]...)
		}},
		{"duplicated chunk", "chunk 2 does not authenticate", func(b []byte) []byte {
			out := append([]byte{}, b[:c2]...)
			out = append(out, b[c1:c1+envEncChunk]...)
			return append(out, b[c2:]...)
		}},
		{"removed chunk", "chunk 1 does not authenticate", func(b []byte) []byte { return append(append([]byte{}, b[:c1]...), b[c2:]...) }},
		{"appended data", "chunk 3 does not authenticate", func(b []byte) []byte { return append(b, "more"...) }},
		{"appended chunk", "appended after the envelope's final chunk", func(b []byte) []byte {
			// A full final chunk followed by anything: seal a 2-chunk
			// envelope and append bytes after it.
			e := seal(t, pattern(2*EnvelopeChunkSize), vecDataKey)
			return append(e, bytes.Repeat([]byte{1}, 40)...)
		}},
		{"not an envelope", "not a coffer envelope", func([]byte) []byte { return []byte("coffer:v1:AAAA but this is a wrap ciphertext, not an envelope") }},
		{"empty input", "shorter than", func([]byte) []byte { return nil }},
		{"future version", "unsupported envelope version", func(b []byte) []byte { b[len(EnvelopeMagic)-2] = '9'; return b }},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			_, err := open(tt.mut(append([]byte{}, env...)), vecDataKey)
			if !errors.Is(err, ErrEnvelope) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an ErrEnvelope with %q", err, tt.want)
			}
		})
	}
	t.Run("wrong data key", func(t *testing.T) {
		_, err := open(env, bytes.Repeat([]byte{0x43}, 32))
		if !errors.Is(err, ErrEnvelope) || !strings.Contains(err.Error(), "chunk 0 does not authenticate") {
			t.Fatal(err)
		}
	})
}

// TestEnvelope_NoPlaintextBeforeAuthentication: a reader never returns a
// byte of a chunk that fails to authenticate.
func TestEnvelope_NoPlaintextBeforeAuthentication(t *testing.T) {
	pt := pattern(2*EnvelopeChunkSize + 5)
	env := seal(t, pt, vecDataKey)
	env[chunkAt(env, 1)+3] ^= 1
	got, err := open(env, vecDataKey)
	if err == nil || len(got) != EnvelopeChunkSize {
		t.Fatalf("got %d bytes and %v; want exactly chunk 0 then the error", len(got), err)
	}
}

type vector struct {
	Name          string `json:"name"`
	DataKeyHex    string `json:"data_key_hex"`
	Key           string `json:"key"`
	KeyVersion    int    `json:"key_version"`
	WrappedKey    string `json:"wrapped_key"`
	SaltHex       string `json:"salt_hex"`
	PlaintextLen  int    `json:"plaintext_len"`
	PlaintextRule string `json:"plaintext_rule"`
	PlaintextSHA  string `json:"plaintext_sha256"`
	File          string `json:"file"`
	FileSHA       string `json:"file_sha256"`
	Error         string `json:"error,omitempty"`
}

// TestEnvelope_Vectors checks testdata/envelope: each file decrypts to its
// plaintext (or fails as described), and encrypting the plaintext with the
// same data key and salt gives the same bytes. `go test -run
// TestEnvelope_Vectors -update` rewrites them.
func TestEnvelope_Vectors(t *testing.T) {
	dir := filepath.Join("testdata", "envelope")
	if *update {
		writeVectors(t, dir)
	}
	data, err := os.ReadFile(filepath.Join(dir, "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 10 {
		t.Fatalf("only %d vectors", len(vs))
	}
	for _, v := range vs {
		env, err := os.ReadFile(filepath.Join(dir, v.File))
		if err != nil {
			t.Fatal(err)
		}
		if s := sha256.Sum256(env); hex.EncodeToString(s[:]) != v.FileSHA {
			t.Fatalf("%s: file hash mismatch", v.Name)
		}
		dk, _ := hex.DecodeString(v.DataKeyHex)
		got, err := open(env, dk)
		if v.Error != "" {
			if !errors.Is(err, ErrEnvelope) || !strings.Contains(err.Error(), v.Error) {
				t.Errorf("%s: got %v, want %q", v.Name, err, v.Error)
			}
			continue
		}
		pt := pattern(v.PlaintextLen)
		if s := sha256.Sum256(pt); hex.EncodeToString(s[:]) != v.PlaintextSHA {
			t.Fatalf("%s: plaintext hash", v.Name)
		}
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("%s: %v", v.Name, err)
		}
		if again := seal(t, pt, dk); !bytes.Equal(again, env) {
			t.Errorf("%s: encrypting again does not give the vector", v.Name)
		}
	}
}

func writeVectors(t *testing.T, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var vs []vector
	add := func(name string, n int, env []byte, errText string) {
		pt := pattern(n)
		ps, fs := sha256.Sum256(pt), sha256.Sum256(env)
		file := name + ".cfe"
		if err := os.WriteFile(filepath.Join(dir, file), env, 0o644); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, vector{Name: name, DataKeyHex: hex.EncodeToString(vecDataKey), Key: "backup", KeyVersion: 3,
			WrappedKey: vecWrapped, SaltHex: hex.EncodeToString(vecSalt), PlaintextLen: n, PlaintextRule: "byte i is i mod 251",
			PlaintextSHA: hex.EncodeToString(ps[:]), File: file, FileSHA: hex.EncodeToString(fs[:]), Error: errText})
	}
	for _, n := range sizes {
		add(fmt.Sprintf("ok-%d", n), n, seal(t, pattern(n), vecDataKey), "")
	}
	two := seal(t, pattern(2*EnvelopeChunkSize+1), vecDataKey)
	c1, c2 := chunkAt(two, 1), chunkAt(two, 2)
	add("bad-truncated", 2*EnvelopeChunkSize+1, two[:c2], "truncated")
	swapped := append(append(append([]byte{}, two[:chunkAt(two, 0)]...), two[c1:c2]...), two[chunkAt(two, 0):c1]...)
	swapped = append(swapped, two[c2:]...)
	add("bad-reordered", 2*EnvelopeChunkSize+1, swapped, "chunk 0 does not authenticate")
	tampered := append([]byte{}, two...)
	tampered[c1+1] ^= 1
	add("bad-tampered", 2*EnvelopeChunkSize+1, tampered, "chunk 1 does not authenticate")
	add("bad-appended", 2*EnvelopeChunkSize+1, append(append([]byte{}, two...), 0), "chunk 2 does not authenticate")
	out, _ := json.MarshalIndent(vs, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "vectors.json"), append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// FuzzEnvelopeOpen: reading an envelope never panics, and whatever it
// accepts was made with the key.
func FuzzEnvelopeOpen(f *testing.F) {
	f.Add(seal(f, pattern(0), vecDataKey))
	f.Add(seal(f, pattern(100), vecDataKey))
	f.Add([]byte(EnvelopeMagic))
	f.Add([]byte(EnvelopeMagic + "\x06backup\x00\x00\x00\x01\x00\x05abcde0123456789abcdef"))
	f.Fuzz(func(t *testing.T, b []byte) {
		open(b, vecDataKey)
	})
}
