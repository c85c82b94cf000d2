package seal

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"
	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/keystore"
	"github.com/coffer-kms/coffer/keystore/shamir"
)

// Errors the Manager returns. The HTTP layer maps them to status codes with
// errors.Is; the error's own text (never a secret) is the message.
var (
	// ErrInvalidRequest: a share count, threshold or recipient is out of
	// range or malformed (400 bad_request).
	ErrInvalidRequest = errors.New("invalid seal request")
	// ErrInvalidShare: a share that is a repeat, belongs to another cluster,
	// or shares that cannot be combined (400 invalid_share).
	ErrInvalidShare = errors.New("invalid share")
	// ErrNoDevice: the operation needs a seal device and the node has none
	// (400 bad_request).
	ErrNoDevice = errors.New("no seal device configured")
	// ErrDeviceUnavailable: the node's seal device cannot be opened (500,
	// with the message: the operator has to fix the device).
	ErrDeviceUnavailable = errors.New("seal device unavailable")
)

// kindError is a Manager error: Error is the user-facing message, Unwrap the
// sentinel that says what kind of failure it is.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Config configures a Manager.
type Config struct {
	// Keystore is the node's state; the Manager unseals, seals and rekeys it.
	Keystore *keystore.Keystore
	// Node is the node's configuration: node_id, data_dir, dev and the seal
	// block (nil Seal: Shamir only).
	Node   *config.Config
	Logger hclog.Logger
	// Event records an audit event (the auto-unseal); nil: none.
	Event func(op string, detail map[string]string)
	// Go runs fn as a background task that the owner waits for before it
	// closes the Manager (the reseal after a rekey); nil: a goroutine.
	Go func(fn func())
}

// Manager owns the node's seal lifecycle: its seal device and the
// device-sealed root key file, init and the Shamir split, unseal share
// collection, auto-unseal and its retry, operator seal, reseal and the
// reseal after a rekey. It holds no HTTP or caller concepts: callers
// authorise first, then call it.
type Manager struct {
	ks    *keystore.Keystore
	cfg   *config.Config
	log   hclog.Logger
	event func(op string, detail map[string]string)
	goFn  func(fn func())
	dev   *sealDevice // nil: Shamir only

	// initMu serialises Init, so that two inits never race on the node's
	// seal blob.
	initMu sync.Mutex

	// unseal progress: parsed shares collected so far (zeroed on reset),
	// and the nonce of the current attempt.
	unsealMu sync.Mutex
	shares   [][]byte
	nonce    string

	sealedReason atomic.Pointer[string]
	// manualSeal is set by `coffer operator seal`, so that the auto-unseal
	// loop leaves the node sealed until shares (or a restart) unseal it.
	manualSeal atomic.Bool
	// unsealTried is the keyring version auto-unseal last tried (0: never).
	unsealTried atomic.Uint64

	// blobMu serialises reading the root key and writing the seal blob
	// (reseal, and the reseal after a rekey), so that a slow device seal of
	// an older root key never overwrites the blob of a newer one.
	blobMu sync.Mutex
}

// New makes the Manager. It does not open the device; see Open.
func New(cfg Config) *Manager {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	m := &Manager{ks: cfg.Keystore, cfg: cfg.Node, log: log, event: cfg.Event, goFn: cfg.Go}
	if m.goFn == nil {
		m.goFn = func(fn func()) { go fn() }
	}
	m.dev = newSealDevice(cfg.Node, log)
	m.setSealedReason("")
	m.nonce = newNonce()
	return m
}

// Open opens the seal device, if there is one. A failure is logged, not
// returned: shares can still unseal the node, and reseal retries the device.
func (m *Manager) Open(ctx context.Context) {
	if m.dev == nil {
		return
	}
	if _, err := m.dev.get(ctx); err != nil {
		m.log.Error("cannot open the seal device; the node will wait for unseal shares", "seal-type", m.dev.kind, "error", err)
	}
}

// HasDevice reports whether the node has a seal device configured.
func (m *Manager) HasDevice() bool { return m.dev != nil }

// DeviceHealthy reports whether the node has a device and it last worked.
func (m *Manager) DeviceHealthy() bool { return m.dev != nil && m.dev.lastError() == "" }

// DeviceError is the device's last health-check failure, "" while it works
// or when the node has no device.
func (m *Manager) DeviceError() string {
	if m.dev == nil {
		return ""
	}
	return m.dev.lastError()
}

// Kind is the seal type: the device type, or "shamir".
func (m *Manager) Kind() string {
	if m.dev == nil {
		return "shamir"
	}
	return m.dev.kind
}

// CheckDevice asks the seal device whether it still works, so that status
// and health report a device that went away while the node runs.
func (m *Manager) CheckDevice(ctx context.Context) {
	if m.dev != nil {
		m.dev.checkHealth(ctx)
	}
}

// Close drops unseal progress (zeroing the shares) and closes the device.
func (m *Manager) Close() {
	m.Reset()
	if m.dev != nil {
		m.dev.close()
	}
}

func (m *Manager) setSealedReason(r string) { m.sealedReason.Store(&r) }

// SealedReason is the recorded reason this node is sealed ("" when it only
// waits for shares), and whether an operator sealed it. The daemon shows
// non-admins a generic text instead (it may carry paths or device
// messages).
func (m *Manager) SealedReason() (reason string, byOperator bool) {
	return *m.sealedReason.Load(), m.manualSeal.Load()
}

func newNonce() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Status fills the seal part of st (seal type, device error, progress,
// unseal nonce, sealed reason); st.Initialized, st.Sealed and st.Threshold
// must be set.
func (m *Manager) Status(st *api.Status) {
	st.SealType = m.Kind()
	if m.dev != nil {
		st.SealDeviceError = m.dev.lastError()
	}
	m.unsealMu.Lock()
	st.Progress = len(m.shares)
	st.UnsealNonce = m.nonce
	m.unsealMu.Unlock()
	if st.Sealed {
		switch r := *m.sealedReason.Load(); {
		case r != "":
			st.SealedReason = r
		case !st.Initialized:
			st.SealedReason = "not initialised: run `coffer operator init`"
		default:
			st.SealedReason = fmt.Sprintf("waiting for unseal shares: %d of %d entered; run `coffer operator unseal`", st.Progress, st.Threshold)
		}
	}
}

// ---- init ----

// Init creates the cluster's root key, splits it into shares (encrypted to
// recipients when given, one per share), seals it with the node's device if
// any, and commits the new cluster. The node ends up unsealed. Everything
// that can fail happens before the commit, so a failed init leaves the node
// uninitialised and can simply be retried.
func (m *Manager) Init(ctx context.Context, shares, threshold int, recipients []age.Recipient) (api.InitResponse, error) {
	m.initMu.Lock()
	defer m.initMu.Unlock()
	if m.ks.Initialized() {
		return api.InitResponse{}, keystore.ErrAlreadyInitialized
	}
	root, err := m.ks.NewRootKey()
	if err != nil {
		return api.InitResponse{}, err
	}
	defer clear(root)
	clusterID, err := m.ks.NewClusterID()
	if err != nil {
		return api.InitResponse{}, err
	}
	encoded, err := splitRoot(root, shares, threshold, recipients)
	if err != nil {
		return api.InitResponse{}, err
	}
	resp := api.InitResponse{Shares: encoded, Encrypted: len(recipients) > 0}
	// The device seals into a staging file that replaces the node's blob
	// only once the init has committed: a refused init (a node whose raft
	// state is not replayed yet, a concurrent init) must not touch the blob
	// this node already has.
	staged := m.blobPath() + ".init"
	if m.dev != nil {
		if err := m.sealWithDeviceTo(ctx, staged, clusterID, root); err != nil {
			os.Remove(staged)
			return api.InitResponse{}, err
		}
	}
	err = m.ks.Init(ctx, root, clusterID, shares, threshold)
	if errors.Is(err, cluster.ErrOutcomeUnknown) && m.committed(ctx, root) {
		// It committed after all: the shares are the only way back in,
		// so they must be answered, not dropped with the error.
		err = m.ks.Unseal(root)
	}
	if err != nil {
		if m.dev != nil {
			if errors.Is(err, cluster.ErrNoLeader) {
				// The outcome is unknown: the init may still commit, and
				// then this file is the only copy of its root key.
				m.log.Error("init: outcome unknown; keeping the device-sealed root key of the attempt", "path", staged, "cluster-id", clusterID)
			} else {
				os.Remove(staged)
			}
		}
		return api.InitResponse{}, err
	}
	if m.dev != nil {
		if err := os.Rename(staged, m.blobPath()); err != nil {
			m.log.Error("init: cannot store the device-sealed root key; run `coffer operator reseal`", "error", err)
		}
	}
	m.Reset()
	m.setSealedReason("")
	m.log.Info("cluster initialised", "cluster-id", clusterID, "shares", shares, "threshold", threshold, "encrypted-shares", resp.Encrypted, "device", m.dev != nil)
	return resp, nil
}

// ---- unseal by shares ----

// Progress is what one AddShare did.
type Progress struct {
	// Accepted: the share was recorded (Entered of Threshold), even if the
	// shares then could not be combined.
	Accepted  bool
	Entered   int
	Threshold int
	// Unsealed: this share completed the threshold and unsealed the node.
	Unsealed bool
	// BreakGlass: shares unsealed a node that has a seal device.
	BreakGlass bool
}

// Reset discards the shares entered so far (zeroing them) and starts a new
// unseal attempt: the unseal nonce changes.
func (m *Manager) Reset() {
	m.unsealMu.Lock()
	defer m.unsealMu.Unlock()
	m.resetLocked()
	m.nonce = newNonce()
}

func (m *Manager) resetLocked() {
	for _, sh := range m.shares {
		clear(sh)
	}
	m.shares = nil
}

// AddShare records one encoded share and unseals the node once the
// threshold is reached. On a node that is already unsealed it does nothing.
// A share that does not parse, or repeats one already entered, is refused
// and earlier progress is kept; shares that cannot be combined, or do not
// open the keyring, reset the progress.
func (m *Manager) AddShare(encoded string) (Progress, error) {
	sc := m.ks.SealConfig()
	if sc == nil {
		return Progress{}, keystore.ErrNotInitialized
	}
	if !m.ks.Sealed() {
		return Progress{}, nil
	}
	share, err := shamir.Parse(encoded)
	if err != nil {
		// A mistyped share is refused on entry; earlier progress is kept.
		return Progress{}, err
	}
	m.unsealMu.Lock()
	defer m.unsealMu.Unlock()
	if !m.ks.Sealed() {
		clear(share)
		return Progress{}, nil
	}
	for _, have := range m.shares {
		// The x coordinate (first byte) identifies a share; comparing whole
		// shares in constant time also catches an exact repeat.
		if have[0] == share[0] || subtle.ConstantTimeCompare(have, share) == 1 {
			x := share[0] // the share's number, not secret; read before the clear
			clear(share)
			return Progress{}, errorf(ErrInvalidShare, "share %d was already entered: enter a different share (progress %d of %d kept)", x, len(m.shares), sc.Threshold)
		}
	}
	if len(m.shares) > 0 && len(m.shares[0]) != len(share) {
		clear(share)
		return Progress{}, errorf(ErrInvalidShare, "this share has a different length from the ones entered before: it belongs to another cluster (progress %d of %d kept)", len(m.shares), sc.Threshold)
	}
	if len(m.shares) == 0 {
		// A new unseal attempt starts: a client that watches the nonce
		// sees that the progress it counted on is not its own.
		m.nonce = newNonce()
	}
	m.shares = append(m.shares, share)
	p := Progress{Accepted: true, Entered: len(m.shares), Threshold: sc.Threshold}
	m.log.Info("unseal share accepted", "progress", p.Entered, "threshold", sc.Threshold)
	if len(m.shares) < sc.Threshold {
		return p, nil
	}
	root, err := shamir.Combine(m.shares)
	m.resetLocked()
	if err != nil {
		return p, errorf(ErrInvalidShare, "the shares could not be combined; unseal progress was reset, start again: %v", err)
	}
	err = m.ks.Unseal(root)
	clear(root)
	if errors.Is(err, keystore.ErrRootKeyMismatch) {
		m.log.Warn("unseal shares did not open the keyring; progress reset")
		return p, err
	}
	if err != nil {
		return p, err
	}
	m.setSealedReason("")
	m.manualSeal.Store(false)
	p.Unsealed = true
	if m.dev != nil {
		// The node has a device but needed shares: the break-glass path.
		p.BreakGlass = true
		m.log.Warn("break-glass unseal with Shamir shares on a node with a seal device; run `coffer operator reseal` to enrol the device again", "seal-type", m.dev.kind)
	} else {
		m.log.Info("unsealed with Shamir shares")
	}
	return p, nil
}

// ---- operator seal and reseal ----

// Seal seals the node at an operator's request (uid): the keys leave
// memory, and auto-unseal leaves the node sealed until shares (or a restart)
// unseal it.
func (m *Manager) Seal(uid uint32) {
	m.manualSeal.Store(true)
	m.ks.Seal()
	m.Reset()
	m.setSealedReason("sealed by an operator (uid " + strconv.FormatUint(uint64(uid), 10) + "): unseal with shares (`coffer operator unseal`)")
	m.log.Warn("node sealed by an operator", "uid", uid)
}

// Reseal seals the (unsealed) node's root key with its device again, after
// reopening the device: it enrols a replaced device after a break-glass
// unseal, so that the next start auto-unseals.
func (m *Manager) Reseal(ctx context.Context) error {
	if m.dev == nil {
		return errorf(ErrNoDevice, "this node has no seal device configured: add a seal \"pkcs11\" or seal \"tpm\" block to its config and restart it")
	}
	dev, err := m.dev.reopen(ctx)
	if err != nil {
		return errorf(ErrDeviceUnavailable, "the %s seal device cannot be opened: %v; check the device and run `coffer operator reseal` again", m.dev.kind, err)
	}
	sc := m.ks.SealConfig()
	if sc == nil {
		return keystore.ErrNotInitialized
	}
	m.blobMu.Lock()
	err = m.ks.RootKey(func(root []byte) error {
		return m.sealWith(ctx, dev, sc.ClusterID, root)
	})
	m.blobMu.Unlock()
	if err != nil {
		return err
	}
	m.setSealedReason("")
	m.log.Warn("root key resealed with this node's device; the next start will auto-unseal", "seal-type", m.dev.kind)
	return nil
}

// ---- rekey ----

// Rekey makes a new root key and new shares, authorised by threshold
// current shares. The old shares stop working; the keyring is re-encrypted
// under the new root key and every unsealed node switches to it (and
// reseals it with its device, ResealAfterRekey). Everything that can fail
// happens before the commit.
func (m *Manager) Rekey(ctx context.Context, current []string, shares, threshold int, recipients []string) (api.InitResponse, error) {
	sc := m.ks.SealConfig()
	if sc == nil {
		return api.InitResponse{}, keystore.ErrNotInitialized
	}
	if len(current) < sc.Threshold {
		return api.InitResponse{}, errorf(ErrInvalidShare, "rekey needs %d current shares (current_shares), got %d", sc.Threshold, len(current))
	}
	rcpts, err := ShareParams(shares, threshold, recipients)
	if err != nil {
		return api.InitResponse{}, err
	}
	raw := make([][]byte, 0, len(current))
	defer func() {
		for _, r := range raw {
			clear(r)
		}
	}()
	for i, sh := range current {
		b, err := shamir.Parse(sh)
		if err != nil {
			return api.InitResponse{}, errorf(ErrInvalidShare, "current share %d: %v", i+1, err)
		}
		raw = append(raw, b)
	}
	old, err := shamir.Combine(raw)
	if err != nil {
		return api.InitResponse{}, errorf(ErrInvalidShare, "the current shares cannot be combined: %v", err)
	}
	err = m.ks.VerifyRoot(old)
	clear(old)
	if err != nil {
		return api.InitResponse{}, err // ErrRootKeyMismatch → invalid_share
	}

	root, err := m.ks.NewRootKey()
	if err != nil {
		return api.InitResponse{}, err
	}
	defer clear(root)
	encoded, err := splitRoot(root, shares, threshold, rcpts)
	if err != nil {
		return api.InitResponse{}, err
	}
	if err := m.ks.Rekey(ctx, root, shares, threshold); err != nil {
		// An unknown outcome that turns out committed: the old shares no
		// longer work, so the new ones must be answered, not dropped.
		if !errors.Is(err, cluster.ErrOutcomeUnknown) || !m.committed(ctx, root) {
			return api.InitResponse{}, err
		}
		m.log.Warn("rekey: the write's outcome was unknown, and it committed: answering the new shares")
	}
	return api.InitResponse{Shares: encoded, Encrypted: len(rcpts) > 0}, nil
}

// ResealAfterRekey seals the new root key with this node's device after a
// rekey (the keystore calls it on every unsealed node), so that its next
// start still auto-unseals. It runs as a background task (Config.Go).
func (m *Manager) ResealAfterRekey() {
	if m.dev == nil {
		return
	}
	// Tracked, so that Close does not close the device under it.
	m.goFn(m.resealNewRoot)
}

func (m *Manager) resealNewRoot() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clusterID := m.ks.SealConfig().ClusterID
	m.blobMu.Lock()
	err := m.ks.RootKey(func(root []byte) error {
		return m.sealWithDevice(ctx, clusterID, root)
	})
	m.blobMu.Unlock()
	if err != nil {
		m.log.Error("rekey: could not seal the new root key with this node's device; run `coffer operator reseal`", "error", err)
		return
	}
	m.log.Info("rekey: the new root key is sealed with this node's device", "seal-type", m.dev.kind)
}

// ---- auto-unseal ----

// RetryAutoUnseal retries auto-unseal when the replicated state changed: a
// node that joined, or restarted behind the others, gets the keyring only
// after it starts.
func (m *Manager) RetryAutoUnseal() {
	if m.manualSeal.Load() || !m.ks.Initialized() || !m.ks.Sealed() || m.ks.KeyringVersion() == m.unsealTried.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m.AutoUnseal(ctx)
}

// AutoUnseal unseals the node with its device when it has one and a blob;
// when it cannot, the sealed reason says why and what to do.
func (m *Manager) AutoUnseal(ctx context.Context) {
	sc := m.ks.SealConfig()
	if sc == nil || !m.ks.Sealed() {
		return
	}
	m.unsealTried.Store(m.ks.KeyringVersion())
	if m.dev == nil {
		m.setSealedReason("")
		return
	}
	kind := m.dev.kind
	breakGlass := "; unseal with shares (`coffer operator unseal`), then run `coffer operator reseal` to enrol this node's device again"
	bf, err := m.readBlob()
	if errors.Is(err, os.ErrNotExist) {
		m.setSealedReason("this node's " + kind + " device has not sealed the root key yet" + breakGlass)
		m.log.Warn("no device-sealed root key on this node; waiting for shares", "seal-type", kind)
		return
	}
	if err != nil {
		m.setSealedReason("cannot read " + m.blobPath() + ": " + err.Error() + breakGlass)
		m.log.Error("cannot read the device-sealed root key", "path", m.blobPath(), "error", err)
		return
	}
	if bf.ClusterID != sc.ClusterID {
		m.setSealedReason("the device-sealed root key on this node belongs to another cluster" + breakGlass)
		m.log.Error("device-sealed root key is for another cluster", "blob-cluster-id", bf.ClusterID, "cluster-id", sc.ClusterID)
		return
	}
	dev, err := m.dev.get(ctx)
	if err != nil {
		m.setSealedReason("the " + kind + " seal device cannot be opened: " + err.Error() + breakGlass)
		return
	}
	root, err := dev.Unseal(ctx, bf.Blob, sealAAD(sc.ClusterID, m.cfg.NodeID))
	if err != nil {
		m.setSealedReason("the " + kind + " device could not unseal the root key: " + err.Error() + breakGlass)
		m.log.Error("auto-unseal failed", "seal-type", kind, "error", err)
		return
	}
	err = m.ks.Unseal(root)
	clear(root)
	if err != nil {
		m.setSealedReason("the root key from the " + kind + " device does not open the keyring: " + err.Error() + breakGlass)
		m.log.Error("auto-unseal: device root key does not open the keyring", "error", err)
		return
	}
	m.setSealedReason("")
	m.log.Info("auto-unsealed with the seal device", "seal-type", kind)
	if m.event != nil {
		m.event("auto-unseal", map[string]string{"seal_type": kind})
	}
}

// outcomeWait bounds how long committed waits for a write of unknown
// outcome to show in this node's state.
var outcomeWait = 15 * time.Second

// committed reports whether the keyring this node has applied opens with
// root: after an init or rekey whose raft outcome was unknown (leadership
// lost with the entry in flight), whether it committed after all. It polls
// until outcomeWait, as the entry may commit under the next leader and
// reach this node later. false means it had not committed by then.
func (m *Manager) committed(ctx context.Context, root []byte) bool {
	ctx, cancel := context.WithTimeout(ctx, outcomeWait)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if m.ks.VerifyRoot(root) == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}
