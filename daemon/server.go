// Package daemon is cofferd's process: the sealed ⇄ unsealed lifecycle, the
// HTTP/JSON API on the unix socket (docs/api.md), caller identity and
// authorisation, the seal device and the key scheduler. It wires together
// keystore (state), cluster (raft) and hsm (devices); the config, identity
// and platform pieces live in the subpackages daemon/config, daemon/auth and
// daemon/platform.
package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
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
	"github.com/coffer-kms/coffer/daemon/seal"
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
	// ReadTimeout bounds reading one request, headers and body (default
	// 30s); tests shorten it.
	ReadTimeout time.Duration
	// headerTimeout, writeTimeout and idleTimeout override the limits.go
	// defaults (tests of the limits).
	headerTimeout, writeTimeout, idleTimeout time.Duration
	// NonceBudget overrides keystore.DefaultNonceBudget (tests).
	NonceBudget uint64
	// NonceInterval is how often encryption counts are persisted and
	// reported, and the leader checks the budget (default 5s).
	NonceInterval time.Duration
	// ExtraAdminUIDs are added to the config's admin uids (dev mode adds the
	// daemon's own uid, so `make run` works without root).
	ExtraAdminUIDs []uint32
	// Now is the clock of the keystore and the scheduler (default
	// time.Now); tests move it to pass deletion windows.
	Now func() time.Time
}

// Server is one running cofferd node.
type Server struct {
	cfg     *config.Config
	log     hclog.Logger
	version string

	ks   *keystore.Keystore
	node *cluster.Node
	// auditReady: s.audit is set (cluster events may arrive before).
	auditReady atomic.Bool
	seal       *seal.Manager // the seal lifecycle (daemon/seal)

	admins *auth.Admins
	// unsealers are the unseal.groups members: they may submit unseal
	// shares (as admins may).
	unsealers *auth.Admins
	policies  atomic.Pointer[auth.PolicySet]

	audit *auditor // audit log, metrics, alert rules (audit_hook.go)

	reqPrefix string
	reqSeq    atomic.Uint64

	schedInterval  time.Duration
	deviceInterval time.Duration
	now            func() time.Time
	ln             net.Listener
	creds          *credServer // the credential socket, if configured (credentials.go)
	http           *http.Server
	limiter        *connLimiter // connection caps (limits.go)
	telemetry      *http.Server // the Prometheus TCP listener, nil without (telemetry.go)
	telemetryAddr  string
	readTimeout    time.Duration // Options.ReadTimeout
	headerTimeout  time.Duration // the limits of limits.go (tests shorten them)
	writeTimeout   time.Duration
	idleTimeout    time.Duration
	fast           *fastLane     // the API socket's fast lane (fastlane.go)
	nonceInterval  time.Duration // Options.NonceInterval
	kms            *kmsv2.Server // nil without a kms_v2 block (kmsv2.go)
	stop           chan struct{}
	bgMu           sync.Mutex // orders goBackground against Close
	wg             sync.WaitGroup
	closeOnce      sync.Once

	// nonceMu guards nonce, the persisted and reported encryption counts
	// (nonce.go).
	nonceMu sync.Mutex
	nonce   nonceState
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
	removeRestoreTemps(cfg.DataDir) // an interrupted restore's upload
	adminCfg := cfg.Admin
	adminCfg.UIDs = append(append([]uint32(nil), adminCfg.UIDs...), opts.ExtraAdminUIDs...)
	admins, err := auth.NewAdmins(adminCfg)
	if err != nil {
		return nil, err
	}
	unsealers, err := auth.NewUnsealers(cfg.Unseal)
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
		unsealers:     unsealers,
		reqPrefix:     hex.EncodeToString(pfx),
		schedInterval: opts.SchedulerInterval,
		stop:          make(chan struct{}),
		now:           opts.Now,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.schedInterval == 0 {
		s.schedInterval = 30 * time.Second
	}
	s.nonceInterval = opts.NonceInterval
	if s.nonceInterval == 0 {
		s.nonceInterval = 5 * time.Second
	}
	s.readTimeout = opts.ReadTimeout
	if s.readTimeout == 0 {
		s.readTimeout = defaultReadTimeout
	}
	s.headerTimeout, s.writeTimeout, s.idleTimeout = readHeaderTimeout, writeTimeout, idleTimeout
	if opts.headerTimeout > 0 {
		s.headerTimeout = opts.headerTimeout
	}
	if opts.writeTimeout > 0 {
		s.writeTimeout = opts.writeTimeout
	}
	if opts.idleTimeout > 0 {
		s.idleTimeout = opts.idleTimeout
	}
	s.deviceInterval = opts.DeviceCheckInterval
	if s.deviceInterval == 0 {
		s.deviceInterval = 10 * time.Second
	}
	s.policies.Store(auth.NewPolicySet(nil))

	prop := &proposer{}
	s.ks = keystore.New(keystore.Config{
		Proposer: prop,
		Logger:   log.Named("keystore"),
		Now:      s.now,
		OnPolicies: func(m map[string]api.Policy) {
			s.policies.Store(auth.NewPolicySet(m))
		},
		OnRootChange: func() { s.seal.ResealAfterRekey() },
		// The members at init become the member allow list.
		InitialMembers: func() []string {
			peers, err := s.node.Peers()
			if err != nil {
				return nil
			}
			ids := make([]string, 0, len(peers))
			for _, p := range peers {
				ids = append(ids, p.ID)
			}
			return ids
		},
		NonceBudget: opts.NonceBudget,
	})
	if err := s.loadNonceCounts(); err != nil {
		return nil, err
	}
	ccfg := cluster.Config{NodeID: cfg.NodeID, DataDir: cfg.DataDir, Logger: log, FSM: s.ks, Codec: keystore.ResponseCodec{},
		Trust: s.ks, OnRefused: s.auditRefusal, OnMembership: s.auditMembership, OnForwarded: s.auditForwarded,
		EnrolKey: s.enrolKey, OnEnrol: s.auditEnrol}
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
	s.auditReady.Store(true)
	s.auditEvent(&audit.Entry{Operation: "start", Detail: map[string]string{"version": s.version}})
	// Leadership changes go to the audit log (and raft logs them too).
	s.node.OnLeaderChange(func(id string) {
		s.auditEvent(&audit.Entry{Operation: "leadership", Detail: map[string]string{"leader_id": id, "is_leader": strconv.FormatBool(id == cfg.NodeID)}})
	})
	s.seal = seal.New(seal.Config{
		Keystore: s.ks,
		Node:     cfg,
		Logger:   log,
		Event: func(op string, detail map[string]string) {
			s.auditEvent(&audit.Entry{Operation: op, Detail: detail})
		},
		Go: s.goBackground,
	})
	s.seal.Open(ctx)
	s.seal.AutoUnseal(ctx)
	return s, nil
}

// proposer breaks the construction cycle keystore → raft → keystore.
type proposer struct{ node *cluster.Node }

func (p *proposer) Propose(ctx context.Context, cmd []byte) (any, error) {
	return p.node.Propose(ctx, cmd)
}

// ---- status ----

func (s *Server) status() api.Status {
	st := api.Status{
		Initialized: s.ks.Initialized(),
		Sealed:      s.ks.Sealed(),
		NodeID:      s.cfg.NodeID,
		LeaderID:    s.node.LeaderID(),
		IsLeader:    s.node.IsLeader(),
		Version:     s.version,
	}
	if sc := s.ks.SealConfig(); sc != nil {
		st.ClusterID, st.Shares, st.Threshold = sc.ClusterID, sc.Shares, sc.Threshold
	}
	s.seal.Status(&st)
	s.auditStatus(&st)
	return st
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
	s.limiter = newConnLimiter(s.cfg.Listener.MaxConnsPerUID, s.cfg.Listener.MaxConns, s.log.Named("limits"), func(uid uint32) bool {
		return uid == 0 || (s.admins != nil && s.admins.UIDs[uid])
	})
	ln = &limitListener{Listener: ln, lim: s.limiter}
	if err := s.startKMS(); err != nil {
		ln.Close()
		return err
	}
	s.ln = ln
	// The fast lane accepts every connection and gives net/http those it
	// does not serve (fastlane.go). Made here, started below: Close shuts
	// it down whenever s.http is set.
	s.fast = newFastLane(s, ln)
	s.http = &http.Server{
		Handler:           s.Handler(),
		ConnContext:       connContext,
		ReadHeaderTimeout: s.headerTimeout,
		ReadTimeout:       s.readTimeout,
		WriteTimeout:      s.writeTimeout,
		IdleTimeout:       s.idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          s.log.Named("http").StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
	}
	if err := s.serveTelemetry(); err != nil {
		s.stopKMS()
		ln.Close()
		return err
	}
	if err := s.startCredentials(); err != nil {
		s.closeTelemetry()
		s.stopKMS()
		ln.Close()
		return err
	}
	s.every(s.schedInterval, s.runSchedule)
	s.every(s.nonceInterval, s.nonceTick)
	s.every(time.Second, func() { s.audit.flushCoalesced(false) })
	if s.seal.HasDevice() {
		s.every(s.deviceInterval, s.checkDevice)
		s.every(time.Second, s.seal.RetryAutoUnseal)
	}
	s.log.Info("serving", "socket", ln.Addr().String(), "node-id", s.cfg.NodeID)
	go s.fast.run()
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.fast.handoff) }()
	select {
	case <-ctx.Done():
		s.Close()
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		select {
		case <-s.stop:
			// Close closed the listener; net/http may see that before
			// its own shutdown flag.
			return nil
		default:
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
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); s.fast.shutdown(ctx) }()
			s.http.Shutdown(ctx)
			wg.Wait()
			cancel()
			s.closeTelemetry()
		}
		s.stopCredentials()
		s.stopKMS()
		s.wg.Wait()
		s.saveExactNonceCounts()
		s.ks.Seal()
		s.seal.Reset()
		err = s.node.Close()
		s.seal.Close()
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
	s.seal.CheckDevice(ctx)
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
	now := s.now()
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
	s.purgeSecrets(ctx, now)
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
