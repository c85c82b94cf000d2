package daemon

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore"
)

// Batches of wrap, unwrap and rewrap (issue 15: a batch of 100 at ≤ 0.8 µs
// of server CPU per item). A batch used to cost, per item, a decoded item
// struct, a keystore.Item, a keystore.Result with its own ciphertext string
// or plaintext slice, and a second pass to encode those into the answer;
// with the garbage collector that was about half of the server's CPU. Now
// the keystore streams each item's result (keystore.WrapEach, UnwrapEach,
// RewrapEach) and the answer is encoded straight into one pooled buffer:
// no per-item allocation on the way. The decoded items, the arena of their
// base64, the request body and the answer buffer are pooled per request
// (batchScratch) and zeroed before reuse: they hold plaintext.

// batchScratch is one crypto request's pooled buffers.
type batchScratch struct {
	ar        arena
	arena     []byte // decoded base64 of the body (fastdecode.go)
	arenaUsed int    // how much of arena decoding may have written
	wrap      []api.WrapItem
	cts       []api.CiphertextItem
	items     []keystore.Item
	ver       []int // per item: the key version of its result (the audit entry)
	out       []byte
	// releaseBody gives the request body back; it is kept until the
	// request is done because batch ciphertexts share its memory.
	releaseBody func()
}

var batchPool = sync.Pool{New: func() any { return new(batchScratch) }}

// maxPooledItems bounds the item slices kept for reuse (a 10,000-item
// batch is rare; its slices are left to the garbage collector).
const maxPooledItems = 1024

func getBatchScratch() *batchScratch { return batchPool.Get().(*batchScratch) }

// release zeroes what held plaintext or pointed at it and pools the rest.
func (sc *batchScratch) release() {
	if sc.releaseBody != nil {
		sc.releaseBody()
		sc.releaseBody = nil
	}
	// Only what this request used: a single wrap after a batch must not
	// pay for zeroing the batch's buffers again. The slices' lengths are
	// what was written (arenaUsed for the arena, which base64 decoding
	// writes past its length).
	clear(sc.arena[:sc.arenaUsed])
	clear(sc.out)
	clear(sc.wrap)
	clear(sc.cts)
	clear(sc.items)
	sc.arena, sc.arenaUsed, sc.out = sc.arena[:0], 0, sc.out[:0]
	sc.wrap, sc.cts, sc.items = sc.wrap[:0], sc.cts[:0], sc.items[:0]
	if cap(sc.arena) > maxPooledBody {
		sc.arena = nil
	}
	if cap(sc.out) > maxPooledBody {
		sc.out = nil
	}
	if cap(sc.wrap) > maxPooledItems || cap(sc.cts) > maxPooledItems || cap(sc.items) > maxPooledItems || cap(sc.ver) > maxPooledItems {
		sc.wrap, sc.cts, sc.items, sc.ver = nil, nil, nil, nil
	}
	batchPool.Put(sc)
}

// arenaFor is newArena from the pooled arena (sc may be nil: a fresh one).
func (sc *batchScratch) arenaFor(body []byte) *arena {
	if sc == nil {
		return newArena(body)
	}
	n := base64.StdEncoding.DecodedLen(len(body))
	if cap(sc.arena) < n {
		clear(sc.arena[:sc.arenaUsed])
		sc.arena = make([]byte, 0, n)
	}
	sc.arenaUsed = max(sc.arenaUsed, n)
	sc.ar = arena{b: sc.arena[:0]}
	return &sc.ar
}

// keepArena records the arena's buffer, to be zeroed on release.
func (sc *batchScratch) keepArena(a *arena) {
	if sc != nil {
		sc.arena = a.b[:0]
	}
}

// wrapItems and ciphertextItems are the pooled item slices, never nil
// (a nil Batch means a single item). The parser stores the filled slice
// back (its length is what release zeroes).
func (sc *batchScratch) wrapItems() []api.WrapItem {
	clear(sc.wrap)
	if sc.wrap == nil {
		sc.wrap = make([]api.WrapItem, 0, 128)
	}
	return sc.wrap[:0]
}

func (sc *batchScratch) ciphertextItems() []api.CiphertextItem {
	clear(sc.cts)
	if sc.cts == nil {
		sc.cts = make([]api.CiphertextItem, 0, 128)
	}
	return sc.cts[:0]
}

func (sc *batchScratch) keystoreItems(n int) []keystore.Item {
	clear(sc.items)
	if cap(sc.items) < n {
		sc.items = make([]keystore.Item, n)
	}
	sc.items = sc.items[:n]
	if cap(sc.ver) < n {
		sc.ver = make([]int, n)
	}
	sc.ver = sc.ver[:n]
	return sc.items[:n]
}

// decode is decode (http.go) with the hand-written parsers decoding into
// sc; for the bodies without one it is decode itself.
func (sc *batchScratch) decode(rc *reqCtx, v any) error {
	var parse func([]byte) bool
	switch req := v.(type) {
	case *api.WrapRequest:
		parse = func(b []byte) bool { return parseWrapInto(b, req, sc) }
	case *api.CiphertextRequest:
		parse = func(b []byte) bool { return parseCiphertextInto(b, req, sc) }
	default:
		return decode(rc, v)
	}
	body, release, err := readBody(rc)
	if err != nil {
		return decodeError(err)
	}
	sc.releaseBody = release
	if parse(body) {
		return nil
	}
	return decodeStream(bytes.NewReader(body), v)
}

// batchEncoder encodes a batch answer as the keystore emits its items.
type batchEncoder struct {
	buf []byte
	ver []int
	// plaintext: an unwrap answer ({"plaintext":…}), else wrap/rewrap.
	plaintext      bool
	failed         int
	unknownVersion bool
	// pre and suf are `{"ciphertext":"coffer:v<N>:` and
	// `","key_version":<N>}` for version pv: every item of a batch is
	// sealed under the same version.
	pv             int
	pre, suf       []byte
	preBuf, sufBuf [48]byte
}

// reserve makes room for n more bytes. The buffer is grown by hand, not
// by append, so that an outgrown buffer that held plaintext is zeroed.
func (e *batchEncoder) reserve(n int) {
	if cap(e.buf)-len(e.buf) >= n {
		return
	}
	nb := make([]byte, len(e.buf), max(2*cap(e.buf), len(e.buf)+n, 4096))
	copy(nb, e.buf)
	clear(e.buf[:cap(e.buf)])
	e.buf = nb
}

func (e *batchEncoder) begin() {
	e.reserve(16)
	e.buf = append(e.buf, `{"batch":[`...)
}

// emit is the keystore.EmitFunc.
func (e *batchEncoder) emit(i, v int, out []byte, err error) {
	if err != nil {
		e.failed++
		if errors.Is(err, keystore.ErrUnknownVersion) {
			e.unknownVersion = true
		}
		// Rare: the error object through encoding/json, as before
		// ({"error":{"code","message"}} for every operation).
		b, _ := json.Marshal(api.WrapResult{Error: itemError(err)})
		e.reserve(len(b) + 1)
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = append(e.buf, b...)
		return
	}
	e.ver[i] = v
	if e.plaintext {
		e.reserve(base64.StdEncoding.EncodedLen(len(out)) + 16)
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = append(e.buf, `{"plaintext":"`...)
		e.buf = base64.StdEncoding.AppendEncode(e.buf, out)
		e.buf = append(e.buf, `"}`...)
		return
	}
	if v != e.pv || e.pre == nil {
		e.pv = v
		e.pre = append(strconv.AppendInt(append(e.preBuf[:0], `{"ciphertext":"`+keystore.CiphertextPrefix...), int64(v), 10), ':')
		e.suf = append(strconv.AppendInt(append(e.sufBuf[:0], `","key_version":`...), int64(v), 10), '}')
	}
	e.reserve(len(e.pre) + base64.StdEncoding.EncodedLen(len(out)) + len(e.suf) + 1)
	if i > 0 {
		e.buf = append(e.buf, ',')
	}
	e.buf = append(e.buf, e.pre...)
	e.buf = base64.StdEncoding.AppendEncode(e.buf, out)
	e.buf = append(e.buf, e.suf...)
}

func (e *batchEncoder) end() {
	e.reserve(3)
	e.buf = append(e.buf, "]}\n"...)
}

// runBatch runs a streaming keystore batch operation into sc's answer
// buffer, records the request's audit fields, and writes the answer. As
// crypto does for the other paths, a key or a key version this node has
// not applied yet makes it catch up with the leader and run once more
// (the first answer is zeroed and dropped).
func (s *Server) runBatch(rc *reqCtx, op func(string, []keystore.Item, keystore.EmitFunc) error, items []keystore.Item, sc *batchScratch, plaintext bool) error {
	e := batchEncoder{buf: sc.out[:0], ver: sc.ver, plaintext: plaintext}
	// The first allocation is sized for the usual item (a 32-byte
	// plaintext); later requests reuse the pooled buffer.
	e.reserve(16 + 96*len(items))
	run := func() error {
		clear(e.buf) // a first answer before catching up
		e.buf, e.failed, e.unknownVersion = e.buf[:0], 0, false
		clear(e.ver)
		e.begin()
		return op(rc.name, items, e.emit)
	}
	err := run()
	if errors.Is(err, keystore.ErrNotFound) || (err == nil && e.unknownVersion) {
		// Without a leader to catch up with, the retry answers with what
		// this node knows.
		_ = s.node.Sync(rc.r.Context())
		err = run()
	}
	sc.out = e.buf // zeroed on release
	if err != nil {
		e.failed = 0
	}
	s.auditBatch(rc, items, e.ver, e.failed, err == nil, !plaintext)
	if err != nil {
		return err
	}
	e.end()
	sc.out = e.buf
	writeRaw(rc.w, http.StatusOK, e.buf)
	return nil
}

// auditBatch records what auditCrypto records for the same batch, from
// the per-item versions (0 for a failed item) instead of Results: the
// versions named (those of the ciphertexts sent, else of the results),
// rewrap's new version, the item count, the failed items, the aad HMACs.
// ran is false when the operation failed as a whole (no results); sealed
// when the results are ciphertexts (wrap, rewrap).
func (s *Server) auditBatch(rc *reqCtx, items []keystore.Item, ver []int, failed int, ran, sealed bool) {
	ra := &rc.au
	var buf [16]int
	versions := buf[:0]
	newVersion := 0
	for i := range items {
		v := 0
		switch {
		case items[i].Ciphertext != "":
			v = ciphertextVersion(items[i].Ciphertext)
			if ran && sealed && newVersion == 0 && ver[i] > 0 {
				newVersion = ver[i] // rewrap
			}
		case ran:
			v = ver[i]
		}
		if v > 0 && !slices.Contains(versions, v) && len(versions) < 16 {
			versions = append(versions, v)
		}
	}
	ra.setKeyVersions(versions)
	if newVersion > 0 {
		ra.setDetail("new_version", strconv.Itoa(newVersion))
	}
	if len(items) > 1 {
		ra.setDetail("items", strconv.Itoa(len(items)))
	}
	if failed > 0 {
		ra.setDetail("failed_items", strconv.Itoa(failed))
	}
	s.auditAAD(rc, items)
}

// wrapBatch serves a wrap batch (req.Batch not nil).
func (s *Server) wrapBatch(rc *reqCtx, req *api.WrapRequest, sc *batchScratch) error {
	if req.Plaintext != nil || req.AAD != nil {
		return badRequest("send either a single item or batch, not both")
	}
	if err := checkBatch(len(req.Batch)); err != nil {
		return err
	}
	items := sc.keystoreItems(len(req.Batch))
	for i, b := range req.Batch {
		if b.Plaintext == nil {
			return badRequest("batch item %d: plaintext is required", i)
		}
		items[i] = keystore.Item{Plaintext: b.Plaintext, AAD: b.AAD}
	}
	return s.runBatch(rc, s.ks.WrapEach, items, sc, false)
}

// ciphertextBatch serves an unwrap or rewrap batch (req.Batch not nil).
func (s *Server) ciphertextBatch(rc *reqCtx, req *api.CiphertextRequest, sc *batchScratch, unwrap bool) error {
	if req.Ciphertext != "" || req.AAD != nil {
		return badRequest("send either a single item or batch, not both")
	}
	if err := checkBatch(len(req.Batch)); err != nil {
		return err
	}
	items := sc.keystoreItems(len(req.Batch))
	for i, b := range req.Batch {
		items[i] = keystore.Item{Ciphertext: b.Ciphertext, AAD: b.AAD}
	}
	if unwrap {
		return s.runBatch(rc, s.ks.UnwrapEach, items, sc, true)
	}
	return s.runBatch(rc, s.ks.RewrapEach, items, sc, false)
}
