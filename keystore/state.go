package keystore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/internal/lockedmem"
)

// RootKeySize is the size of the root key in bytes.
const RootKeySize = 32

// Proposer submits an encoded command to the replicated log and returns what
// [Keystore.Apply] returned for it once committed (an error value, or nil).
// The error return reports failures to commit (no leader, timeout); a
// command that committed but was refused by Apply (for example a lost
// compare-and-set) comes back as the response instead.
type Proposer interface {
	Propose(ctx context.Context, cmd []byte) (any, error)
}

// Config configures a Keystore.
type Config struct {
	Proposer Proposer
	Logger   hclog.Logger
	// Now and Rand default to time.Now and crypto/rand.Reader; tests inject
	// their own.
	Now  func() time.Time
	Rand io.Reader
	// OnPolicies, if set, is called with the full set of policies whenever it
	// changes while unsealed, and with nil on seal. It runs under the
	// keystore's lock: it must not call back into the Keystore.
	OnPolicies func(map[string]api.Policy)
	// InitialMembers, if set, names the cluster's members when it is
	// initialised: they become the member allow list (enrol.go).
	InitialMembers func() []string
	// OnRootChange, if set, is called (in its own goroutine) after a rekey
	// replaced the root key of this unsealed node, so that the node can seal
	// the new root key with its device.
	OnRootChange func()
	// NonceBudget is the encryptions per version of a 96-bit-nonce key
	// after which the leader rotates it (0: DefaultNonceBudget); tests
	// lower it.
	NonceBudget uint64
}

// SealConfig is the replicated, non-secret description of the cluster's
// root of trust.
type SealConfig struct {
	ClusterID string    `json:"cluster_id"`
	Shares    int       `json:"shares"`
	Threshold int       `json:"threshold"`
	CreatedAt time.Time `json:"created_at"`
}

// Entry is one encrypted record of the replicated state.
type Entry struct {
	Version uint64 `json:"v"` // record version: 1 at creation, +1 per update
	Term    uint32 `json:"t"` // keyring term whose key encrypted Data
	Data    []byte `json:"d"` // nonce || ciphertext || tag
}

// Keystore is the replicated state plus, while unsealed, its decrypted view.
// All methods are safe for concurrent use.
type Keystore struct {
	cfg Config
	log hclog.Logger

	// mu guards everything below. Crypto operations hold the read lock for
	// their whole duration so that Seal (write lock) never zeroes key material
	// under them; Apply holds the write lock, so the decrypted view changes
	// atomically with the replicated state.
	mu sync.RWMutex

	// Replicated state: changed only by Apply and Restore.
	seal           *SealConfig
	keyring        []byte // encrypted keyring
	keyringVersion uint64
	entries        map[string]Entry
	trust          *clusterState // enrolment tokens and the deny list (enrol.go)
	// Command authentication (cmdauth.go): authOn once an authenticated
	// command was applied; unverified holds the commands applied while
	// sealed, verified at unseal.
	authOn             bool
	unverified         []snapProof
	unverifiedOverflow bool
	// No rollback (rollback.go): tombs keeps a deleted path's counter;
	// epoch grows with every snapshot restore.
	tombs map[string]uint64
	epoch uint64
	// pendingSnap: the proof of the snapshot this sealed node restored,
	// verified at unseal (snapauth.go).
	pendingSnap *snapProof

	// Unsealed view.
	root     *lockedmem.Buf
	terms    map[uint32]*lockedmem.Buf
	termMeta []termMeta
	active   uint32
	keys     map[string]*namedKey
	policies map[string]api.Policy
	secrets  map[string]*secretRec // metadata and sealed values (secrets.go)

	// nonces are this node's encryption counts (nonce.go).
	nonces nonceCounters

	// writeMu serialises this node's read-modify-write cycles; the
	// compare-and-set in Apply catches races with other nodes.
	writeMu sync.Mutex
}

// New returns an empty, uninitialised and sealed Keystore.
func New(cfg Config) *Keystore {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Keystore{cfg: cfg, log: cfg.Logger, entries: map[string]Entry{}}
}

// ---- commands ----

const cmdFormat = 1

// Command operations.
const (
	opInit    = "init"
	opKeyring = "keyring"
	opRekey   = "rekey"
	opPut     = "put"
	opDelete  = "delete"
)

// command is the replicated log entry. It is versioned (F) so that a newer
// node can refuse a format it does not know rather than misapply it.
type command struct {
	F       int         `json:"f"`
	Op      string      `json:"op"`
	Path    string      `json:"path,omitempty"`
	Expect  uint64      `json:"expect,omitempty"` // CAS: the record or keyring version the writer saw
	Entry   *Entry      `json:"entry,omitempty"`
	Seal    *SealConfig `json:"seal,omitempty"`
	Keyring []byte      `json:"keyring,omitempty"`
	// RootWrap carries a rekey's new root key encrypted under the active
	// keyring term, so that every unsealed node switches to it at once.
	RootWrap []byte `json:"root_wrap,omitempty"`
	Term     uint32 `json:"term,omitempty"`
	// Enrol is the body of opEnrol (enrol.go).
	Enrol *enrolCmd `json:"enrol,omitempty"`
	// Epoch is the restore epoch the proposer saw (rollback.go).
	Epoch uint64 `json:"epoch,omitempty"`
	// Members: init's member allow list (enrol.go).
	Members []string `json:"members,omitempty"`
}

// DecodeCommand parses an encoded command. It is exported for fuzzing and
// for tools that inspect a raft log.
func DecodeCommand(b []byte) (*command, error) {
	var c command
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: command does not decode: %v", ErrCorrupt, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after command", ErrCorrupt)
	}
	if c.F != cmdFormat {
		return nil, fmt.Errorf("%w: command format %d is not supported by this version of cofferd (upgrade it)", ErrCorrupt, c.F)
	}
	switch c.Op {
	case opInit:
		if c.Seal == nil || len(c.Keyring) == 0 {
			return nil, fmt.Errorf("%w: init command without seal config or keyring", ErrCorrupt)
		}
		for _, m := range c.Members {
			if !api.ValidNodeID(m) {
				return nil, fmt.Errorf("%w: init command with a malformed member id", ErrCorrupt)
			}
		}
	case opKeyring:
		if len(c.Keyring) == 0 {
			return nil, fmt.Errorf("%w: keyring command without keyring", ErrCorrupt)
		}
	case opRekey:
		if len(c.Keyring) == 0 || c.Seal == nil || len(c.RootWrap) == 0 {
			return nil, fmt.Errorf("%w: malformed rekey command", ErrCorrupt)
		}
	case opPut:
		if c.Entry == nil || c.Path == "" || c.Entry.Version != c.Expect+1 {
			return nil, fmt.Errorf("%w: malformed put command", ErrCorrupt)
		}
	case opDelete:
		if c.Path == "" {
			return nil, fmt.Errorf("%w: delete command without path", ErrCorrupt)
		}
	case opEnrol:
		if c.Enrol == nil {
			return nil, fmt.Errorf("%w: enrol command without body", ErrCorrupt)
		}
		if err := c.Enrol.validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	default:
		return nil, fmt.Errorf("%w: unknown command %q", ErrCorrupt, c.Op)
	}
	return &c, nil
}

func encodeCommand(c *command) []byte {
	c.F = cmdFormat
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // only plain data: cannot fail
	}
	return b
}

// Apply applies one committed command. It is deterministic: the replicated
// state after Apply depends only on the state before and the command. It
// returns nil on success or an error value (ErrConflict,
// ErrAlreadyInitialized, ErrCorrupt) that the proposer receives as the
// response. A command refused by Apply changes nothing.
func (ks *Keystore) Apply(b []byte) any {
	inner, mac, err := splitEnvelope(b)
	var c *command
	if err == nil {
		c, err = DecodeCommand(inner)
	}
	if err != nil {
		// Every node refuses it the same way, so the replicas stay equal.
		ks.log.Error("refusing a committed command that does not decode", "error", err)
		return err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	refuse, keep := ks.checkLocked(c, inner, mac)
	if refuse != nil {
		ks.log.Error("refusing a committed command that is not authenticated by the keyring", "op", c.Op, "path", c.Path, "error", refuse)
		return refuse
	}
	if c.Op != opInit && c.Epoch != ks.epoch {
		// Proposed before a snapshot restore (or replayed from before
		// one): its precondition was read from state that is gone.
		return ErrConflict
	}
	r := ks.applyLocked(c)
	if r == nil {
		if mac != nil {
			ks.authOn = true
		}
		if keep {
			if len(ks.unverified) < maxUnverified {
				ks.unverified = append(ks.unverified, unverifiedEntry(inner, mac))
			} else {
				ks.unverifiedOverflow = true
			}
		}
	}
	return r
}

// applyLocked applies an admitted command; ks.mu is held.
func (ks *Keystore) applyLocked(c *command) any {
	switch c.Op {
	case opInit:
		if ks.seal != nil {
			return ErrAlreadyInitialized
		}
		s := *c.Seal
		ks.seal = &s
		ks.keyring = c.Keyring
		ks.keyringVersion = 1
		if c.Members != nil {
			ks.trust = ks.trust.clone()
			ks.trust.Members = map[string]bool{}
			for _, m := range c.Members {
				ks.trust.Members[m] = true
			}
		}
		return nil
	case opKeyring:
		if ks.seal == nil {
			return ErrNotInitialized
		}
		if c.Expect != ks.keyringVersion {
			return ErrConflict
		}
		ks.keyring = c.Keyring
		ks.keyringVersion++
		if ks.root != nil {
			if err := ks.loadKeyringLocked(ks.root.Bytes()); err != nil {
				// The keyring was written by a node holding the same root key;
				// failing to open it means divergence or corruption.
				ks.log.Error("cannot open the replicated keyring; sealing this node", "error", err)
				ks.sealLocked()
				return nil
			}
		}
		return nil
	case opRekey:
		if ks.seal == nil {
			return ErrNotInitialized
		}
		if c.Expect != ks.keyringVersion || c.Seal.ClusterID != ks.seal.ClusterID {
			return ErrConflict
		}
		sc := *c.Seal
		ks.seal, ks.keyring = &sc, c.Keyring
		ks.keyringVersion++
		if ks.root != nil {
			if err := ks.adoptRootLocked(c); err != nil {
				ks.log.Error("cannot take over the new root key of a rekey; sealing this node: unseal it with the new shares", "error", err)
				ks.sealLocked()
			} else if ks.cfg.OnRootChange != nil {
				go ks.cfg.OnRootChange()
			}
		}
		return nil
	case opPut:
		if ks.seal == nil {
			return ErrNotInitialized
		}
		if ks.recordVersionLocked(c.Path) != c.Expect {
			return ErrConflict
		}
		ks.entries[c.Path] = *c.Entry
		delete(ks.tombs, c.Path)
		if ks.root != nil {
			if err := ks.loadRecordLocked(c.Path, *c.Entry); err != nil {
				// Never keep serving the previous version of the record
				// (a key's old config, a policy's old grants).
				ks.dropRecordLocked(c.Path)
				ks.log.Error("cannot open a replicated record", "path", c.Path, "error", err)
			}
			if strings.HasPrefix(c.Path, "policies/") {
				ks.notifyPoliciesLocked()
			}
		}
		return nil
	case opDelete:
		cur, ok := ks.entries[c.Path]
		if !ok || cur.Version != c.Expect {
			return ErrConflict
		}
		delete(ks.entries, c.Path)
		// The delete consumes a version too, so that neither the delete
		// nor any earlier put of this path can ever apply again.
		if ks.tombs == nil {
			ks.tombs = map[string]uint64{}
		}
		ks.tombs[c.Path] = cur.Version + 1
		if ks.root != nil {
			ks.dropRecordLocked(c.Path)
		}
		return nil
	case opEnrol:
		return ks.applyEnrolLocked(c.Enrol)
	}
	return nil
}

// propose submits a command and turns an Apply error response into an error.
func (ks *Keystore) propose(ctx context.Context, c *command) error {
	if ks.cfg.Proposer == nil {
		return errors.New("keystore has no proposer")
	}
	ks.mu.RLock()
	c.Epoch = ks.epoch
	ks.mu.RUnlock()
	b, err := ks.authenticate(encodeCommand(c))
	if err != nil {
		return err
	}
	return ks.proposeRaw(ctx, b)
}

// proposeRaw submits an encoded (authenticated) command.
func (ks *Keystore) proposeRaw(ctx context.Context, b []byte) error {
	resp, err := ks.cfg.Proposer.Propose(ctx, b)
	if err != nil {
		return err
	}
	if e, ok := resp.(error); ok && e != nil {
		return e
	}
	return nil
}

// ---- status ----

// Initialized reports whether the cluster has a root key.
func (ks *Keystore) Initialized() bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.seal != nil
}

// Sealed reports whether this node holds no keys.
func (ks *Keystore) Sealed() bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.root == nil
}

// SealConfig returns a copy of the seal configuration, or nil before init.
func (ks *Keystore) SealConfig() *SealConfig {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.seal == nil {
		return nil
	}
	s := *ks.seal
	return &s
}

// ---- init / unseal / seal ----

// Init commits a new cluster with root as its root key (the caller made it,
// split it into shares and sealed it with a device before calling, so that
// nothing is committed unless all of that worked) and a first keyring term,
// then unseals this node. root is copied; the caller zeroes its slice.
func (ks *Keystore) Init(ctx context.Context, root []byte, clusterID string, shares, threshold int) error {
	if len(root) != RootKeySize {
		return invalidf("root key must be %d bytes", RootKeySize)
	}
	if clusterID == "" {
		return invalidf("cluster id must not be empty")
	}
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	if ks.Initialized() {
		return ErrAlreadyInitialized
	}
	sc := &SealConfig{ClusterID: clusterID, Shares: shares, Threshold: threshold, CreatedAt: ks.cfg.Now().UTC()}
	termKey := make([]byte, barrierKeySize)
	defer clear(termKey)
	if _, err := io.ReadFull(ks.cfg.Rand, termKey); err != nil {
		return fmt.Errorf("reading randomness: %w", err)
	}
	kr := &keyringPlain{Active: 1, Terms: []termMeta{{Term: 1, CreatedAt: sc.CreatedAt}}}
	blob, err := sealKeyring(root, sc.ClusterID, kr, [][]byte{termKey}, ks.cfg.Rand)
	if err != nil {
		return err
	}
	// Authenticated with the new keyring's term-1 key (cmdauth.go).
	k, err := cmdMACKey(termKey)
	if err != nil {
		return err
	}
	var members []string
	if ks.cfg.InitialMembers != nil {
		members = ks.cfg.InitialMembers()
	}
	env := sealEnvelope(k, sc.ClusterID, encodeCommand(&command{Op: opInit, Seal: sc, Keyring: blob, Members: members}))
	clear(k)
	if ks.cfg.Proposer == nil {
		return errors.New("keystore has no proposer")
	}
	if err := ks.proposeRaw(ctx, env); err != nil {
		return err
	}
	return ks.Unseal(root)
}

// NewClusterID returns a fresh random cluster id (a UUID v4 string).
func (ks *Keystore) NewClusterID() (string, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(ks.cfg.Rand, b); err != nil {
		return "", fmt.Errorf("reading randomness: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b), nil
}

// NewRootKey returns a fresh random root key; the caller zeroes it.
func (ks *Keystore) NewRootKey() ([]byte, error) {
	root := make([]byte, RootKeySize)
	if _, err := io.ReadFull(ks.cfg.Rand, root); err != nil {
		return nil, fmt.Errorf("reading randomness: %w", err)
	}
	return root, nil
}

// VerifyRoot reports whether root opens this cluster's keyring, without
// unsealing. It returns ErrRootKeyMismatch if not.
func (ks *Keystore) VerifyRoot(root []byte) error {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.seal == nil {
		return ErrNotInitialized
	}
	kr, keys, err := openKeyring(root, ks.seal.ClusterID, ks.keyring)
	if err != nil {
		return err
	}
	_ = kr
	zeroAll(keys)
	return nil
}

// Unseal opens the keyring with root and decrypts every record into locked
// memory. root is copied; the caller still owns (and zeroes) its slice. On
// an unsealed node it is a no-op. A root key that does not open the keyring
// gives ErrRootKeyMismatch and changes nothing.
func (ks *Keystore) Unseal(root []byte) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.unsealLocked(root)
}

func (ks *Keystore) unsealLocked(root []byte) error {
	if ks.seal == nil {
		return ErrNotInitialized
	}
	if ks.root != nil {
		return nil
	}
	if len(root) != RootKeySize {
		return ErrRootKeyMismatch
	}
	rb, err := lockedmem.Copy(root)
	if err != nil {
		return err
	}
	if err := ks.loadKeyringLocked(root); err != nil {
		rb.Destroy()
		return err
	}
	ks.root = rb
	if err := ks.verifyPendingSnapLocked(); err != nil {
		ks.sealLocked()
		ks.log.Error("refusing to unseal: this node restored a forged snapshot while sealed", "error", err)
		return err
	}
	if err := ks.verifyUnverifiedLocked(); err != nil {
		ks.sealLocked()
		ks.log.Error("refusing to unseal: this node applied a forged command while sealed", "error", err)
		return err
	}
	ks.keys = map[string]*namedKey{}
	ks.policies = map[string]api.Policy{}
	ks.secrets = map[string]*secretRec{}
	failed := 0
	for path, e := range ks.entries {
		if err := ks.loadRecordLocked(path, e); err != nil {
			failed++
			ks.log.Error("cannot open a stored record", "path", path, "error", err)
		}
	}
	ks.notifyPoliciesLocked()
	ks.log.Info("keystore unsealed", "keys", len(ks.keys), "policies", len(ks.policies), "terms", len(ks.terms), "unreadable-records", failed)
	return nil
}

// Seal zeroes the root key, the keyring and every decrypted key on this node.
func (ks *Keystore) Seal() {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.sealLocked()
}

func (ks *Keystore) sealLocked() {
	if ks.root == nil {
		return
	}
	for _, k := range ks.keys {
		k.destroy()
	}
	for _, t := range ks.terms {
		t.Destroy()
	}
	ks.root.Destroy()
	ks.root, ks.terms, ks.termMeta, ks.keys, ks.policies, ks.secrets, ks.active = nil, nil, nil, nil, nil, nil, 0
	if ks.cfg.OnPolicies != nil {
		ks.cfg.OnPolicies(nil)
	}
}

// RootKey calls fn with a copy of the root key while the node is unsealed
// (e.g. to seal it with a device). fn must not keep or log the slice. fn
// runs without the keystore's lock: it may do slow device I/O, which must
// not hold up Apply (and, behind a waiting Apply, every crypto request).
func (ks *Keystore) RootKey(fn func(root []byte) error) error {
	ks.mu.RLock()
	if ks.root == nil {
		ks.mu.RUnlock()
		return ErrSealed
	}
	rb, err := lockedmem.Copy(ks.root.Bytes())
	ks.mu.RUnlock()
	if err != nil {
		return err
	}
	defer rb.Destroy()
	return fn(rb.Bytes())
}

// ---- rekey ----

func rootWrapAAD(clusterID string, keyringVersion uint64) []byte {
	a := append([]byte("coffer-rekey-v1\x00"), clusterID...)
	return binary.BigEndian.AppendUint64(append(a, 0), keyringVersion)
}

// adoptRootLocked opens a rekey's root wrap with the term key and switches
// this node to the new root key, which must open the new keyring.
func (ks *Keystore) adoptRootLocked(c *command) error {
	tk := ks.terms[c.Term]
	if tk == nil || len(c.RootWrap) < gcmNonceSize {
		return fmt.Errorf("%w: rekey wraps the root key under unknown term %d", ErrCorrupt, c.Term)
	}
	g, err := newGCM(tk.Bytes())
	if err != nil {
		return err
	}
	root, err := g.Open(nil, c.RootWrap[:gcmNonceSize], c.RootWrap[gcmNonceSize:], rootWrapAAD(ks.seal.ClusterID, c.Expect))
	if err != nil {
		return fmt.Errorf("%w: rekey root wrap does not authenticate", ErrCorrupt)
	}
	defer clear(root)
	if err := ks.loadKeyringLocked(root); err != nil {
		return err
	}
	rb, err := lockedmem.Copy(root)
	if err != nil {
		return err
	}
	ks.root.Destroy()
	ks.root = rb
	return nil
}

// Rekey replaces the root key with newRoot (made, split and sealed by the
// caller before this call) and records the new share count and threshold.
// The keyring is re-encrypted under newRoot; records are untouched. Every
// unsealed node switches to the new root key when it applies the change;
// sealed nodes unseal with the new shares. The caller zeroes newRoot.
func (ks *Keystore) Rekey(ctx context.Context, newRoot []byte, shares, threshold int) error {
	if len(newRoot) != RootKeySize {
		return invalidf("root key must be %d bytes", RootKeySize)
	}
	ks.writeMu.Lock()
	defer ks.writeMu.Unlock()
	return retryCAS(func() error {
		kr, keys, err := ks.rlockKeyring()
		if err != nil {
			return err
		}
		sc := *ks.seal
		sc.Shares, sc.Threshold = shares, threshold
		expect := ks.keyringVersion
		blob, err := sealKeyring(newRoot, sc.ClusterID, kr, keys, ks.cfg.Rand)
		zeroAll(keys)
		if err != nil {
			ks.mu.RUnlock()
			return err
		}
		g, err := newGCM(ks.terms[ks.active].Bytes())
		if err != nil {
			ks.mu.RUnlock()
			return err
		}
		wrap := make([]byte, gcmNonceSize, gcmNonceSize+RootKeySize+g.Overhead())
		if _, err := io.ReadFull(ks.cfg.Rand, wrap); err != nil {
			ks.mu.RUnlock()
			return fmt.Errorf("reading randomness: %w", err)
		}
		wrap = g.Seal(wrap, wrap[:gcmNonceSize], newRoot, rootWrapAAD(sc.ClusterID, expect))
		term := ks.active
		ks.mu.RUnlock()
		return ks.propose(ctx, &command{Op: opRekey, Expect: expect, Seal: &sc, Keyring: blob, RootWrap: wrap, Term: term})
	})
}

// ---- snapshots ----

// Snapshot is a point-in-time copy of the replicated state. Its key material
// stays encrypted under the keyring (and the keyring under the root key).
type Snapshot struct {
	Format         int              `json:"format"`
	Seal           *SealConfig      `json:"seal"`
	Keyring        []byte           `json:"keyring"`
	KeyringVersion uint64           `json:"keyring_version"`
	Entries        map[string]Entry `json:"entries"`
	// Trust: enrolment tokens and the deny list (absent in older snapshots).
	Trust *clusterState `json:"trust,omitempty"`
	// AuthOn and Unverified: command authentication (cmdauth.go).
	AuthOn             bool        `json:"auth_on,omitempty"`
	Unverified         []snapProof `json:"unverified,omitempty"`
	UnverifiedOverflow bool        `json:"unverified_overflow,omitempty"`
	// Tombs and Epoch: no rollback (rollback.go).
	Tombs map[string]uint64 `json:"tombs,omitempty"`
	Epoch uint64            `json:"epoch,omitempty"`
	// Pending: a snapshot taken while sealed carries the proof of the
	// snapshot it grew from; MAC authenticates the whole snapshot
	// (snapauth.go). Both absent in older snapshots.
	Pending *snapProof `json:"pending_snapshot,omitempty"`
	MAC     []byte     `json:"mac,omitempty"`
}

// Snapshot copies the replicated state. It is quick (a map copy; the entries'
// byte slices are never mutated, only replaced, so they are shared) and may
// be persisted while Apply runs.
func (ks *Keystore) Snapshot() *Snapshot {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	s := &Snapshot{Format: 1, Keyring: ks.keyring, KeyringVersion: ks.keyringVersion, Entries: make(map[string]Entry, len(ks.entries))}
	if ks.trust != nil {
		s.Trust = ks.trust.clone()
	}
	s.AuthOn, s.Unverified, s.UnverifiedOverflow = ks.authOn, slices.Clone(ks.unverified), ks.unverifiedOverflow
	s.Tombs, s.Epoch = maps.Clone(ks.tombs), ks.epoch
	if ks.pendingSnap != nil {
		p := *ks.pendingSnap
		s.Pending = &p
	}
	if ks.seal != nil {
		sc := *ks.seal
		s.Seal = &sc
	}
	for k, v := range ks.entries {
		s.Entries[k] = v
	}
	return s
}

// WriteTo writes the snapshot as JSON (streamed: snapenc.go).
func (s *Snapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	err := s.writeJSON(cw, nil)
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Restore replaces the replicated state with a snapshot read from r,
// discarding all earlier state. An unsealed node re-derives its view; if the
// restored keyring does not open with its root key, the node seals. The
// snapshot's MAC is checked (snapauth.go); this is the restore of a node's
// own snapshot at start (see RestoreRemote for one from elsewhere).
func (ks *Keystore) Restore(r io.Reader) error { return ks.restore(r, false) }

// RestoreRemote is Restore of a snapshot that came from another node (raft's
// InstallSnapshot, or an admin's restore): on a sealed node it must carry a
// MAC, verified at unseal.
func (ks *Keystore) RestoreRemote(r io.Reader) error { return ks.restore(r, true) }

func (ks *Keystore) restore(r io.Reader, remote bool) error {
	sp, err := decodeSnapshot(r) // streamed (snapenc.go)
	if err != nil {
		return fmt.Errorf("%w: snapshot does not decode: %v", ErrCorrupt, err)
	}
	s := *sp
	if s.Format != 1 {
		return fmt.Errorf("%w: snapshot format %d is not supported", ErrCorrupt, s.Format)
	}
	if s.Entries == nil {
		s.Entries = map[string]Entry{}
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	pending, err := ks.checkSnapshotLocked(&s, remote)
	if err != nil {
		ks.log.Error("refusing a snapshot that is not authenticated by the keyring", "error", err)
		return err
	}
	var root []byte
	if ks.root != nil {
		root = append([]byte(nil), ks.root.Bytes()...)
		defer clear(root)
	}
	ks.sealLocked()
	ks.seal, ks.keyring, ks.keyringVersion, ks.entries = s.Seal, s.Keyring, s.KeyringVersion, s.Entries
	ks.trust = s.Trust
	ks.authOn, ks.unverified, ks.unverifiedOverflow = s.AuthOn, s.Unverified, s.UnverifiedOverflow
	ks.tombs, ks.epoch = s.Tombs, s.Epoch
	ks.pendingSnap = pending
	if root != nil && ks.seal != nil {
		if err := ks.unsealLocked(root); err != nil {
			ks.log.Warn("restored state does not open with this node's root key; node stays sealed", "error", err)
		}
	}
	return nil
}

// ---- records ----

func keyPath(name string) string    { return "keys/" + name }
func policyPath(name string) string { return "policies/" + name }

// loadRecordLocked decrypts one record into the unsealed view.
func (ks *Keystore) loadRecordLocked(path string, e Entry) error {
	switch {
	case strings.HasPrefix(path, "keys/"):
		k, err := ks.openKeyRecordLocked(path, e)
		if err != nil {
			return err
		}
		if old := ks.keys[k.meta.Name]; old != nil {
			if old.latestCtr.Load() != nil && old.latest() != k.latest() {
				ks.nonces.forgetUnused(old.meta.Name, old.latest())
			}
			old.destroy()
		}
		ks.keys[k.meta.Name] = k
		ks.attachCounterLocked(k)
	case strings.HasPrefix(path, "policies/"):
		meta, keys, err := ks.openRecordLocked(path, e)
		if err != nil {
			return err
		}
		zeroAll(keys)
		var p api.Policy
		if err := json.Unmarshal(meta, &p); err != nil {
			return fmt.Errorf("%w: policy %s: %v", ErrCorrupt, path, err)
		}
		ks.policies[strings.TrimPrefix(path, "policies/")] = p
	case isSecretPath(path):
		return ks.loadSecretRecordLocked(path, e)
	default:
		return fmt.Errorf("%w: unknown record path %q", ErrCorrupt, path)
	}
	return nil
}

func (ks *Keystore) dropRecordLocked(path string) {
	switch {
	case strings.HasPrefix(path, "keys/"):
		name := strings.TrimPrefix(path, "keys/")
		if k := ks.keys[name]; k != nil {
			if k.latestCtr.Load() != nil {
				ks.nonces.forgetUnused(name, k.latest())
			}
			k.destroy()
			delete(ks.keys, name)
		}
	case strings.HasPrefix(path, "policies/"):
		delete(ks.policies, strings.TrimPrefix(path, "policies/"))
		ks.notifyPoliciesLocked()
	case isSecretPath(path):
		delete(ks.secrets, strings.TrimPrefix(path, secretPrefix))
	}
}

func (ks *Keystore) notifyPoliciesLocked() {
	if ks.cfg.OnPolicies == nil {
		return
	}
	m := make(map[string]api.Policy, len(ks.policies))
	for k, v := range ks.policies {
		m[k] = v
	}
	ks.cfg.OnPolicies(m)
}

// putRecord encrypts meta || keys under the active term and commits it at
// path with compare-and-set on expect. Callers hold writeMu.
func (ks *Keystore) putRecord(ctx context.Context, path string, expect uint64, meta []byte, keys [][]byte) error {
	ks.mu.RLock()
	if ks.root == nil {
		ks.mu.RUnlock()
		return ErrSealed
	}
	e, err := ks.sealRecordLocked(path, expect+1, meta, keys)
	ks.mu.RUnlock()
	if err != nil {
		return err
	}
	return ks.propose(ctx, &command{Op: opPut, Path: path, Expect: expect, Entry: &e})
}

// List helpers.

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func formatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func zeroAll(bs [][]byte) {
	for _, b := range bs {
		clear(b)
	}
}

// SnapshotTo takes a snapshot now and returns a function that writes it
// later (raft persists snapshots while Apply goes on).
func (ks *Keystore) SnapshotTo() func(io.Writer) error {
	s := ks.Snapshot()
	// The MAC key is taken now, while the state is consistent with it; a
	// sealed node writes no MAC (its snapshot carries Pending instead).
	ks.mu.RLock()
	k, _ := ks.macKeyLocked()
	ks.mu.RUnlock()
	return func(w io.Writer) error {
		// A sealed node's k is nil: no MAC (see above). Otherwise the MAC
		// is computed from the bytes as they are written (one pass).
		defer clear(k)
		return s.writeJSON(w, k)
	}
}

// ValidateSnapshot checks that data is a snapshot this version can restore,
// without touching any state.
func ValidateSnapshot(data []byte) error {
	_, err := validateSnapshot(data)
	return err
}

func validateSnapshot(data []byte) (*Snapshot, error) {
	var s Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("not a Coffer snapshot: %v", err)
	}
	if err := checkSnapshotFormat(&s); err != nil {
		return nil, err
	}
	return &s, nil
}

func checkSnapshotFormat(s *Snapshot) error {
	if s.Format != 1 {
		return fmt.Errorf("snapshot format %d is not supported by this version of cofferd", s.Format)
	}
	if s.Seal == nil || len(s.Keyring) == 0 {
		return errors.New("the snapshot holds no initialised cluster")
	}
	return nil
}

// ValidateRestore is ValidateSnapshot for a restore into this keystore: an
// initialised cluster takes only its own snapshots, since another cluster's
// state opens with none of its nodes' root keys and would seal them all.
func (ks *Keystore) ValidateRestore(data []byte) error {
	_, err := ks.validateRestore(data)
	return err
}

// validateRestore is ValidateRestore returning the decoded snapshot.
func (ks *Keystore) validateRestore(data []byte) (*Snapshot, error) {
	s, err := validateSnapshot(data)
	if err != nil {
		return nil, err
	}
	return ks.checkRestoreCluster(s)
}

// validateRestoreFrom is validateRestore reading the snapshot from r: the
// same checks (json.Unmarshal's, trailing data refused included) with the
// entries decoded one by one (decodeSnapshot) rather than from the whole
// document in memory.
func (ks *Keystore) validateRestoreFrom(r io.Reader) (*Snapshot, error) {
	s, err := decodeSnapshotStrict(r)
	if err != nil {
		return nil, fmt.Errorf("not a Coffer snapshot: %v", err)
	}
	if err := checkSnapshotFormat(s); err != nil {
		return nil, err
	}
	return ks.checkRestoreCluster(s)
}

func (ks *Keystore) checkRestoreCluster(s *Snapshot) (*Snapshot, error) {
	if sc := ks.SealConfig(); sc != nil && sc.ClusterID != s.Seal.ClusterID {
		return nil, fmt.Errorf("the snapshot is of cluster %s, but this is cluster %s: restoring it would seal every node; restore it into fresh (uninitialised) nodes instead", s.Seal.ClusterID, sc.ClusterID)
	}
	return s, nil
}

// KeyringVersion is the version of the replicated keyring (0 before init);
// it changes on init, keyring rotation and restore.
func (ks *Keystore) KeyringVersion() uint64 {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.keyringVersion
}
