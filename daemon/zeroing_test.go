package daemon

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore"
)

// keepingWriter is a ResponseWriter that keeps the slices it is given
// (where net/http would copy them into its own buffers), so a test can
// look at the encoder's buffer after the handler returned.
type keepingWriter struct {
	h      http.Header
	status int
	writes [][]byte
	copy   bytes.Buffer
}

func (w *keepingWriter) Header() http.Header {
	if w.h == nil {
		w.h = http.Header{}
	}
	return w.h
}
func (w *keepingWriter) WriteHeader(s int) { w.status = s }
func (w *keepingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, p)
	w.copy.Write(p)
	return len(p), nil
}

// zeroedAfter checks that what the encoder wrote was correct JSON while
// it was written, and that its buffer is all zeros now.
func (w *keepingWriter) zeroedAfter(t *testing.T, what string, out any) {
	t.Helper()
	if err := json.Unmarshal(w.copy.Bytes(), out); err != nil {
		t.Fatalf("%s: answer is not JSON: %v", what, err)
	}
	for _, p := range w.writes {
		if len(p) == 0 || bytes.Count(p, []byte{0}) != len(p) {
			t.Fatalf("%s: the encode buffer still holds the answer after the handler returned", what)
		}
	}
}

// TestZeroing_EncodeBuffers: the answers that carry secrets (unwrap
// plaintexts, data keys, shares) are encoded into buffers Coffer zeroes
// once written, not through encoding/json's pool.
func TestZeroing_EncodeBuffers(t *testing.T) {
	secret := []byte("very secret plaintext")
	var w keepingWriter
	writePlaintexts(&w, []keystore.Result{{Plaintext: append([]byte(nil), secret...)}}, false)
	var ur api.UnwrapResult
	w.zeroedAfter(t, "unwrap", &ur)
	if !bytes.Equal(ur.Plaintext, secret) {
		t.Fatalf("unwrap answer %q", ur.Plaintext)
	}

	w = keepingWriter{}
	writePlaintexts(&w, []keystore.Result{{Plaintext: secret}, {Err: keystore.ErrDecrypt}}, true)
	var ub api.UnwrapBatchResponse
	w.zeroedAfter(t, "unwrap batch", &ub)
	if len(ub.Batch) != 2 || !bytes.Equal(ub.Batch[0].Plaintext, secret) || ub.Batch[1].Error == nil {
		t.Fatalf("unwrap batch answer %+v", ub)
	}

	w = keepingWriter{}
	writeDataKey(&w, keystore.Result{Plaintext: secret, Ciphertext: "coffer:v1:AAAA", Version: 1}, true)
	var dk api.DataKeyResponse
	w.zeroedAfter(t, "datakey", &dk)
	if !bytes.Equal(dk.Plaintext, secret) || dk.Ciphertext != "coffer:v1:AAAA" || dk.KeyVersion != 1 {
		t.Fatalf("datakey answer %+v", dk)
	}

	shares := []string{"coffer-share-1-abc", "-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\"\\<>&\x01é\xff\n-----END AGE ENCRYPTED FILE-----\n"}
	w = keepingWriter{}
	writeShares(&w, shares, true)
	var ir api.InitResponse
	w.zeroedAfter(t, "shares", &ir)
	want := []string{shares[0], "-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\"\\<>&\x01é\ufffd\n-----END AGE ENCRYPTED FILE-----\n"}
	if !ir.Encrypted || len(ir.Shares) != 2 || ir.Shares[0] != want[0] || ir.Shares[1] != want[1] {
		t.Fatalf("shares answer %+v", ir)
	}
}
