package daemon

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/keystore"
	"github.com/coffer-kms/coffer/keystore/shamir"
)

type ctxKey int

// callerKey carries a caller set directly (tests); connections carry
// their state under connKey (limits.go).
const callerKey ctxKey = 0

// access says who may call a route.
type access int

const (
	accessOpen        access = iota // anyone who can open the socket; works sealed
	accessAdmin                     // uid 0 or an admin; needs the node unsealed
	accessAdminSealed               // admin, and works while sealed (init)
	accessKey                       // a policy grants op on the key; needs unsealed
	accessAuthed                    // any identified caller; needs unsealed (list keys: filtered)
	accessUnseal                    // admin or unseal.groups member; works sealed
)

type route struct {
	access access
	op     string // policy operation, for accessKey
	// audit is the request's operation name in the audit log and metrics
	// (audit.RequestOperations; TestRoutes_OperationsAgree checks both).
	audit   string
	handler func(s *Server, rc *reqCtx) error
}

// reqCtx is one request being served.
type reqCtx struct {
	w      http.ResponseWriter
	r      *http.Request
	id     string
	caller *auth.Caller
	name   string // key or policy name from the path
	start  time.Time
	aw     auditWriter // wraps w: writes the audit entry before the answer
	au     reqAudit    // what the audit entry records (audit_hook.go)
	conn   *connState  // nil for a request not from a served connection
	// idBuf holds id's bytes and idHdr the X-Request-Id header value: one
	// allocation for the request instead of three.
	idBuf [32]byte
	idHdr [1]string
	// bodyLimit is api.MaxBody once the grant check passed; 0 means
	// api.MaxOpenBody (limits.go).
	bodyLimit int64
}

var (
	sysRoutes = map[string]map[string]route{
		"status": {"GET": {accessOpen, "", "status", (*Server).handleStatus}},
		"health": {"GET": {accessOpen, "", "health", (*Server).handleHealth}},
		"init":   {"POST": {accessAdminSealed, "", "init", (*Server).handleInit}},
		"unseal": {"POST": {accessUnseal, "", "unseal", (*Server).handleUnseal}},
		"seal":   {"POST": {accessAdmin, "", "seal", (*Server).handleSeal}},
		"reseal": {"POST": {accessAdmin, "", "reseal", (*Server).handleReseal}},
		"rotate": {"POST": {accessAdmin, "", "rotate", (*Server).handleRotate}},
		"rekey":  {"POST": {accessAdmin, "", "rekey", (*Server).handleRekey}},
		// metrics names callers (uid, unit) and their traffic: admins
		// only; aggregate metrics are on the telemetry listener.
		"metrics":    {"GET": {accessAdminSealed, "", "metrics", (*Server).handleMetrics}},
		"audit-hash": {"POST": {accessAdmin, "", "audit-hash", (*Server).handleAuditHash}},
	}
	keysRoutes = map[string]route{
		"GET":  {accessAuthed, "", "list", synced((*Server).handleListKeys)},
		"POST": {accessAuthed, api.OpCreate, "create", (*Server).handleCreateKey}, // checked in the handler: the name is in the body
	}
	keyRoutes = map[string]route{
		"GET":    {accessKey, api.OpRead, "read", synced((*Server).handleGetKey)},
		"PATCH":  {accessKey, api.OpUpdate, "update", (*Server).handleUpdateKey},
		"DELETE": {accessKey, api.OpDelete, "delete", (*Server).handleDeleteKey},
	}
	keyActionRoutes = map[string]map[string]route{
		"rotate":  {"POST": {accessKey, api.OpRotate, "rotate", (*Server).handleRotateKey}},
		"restore": {"POST": {accessKey, api.OpDelete, "restore", (*Server).handleRestoreKey}},
		"wrap":    {"POST": {accessKey, api.OpWrap, "wrap", (*Server).handleWrap}},
		"unwrap":  {"POST": {accessKey, api.OpUnwrap, "unwrap", (*Server).handleUnwrap}},
		"rewrap":  {"POST": {accessKey, api.OpRewrap, "rewrap", (*Server).handleRewrap}},
		"datakey": {"POST": {accessKey, api.OpDatakey, "datakey", (*Server).handleDataKey}},
	}
	policiesRoutes = map[string]route{
		"GET": {accessAdmin, "", "policy-list", synced((*Server).handleListPolicies)},
	}
	policyRoutes = map[string]route{
		"GET":    {accessAdmin, "", "policy-read", synced((*Server).handleGetPolicy)},
		"PUT":    {accessAdmin, "", "policy-write", (*Server).handlePutPolicy},
		"DELETE": {accessAdmin, "", "policy-delete", (*Server).handleDeletePolicy},
	}
)

// synced makes a read handler linearizable: the node first applies every
// write the cluster committed before the request (cluster.Node.Sync), so a
// read on any node sees what was acknowledged anywhere.
func synced(h func(*Server, *reqCtx) error) func(*Server, *reqCtx) error {
	return func(s *Server, rc *reqCtx) error {
		if err := s.node.Sync(rc.r.Context()); err != nil {
			return err
		}
		return h(s, rc)
	}
}

// match finds the routes for a path and the name it carries.
func match(path string) (routes map[string]route, name string) {
	rest, ok := strings.CutPrefix(path, "/v1/")
	if !ok {
		return nil, ""
	}
	first, rest, _ := strings.Cut(rest, "/")
	switch first {
	case "sys":
		if strings.HasPrefix(rest, "raft/") {
			return matchRaft(rest)
		}
		if rest == "enrol" || strings.HasPrefix(rest, "enrol/") {
			return matchEnrol(rest)
		}
		return sysRoutes[rest], ""
	case "keys":
		if rest == "" {
			if strings.HasSuffix(path, "/") {
				return nil, ""
			}
			return keysRoutes, ""
		}
		name, action, hasAction := strings.Cut(rest, "/")
		if !hasAction {
			return keyRoutes, name
		}
		if strings.Contains(action, "/") {
			return nil, ""
		}
		return keyActionRoutes[action], name
	case "secrets":
		return matchSecrets(path, rest)
	case "policies":
		if rest == "" {
			if strings.HasSuffix(path, "/") {
				return nil, ""
			}
			return policiesRoutes, ""
		}
		if strings.Contains(rest, "/") {
			return nil, ""
		}
		return policyRoutes, rest
	}
	return nil, ""
}

// Handler returns the API handler.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

func (s *Server) newRequestID() string {
	return s.reqPrefix + "-" + strconv.FormatUint(s.reqSeq.Add(1), 16)
}

// setRequestID gives rc its request id, held in rc itself. rc is never
// reused, so the string stays valid and unchanged as long as anything
// refers to it (the GC keeps rc alive through it).
func (s *Server) setRequestID(rc *reqCtx) {
	b := append(rc.idBuf[:0], s.reqPrefix...)
	b = append(b, '-')
	b = strconv.AppendUint(b, s.reqSeq.Add(1), 16)
	if &b[0] != &rc.idBuf[0] {
		rc.id = string(b) // a prefix longer than idBuf (never, with 8 hex digits)
	} else {
		rc.id = unsafe.String(&rc.idBuf[0], len(b))
	}
	rc.idHdr[0] = rc.id
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	rc := &reqCtx{w: w, r: r, start: time.Now()}
	s.setRequestID(rc)
	rc.caller, rc.conn = callerOf(r)
	// A write forwarded to the leader names its caller there (audit). The
	// crypto operations never write through raft (a catch-up is a read
	// index), so they skip the context copy: it was ~8 % of the bytes a
	// wrap allocated (docs/benchmarks.md).
	if !cryptoPath(r.URL.Path) {
		rc.r = r.WithContext(cluster.WithOrigin(r.Context(), originOf(rc)))
	}
	w.Header()[api.HeaderRequestID] = rc.idHdr[:]
	status := http.StatusServiceUnavailable
	if s.beginAudit(rc) {
		status = s.endAudit(rc, s.dispatch(rc))
	}
	if s.log.IsDebug() {
		uid := int64(-1)
		if rc.caller != nil {
			uid = int64(rc.caller.UID)
		}
		// Method, path and caller only: never a body.
		s.log.Debug("request", "request-id", rc.id, "method", r.Method, "path", r.URL.Path, "status", status, "uid", uid, "duration", time.Since(rc.start))
	}
}

// dispatch routes and authorises a request and returns the status written.
func (s *Server) dispatch(rc *reqCtx) int {
	r := rc.r
	if err := s.overCap(rc, rc.conn); err != nil {
		return s.fail(rc, err)
	}
	// A browser page must never be able to drive the API (DNS rebinding or a
	// proxied socket): real clients send neither header.
	if r.Header.Get("Origin") != "" || r.Header.Get("Referer") != "" {
		return s.fail(rc, &httpError{http.StatusForbidden, api.CodePermissionDenied, "requests from web pages are refused"})
	}
	routes, name := match(r.URL.Path)
	if routes == nil {
		return s.fail(rc, &httpError{http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no such endpoint %s: see the API reference (docs/api.md)", truncate(r.URL.Path))})
	}
	rt, ok := routes[r.Method]
	if !ok {
		allow := make([]string, 0, len(routes))
		for m := range routes {
			allow = append(allow, m)
		}
		rc.w.Header().Set("Allow", strings.Join(allow, ", "))
		return s.fail(rc, &httpError{http.StatusMethodNotAllowed, api.CodeMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, truncate(r.URL.Path), strings.Join(allow, " or "))})
	}
	if name != "" && !api.ValidName(name) {
		return s.fail(rc, &httpError{http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("invalid name %q: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit", truncate(name))})
	}
	rc.name = name
	switch rt.access {
	case accessOpen:
	case accessAdmin, accessAdminSealed:
		if !s.isAdmin(rc.caller) {
			return s.fail(rc, denied(rc.caller, "administer this node"))
		}
		if rt.access == accessAdmin && s.ks.Sealed() {
			return s.fail(rc, keystore.ErrSealed)
		}
	case accessUnseal:
		// Shares and reset: a local user must not be able to reset or
		// poison an operator's unseal.
		if !s.isAdmin(rc.caller) && !s.unsealers.Includes(rc.caller) {
			return s.fail(rc, unsealDenied(rc.caller))
		}
	case accessKey, accessAuthed:
		if rc.caller == nil {
			return s.fail(rc, denied(nil, "use this endpoint"))
		}
		if s.ks.Sealed() {
			return s.fail(rc, keystore.ErrSealed)
		}
		if rt.access == accessKey && !s.allowed(rc.caller, rt.op, name) {
			return s.fail(rc, denied(rc.caller, fmt.Sprintf("%s %s %q", rt.op, objectKind(rt.op), name)))
		}
	}
	// Open and merely identified callers (unseal, create: the key name is
	// in the body) keep the small body limit; granted ones get the full one.
	if rt.access == accessAdmin || rt.access == accessAdminSealed || rt.access == accessKey {
		rc.grantBody()
		if strings.HasSuffix(r.URL.Path, "/raft/snapshot") {
			extendDeadlines(rc)
		}
	}
	if err := rt.handler(s, rc); err != nil {
		return s.fail(rc, err)
	}
	return http.StatusOK
}

func (s *Server) isAdmin(c *auth.Caller) bool { return c != nil && s.admins.IsAdmin(c) }

// allowed reports whether c may do op on key: admins may do everything.
func (s *Server) allowed(c *auth.Caller, op, key string) bool {
	if c == nil {
		return false
	}
	return s.admins.IsAdmin(c) || s.policies.Load().Allowed(c, op, key)
}

func denied(c *auth.Caller, what string) error {
	who := "this caller"
	if c != nil {
		who = fmt.Sprintf("uid %d", c.UID)
		if c.Unit != "" && !c.UserUnit {
			who += " (" + c.Unit + ")"
		}
	}
	return &httpError{http.StatusForbidden, api.CodePermissionDenied, fmt.Sprintf("%s may not %s: ask an administrator for a policy that grants it (`coffer policy write`)", who, what)}
}

// ---- errors ----

type httpError struct {
	status  int
	code    string
	message string
}

func (e *httpError) Error() string { return e.code + ": " + e.message }

func badRequest(format string, args ...any) error {
	return &httpError{http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf(format, args...)}
}

// toAPIError maps an error to its status and code. The message of a known
// error is its own text, which this codebase keeps free of secrets; an
// unknown error becomes 500 internal with only the request id.
func toAPIError(err error) (int, api.ErrorDetail, bool) {
	var he *httpError
	if errors.As(err, &he) {
		return he.status, api.ErrorDetail{Code: he.code, Message: he.message}, true
	}
	if status, d, ok := sealAPIError(err); ok {
		return status, d, true
	}
	msg := err.Error()
	switch {
	case errors.Is(err, keystore.ErrSealed), errors.Is(err, keystore.ErrNotInitialized):
		return http.StatusServiceUnavailable, api.ErrorDetail{Code: api.CodeSealed, Message: msg}, true
	case errors.Is(err, keystore.ErrRootKeyMismatch), errors.Is(err, shamir.ErrInvalidShare):
		return http.StatusBadRequest, api.ErrorDetail{Code: api.CodeInvalidShare, Message: msg}, true
	case errors.Is(err, keystore.ErrDecrypt):
		return http.StatusBadRequest, api.ErrorDetail{Code: api.CodeDecryptFailed, Message: msg}, true
	case errors.Is(err, keystore.ErrInvalid):
		return http.StatusBadRequest, api.ErrorDetail{Code: api.CodeBadRequest, Message: msg}, true
	case errors.Is(err, keystore.ErrInvalidToken):
		return http.StatusBadRequest, api.ErrorDetail{Code: api.CodeInvalidToken, Message: msg}, true
	case errors.Is(err, keystore.ErrNotFound):
		return http.StatusNotFound, api.ErrorDetail{Code: api.CodeNotFound, Message: msg}, true
	case errors.Is(err, keystore.ErrAlreadyExists):
		return http.StatusConflict, api.ErrorDetail{Code: api.CodeAlreadyExists, Message: msg}, true
	case errors.Is(err, keystore.ErrAlreadyInitialized):
		return http.StatusConflict, api.ErrorDetail{Code: api.CodeAlreadyExists, Message: "the cluster is already initialised: unseal it with its shares instead"}, true
	case errors.Is(err, keystore.ErrPendingDeletion):
		return http.StatusConflict, api.ErrorDetail{Code: api.CodeKeyPendingDeletion, Message: msg}, true
	case errors.Is(err, keystore.ErrVersionDisabled):
		return http.StatusConflict, api.ErrorDetail{Code: api.CodeVersionDisabled, Message: msg}, true
	case errors.Is(err, keystore.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, api.ErrorDetail{Code: api.CodeTooLarge, Message: msg}, true
	case errors.Is(err, cluster.ErrOutcomeUnknown):
		// Before ErrNoLeader, which it also matches: a client may retry
		// no_leader but must read before retrying this.
		return http.StatusServiceUnavailable, api.ErrorDetail{Code: api.CodeOutcomeUnknown, Message: msg}, true
	case errors.Is(err, keystore.ErrSecretPendingDeletion):
		return http.StatusConflict, api.ErrorDetail{Code: api.CodePendingDeletion, Message: msg}, true
	case errors.Is(err, keystore.ErrVersionConflict):
		return http.StatusConflict, api.ErrorDetail{Code: api.CodeVersionConflict, Message: msg}, true
	case errors.Is(err, keystore.ErrVersionDestroyed):
		return http.StatusGone, api.ErrorDetail{Code: api.CodeVersionDestroyed, Message: msg}, true
	case errors.Is(err, cluster.ErrNoLeader):
		return http.StatusServiceUnavailable, api.ErrorDetail{Code: api.CodeNoLeader, Message: msg}, true
	}
	return http.StatusInternalServerError, api.ErrorDetail{Code: api.CodeInternal}, false
}

// fail writes err as the error body and returns the status.
func (s *Server) fail(rc *reqCtx, err error) int {
	status, d, known := toAPIError(err)
	rc.au.errCode = d.Code
	if !known {
		d.Message = fmt.Sprintf("internal error (request %s): see the cofferd log", rc.id)
		s.log.Error("internal error", "request-id", rc.id, "path", rc.r.URL.Path, "error", err)
	}
	// A denial's WARN line is written with its audit entry (finishRequest),
	// so that a flood of them is coalesced there too.
	writeJSON(rc.w, status, api.ErrorBody{Error: d})
	return status
}

// itemError is a batch item's error body.
func itemError(err error) *api.ErrorDetail {
	_, d, known := toAPIError(err)
	if !known {
		d.Message = "internal error: see the cofferd log"
	}
	return &d
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"cannot encode the response"}}`)
	}
	writeRaw(w, status, append(b, '\n'))
}

// cryptoPath reports whether path is one of a key's crypto operations
// (wrap, unwrap, rewrap, datakey), whatever the method.
func cryptoPath(path string) bool {
	rest, ok := strings.CutPrefix(path, "/v1/keys/")
	if !ok {
		return false
	}
	_, action, ok := strings.Cut(rest, "/")
	if !ok {
		return false
	}
	switch action {
	case "wrap", "unwrap", "rewrap", "datakey":
		return true
	}
	return false
}

// contentTypeJSON is shared by every answer (net/http copies header values
// before it writes them, and nothing here modifies one in place).
var contentTypeJSON = []string{"application/json"}

func writeRaw(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h["Content-Type"] = contentTypeJSON
	if !laneAnswer(w) { // the fast lane sets it from what is written
		h.Set("Content-Length", strconv.Itoa(len(b)))
	}
	w.WriteHeader(status)
	w.Write(b)
}

// ---- request decoding ----

// decode reads a JSON body into v strictly: one object, no unknown fields,
// at most rc.maxBody() bytes. Its errors say which field is wrong and never
// quote the body.
func decode(rc *reqCtx, v any) error {
	if ok, err := decodeFast(rc, v); ok {
		return err
	}
	return decodeStream(http.MaxBytesReader(rc.w, rc.r.Body, rc.maxBody()), v)
}

// decodeStream is decode's encoding/json path (also the fallback of the
// hand-written decoders, fastdecode.go).
func decodeStream(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return decodeError(err)
		}
		return badRequest("the body must hold one JSON object and nothing after it")
	}
	return nil
}

// decodeOptional is decode for endpoints whose body may be empty.
func decodeOptional(rc *reqCtx, v any) error {
	if rc.r.ContentLength == 0 {
		return nil
	}
	err := decode(rc, v)
	if he, ok := err.(*httpError); ok && he.message == emptyBody {
		return nil
	}
	return err
}

const emptyBody = "the request body is empty: send a JSON object"

func decodeError(err error) error {
	var (
		mbe  *http.MaxBytesError
		syn  *json.SyntaxError
		typ  *json.UnmarshalTypeError
		b64  base64.CorruptInputError
		msg  = err.Error()
		unkn = strings.HasPrefix(msg, "json: unknown field ")
	)
	switch {
	case errors.As(err, &mbe) && mbe.Limit < api.MaxBody:
		return &httpError{http.StatusRequestEntityTooLarge, api.CodeTooLarge, fmt.Sprintf("request body over the %d-byte limit of this endpoint for this caller: send only the documented fields", mbe.Limit)}
	case errors.As(err, &mbe):
		return &httpError{http.StatusRequestEntityTooLarge, api.CodeTooLarge, fmt.Sprintf("request body over the %d-byte limit: split the batch or wrap a data key instead", api.MaxBody)}
	case errors.Is(err, io.EOF):
		return badRequest(emptyBody)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("malformed JSON: the body ends early")
	case errors.As(err, &syn):
		return badRequest("malformed JSON at byte %d: send a JSON object as in the API reference", syn.Offset)
	case errors.As(err, &typ):
		return badRequest("field %q has the wrong type: expected %s", typ.Field, typ.Type.String())
	case errors.As(err, &b64):
		return badRequest("a binary field is not valid base64: use standard base64 with padding (RFC 4648 §4)")
	case unkn:
		return badRequest("unknown field %s: check the field names in the API reference", strings.TrimPrefix(msg, "json: unknown field "))
	}
	return badRequest("malformed request body: send a JSON object as in the API reference")
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
