package kmsv2

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/platform"
	"github.com/coffer-kms/coffer/keystore"
)

// Operation names of the audit entries (audit.RequestOperations).
const (
	OpEncrypt = "kms_encrypt"
	OpDecrypt = "kms_decrypt"
)

// Wire constants.
const (
	// Version is what Status answers; the API server requires "v2".
	Version = "v2"
	// AnnotationFormat is the annotation Encrypt returns. Its value names
	// the layout of ciphertext, key_id and additional data, so that a later
	// Coffer can change them and still recognise what this one wrote.
	AnnotationFormat = "format.kms.coffer-kms.io"
	formatV1         = "1"
	aadPrefix        = "coffer-kms-v2\x00"
)

// Limits. The API server itself sends a 32-byte DEK seed and refuses
// answers with a ciphertext or key_id over 1 KiB or annotations over
// 32 KiB; the plugin's limits are the same or, for plaintexts, those of the
// HTTP API's wrap, so that a misbehaving local client cannot make a call
// expensive.
const (
	MaxPlaintext      = api.MaxPlaintext
	MaxKeyID          = 1 << 10
	MaxUID            = 128
	MaxAnnotations    = 32 << 10
	maxAnnotationKeys = 16
	// MaxMessage bounds every gRPC message either way (grpc answers
	// ResourceExhausted beyond it, before the message is decoded).
	MaxMessage = 256 << 10
)

// MaxCiphertext is the longest ciphertext Encrypt can produce (of a
// MaxPlaintext plaintext); Decrypt refuses longer ones unread.
var MaxCiphertext = len(keystore.CiphertextPrefix) + 10 + 1 + base64.StdEncoding.EncodedLen(MaxPlaintext+28)

// Sentinel errors a Backend returns besides the keystore's.
var (
	// ErrPermissionDenied: the caller may not do the operation on the key.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrDeviceFailing: the node's seal device fails its health check. The
	// node still holds its keys, but it will not unseal again by itself,
	// so Status reports the plugin unhealthy for an operator to notice.
	ErrDeviceFailing = errors.New("the seal device is failing")
)

// Backend is the node as the plugin sees it. The daemon implements it; all
// methods are safe for concurrent use.
type Backend interface {
	// Admit refuses a call before it does anything when it could not be
	// recorded (the audit log is failing): the error wraps
	// audit.ErrUnavailable.
	Admit() error
	// DeviceError is the seal device's last failure (wrapping
	// ErrDeviceFailing), nil when it is healthy or the node has none.
	DeviceError() error
	// Allowed reports whether c may do op (api.OpWrap, api.OpUnwrap) on key.
	// c is nil for a peer whose credentials could not be read.
	Allowed(c *auth.Caller, op, key string) bool
	// EnsureKey returns the key, creating it (through raft, audited as a
	// create by c) if it does not exist. It fails with keystore.ErrSealed
	// on a sealed node.
	EnsureKey(ctx context.Context, c *auth.Caller, key string) (api.Key, error)
	// Wrap encrypts pt with aad under the key's latest version.
	Wrap(ctx context.Context, key string, pt, aad []byte) (ciphertext string, version int, err error)
	// Unwrap decrypts ct with aad; the caller zeroes the plaintext.
	Unwrap(ctx context.Context, key, ct string, aad []byte) (pt []byte, version int, err error)
	// Record writes the audit entry of a finished call (err nil: ok) and
	// counts it in the metrics. A non-nil result means it could not be
	// written, and the call is answered with that error instead.
	Record(r *Record) error
}

// Record is what the audit entry of one call says.
type Record struct {
	Op         string // OpEncrypt or OpDecrypt
	Caller     *auth.Caller
	UID        string // the API server's request uid ("" if it sent none or an invalid one)
	Key        string
	KeyVersion int
	Start      time.Time
	Err        error
}

// A connection lives at most maxConnectionAge; then the server asks the
// client to reconnect (GOAWAY: the kube-apiserver's gRPC client does so by
// itself) and gives its calls in flight maxConnectionAgeGrace to finish
// before it closes the connection. A unary call has no server-side
// deadline of its own, so without this a client that sends a request only
// in part kept what it had sent buffered as long as it kept the
// connection (up to 256 calls × 256 KiB each).
var (
	maxConnectionAge      = 10 * time.Minute
	maxConnectionAgeGrace = 30 * time.Second
)

// Config configures a Server.
type Config struct {
	Path  string
	Mode  os.FileMode
	Group string
	// Key is the Coffer key that wraps the API server's DEKs.
	Key     string
	Backend Backend
	Logger  hclog.Logger
}

// Server serves the KeyManagementService on a unix socket.
type Server struct {
	kmsapi.UnimplementedKeyManagementServiceServer

	cfg  Config
	log  hclog.Logger
	grpc *grpc.Server
	ln   net.Listener
	done chan struct{}

	// unhealthy is the last reason Status failed ("" while healthy), so
	// that a lasting fault is logged once when it begins and once when it
	// ends rather than at every probe.
	mu        sync.Mutex
	unhealthy string
	calls     atomic.Uint64
}

var _ kmsapi.KeyManagementServiceServer = (*Server)(nil)

// Listen makes the socket (daemon/platform.ListenUnix: a stale socket is
// replaced, a live one refused, the file removed on Close) and returns a
// Server ready to Serve.
func Listen(cfg Config) (*Server, error) {
	if cfg.Backend == nil || !api.ValidName(cfg.Key) {
		return nil, errors.New("kms_v2: a backend and a valid key name are required")
	}
	ln, err := platform.ListenUnix(cfg.Path, cfg.Mode, cfg.Group)
	if err != nil {
		return nil, fmt.Errorf("kms_v2 socket: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	ln = &capListener{Listener: ln, log: log, perUID: map[uint32]int{}}
	s := &Server{cfg: cfg, log: log, ln: ln, done: make(chan struct{})}
	s.grpc = grpc.NewServer(
		grpc.Creds(peerCreds{}),
		grpc.MaxRecvMsgSize(MaxMessage),
		grpc.MaxSendMsgSize(MaxMessage),
		grpc.MaxConcurrentStreams(256),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: maxConnectionAge, MaxConnectionAgeGrace: maxConnectionAgeGrace}),
		grpc.ForceServerCodecV2(zeroingCodec{}),
	)
	kmsapi.RegisterKeyManagementServiceServer(s.grpc, s)
	return s, nil
}

// Addr is the socket's path.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until Close; it returns nil after Close.
func (s *Server) Serve() error {
	s.log.Info("serving the Kubernetes KMS v2 plugin", "socket", s.Addr(), "key", s.cfg.Key)
	err := s.grpc.Serve(s.ln)
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// Close stops serving: calls in flight finish (for at most timeout), the
// socket file is removed.
func (s *Server) Close(timeout time.Duration) {
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(timeout):
		s.grpc.Stop()
		<-stopped
	}
	s.ln.Close() // already closed by grpc; removes the file if not
}

// ---- identity ----

// peerCreds is a gRPC transport credential that does no handshake and
// records the peer's SO_PEERCRED identity (auth.CallerFromConn) as the
// connection's AuthInfo, read back per call with peer.FromContext.
type peerCreds struct{}

type callerInfo struct {
	credentials.CommonAuthInfo
	caller *auth.Caller
}

func (callerInfo) AuthType() string { return "peercred" }

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: server-side only")
}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	id := c
	if cc, ok := c.(*capConn); ok {
		id = cc.UnixConn // CallerFromConn needs the *net.UnixConn
	}
	caller, err := auth.CallerFromConn(id)
	if err != nil {
		// Unidentified: every call is denied (Allowed(nil, …) is false).
		return c, callerInfo{}, nil
	}
	return c, callerInfo{caller: caller}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }

func callerFrom(ctx context.Context) *auth.Caller {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ci, _ := p.AuthInfo.(callerInfo)
	return ci.caller
}

// ---- wire format ----

// KeyID is the key_id of key version v: "coffer/<key>/v<N>".
func KeyID(key string, v int) string { return "coffer/" + key + "/v" + strconv.Itoa(v) }

// ParseKeyID splits a key_id made by KeyID.
func ParseKeyID(id string) (key string, v int, err error) {
	rest, ok := strings.CutPrefix(id, "coffer/")
	i := strings.LastIndex(rest, "/v")
	if !ok || i <= 0 {
		return "", 0, invalid("key_id %q was not made by Coffer's KMS v2 plugin (expected coffer/<key>/v<N>)", truncate(id))
	}
	key, num := rest[:i], rest[i+2:]
	n, perr := strconv.Atoi(num)
	if perr != nil || n < 1 || strconv.Itoa(n) != num || !api.ValidName(key) {
		return "", 0, invalid("key_id %q is malformed (expected coffer/<key>/v<N>)", truncate(id))
	}
	return key, n, nil
}

// AAD is the additional data that binds a ciphertext to its key name and
// annotations: a prefix, then the key name and each annotation (sorted by
// name) as uvarint-length-prefixed strings.
func AAD(key string, ann map[string][]byte) []byte {
	names := make([]string, 0, len(ann))
	n := len(aadPrefix) + len(key) + 4
	for k, v := range ann {
		names = append(names, k)
		n += len(k) + len(v) + 8
	}
	slices.Sort(names)
	b := make([]byte, 0, n)
	b = append(b, aadPrefix...)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	for _, k := range names {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(ann[k])))
		b = append(b, ann[k]...)
	}
	return b
}

// ---- calls ----

type invalidError struct{ msg string }

func (e *invalidError) Error() string { return e.msg }
func (e *invalidError) Is(t error) bool {
	return t == keystore.ErrInvalid
}

func invalid(format string, args ...any) error {
	return &invalidError{fmt.Sprintf(format, args...)}
}

type tooLargeError struct{ msg string }

func (e *tooLargeError) Error() string   { return e.msg }
func (e *tooLargeError) Is(t error) bool { return t == keystore.ErrTooLarge }

func tooLarge(format string, args ...any) error {
	return &tooLargeError{fmt.Sprintf(format, args...)}
}

func truncate(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// checkUID validates the API server's request uid (a UUID in practice); it
// goes into the audit log, so it is bounded and printable.
func checkUID(uid string) error {
	if len(uid) > MaxUID || !utf8.ValidString(uid) {
		return invalid("uid is over %d bytes or not UTF-8", MaxUID)
	}
	for _, r := range uid {
		if r < 0x20 || r == 0x7f {
			return invalid("uid contains control characters")
		}
	}
	return nil
}

// Status answers healthz "ok" only when the key exists (it is created on
// first use), the seal device and the audit log work, and a fresh
// encrypt/decrypt round trip through the key succeeds.
func (s *Server) Status(ctx context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	v, err := s.status(ctx)
	if !errors.Is(err, ErrPermissionDenied) {
		// A refused caller says nothing about the plugin's health (and
		// must not make the log flap between healthy and unhealthy).
		s.health(err)
	}
	if err != nil {
		return nil, s.grpcError(err)
	}
	return &kmsapi.StatusResponse{Version: Version, Healthz: "ok", KeyId: KeyID(s.cfg.Key, v)}, nil
}

func (s *Server) status(ctx context.Context) (int, error) {
	c := callerFrom(ctx)
	b := s.cfg.Backend
	if !b.Allowed(c, api.OpWrap, s.cfg.Key) || !b.Allowed(c, api.OpUnwrap, s.cfg.Key) {
		return 0, s.denied(c, "wrap and unwrap")
	}
	if err := b.DeviceError(); err != nil {
		return 0, err
	}
	// Encrypt and Decrypt would be refused while the audit log fails; and
	// EnsureKey may create the key, a write that must be audited.
	if err := b.Admit(); err != nil {
		return 0, err
	}
	if _, err := b.EnsureKey(ctx, c, s.cfg.Key); err != nil {
		return 0, err
	}
	probe := make([]byte, 32)
	rand.Read(probe)
	aad := []byte(aadPrefix + "status")
	ct, v, err := b.Wrap(ctx, s.cfg.Key, probe, aad)
	if err != nil {
		return 0, err
	}
	pt, _, err := b.Unwrap(ctx, s.cfg.Key, ct, aad)
	if err != nil {
		return 0, fmt.Errorf("the status round trip failed: %w", err)
	}
	defer clear(pt)
	if subtle.ConstantTimeCompare(pt, probe) != 1 {
		return 0, errors.New("the status round trip returned another plaintext")
	}
	return v, nil
}

// health logs when the plugin becomes unhealthy (with the reason) and when
// it recovers.
func (s *Server) health(err error) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	s.mu.Lock()
	prev := s.unhealthy
	s.unhealthy = reason
	s.mu.Unlock()
	switch {
	case reason == prev:
	case reason == "":
		s.log.Info("KMS v2 plugin healthy again", "key", s.cfg.Key)
	case errors.Is(err, keystore.ErrPendingDeletion):
		s.log.Error("KMS v2 plugin unhealthy: its key is scheduled for deletion, so the kube-apiserver can neither write nor read secrets; restore it with `coffer key restore "+s.cfg.Key+"`", "key", s.cfg.Key, "error", err)
	default:
		s.log.Warn("KMS v2 plugin unhealthy", "key", s.cfg.Key, "error", err)
	}
}

func (s *Server) denied(c *auth.Caller, what string) error {
	who := "this caller (credentials unreadable)"
	if c != nil {
		who = fmt.Sprintf("uid %d", c.UID)
	}
	return fmt.Errorf("%w: %s may not %s key %q: ask an administrator for a policy that grants it (`coffer policy write`)", ErrPermissionDenied, who, what, s.cfg.Key)
}

// finish records the call and returns what to answer.
func (s *Server) finish(r *Record) error {
	if err := s.cfg.Backend.Record(r); err != nil {
		return s.grpcError(err)
	}
	if r.Err != nil {
		return s.grpcError(r.Err)
	}
	return nil
}

// Encrypt wraps the API server's DEK (seed) under the key's latest version.
func (s *Server) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	defer clear(req.Plaintext)
	r := &Record{Op: OpEncrypt, Caller: callerFrom(ctx), Key: s.cfg.Key, Start: time.Now()}
	if err := s.cfg.Backend.Admit(); err != nil {
		return nil, s.grpcError(err)
	}
	resp, err := s.encrypt(ctx, r, req)
	r.Err = err
	if err := s.finish(r); err != nil {
		return nil, err
	}
	return resp, nil
}

func (s *Server) encrypt(ctx context.Context, r *Record, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	if err := checkUID(req.Uid); err != nil {
		return nil, err
	}
	r.UID = req.Uid
	switch {
	case len(req.Plaintext) == 0:
		return nil, invalid("plaintext is empty: send the DEK to encrypt")
	case len(req.Plaintext) > MaxPlaintext:
		return nil, tooLarge("plaintext is %d bytes, over the limit of %d", len(req.Plaintext), MaxPlaintext)
	}
	b := s.cfg.Backend
	if !b.Allowed(r.Caller, api.OpWrap, s.cfg.Key) {
		return nil, s.denied(r.Caller, "wrap with")
	}
	ann := map[string][]byte{AnnotationFormat: []byte(formatV1)}
	aad := AAD(s.cfg.Key, ann)
	ct, v, err := b.Wrap(ctx, s.cfg.Key, req.Plaintext, aad)
	if errors.Is(err, keystore.ErrNotFound) {
		if _, err = b.EnsureKey(ctx, r.Caller, s.cfg.Key); err == nil {
			ct, v, err = b.Wrap(ctx, s.cfg.Key, req.Plaintext, aad)
		}
	}
	if err != nil {
		return nil, err
	}
	r.KeyVersion = v
	return &kmsapi.EncryptResponse{Ciphertext: []byte(ct), KeyId: KeyID(s.cfg.Key, v), Annotations: ann}, nil
}

// Decrypt opens a ciphertext Encrypt made, under the key its key_id names
// (normally the configured key; another one after the config changed keys,
// which needs unwrap on that key).
func (s *Server) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	r := &Record{Op: OpDecrypt, Caller: callerFrom(ctx), Key: s.cfg.Key, Start: time.Now()}
	if err := s.cfg.Backend.Admit(); err != nil {
		return nil, s.grpcError(err)
	}
	pt, err := s.decrypt(ctx, r, req)
	r.Err = err
	if err := s.finish(r); err != nil {
		clear(pt)
		return nil, err
	}
	// zeroingCodec clears pt once it is marshalled.
	return &kmsapi.DecryptResponse{Plaintext: pt}, nil
}

func (s *Server) decrypt(ctx context.Context, r *Record, req *kmsapi.DecryptRequest) ([]byte, error) {
	if err := checkUID(req.Uid); err != nil {
		return nil, err
	}
	r.UID = req.Uid
	switch {
	case len(req.Ciphertext) == 0:
		return nil, invalid("ciphertext is empty")
	case len(req.Ciphertext) > MaxCiphertext:
		return nil, tooLarge("ciphertext is %d bytes, over the limit of %d", len(req.Ciphertext), MaxCiphertext)
	case len(req.KeyId) > MaxKeyID:
		return nil, tooLarge("key_id is %d bytes, over the limit of %d", len(req.KeyId), MaxKeyID)
	case len(req.Annotations) > maxAnnotationKeys:
		return nil, tooLarge("%d annotations, over the limit of %d", len(req.Annotations), maxAnnotationKeys)
	}
	size := 0
	for k, v := range req.Annotations {
		size += len(k) + len(v)
	}
	if size > MaxAnnotations {
		return nil, tooLarge("annotations are %d bytes, over the limit of %d", size, MaxAnnotations)
	}
	key, idVersion, err := ParseKeyID(req.KeyId)
	if err != nil {
		return nil, err
	}
	r.Key = key
	b := s.cfg.Backend
	if !b.Allowed(r.Caller, api.OpUnwrap, key) {
		return nil, s.denied(r.Caller, "unwrap with")
	}
	if f := req.Annotations[AnnotationFormat]; string(f) != formatV1 {
		return nil, fmt.Errorf("%w: the ciphertext's annotation %s is missing or not %q: it was not made by this plugin, or it was altered", keystore.ErrDecrypt, AnnotationFormat, formatV1)
	}
	ct := string(req.Ciphertext)
	v, _, err := keystore.ParseCiphertext(ct)
	if err != nil {
		return nil, err
	}
	r.KeyVersion = v
	if v != idVersion {
		return nil, fmt.Errorf("%w: key_id names version %d but the ciphertext version %d: one of them was altered", keystore.ErrDecrypt, idVersion, v)
	}
	pt, _, err := b.Unwrap(ctx, key, ct, AAD(key, req.Annotations))
	if err != nil {
		clear(pt)
		return nil, err
	}
	return pt, nil
}

// grpcError maps an error to the status the API server sees. Messages are
// the errors' own texts, which carry no secrets; an unknown error becomes
// Internal without details (they go to the log).
func (s *Server) grpcError(err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, ErrPermissionDenied):
		code = codes.PermissionDenied
	case errors.Is(err, keystore.ErrSealed), errors.Is(err, keystore.ErrNotInitialized),
		errors.Is(err, cluster.ErrNoLeader), errors.Is(err, audit.ErrUnavailable),
		errors.Is(err, ErrDeviceFailing):
		code = codes.Unavailable
	case errors.Is(err, keystore.ErrTooLarge):
		code = codes.ResourceExhausted
	case errors.Is(err, keystore.ErrDecrypt), errors.Is(err, keystore.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, keystore.ErrPendingDeletion), errors.Is(err, keystore.ErrVersionDisabled):
		code = codes.FailedPrecondition
	case errors.Is(err, keystore.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	default:
		id := s.calls.Add(1)
		s.log.Error("KMS v2 call failed", "error-id", id, "error", err)
		return status.Errorf(codes.Internal, "internal error %d: see the cofferd log", id)
	}
	return status.Error(code, err.Error())
}
