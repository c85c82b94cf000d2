package daemon

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/keystore"
)

// ---- key administration ----

func (s *Server) handleListKeys(rc *reqCtx) error {
	names, err := s.ks.ListKeys()
	if err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, api.KeyList{Keys: s.visible(rc, api.OpRead, names)})
	return nil
}

// visible filters names to those rc's caller may op: an admin sees them
// all; anyone else only what a policy grants, and nothing about the rest.
func (s *Server) visible(rc *reqCtx, op string, names []string) []string {
	if s.isAdmin(rc.caller) {
		return names
	}
	ps := s.policies.Load()
	out := names[:0]
	for _, n := range names {
		if ps.Allowed(rc.caller, op, n) {
			out = append(out, n)
		}
	}
	rc.au.coalesce = len(out) == 0
	return out
}

func (s *Server) handleCreateKey(rc *reqCtx) error {
	var req api.CreateKeyRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	if !api.ValidName(req.Name) {
		return badRequest("invalid key name %q: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit", truncate(req.Name))
	}
	rc.au.key = req.Name
	if !s.allowed(rc.caller, api.OpCreate, req.Name) {
		return denied(rc.caller, "create key \""+req.Name+"\"")
	}
	k, err := s.keyWrite(rc, func() (api.Key, error) {
		return s.ks.CreateKey(rc.r.Context(), req.Name, req.Type, req.RotationPeriod)
	})
	if err != nil {
		return err
	}
	s.log.Info("key created", "key", k.Name, "type", k.Type, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusCreated, k)
	return nil
}

func (s *Server) handleGetKey(rc *reqCtx) error {
	k, err := s.ks.GetKey(rc.name)
	if err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, k)
	return nil
}

func (s *Server) handleUpdateKey(rc *reqCtx) error {
	var req api.UpdateKeyRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	if req.MinDecryptionVersion == nil && req.RotationPeriod == nil {
		return badRequest("nothing to update: send min_decryption_version and/or rotation_period")
	}
	k, err := s.keyWrite(rc, func() (api.Key, error) {
		return s.ks.UpdateKey(rc.r.Context(), rc.name, req.MinDecryptionVersion, req.RotationPeriod)
	})
	if err != nil {
		return err
	}
	s.log.Info("key updated", "key", k.Name, "min-decryption-version", k.MinDecryptionVersion, "rotation-period", k.RotationPeriod, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, k)
	return nil
}

func (s *Server) handleRotateKey(rc *reqCtx) error {
	k, err := s.keyWrite(rc, func() (api.Key, error) { return s.ks.RotateKey(rc.r.Context(), rc.name) })
	if err != nil {
		return err
	}
	s.log.Info("key rotated", "key", k.Name, "version", k.LatestVersion, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, k)
	return nil
}

// pendingWindow reads a deletion's ?pending_window= (the only query
// parameter a DELETE of a key or secret takes).
func pendingWindow(rc *reqCtx) (time.Duration, error) {
	q := rc.r.URL.Query()
	for p := range q {
		if p != "pending_window" {
			return 0, badRequest("unknown query parameter %q: only pending_window is accepted", truncate(p))
		}
	}
	return keystore.ParsePendingWindow(q.Get("pending_window"))
}

func (s *Server) handleDeleteKey(rc *reqCtx) error {
	window, err := pendingWindow(rc)
	if err != nil {
		return err
	}
	k, err := s.keyWrite(rc, func() (api.Key, error) { return s.ks.DeleteKey(rc.r.Context(), rc.name, window) })
	if err != nil {
		return err
	}
	s.log.Warn("key scheduled for deletion", "key", k.Name, "deletion-date", k.DeletionDate, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusAccepted, k)
	return nil
}

func (s *Server) handleRestoreKey(rc *reqCtx) error {
	k, err := s.keyWrite(rc, func() (api.Key, error) { return s.ks.RestoreKey(rc.r.Context(), rc.name) })
	if err != nil {
		return err
	}
	s.log.Info("key deletion cancelled", "key", k.Name, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, k)
	return nil
}

// keyWrite runs a key write. The keystore checks a write against this
// node's copy of the state before it proposes anything, and a follower's
// copy may lag: a rotation right after a create through another node would
// answer not_found for a key the cluster has. So before refusing with
// not_found or already_exists, sync with the leader and try once more.
func (s *Server) keyWrite(rc *reqCtx, op func() (api.Key, error)) (api.Key, error) {
	k, err := op()
	if (errors.Is(err, keystore.ErrNotFound) || errors.Is(err, keystore.ErrAlreadyExists)) && s.node.Sync(rc.r.Context()) == nil {
		return op()
	}
	return k, err
}

// ---- crypto ----

// crypto runs a crypto operation and, when it names a key or a key version
// this node has not applied yet (created or rotated through another node a
// moment ago), waits until the node has caught up with the leader and runs
// it once more. The wait is bounded and costs nothing on the common path.
func (s *Server) crypto(rc *reqCtx, op func(string, []keystore.Item) ([]keystore.Result, error), items []keystore.Item) (out []keystore.Result, err error) {
	defer func() { s.auditCrypto(rc, items, out) }()
	out, err = op(rc.name, items)
	if !needsCatchUp(out, err) {
		return out, err
	}
	for _, r := range out {
		clear(r.Plaintext)
	}
	// Without a leader to catch up with, the retry answers with what this
	// node knows.
	_ = s.node.Sync(rc.r.Context())
	return op(rc.name, items)
}

func needsCatchUp(out []keystore.Result, err error) bool {
	if errors.Is(err, keystore.ErrNotFound) {
		return true
	}
	for _, r := range out {
		if errors.Is(r.Err, keystore.ErrUnknownVersion) {
			return true
		}
	}
	return false
}

func checkBatch(n int) error {
	if n == 0 {
		return badRequest("batch is empty: send at least one item, or a single item without batch")
	}
	if n > api.MaxBatch {
		return &httpError{http.StatusRequestEntityTooLarge, api.CodeTooLarge, "batch has " + strconv.Itoa(n) + " items, over the limit of " + strconv.Itoa(api.MaxBatch) + ": split it"}
	}
	return nil
}

func (s *Server) handleWrap(rc *reqCtx) error {
	sc := getBatchScratch()
	defer sc.release()
	var req api.WrapRequest
	if err := sc.decode(rc, &req); err != nil {
		return err
	}
	defer func() {
		clear(req.Plaintext)
		for i := range req.Batch {
			clear(req.Batch[i].Plaintext)
		}
	}()
	if req.Batch == nil {
		if req.Plaintext == nil {
			return badRequest(`plaintext is required: send {"plaintext": "<base64>"} or {"batch": [...]}`)
		}
		if len(req.Plaintext) > api.MaxPlaintext {
			return keystore.ErrTooLarge
		}
		out, err := s.crypto(rc, s.ks.Wrap, []keystore.Item{{Plaintext: req.Plaintext, AAD: req.AAD}})
		if err != nil {
			return err
		}
		if out[0].Err != nil {
			return out[0].Err
		}
		writeWrapResult(rc.w, out[0])
		return nil
	}
	return s.wrapBatch(rc, &req, sc) // batch.go
}

// writeWrapResult encodes a single wrap or rewrap answer by hand
// (ciphertexts are ASCII from a fixed alphabet: no escaping; batches are
// encoded in batch.go): this is the hottest path of the daemon.
func writeWrapResult(w http.ResponseWriter, r keystore.Result) {
	bp := wrapAnswerPool.Get().(*[]byte)
	buf := append((*bp)[:0], `{"ciphertext":"`...)
	buf = append(buf, r.Ciphertext...)
	buf = append(buf, `","key_version":`...)
	buf = strconv.AppendInt(buf, int64(r.Version), 10)
	buf = append(buf, "}\n"...)
	// Both lanes copy the answer before Write returns.
	writeRaw(w, http.StatusOK, buf)
	if cap(buf) <= 4096 {
		*bp = buf[:0]
		wrapAnswerPool.Put(bp)
	}
}

// wrapAnswerPool recycles the buffers of single wrap and rewrap answers
// (ciphertexts: nothing secret to zero).
var wrapAnswerPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// ciphertextItem validates a single-item unwrap or rewrap body.
func ciphertextItem(req *api.CiphertextRequest) ([]keystore.Item, error) {
	if req.Ciphertext == "" {
		return nil, badRequest(`ciphertext is required: send {"ciphertext": "coffer:v…"} or {"batch": [...]}`)
	}
	return []keystore.Item{{Ciphertext: req.Ciphertext, AAD: req.AAD}}, nil
}

func (s *Server) handleUnwrap(rc *reqCtx) error {
	sc := getBatchScratch()
	defer sc.release()
	var req api.CiphertextRequest
	if err := sc.decode(rc, &req); err != nil {
		return err
	}
	if req.Batch != nil {
		return s.ciphertextBatch(rc, &req, sc, true) // batch.go
	}
	items, err := ciphertextItem(&req)
	if err != nil {
		return err
	}
	out, err := s.crypto(rc, s.ks.Unwrap, items)
	if err != nil {
		return err
	}
	defer func() {
		for _, r := range out {
			clear(r.Plaintext)
		}
	}()
	if out[0].Err != nil {
		return out[0].Err
	}
	writePlaintexts(rc.w, out, false)
	return nil
}

// writePlaintexts encodes unwrap results by hand into a buffer this function
// zeroes, rather than through encoding/json, whose pooled buffers would keep
// the base64 plaintext around after the response. (Batches: batch.go.)
func writePlaintexts(w http.ResponseWriter, out []keystore.Result, batch bool) {
	n := 32
	for _, r := range out {
		n += base64.StdEncoding.EncodedLen(len(r.Plaintext)) + 24
	}
	buf := make([]byte, 0, n)
	defer func() { clear(buf[:cap(buf)]) }()
	if batch {
		buf = append(buf, `{"batch":[`...)
	}
	for i, r := range out {
		if i > 0 {
			buf = append(buf, ',')
		}
		if r.Err != nil {
			b, _ := json.Marshal(api.UnwrapResult{Error: itemError(r.Err)})
			buf = append(buf, b...)
			continue
		}
		buf = append(buf, `{"plaintext":"`...)
		buf = base64.StdEncoding.AppendEncode(buf, r.Plaintext)
		buf = append(buf, `"}`...)
	}
	if batch {
		buf = append(buf, "]}"...)
	}
	buf = append(buf, '\n')
	writeRaw(w, http.StatusOK, buf)
}

func (s *Server) handleRewrap(rc *reqCtx) error {
	sc := getBatchScratch()
	defer sc.release()
	var req api.CiphertextRequest
	if err := sc.decode(rc, &req); err != nil {
		return err
	}
	if req.Batch != nil {
		return s.ciphertextBatch(rc, &req, sc, false) // batch.go
	}
	items, err := ciphertextItem(&req)
	if err != nil {
		return err
	}
	out, err := s.crypto(rc, s.ks.Rewrap, items)
	if err != nil {
		return err
	}
	if out[0].Err != nil {
		return out[0].Err
	}
	writeWrapResult(rc.w, out[0])
	return nil
}

func (s *Server) handleDataKey(rc *reqCtx) error {
	var req api.DataKeyRequest
	if err := decodeOptional(rc, &req); err != nil {
		return err
	}
	n := api.DefaultDataKey
	if req.Bytes != nil {
		n = *req.Bytes
	}
	include := req.IncludePlaintext == nil || *req.IncludePlaintext
	r, err := s.ks.DataKey(rc.name, n, req.AAD)
	if errors.Is(err, keystore.ErrNotFound) && s.node.Sync(rc.r.Context()) == nil {
		r, err = s.ks.DataKey(rc.name, n, req.AAD)
	}
	s.auditCrypto(rc, []keystore.Item{{AAD: req.AAD}}, []keystore.Result{r})
	if err != nil {
		return err
	}
	defer clear(r.Plaintext)
	writeDataKey(rc.w, r, include)
	return nil
}

// writeDataKey encodes a datakey answer by hand into a buffer it zeroes
// (see writePlaintexts).
func writeDataKey(w http.ResponseWriter, r keystore.Result, include bool) {
	buf := make([]byte, 0, 96+base64.StdEncoding.EncodedLen(len(r.Plaintext))+len(r.Ciphertext))
	defer func() { clear(buf[:cap(buf)]) }()
	buf = append(buf, '{')
	if include {
		buf = append(buf, `"plaintext":"`...)
		buf = base64.StdEncoding.AppendEncode(buf, r.Plaintext)
		buf = append(buf, `",`...)
	}
	buf = append(buf, `"ciphertext":"`...)
	buf = append(buf, r.Ciphertext...) // base64 and ASCII: no escaping needed
	buf = append(buf, `","key_version":`...)
	buf = strconv.AppendInt(buf, int64(r.Version), 10)
	buf = append(buf, "}\n"...)
	writeRaw(w, http.StatusOK, buf)
}

// ---- policies ----

func (s *Server) handleListPolicies(rc *reqCtx) error {
	names, err := s.ks.ListPolicies()
	if err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, api.PolicyList{Policies: names})
	return nil
}

func (s *Server) handleGetPolicy(rc *reqCtx) error {
	p, err := s.ks.GetPolicy(rc.name)
	if err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, p)
	return nil
}

func (s *Server) handlePutPolicy(rc *reqCtx) error {
	var p api.Policy
	if err := decode(rc, &p); err != nil {
		return err
	}
	if p.Name != "" && p.Name != rc.name {
		return badRequest("the body names policy %q but the path names %q: they must match (or leave name out)", truncate(p.Name), rc.name)
	}
	if err := auth.ValidatePolicy(rc.name, &p); err != nil {
		return badRequest("%v", err)
	}
	if err := s.ks.PutPolicy(rc.r.Context(), rc.name, p); err != nil {
		return err
	}
	s.log.Info("policy written", "policy", rc.name, "uid", rc.caller.UID)
	p.Name = rc.name
	writeJSON(rc.w, http.StatusOK, p)
	return nil
}

func (s *Server) handleDeletePolicy(rc *reqCtx) error {
	if err := s.ks.DeletePolicy(rc.r.Context(), rc.name); err != nil {
		return err
	}
	s.log.Info("policy deleted", "policy", rc.name, "uid", rc.caller.UID)
	rc.w.WriteHeader(http.StatusNoContent)
	return nil
}
