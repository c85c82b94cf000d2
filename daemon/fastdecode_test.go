package daemon

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
)

var fastDecodeSeeds = []string{
	`{"plaintext":"aGk="}`, `{ "plaintext" : "aGk=" , "aad" : "eA==" }`, `{"plaintext":""}`, `{}`,
	`{"batch":[{"plaintext":"aGk=","aad":"eA=="},{"plaintext":"AAAA"}]}`, `{"batch":[]}`, `{"batch":[{}]}`,
	`{"ciphertext":"coffer:v1:AAAA"}`, `{"batch":[{"ciphertext":"coffer:v1:AAAA","aad":"eA=="}]}`,
	`{"bytes":32,"include_plaintext":false}`, `{"bytes":0}`, `{"bytes":01}`, `{"bytes":1.5}`, `{"bytes":-1}`,
	`{"include_plaintext":true,"aad":"eA=="}`, `{"Plaintext":"aGk="}`, `{"plaintext":"aGk=","plaintext":"AAAA"}`,
	`{"plaintext":"aG\nk="}`, `{"plaintext":"aG\u0041k="}`, `{"plaintext":null}`, `{"batch":null}`,
	`{"plaintext":"!!"}`, `{"plaintext":"aGk"}`, `{"a":1}`, `{"plaintext":"aGk="} x`, `{"plaintext":"aGk="}{}`,
	`{"batch":[{"plaintext":"aGk="},]}`, `{"plaintext":"aGk=",}`, `{`, `[]`, `null`, ``, ` `,
	`{"ciphertext":"caf\u00e9"}`, "{\"ciphertext\":\"caf\xc3\xa9\"}", "{\"ciphertext\":\"\xff\"}",
	"{\"plaintext\":\"aGk=\r\n\"}", "{\"plaintext\":\"aG\nk=\"}", "{\"plaintext\":\"aGk\\\"=\"}", "{\"aad\":\"eA==\x00\"}",
}

// FuzzFastDecode: whatever a hand-written decoder accepts, encoding/json
// (with unknown fields refused, as decode does) accepts too and decodes to
// the same value; so the fast path changes neither the accepted language
// nor, through the fallback, any error.
func FuzzFastDecode(f *testing.F) {
	for _, s := range fastDecodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(name string, fast bool, got, want any) {
			t.Helper()
			if !fast {
				return
			}
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(want); err != nil {
				t.Fatalf("%s: fast path accepted %q, encoding/json refuses it: %v", name, body, err)
			}
			if _, err := dec.Token(); err == nil {
				t.Fatalf("%s: fast path accepted %q with trailing data", name, body)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: %q: fast %#v, encoding/json %#v", name, body, got, want)
			}
		}
		var w api.WrapRequest
		check("wrap", parseWrap(body, &w), &w, &api.WrapRequest{})
		var c api.CiphertextRequest
		check("ciphertext", parseCiphertext(body, &c), &c, &api.CiphertextRequest{})
		var d api.DataKeyRequest
		check("datakey", parseDataKey(body, &d), &d, &api.DataKeyRequest{})

		// Decoding into a pooled batchScratch (batch.go) gives the same
		// values, whatever the scratch held before.
		sc := getBatchScratch()
		defer sc.release()
		var w2 api.WrapRequest
		if ok := parseWrapInto(body, &w2, sc); ok != parseWrap(body, &api.WrapRequest{}) || (ok && !reflect.DeepEqual(&w2, &w)) {
			t.Fatalf("wrap into a scratch: %v %#v, without %#v", ok, w2, w)
		}
		var c2 api.CiphertextRequest
		if ok := parseCiphertextInto(body, &c2, sc); ok != parseCiphertext(body, &api.CiphertextRequest{}) || (ok && !reflect.DeepEqual(&c2, &c)) {
			t.Fatalf("ciphertext into a scratch: %v %#v, without %#v", ok, c2, c)
		}
	})
}

// The fast path must answer exactly as the encoding/json path did: same
// status and message for every seed, through decode.
func TestFastDecode_SameErrors(t *testing.T) {
	targets := []func() any{
		func() any { return &api.WrapRequest{} }, func() any { return &api.CiphertextRequest{} },
		func() any { return &api.DataKeyRequest{} },
	}
	for _, s := range fastDecodeSeeds {
		for _, mk := range targets {
			rc := &reqCtx{w: httptest.NewRecorder(), r: httptest.NewRequest("POST", "/", strings.NewReader(s))}
			rc.grantBody()
			got, gerr := mk(), error(nil)
			gerr = decode(rc, got)
			want := mk()
			werr := decodeStream(strings.NewReader(s), want)
			if (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
				t.Errorf("%q into %T: decode %v, encoding/json %v", s, got, gerr, werr)
				continue
			}
			if gerr == nil && !reflect.DeepEqual(got, want) {
				t.Errorf("%q into %T: decode %#v, encoding/json %#v", s, got, got, want)
			}
		}
	}
	// The usual shapes do take the fast path.
	for _, s := range []string{`{"plaintext":"aGk="}`, `{"batch":[{"plaintext":"aGk="}]}`} {
		var w api.WrapRequest
		if !parseWrap([]byte(s), &w) {
			t.Errorf("%s: not decoded by the fast path", s)
		}
	}
	var c api.CiphertextRequest
	if !parseCiphertext([]byte(`{"ciphertext":"coffer:v1:AAAA"}`), &c) {
		t.Error("ciphertext: not decoded by the fast path")
	}
}

// A body over the caller's limit is refused with 413 as before.
func TestFastDecode_BodyLimit(t *testing.T) {
	big := `{"plaintext":"` + strings.Repeat("A", api.MaxOpenBody) + `"}`
	rc := &reqCtx{w: httptest.NewRecorder(), r: httptest.NewRequest("POST", "/", strings.NewReader(big))}
	err := decode(rc, &api.WrapRequest{})
	status, _, _ := toAPIError(err)
	if status != 413 {
		t.Fatalf("over the open limit: %v (%d), want 413", err, status)
	}
}
