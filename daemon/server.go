// Package daemon is cofferd's process: the sealed ⇄ unsealed lifecycle, the
// HTTP/JSON API on the unix socket (spec/API.md), caller identity and
// authorisation, the seal device and the key scheduler. It wires together
// keystore (state), cluster (raft) and hsm (devices); the config, identity
// and platform pieces live in the subpackages daemon/config, daemon/auth and
// daemon/platform.
package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/cluster/tlsutil"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/daemon/kmsv2"
	"github.com/coffer-kms/coffer/daemon/platform"
	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/keystore"
)

// Options configures a Server beyond its config file.
type Options struct {
	Config  *config.Config
	Logger  hclog.Logger
	Version string
	// SchedulerInterval is how often the leader looks for keys due for
	// rotation or purge (default 30s).
	SchedulerInterval time.Duration
	// DeviceCheckInterval is how often the seal device's health is checked
	// (default 10s).
	DeviceCheckInterval time.Duration
	// ExtraAdminUIDs are added to the config's admin uids (dev mode adds the
	// daemon's own uid, so `make run` works without root).
	ExtraAdminUIDs []uint32
}

// Server is one running cofferd node.
type Server struct {
	cfg     *config.Config
	log     hclog.Logger
	version string

	ks   *keystore.Keystore
	node *cluster.Node
	seal *sealDevice // nil: Shamir only

	admins   *auth.Admins
	policies atomic.Pointer[auth.PolicySet]

	audit *auditor // audit log, metrics, alert rules (audit_hook.go)

	// initMu serialises Initialize, so that two inits never race on the
	// node's seal blob.
	initMu sync.Mutex

	// unseal progress: parsed shares collected so far (zeroed on reset).
	unsealMu     sync.Mutex
	shares       [][]byte
	sealedReason atomic.Pointer[string]

	// manualSeal is set by `coffer operator seal`, so that the auto-unseal
	// loop leaves the node sealed until shares (or a restart) unseal it.
	manualSeal atomic.Bool
	// unsealTried is the keyring version auto-unseal last tried (0: never).
	unsealTried atomic.Uint64

	reqPrefix string
	reqSeq    atomic.Uint64

	schedInterval  time.Duration
	deviceInterval time.Duration
	ln             net.Listener
	http           *http.Server
	kms            *kmsv2.Server // nil without a kms_v2 block (kmsv2.go)
	stop           chan struct{}
	bgMu           sync.Mutex // orders goBackground against Close
	wg             sync.WaitGroup
	closeOnce      sync.Once

	// blobMu serialises reading the root key and writing the seal blob
	// (reseal, and the reseal after a rekey), so that a slow device seal of
	// an older root key never overwrites the blob of a newer one.
	blobMu sync.Mutex
}

// New opens the node's state (raft under data_dir) and its seal device, and
// unseals it with the device if it can. It does not listen yet; see Serve.
func New(opts Options) (*Server, error) {
	cfg := opts.Config
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data_dir %s: %w", cfg.DataDir, err)
	}
	adminCfg := cfg.Admin
	adminCfg.UIDs = append(append([]uint32(nil), adminCfg.UIDs...), opts.ExtraAdminUIDs...)
	admins, err := auth.NewAdmins(adminCfg)
	if err != nil {
		return nil, err
	}
	pfx := make([]byte, 4)
	rand.Read(pfx)
	s := &Server{
		cfg:           cfg,
		log:           log,
		version:       opts.Version,
		admins:        admins,
		reqPrefix:     hex.EncodeToString(pfx),
		schedInterval: opts.SchedulerInterval,
		stop:          make(chan struct{}),
	}
	if s.schedInterval == 0 {
		s.schedInterval = 30 * time.Second
	}
	s.deviceInterval = opts.DeviceCheckInterval
	if s.deviceInterval == 0 {
		s.deviceInterval = 10 * time.Second
	}
	s.policies.Store(auth.NewPolicySet(nil))
	s.setSealedReason("")

	prop := &proposer{}
	s.ks = keystore.New(keystore.Config{
		Proposer: prop,
		Logger:   log.Named("keystore"),
		OnPolicies: func(m map[string]api.Policy) {
			s.policies.Store(auth.NewPolicySet(m))
		},
		OnRootChange: s.resealAfterRekey,
	})
	ccfg := cluster.Config{NodeID: cfg.NodeID, DataDir: cfg.DataDir, Logger: log, FSM: s.ks, Codec: keystore.ResponseCodec{}}
	if c := cfg.Cluster; c != nil {
		srvTLS, err := tlsutil.ServerConfig(c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster TLS: %w", err)
		}
		cliTLS, err := tlsutil.ClientConfig(c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster TLS: %w", err)
		}
		ccfg.Net = &cluster.NetConfig{BindAddr: c.Addr, AdvertiseAddr: c.AdvertiseAddr, Bootstrap: c.Bootstrap, ServerTLS: srvTLS, ClientTLS: cliTLS}
	}
	s.node, err = cluster.Open(ccfg)
	if err != nil {
		return nil, err
	}
	prop.node = s.node

	// Raft replays the log on start; wait for it (bounded) so that status
	// tells the truth (initialised or not) and auto-unseal finds the
	// keyring. A node that has never joined a cluster has nothing to wait
	// for; the auto-unseal loop catches up with later arrivals.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if s.node.HasState() {
		if err := s.node.WaitLeader(ctx); err != nil {
			log.Warn("no raft leader yet; the node serves status and will accept writes once one is elected")
		} else if err := s.node.CatchUp(ctx); err != nil {
			log.Warn("raft log not yet applied", "error", err)
		}
	}
	// The audit log opens before anything can happen that it must record.
	if s.audit, err = newAuditor(s, cfg, log); err != nil {
		s.node.Close()
		return nil, err
	}
	s.auditEvent(&audit.Entry{Operation: "start", Detail: map[string]string{"version": s.version}})
	// Leadership changes go to the audit log (and raft logs them too).
	s.node.OnLeaderChange(func(id string) {
		s.auditEvent(&audit.Entry{Operation: "leadership", Detail: map[string]string{"leader_id": id, "is_leader": strconv.FormatBool(id == cfg.NodeID)}})
	})
	s.seal = newSealDevice(cfg, log)
	if s.seal != nil {
		if _, err := s.seal.get(ctx); err != nil {
			// Not fatal: shares can still unseal the node, and reseal
			// retries the device.
			log.Error("cannot open the seal device; the node will wait for unseal shares", "seal-type", s.seal.kind, "error", err)
		}
	}
	s.autoUnseal(ctx)
	return s, nil
}

// proposer breaks the construction cycle keystore → raft → keystore.
type proposer struct{ node *cluster.Node }

func (p *proposer) Propose(ctx context.Context, cmd []byte) (any, error) {
	return p.node.Propose(ctx, cmd)
}

// ---- sealed reason / status ----

func (s *Server) setSealedReason(r string) { s.sealedReason.Store(&r) }

func (s *Server) status() api.Status {
	st := api.Status{
		Initialized: s.ks.Initialized(),
		Sealed:      s.ks.Sealed(),
		SealType:    "shamir",
		NodeID:      s.cfg.NodeID,
		LeaderID:    s.node.LeaderID(),
		IsLeader:    s.node.IsLeader(),
		Version:     s.version,
	}
	if s.seal != nil {
		st.SealType = s.seal.kind
		st.SealDeviceError = s.seal.lastError()
	}
	if sc := s.ks.SealConfig(); sc != nil {
		st.ClusterID, st.Shares, st.Threshold = sc.ClusterID, sc.Shares, sc.Threshold
	}
	s.unsealMu.Lock()
	st.Progress = len(s.shares)
	s.unsealMu.Unlock()
	if st.Sealed {
		switch r := *s.sealedReason.Load(); {
		case r != "":
			st.SealedReason = r
		case !st.Initialized:
			st.SealedReason = "not initialised: run `coffer operator init`"
		default:
			st.SealedReason = fmt.Sprintf("waiting for unseal shares: %d of %d entered; run `coffer operator unseal`", st.Progress, st.Threshold)
		}
	}
	s.auditStatus(&st)
	return st
}

// ---- device seal blob (node-local, never replicated) ----

func (s *Server) blobPath() string { return filepath.Join(s.cfg.DataDir, "seal-blob.json") }

type blobFile struct {
	ClusterID string   `json:"cluster_id"`
	NodeID    string   `json:"node_id"`
	Blob      hsm.Blob `json:"blob"`
}

// sealWithDevice wraps root with this node's device and stores the blob.
func (s *Server) sealWithDevice(ctx context.Context, clusterID string, root []byte) error {
	return s.sealWithDeviceTo(ctx, s.blobPath(), clusterID, root)
}

// sealWithDeviceTo is sealWithDevice writing the blob to path.
func (s *Server) sealWithDeviceTo(ctx context.Context, path, clusterID string, root []byte) error {
	dev, err := s.seal.get(ctx)
	if err != nil {
		return fmt.Errorf("opening the %s seal device: %w", s.seal.kind, err)
	}
	return s.sealWithTo(ctx, dev, path, clusterID, root)
}

// sealWith wraps root with dev and stores the blob, replacing the old one.
func (s *Server) sealWith(ctx context.Context, dev hsm.Device, clusterID string, root []byte) error {
	return s.sealWithTo(ctx, dev, s.blobPath(), clusterID, root)
}

func (s *Server) sealWithTo(ctx context.Context, dev hsm.Device, path, clusterID string, root []byte) error {
	b, err := dev.Seal(ctx, root, hsm.SealAAD(clusterID, s.cfg.NodeID))
	if err != nil {
		return fmt.Errorf("sealing the root key with the %s device: %w", s.seal.kind, err)
	}
	data, err := json.Marshal(blobFile{ClusterID: clusterID, NodeID: s.cfg.NodeID, Blob: b})
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// retryAutoUnseal retries auto-unseal when the replicated state changed: a
// node that joined, or restarted behind the others, gets the keyring only
// after it starts.
func (s *Server) retryAutoUnseal() {
	if s.manualSeal.Load() || !s.ks.Initialized() || !s.ks.Sealed() || s.ks.KeyringVersion() == s.unsealTried.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.autoUnseal(ctx)
}

// autoUnseal unseals the node with its device when it has one and a blob.
func (s *Server) autoUnseal(ctx context.Context) {
	sc := s.ks.SealConfig()
	if sc == nil || !s.ks.Sealed() {
		return
	}
	s.unsealTried.Store(s.ks.KeyringVersion())
	if s.seal == nil {
		s.setSealedReason("")
		return
	}
	breakGlass := "; unseal with shares (`coffer operator unseal`), then run `coffer operator reseal` to enrol this node's device again"
	data, err := os.ReadFile(s.blobPath())
	if errors.Is(err, os.ErrNotExist) {
		s.setSealedReason("this node's " + s.seal.kind + " device has not sealed the root key yet" + breakGlass)
		s.log.Warn("no device-sealed root key on this node; waiting for shares", "seal-type", s.seal.kind)
		return
	}
	var bf blobFile
	if err == nil {
		err = json.Unmarshal(data, &bf)
	}
	if err != nil {
		s.setSealedReason("cannot read " + s.blobPath() + ": " + err.Error() + breakGlass)
		s.log.Error("cannot read the device-sealed root key", "path", s.blobPath(), "error", err)
		return
	}
	if bf.ClusterID != sc.ClusterID {
		s.setSealedReason("the device-sealed root key on this node belongs to another cluster" + breakGlass)
		s.log.Error("device-sealed root key is for another cluster", "blob-cluster-id", bf.ClusterID, "cluster-id", sc.ClusterID)
		return
	}
	dev, err := s.seal.get(ctx)
	if err != nil {
		s.setSealedReason("the " + s.seal.kind + " seal device cannot be opened: " + err.Error() + breakGlass)
		return
	}
	root, err := dev.Unseal(ctx, bf.Blob, hsm.SealAAD(sc.ClusterID, s.cfg.NodeID))
	if err != nil {
		s.setSealedReason("the " + s.seal.kind + " device could not unseal the root key: " + err.Error() + breakGlass)
		s.log.Error("auto-unseal failed", "seal-type", s.seal.kind, "error", err)
		return
	}
	err = s.ks.Unseal(root)
	clear(root)
	if err != nil {
		s.setSealedReason("the root key from the " + s.seal.kind + " device does not open the keyring: " + err.Error() + breakGlass)
		s.log.Error("auto-unseal: device root key does not open the keyring", "error", err)
		return
	}
	s.setSealedReason("")
	s.log.Info("auto-unsealed with the seal device", "seal-type", s.seal.kind)
	s.auditEvent(&audit.Entry{Operation: "auto-unseal", Detail: map[string]string{"seal_type": s.seal.kind}})
}

// ---- serving ----

// Serve listens on the configured unix socket and serves until ctx ends or
// Close is called.
func (s *Server) Serve(ctx context.Context) error {
	ln, err := platform.ListenUnix(s.cfg.Listener.Path, s.cfg.Listener.Mode, s.cfg.Listener.Group)
	if err != nil {
		return err
	}
	return s.ServeListener(ctx, ln)
}

// ServeListener serves on ln (e.g. a socket-activated listener).
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	if err := s.startKMS(); err != nil {
		ln.Close()
		return err
	}
	s.ln = ln
	s.http = &http.Server{
		Handler:           s.Handler(),
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          s.log.Named("http").StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
	}
	s.every(s.schedInterval, s.runSchedule)
	if s.seal != nil {
		s.every(s.deviceInterval, s.checkDevice)
		s.every(time.Second, s.retryAutoUnseal)
	}
	s.log.Info("serving", "socket", ln.Addr().String(), "node-id", s.cfg.NodeID)
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(ln) }()
	select {
	case <-ctx.Done():
		s.Close()
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// Close stops serving, seals the node (zeroing key material) and closes raft
// and the device.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.bgMu.Lock()
		close(s.stop) // under bgMu: no background task starts after this
		s.bgMu.Unlock()
		if s.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.http.Shutdown(ctx)
			cancel()
		}
		s.stopKMS()
		s.wg.Wait()
		s.ks.Seal()
		s.resetProgress()
		err = s.node.Close()
		if s.seal != nil {
			s.seal.close()
		}
		s.audit.close()
	})
	return err
}

// Keystore exposes the keystore (dev mode creates its first key with it).
func (s *Server) Keystore() *keystore.Keystore { return s.ks }

// ---- scheduler ----

// every runs fn every d until the server closes, as a tracked goroutine.
func (s *Server) every(d time.Duration, fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			fn()
		}
	}()
}

// checkDevice asks the seal device whether it still works, so that status
// and health report a device that went away while the node runs.
func (s *Server) checkDevice() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.seal.checkHealth(ctx)
}

// runSchedule rotates keys whose rotation period passed and purges keys
// whose deletion date passed. It runs on every node but acts only on the
// leader, and each action re-checks inside its compare-and-set write, so a
// leader change never rotates a key twice.
func (s *Server) runSchedule() {
	if !s.node.IsLeader() || s.ks.Sealed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	for _, name := range s.ks.DueRotations(now) {
		ok, err := s.ks.RotateIfDue(ctx, name)
		if err != nil {
			s.log.Error("scheduled rotation failed", "key", name, "error", err)
		} else if ok {
			s.log.Info("rotated key on schedule", "key", name)
			e := &audit.Entry{Operation: "rotate", Key: name, Detail: map[string]string{"reason": "rotation_period"}}
			if k, err := s.ks.GetKey(name); err == nil {
				e.KeyVersion = k.LatestVersion
			}
			s.auditEvent(e)
		}
	}
	for _, name := range s.ks.DuePurges(now) {
		ok, err := s.ks.PurgeKey(ctx, name)
		if err != nil {
			s.log.Error("purging key failed", "key", name, "error", err)
		} else if ok {
			s.log.Info("purged key after its deletion window", "key", name)
			s.auditEvent(&audit.Entry{Operation: "purge", Key: name, Detail: map[string]string{"reason": "deletion_date"}})
		}
	}
}

// Status returns the node's status, as GET /v1/sys/status answers it.
func (s *Server) Status() api.Status { return s.status() }

// goBackground runs fn as a tracked background task unless the server is
// closing, so that Close waits for it before closing the device and raft.
func (s *Server) goBackground(fn func()) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	select {
	case <-s.stop:
		return
	default:
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}
