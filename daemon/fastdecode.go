package daemon

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net/http"
	"sync"
	"unsafe"

	"github.com/coffer-kms/coffer/api"
)

// Hand-written decoders for the hot request bodies (wrap, unwrap, rewrap,
// datakey). encoding/json was the largest single cost of a wrap after the
// system calls (docs/benchmarks.md, "Where the time goes"): it scans a body
// twice, decodes through reflection and allocates per field.
//
// These parsers accept only the plain shapes real clients send: the
// documented field names in lower case, each at most once, strings without
// escapes and of printable ASCII, base64 that decodes. Anything else —
// unknown or duplicate fields, null, escapes, other case, bad base64,
// trailing data — makes them give up, and the body is decoded again by
// encoding/json, so the accepted language and every error message stay
// exactly those of encoding/json (FuzzFastDecode checks that whatever the
// fast path accepts, encoding/json decodes to the same value).

// bodyPool recycles request body buffers; they are zeroed before reuse
// (they hold base64 plaintext).
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// maxPooledBody is the largest buffer kept for reuse: bigger ones (rare
// large batches) are left to the garbage collector after zeroing.
const maxPooledBody = 256 << 10

// readBody reads the request body (at most rc.maxBody() bytes) into a
// pooled buffer; release zeroes it and gives it back.
func readBody(rc *reqCtx) (body []byte, release func(), err error) {
	bp := bodyPool.Get().(*[]byte)
	buf := (*bp)[:0]
	limit := rc.maxBody()
	if cl := rc.r.ContentLength; cl > 0 && cl <= limit && int64(cap(buf)) < cl+1 {
		buf = make([]byte, 0, cl+1)
	}
	r := http.MaxBytesReader(rc.w, rc.r.Body, limit)
	for {
		if len(buf) == cap(buf) {
			// A body without a Content-Length (chunked, on net/http)
			// outgrows its buffer: the old one, holding the start of
			// it, is zeroed, not left to the garbage collector.
			buf = growZeroed(buf, 1)
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	release = func() {
		clear(buf[:cap(buf)])
		if cap(buf) <= maxPooledBody {
			*bp = buf[:0]
			bodyPool.Put(bp)
		}
	}
	if err != nil {
		release()
		return nil, nil, err
	}
	return buf, release, nil
}

// growZeroed returns b with room for n more bytes; when that takes a new
// array, the old one is zeroed (it held request bytes: plaintext).
func growZeroed(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), max(2*cap(b), len(b)+n, 512))
	copy(nb, b)
	clear(b[:cap(b)])
	return nb
}

// decodeFast decodes a hot request body into v with the hand-written
// parser for v's type, falling back to encoding/json. ok is false when v
// has no fast parser (the caller then streams it through encoding/json).
func decodeFast(rc *reqCtx, v any) (ok bool, err error) {
	var parse func([]byte) bool
	switch req := v.(type) {
	case *api.WrapRequest:
		parse = func(b []byte) bool { return parseWrap(b, req) }
	case *api.CiphertextRequest:
		parse = func(b []byte) bool { return parseCiphertext(b, req) }
	case *api.DataKeyRequest:
		parse = func(b []byte) bool { return parseDataKey(b, req) }
	default:
		return false, nil
	}
	body, release, err := readBody(rc)
	if err != nil {
		return true, decodeError(err)
	}
	defer release()
	if parse(body) {
		return true, nil
	}
	return true, decodeStream(bytes.NewReader(body), v)
}

// scanner walks a JSON body for the fast parsers.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// lit consumes c (after white space) if it is next.
func (s *scanner) lit(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str consumes a string without escapes of printable ASCII and returns its
// contents (a slice of the body).
func (s *scanner) str() ([]byte, bool) {
	if !s.lit('"') {
		return nil, false
	}
	end := bytes.IndexByte(s.b[s.i:], '"')
	if end < 0 || !plainASCII(s.b[s.i:s.i+end]) {
		return nil, false
	}
	v := s.b[s.i : s.i+end]
	s.i += end + 1
	return v, true
}

// plainASCII reports whether b is printable ASCII without a backslash,
// eight bytes at a time (a batch's ciphertexts are most of its body).
func plainASCII(b []byte) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b)
		// A byte < 0x20, a byte > 0x7e, a byte equal to '\\' (the
		// "has less", "has more" and "has zero" tests of Bit Twiddling
		// Hacks: exact about whether such a byte exists).
		less := (x - ones*0x20) & ^x & highs
		more := ((x + ones*(127-0x7e)) | x) & highs
		y := x ^ (ones * '\\')
		bs := (y - ones) & ^y & highs
		if less|more|bs != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c == '\\' || c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

// end reports whether only white space is left.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// object calls field for each member of an object; field returns false to
// give up. Duplicate detection is the callers' (seen bits).
func (s *scanner) object(field func(name []byte) bool) bool {
	if !s.lit('{') {
		return false
	}
	if s.lit('}') {
		return true
	}
	for {
		name, ok := s.str()
		if !ok || !s.lit(':') || !field(name) {
			return false
		}
		if s.lit(',') {
			continue
		}
		return s.lit('}')
	}
}

// arena holds the decoded bytes of one body: one allocation instead of one
// per field. Its size bounds everything base64 in the body can decode to.
type arena struct{ b []byte }

func newArena(body []byte) *arena {
	return &arena{b: make([]byte, 0, base64.StdEncoding.DecodedLen(len(body)))}
}

// b64 decodes a base64 string as encoding/json decodes a []byte field
// (base64.StdEncoding, which skips \r and \n): a non-nil slice, empty for "".
func (s *scanner) b64(a *arena) ([]byte, bool) {
	// No character-by-character check here: base64 decoding refuses
	// every byte outside its alphabet (a backslash, a quote, non-ASCII),
	// except raw CR and LF, which it skips but JSON does not allow in a
	// string.
	if !s.lit('"') {
		return nil, false
	}
	end := bytes.IndexByte(s.b[s.i:], '"')
	if end < 0 {
		return nil, false
	}
	v := s.b[s.i : s.i+end]
	if bytes.IndexByte(v, '\n') >= 0 || bytes.IndexByte(v, '\r') >= 0 {
		return nil, false
	}
	s.i += end + 1
	start := len(a.b)
	dst := a.b[start : start+base64.StdEncoding.DecodedLen(len(v))]
	n, err := base64.StdEncoding.Decode(dst, v)
	if err != nil {
		clear(dst)
		return nil, false
	}
	a.b = a.b[:start+n]
	return a.b[start : start+n : start+n], true
}

// once marks field bit in seen and reports whether it was unmarked: a
// duplicate field is left to encoding/json, which decides what it means.
func once(seen *uint8, bit uint8) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// array calls elem for each element of an array; elem returns false to
// give up.
func (s *scanner) array(elem func() bool) bool {
	if !s.lit('[') {
		return false
	}
	if s.lit(']') {
		return true
	}
	for {
		if !elem() {
			return false
		}
		if s.lit(',') {
			continue
		}
		return s.lit(']')
	}
}

// wrapField decodes a wrap body's or batch item's field; anything else is
// left to encoding/json.
func (s *scanner) wrapField(a *arena, name []byte, seen *uint8, plaintext, aad *[]byte) (ok bool) {
	switch string(name) {
	case "plaintext":
		if once(seen, 1) {
			*plaintext, ok = s.b64(a)
		}
	case "aad":
		if once(seen, 2) {
			*aad, ok = s.b64(a)
		}
	}
	return ok
}

func parseWrap(body []byte, out *api.WrapRequest) bool { return parseWrapInto(body, out, nil) }

// parseWrapInto is parseWrap decoding into sc's pooled arena and item
// slice when sc is not nil (batch.go).
func parseWrapInto(body []byte, out *api.WrapRequest, sc *batchScratch) bool {
	s := scanner{b: body}
	a := sc.arenaFor(body)
	defer sc.keepArena(a)
	var req api.WrapRequest
	var seen uint8
	ok := s.object(func(name []byte) bool {
		if string(name) != "batch" {
			return s.wrapField(a, name, &seen, &req.Plaintext, &req.AAD)
		}
		if !once(&seen, 4) {
			return false
		}
		if sc != nil {
			// A pooled slice (append grows it for a larger batch): no
			// count of the items first.
			req.Batch = sc.wrapItems()
			defer func() { sc.wrap = req.Batch }()
		} else {
			req.Batch = make([]api.WrapItem, 0, bytes.Count(s.b[s.i:], []byte(`"plaintext"`)))
		}
		return s.array(func() bool {
			var it api.WrapItem
			var iseen uint8
			if !s.object(func(name []byte) bool { return s.wrapField(a, name, &iseen, &it.Plaintext, &it.AAD) }) {
				return false
			}
			req.Batch = append(req.Batch, it)
			return true
		})
	})
	if !ok || !s.end() {
		clear(a.b[:cap(a.b)])
		return false
	}
	*out = req
	return true
}

// ciphertextField decodes an unwrap/rewrap body's or batch item's field.
// With share, the ciphertext string shares the body's memory instead of
// copying it (batch items decoded into a batchScratch, which keeps the
// body until the request is done).
func (s *scanner) ciphertextField(a *arena, name []byte, seen *uint8, ciphertext *string, aad *[]byte, share bool) (ok bool) {
	switch string(name) {
	case "ciphertext":
		if once(seen, 1) {
			var v []byte
			v, ok = s.str()
			if share {
				*ciphertext = unsafe.String(unsafe.SliceData(v), len(v))
			} else {
				*ciphertext = string(v)
			}
		}
	case "aad":
		if once(seen, 2) {
			*aad, ok = s.b64(a)
		}
	}
	return ok
}

func parseCiphertext(body []byte, out *api.CiphertextRequest) bool {
	return parseCiphertextInto(body, out, nil)
}

// parseCiphertextInto is parseCiphertext decoding into sc's pooled arena
// and item slice when sc is not nil; the batch items' ciphertexts then
// share body's memory, which sc keeps until it is released (batch.go).
func parseCiphertextInto(body []byte, out *api.CiphertextRequest, sc *batchScratch) bool {
	s := scanner{b: body}
	a := sc.arenaFor(body)
	defer sc.keepArena(a)
	var req api.CiphertextRequest
	var seen uint8
	ok := s.object(func(name []byte) bool {
		if string(name) != "batch" {
			return s.ciphertextField(a, name, &seen, &req.Ciphertext, &req.AAD, false)
		}
		if !once(&seen, 4) {
			return false
		}
		if sc != nil {
			req.Batch = sc.ciphertextItems()
			defer func() { sc.cts = req.Batch }()
		} else {
			req.Batch = make([]api.CiphertextItem, 0, bytes.Count(s.b[s.i:], []byte(`"ciphertext"`)))
		}
		return s.array(func() bool {
			var it api.CiphertextItem
			var iseen uint8
			if !s.object(func(name []byte) bool {
				return s.ciphertextField(a, name, &iseen, &it.Ciphertext, &it.AAD, sc != nil)
			}) {
				return false
			}
			req.Batch = append(req.Batch, it)
			return true
		})
	})
	if !ok || !s.end() {
		return false
	}
	*out = req
	return true
}

// num consumes a small non-negative integer (what "bytes" takes); other
// numbers are left to encoding/json.
func (s *scanner) num() (int, bool) {
	s.ws()
	j, v := s.i, 0
	for j < len(s.b) && s.b[j] >= '0' && s.b[j] <= '9' && j-s.i < 9 {
		v = v*10 + int(s.b[j]-'0')
		j++
	}
	if j == s.i || (s.b[s.i] == '0' && j-s.i > 1) {
		return 0, false
	}
	if j < len(s.b) {
		switch s.b[j] {
		case ' ', '\t', '\n', '\r', ',', '}':
		default:
			return 0, false // 1.5, 1e3, too many digits: encoding/json decides
		}
	}
	s.i = j
	return v, true
}

func (s *scanner) boolean() (bool, bool) {
	s.ws()
	switch {
	case bytes.HasPrefix(s.b[s.i:], []byte("true")):
		s.i += 4
		return true, true
	case bytes.HasPrefix(s.b[s.i:], []byte("false")):
		s.i += 5
		return false, true
	}
	return false, false
}

func parseDataKey(body []byte, out *api.DataKeyRequest) bool {
	s := scanner{b: body}
	a := newArena(body)
	var req api.DataKeyRequest
	var seen uint8
	ok := s.object(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case "bytes":
			if !once(&seen, 1) {
				return false
			}
			var n int
			n, ok = s.num()
			req.Bytes = &n
		case "aad":
			if !once(&seen, 2) {
				return false
			}
			req.AAD, ok = s.b64(a)
		case "include_plaintext":
			if !once(&seen, 4) {
				return false
			}
			var b bool
			b, ok = s.boolean()
			req.IncludePlaintext = &b
		}
		return ok
	})
	if !ok || !s.end() {
		return false
	}
	*out = req
	return true
}
