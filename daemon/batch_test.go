package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore"
)

// batchItem is one emitted result for the encoder tests.
type batchItem struct {
	version int
	out     []byte
	err     error
}

var batchTestErrors = []error{
	keystore.ErrDecrypt,
	fmt.Errorf("%w: key \"a<b>&c\" version 3 — tampered", keystore.ErrDecrypt),
	fmt.Errorf("%w: plaintext is 70000 bytes", keystore.ErrTooLarge),
	fmt.Errorf("%w: below min_decryption_version", keystore.ErrVersionDisabled),
	errors.New("reading randomness: \x01 broken \xff"),
}

// encodeBatch runs the batch encoder over items as the keystore would
// emit them.
func encodeBatch(items []batchItem, plaintext bool) []byte {
	e := batchEncoder{ver: make([]int, len(items)), plaintext: plaintext}
	e.begin()
	for i, it := range items {
		e.emit(i, it.version, it.out, it.err)
	}
	e.end()
	return e.buf
}

// checkBatchEncoding: a wrap or rewrap batch answer is byte for byte what
// encoding/json makes of the old result structs (api.WrapBatchResponse),
// and an unwrap batch answer byte for byte what the old encoder
// (writePlaintexts) made of the keystore's Results, decoding to the same
// values.
func checkBatchEncoding(t *testing.T, items []batchItem) {
	t.Helper()
	want := api.WrapBatchResponse{Batch: make([]api.WrapResult, len(items))}
	results := make([]keystore.Result, len(items))
	for i, it := range items {
		if it.err != nil {
			want.Batch[i] = api.WrapResult{Error: itemError(it.err)}
			results[i] = keystore.Result{Err: it.err}
			continue
		}
		want.Batch[i] = api.WrapResult{Ciphertext: keystore.FormatCiphertext(it.version, it.out), KeyVersion: it.version}
		results[i] = keystore.Result{Plaintext: bytes.Clone(it.out), Version: it.version}
	}
	wantJSON, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := encodeBatch(items, false); !bytes.Equal(got, append(wantJSON, '\n')) {
		t.Fatalf("wrap batch answer\n%s\nencoding/json of the old structs\n%s", got, wantJSON)
	}

	got := encodeBatch(items, true)
	var old keepingWriter
	writePlaintexts(&old, results, true)
	if !bytes.Equal(got, old.copy.Bytes()) {
		t.Fatalf("unwrap batch answer\n%s\nthe old encoder\n%s", got, old.copy.Bytes())
	}
	var ub api.UnwrapBatchResponse
	if err := json.Unmarshal(got, &ub); err != nil || len(ub.Batch) != len(items) {
		t.Fatalf("unwrap batch answer does not decode: %v %s", err, got)
	}
	for i, it := range items {
		r := ub.Batch[i]
		if it.err != nil {
			if r.Plaintext != nil || !reflect.DeepEqual(r.Error, itemError(it.err)) {
				t.Fatalf("item %d: %+v, want error %+v", i, r, itemError(it.err))
			}
		} else if r.Error != nil || !bytes.Equal(r.Plaintext, it.out) {
			t.Fatalf("item %d: %+v, want plaintext %q", i, r, it.out)
		}
	}
}

func TestBatchEncoder_SameAsJSON(t *testing.T) {
	var items []batchItem
	for i := range 40 {
		if i%7 == 3 {
			items = append(items, batchItem{err: batchTestErrors[i%len(batchTestErrors)]})
			continue
		}
		// Versions change within the batch (rewrap of one version does
		// not, but the encoder must not assume it), lengths from 0 up.
		items = append(items, batchItem{version: 1 + i/10*1000, out: bytes.Repeat([]byte{byte(i), 0xff, '"'}, i)})
	}
	checkBatchEncoding(t, items)
	checkBatchEncoding(t, items[:1])
	checkBatchEncoding(t, []batchItem{{err: keystore.ErrDecrypt}})
	// A batch larger than the first buffer makes the encoder grow it.
	big := make([]batchItem, 300)
	for i := range big {
		big[i] = batchItem{version: 7, out: make([]byte, 200)}
	}
	checkBatchEncoding(t, big)
}

// FuzzBatchEncode: for any results, the batch answers are those of the
// old encoders (checkBatchEncoding).
func FuzzBatchEncode(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{4, 3, 'a', 'b', 'c', 0, 0, 8, 0})
	f.Add([]byte{255, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 1, 0, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		var items []batchItem
		for len(data) >= 2 {
			b, n := data[0], int(data[1])%80
			data = data[2:]
			n = min(n, len(data))
			if b%4 == 0 {
				items = append(items, batchItem{err: batchTestErrors[int(b/4)%len(batchTestErrors)]})
			} else {
				items = append(items, batchItem{version: 1 + int(b>>2)*int(b), out: data[:n]})
			}
			data = data[n:]
		}
		if len(items) == 0 {
			return
		}
		checkBatchEncoding(t, items)
	})
}

// TestBatchEncoder_GrowZeroes: a buffer the encoder outgrows is zeroed
// (it held base64 plaintext), and so are the pooled buffers on release.
func TestBatchEncoder_GrowZeroes(t *testing.T) {
	e := batchEncoder{ver: make([]int, 2), plaintext: true, buf: make([]byte, 0, 64)}
	first := e.buf[:cap(e.buf)]
	e.begin()
	e.emit(0, 1, []byte("secret secret"), nil)
	e.emit(1, 1, bytes.Repeat([]byte("x"), 100), nil)
	if &first[0] == &e.buf[0] {
		t.Fatal("the buffer did not grow")
	}
	if bytes.Count(first, []byte{0}) != len(first) {
		t.Fatalf("outgrown buffer not zeroed: %q", first)
	}

	sc := getBatchScratch()
	sc.out = append(sc.out[:0], "c2VjcmV0"...)
	a := sc.arenaFor([]byte(`{"plaintext":"c2VjcmV0"}`))
	a.b = append(a.b, "secret"...)
	sc.keepArena(a)
	out, arena := sc.out[:cap(sc.out)], sc.arena[:cap(sc.arena)]
	sc.wrap = append(sc.wrapItems(), api.WrapItem{Plaintext: arena})
	items := sc.keystoreItems(1)
	items[0].Plaintext = arena
	wrap, kitems := sc.wrap[:1], sc.items[:1]
	sc.release()
	if bytes.Count(out, []byte{0}) != len(out) || bytes.Count(arena, []byte{0}) != len(arena) {
		t.Fatal("release did not zero the answer or the arena")
	}
	if wrap[0].Plaintext != nil || kitems[0].Plaintext != nil {
		t.Fatal("release kept pointers to the arena in the pooled items")
	}
}

// TestBatchAudit_SameAsAuditCrypto: a batch's audit fields are those
// auditCrypto records from the Results of the same batch.
func TestBatchAudit_SameAsAuditCrypto(t *testing.T) {
	s := &Server{}
	ct := func(v int) string { return fmt.Sprintf("coffer:v%d:AAAA", v) }
	cases := []struct {
		name   string
		items  []keystore.Item
		out    []keystore.Result // nil: the operation failed as a whole
		sealed bool
	}{
		{"wrap", []keystore.Item{{Plaintext: []byte("a")}, {Plaintext: []byte("b")}}, []keystore.Result{{Ciphertext: ct(3), Version: 3}, {Ciphertext: ct(3), Version: 3}}, true},
		{"wrap one failed", []keystore.Item{{Plaintext: []byte("a")}, {Plaintext: []byte("b")}}, []keystore.Result{{Err: keystore.ErrTooLarge}, {Ciphertext: ct(3), Version: 3}}, true},
		{"wrap all failed", []keystore.Item{{Plaintext: []byte("a")}, {Plaintext: []byte("b")}}, []keystore.Result{{Err: keystore.ErrTooLarge}, {Err: keystore.ErrTooLarge}}, true},
		{"wrap missing key", []keystore.Item{{Plaintext: []byte("a")}, {Plaintext: []byte("b")}}, nil, true},
		{"unwrap", []keystore.Item{{Ciphertext: ct(2)}, {Ciphertext: ct(1)}, {Ciphertext: "junk"}, {Ciphertext: ""}, {Ciphertext: ct(2)}},
			[]keystore.Result{{Plaintext: []byte("a"), Version: 2}, {Err: keystore.ErrVersionDisabled}, {Err: keystore.ErrDecrypt}, {Err: keystore.ErrDecrypt}, {Plaintext: []byte("b"), Version: 2}}, false},
		{"unwrap missing key", []keystore.Item{{Ciphertext: ct(2)}, {Ciphertext: ct(5)}}, nil, false},
		{"rewrap", []keystore.Item{{Ciphertext: "junk"}, {Ciphertext: ct(1)}, {Ciphertext: ct(2)}}, []keystore.Result{{Err: keystore.ErrDecrypt}, {Ciphertext: ct(4), Version: 4}, {Ciphertext: ct(4), Version: 4}}, true},
		{"rewrap all failed", []keystore.Item{{Ciphertext: ct(1)}, {Ciphertext: ct(2)}}, []keystore.Result{{Err: keystore.ErrDecrypt}, {Err: keystore.ErrDecrypt}}, true},
		{"many versions", func() (its []keystore.Item) {
			for v := 30; v > 0; v-- {
				its = append(its, keystore.Item{Ciphertext: ct(v)})
			}
			return
		}(), nil, false},
		{"single", []keystore.Item{{Ciphertext: ct(9)}}, []keystore.Result{{Plaintext: []byte("x"), Version: 9}}, false},
	}
	for _, c := range cases {
		want, got := &reqCtx{}, &reqCtx{}
		s.auditCrypto(want, c.items, c.out)
		ver := make([]int, len(c.items))
		failed := 0
		for i, r := range c.out {
			if r.Err != nil {
				failed++
			} else {
				ver[i] = r.Version
			}
		}
		s.auditBatch(got, c.items, ver, failed, c.out != nil, c.sealed)
		if got.au.keyVersion != want.au.keyVersion || !maps.Equal(got.au.detail, want.au.detail) || !maps.Equal(got.au.hmac, want.au.hmac) {
			t.Errorf("%s: batch audit %d %v %v, auditCrypto %d %v %v", c.name, got.au.keyVersion, got.au.detail, got.au.hmac, want.au.keyVersion, want.au.detail, want.au.hmac)
		}
	}
}

// TestBatch_HTTP: wrap, unwrap and rewrap batches through the daemon
// answer item for item what the keystore's Wrap, Unwrap and Rewrap answer
// (errors as the API documents them: {"error":{"code","message"}} in the
// item's place), request after request on pooled buffers, a large batch
// and one that does not take the fast decoder included.
func TestBatch_HTTP(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	n.init(1, 1)
	n.must("POST", "/v1/keys", api.CreateKeyRequest{Name: "k"}, nil, 201)
	post := func(path, body string, out any) {
		t.Helper()
		st, _, data := n.raw(nil, "POST", path, body)
		if st != http.StatusOK {
			t.Fatalf("%s: %d %s", path, st, data)
		}
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s: %v: %s", path, err, data)
		}
	}
	wrapBody := func(pts []string, aad string) string {
		var b strings.Builder
		b.WriteString(`{"batch":[`)
		for i, p := range pts {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"plaintext":%q`, b64(p))
			if aad != "" && i%2 == 1 {
				fmt.Fprintf(&b, `,"aad":%q`, b64(aad))
			}
			b.WriteByte('}')
		}
		b.WriteString(`]}`)
		return b.String()
	}
	ctBody := func(cts []string, aad string) string {
		var b strings.Builder
		b.WriteString(`{"batch":[`)
		for i, c := range cts {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"ciphertext":%q`, c)
			if aad != "" && i%2 == 1 {
				fmt.Fprintf(&b, `,"aad":%q`, b64(aad))
			}
			b.WriteByte('}')
		}
		b.WriteString(`]}`)
		return b.String()
	}
	for round, size := range []int{3, 100, 7, 1500, 2} {
		pts := make([]string, size)
		for i := range pts {
			pts[i] = fmt.Sprintf("plaintext %d of round %d", i, round)
		}
		pts[0] = ""
		var wb api.WrapBatchResponse
		post("/v1/keys/k/wrap", wrapBody(pts, "ctx"), &wb)
		if len(wb.Batch) != size {
			t.Fatalf("round %d: %d wrap results for %d items", round, len(wb.Batch), size)
		}
		cts := make([]string, size)
		for i, r := range wb.Batch {
			if r.Error != nil || r.KeyVersion != 1+round || !strings.HasPrefix(r.Ciphertext, fmt.Sprintf("coffer:v%d:", 1+round)) {
				t.Fatalf("round %d item %d: %+v", round, i, r)
			}
			cts[i] = r.Ciphertext
		}
		// Spoil some: another aad, junk, a version the key does not have.
		cts[size-1] = "coffer:v99:" + cts[size-1][strings.LastIndexByte(cts[size-1], ':')+1:]
		if size > 2 {
			cts[1] = "junk"
		}
		items := make([]keystore.Item, size)
		for i := range items {
			items[i] = keystore.Item{Ciphertext: cts[i]}
			if i%2 == 1 {
				items[i].AAD = []byte("ctx")
			}
		}
		if size > 2 {
			items[2].AAD = []byte("other") // the body says ctx for odd items only; item 2 has none
		}
		wantU, err := n.srv.ks.Unwrap("k", items)
		if err != nil {
			t.Fatal(err)
		}
		var ub api.UnwrapBatchResponse
		post("/v1/keys/k/unwrap", ctBody(cts, "ctx"), &ub)
		if size > 2 {
			items[2].AAD = nil
			wantU[2], _ = func() (keystore.Result, error) { r, err := n.srv.ks.Unwrap("k", items[2:3]); return r[0], err }()
		}
		for i, r := range ub.Batch {
			w := wantU[i]
			if w.Err != nil {
				if r.Plaintext != nil || !reflect.DeepEqual(r.Error, itemError(w.Err)) {
					t.Fatalf("round %d unwrap item %d: %+v, want %+v", round, i, r, itemError(w.Err))
				}
				continue
			}
			if r.Error != nil || string(r.Plaintext) != pts[i] {
				t.Fatalf("round %d unwrap item %d: %+v, want %q", round, i, r, pts[i])
			}
		}
		n.must("POST", "/v1/keys/k/rotate", nil, nil, 200)
		var rb api.WrapBatchResponse
		post("/v1/keys/k/rewrap", ctBody(cts, "ctx"), &rb)
		wantR, _ := n.srv.ks.Rewrap("k", items)
		for i, r := range rb.Batch {
			if w := wantR[i]; w.Err != nil {
				if r.Ciphertext != "" || !reflect.DeepEqual(r.Error, itemError(w.Err)) {
					t.Fatalf("round %d rewrap item %d: %+v, want %+v", round, i, r, itemError(w.Err))
				}
				continue
			}
			if r.Error != nil || r.KeyVersion != 2+round {
				t.Fatalf("round %d rewrap item %d: %+v", round, i, r)
			}
			pt, err := n.srv.ks.Unwrap("k", []keystore.Item{{Ciphertext: r.Ciphertext, AAD: items[i].AAD}})
			if err != nil || pt[0].Err != nil || string(pt[0].Plaintext) != pts[i] {
				t.Fatalf("round %d rewrap item %d does not open: %v %+v", round, i, err, pt)
			}
		}
	}
	// Not the fast decoder's shape (an escape): encoding/json decodes it,
	// the answer is the same.
	var wb api.WrapBatchResponse
	post("/v1/keys/k/wrap", `{"batch":[{"plaintext":"YQ\u003d\u003d"},{"plaintext":"Yg=="}]}`, &wb)
	var ub api.UnwrapBatchResponse
	post("/v1/keys/k/unwrap", `{"batch":[{"ciphertext":"`+wb.Batch[0].Ciphertext+`"},{"ciphertext":"`+strings.Replace(wb.Batch[1].Ciphertext, "coffer", `coffer\u0020`, 1)+`"}]}`, &ub)
	if string(ub.Batch[0].Plaintext) != "a" || ub.Batch[1].Error == nil || ub.Batch[1].Error.Code != api.CodeDecryptFailed {
		t.Fatalf("fallback batch: %+v", ub)
	}
	// Request-level refusals are unchanged.
	n.expect("POST", "/v1/keys/k/wrap", map[string]any{"batch": []map[string]string{{"plaintext": b64("a")}, {}}}, 400, api.CodeBadRequest)
	n.expect("POST", "/v1/keys/k/unwrap", map[string]any{"batch": []map[string]string{}}, 400, api.CodeBadRequest)
	n.expect("POST", "/v1/keys/k/rewrap", map[string]any{"ciphertext": "x", "batch": []map[string]string{{"ciphertext": "x"}}}, 400, api.CodeBadRequest)
	n.expect("POST", "/v1/keys/nope/unwrap", map[string]any{"batch": []map[string]string{{"ciphertext": "x"}}}, 404, api.CodeNotFound)
}

// plainASCII (eight bytes at a time) agrees with the byte loop it
// replaced, for every byte value in every position of a word and the tail.
func TestPlainASCII(t *testing.T) {
	slow := func(b []byte) bool {
		for _, c := range b {
			if c == '\\' || c < 0x20 || c >= 0x7f {
				return false
			}
		}
		return true
	}
	for n := 0; n <= 19; n++ {
		for pos := 0; pos < n; pos++ {
			for c := 0; c < 256; c++ {
				b := bytes.Repeat([]byte("aZ+/=9"), 4)[:n]
				b[pos] = byte(c)
				if got, want := plainASCII(b), slow(b); got != want {
					t.Fatalf("%q: %v, want %v", b, got, want)
				}
			}
		}
	}
}
