// Package cluster wires hashicorp/raft to the keystore: the log and stable
// store in raft-boltdb, a file snapshot store, both fsync'd under the data
// directory, and the raft.FSM adapter that hands committed commands to the
// keystore.
//
// A node without a cluster block still runs raft, with itself as the only
// voter on an in-memory transport, so that a single node and a cluster share
// one write path (propose → commit → apply) and clustering extends it.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// ErrNoLeader: a write could not reach a raft leader in time.
var ErrNoLeader = errors.New("no raft leader: the write could not be committed in time; check that a quorum of nodes is up (`coffer status`)")

// ErrOutcomeUnknown: a write reached the leader but leadership was lost (or
// the leader stopped answering) before this node learnt whether it
// committed. It may or may not have been applied, so it must not be sent
// again blindly. It also matches ErrNoLeader, for callers that only know
// that one.
var ErrOutcomeUnknown error = outcomeUnknown{}

type outcomeUnknown struct{}

func (outcomeUnknown) Error() string {
	return "the write reached the raft leader but its outcome is unknown: it may or may not have been applied; read before retrying"
}

func (outcomeUnknown) Is(target error) bool { return target == ErrNoLeader }

// StateMachine is what the node replicates: the keystore. Apply must be
// deterministic; Snapshot must return quickly with a copy that can be
// written while Apply runs; Restore discards all earlier state.
type StateMachine interface {
	Apply(cmd []byte) any
	SnapshotTo() func(io.Writer) error
	Restore(io.Reader) error
}

// Codec turns the FSM's answers into strings and back, so that a follower
// gets the same answer for a forwarded write as the leader's FSM gave.
type Codec interface {
	EncodeResponse(any) string
	DecodeResponse(string) any
	// Validate refuses a command that the state machine could never
	// apply, before the leader appends it to the log (a faulty or hostile
	// peer must not fill the log with entries every node refuses).
	Validate(cmd []byte) error
}

// NetConfig is the cluster networking of a node (the config's cluster
// block). Without it the node is a single voter on an in-memory transport.
type NetConfig struct {
	BindAddr      string // listen here (host:port)
	AdvertiseAddr string // what peers dial
	Bootstrap     bool   // found a new cluster when there is no raft state yet
	ServerTLS     *tls.Config
	ClientTLS     *tls.Config
}

// Config configures a Node.
type Config struct {
	NodeID  string
	DataDir string // raft state goes in DataDir/raft
	Logger  hclog.Logger
	FSM     StateMachine
	Codec   Codec
	Net     *NetConfig
	// ApplyTimeout bounds one write once a leader is known (default 10s).
	ApplyTimeout time.Duration
	// Trust is the replicated trust state the cluster port follows (who is
	// revoked, enrolment tokens); see trust.go.
	Trust Trust
	// OnRefused, if set, is told of refused connections and RPCs (already
	// rate-limited), for the audit log.
	OnRefused func(Refusal)
	// OnMembership, if set, is told on the leader of each join ("join") and
	// removal ("remove") it carried out, for the audit log.
	OnMembership func(change, nodeID, address string)
	// OnForwarded, if set, is told on the leader of each write a follower
	// forwarded, with its origin (origin.go), for the audit log.
	OnForwarded func(Forwarded)
	// EnrolKey, if set, encrypts the root key for an enrolling node whose
	// token this node has just used up (enrol.go); nil: this node answers
	// no enrolment.
	EnrolKey func(nodeID, token string, pub []byte) ([]byte, error)
	// OnEnrol, if set, is told of each enrolment this node answered or
	// refused, for the audit log.
	OnEnrol func(EnrolEvent)
}

// Node is one raft member.
type Node struct {
	cfg   Config
	log   hclog.Logger
	raft  *raft.Raft
	store *raftboltdb.BoltStore
	snaps *raft.FileSnapshotStore
	trans raft.Transport
	mux   *mux

	fsm    *fsm
	closed chan struct{} // closed by Close
	// nudge asks nudgeLoop for a barrier entry (forward.go).
	nudge chan struct{}
	// readTerm is the last term in which this node, as leader, committed a
	// barrier, so that its commit index is current for reads (readIndex).
	readTerm atomic.Uint64
	// logs is the raft log store, watched for pushCommit; self is a raft
	// transport to this node's own raft listener (commithint.go).
	logs    *storeWatch
	self    *raft.NetworkTransport
	selfMu  sync.Mutex
	relayed atomic.Uint64 // commit messages raft accepted (tests)
	// Failover (failover.go): the leader lease, and whether a probe of a
	// leader that hung up, or a shortened election, is under way.
	lease      time.Duration
	probing    atomic.Bool
	expediting atomic.Bool
	expedited  atomic.Uint64 // elections shortened so far (tests)
	rpcSrv     *http.Server
	rpcOnce    sync.Once
	rpcHTTP    *http.Client

	// Cluster-port admission (trust.go).
	joinOnce      sync.Mutex // serialises joins on the leader
	handOffMu     sync.Mutex
	lastHandOff   time.Time
	joinMu        sync.Mutex
	joinedVia     map[string]bool // node ids this node asked to join it
	enrolAuditMu  sync.Mutex
	enrolAudit    map[string]*enrolWindow // per node id: refusals audited this minute
	refuseMu      sync.Mutex
	refuseSeen    map[string]time.Time
	refuseDropped atomic.Uint64
	connMu        sync.Mutex
	conns         map[net.Conn]tracked
}

// Open starts raft on cfg.DataDir, bootstrapping a single-voter cluster on
// first start. It does not wait for leadership; see WaitLeader.
func Open(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating raft directory: %w", err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("opening raft log %s: %w (is another cofferd using this data_dir?)", filepath.Join(dir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, cfg.Logger.Named("snapshots"))
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("opening snapshot store: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = cfg.Logger.Named("raft")
	setLogRetention(rc)
	n := &Node{cfg: cfg, log: cfg.Logger, store: store, snaps: snaps, closed: make(chan struct{}), nudge: make(chan struct{}, 1)}

	var addr raft.ServerAddress
	bootstrap := true
	if cfg.Net == nil {
		addr, n.trans = raft.NewInmemTransport(raft.ServerAddress(cfg.NodeID))
		// One voter: it can only ever elect itself, so short timeouts just
		// mean a node serves sooner after start.
		rc.HeartbeatTimeout = 200 * time.Millisecond
		rc.ElectionTimeout = 200 * time.Millisecond
		rc.LeaderLeaseTimeout = 100 * time.Millisecond
	} else {
		// Loopback and LAN clusters: a new leader within about two
		// seconds of losing the old one.
		rc.HeartbeatTimeout = 500 * time.Millisecond
		rc.ElectionTimeout = 500 * time.Millisecond
		rc.LeaderLeaseTimeout = 250 * time.Millisecond
		n.lease = rc.LeaderLeaseTimeout
		// Followers learn that an entry committed only from the leader's
		// next AppendEntries; when idle the leader sends one after
		// CommitTimeout (default 50 ms). A write forwarded by a follower
		// waits for that before it answers, so keep it short.
		rc.CommitTimeout = 5 * time.Millisecond
		m, err := newMux(cfg.Net.BindAddr, cfg.Net.ServerTLS, cfg.Logger.Named("cluster"), n.gate)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("listening on cluster address %s: %w", cfg.Net.BindAddr, err)
		}
		n.mux = m
		addr = raft.ServerAddress(cfg.Net.AdvertiseAddr)
		stream := &streamLayer{chanListener: m.raft, advertise: tcpAddr(cfg.Net.AdvertiseAddr), client: cfg.Net.ClientTLS}
		n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: cfg.Logger.Named("raft-net"),
		})
		bootstrap = cfg.Net.Bootstrap
		n.self = newSelfTransport(m.raft, n)
		n.rpcSrv = n.newRPCServer()
		go n.rpcSrv.Serve(m.rpc)
	}

	n.fsm = &fsm{sm: cfg.FSM, snaps: snaps}
	n.logs = &storeWatch{LogStore: store}
	r, err := raft.NewRaft(rc, n.fsm, n.logs, store, snaps, n.trans)
	if err != nil {
		n.closeTransport()
		store.Close()
		return nil, fmt.Errorf("starting raft: %w", err)
	}
	n.raft = r
	n.fsm.started.Store(true)
	if n.mux != nil {
		// Only now: admission asks raft who the members are.
		go n.sweepLoop()
		go n.nudgeLoop()
		go n.snapSoonLoop()
		n.mux.start()
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("reading raft state: %w", err)
	}
	if !has && bootstrap {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: addr}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.Close()
			return nil, fmt.Errorf("bootstrapping raft: %w", err)
		}
		n.log.Info("bootstrapped a new raft cluster", "node-id", cfg.NodeID, "address", addr)
	} else if !has {
		n.log.Info("no raft state yet: waiting to be joined to a cluster (`coffer operator raft join LEADER_ADDR`)")
	}
	return n, nil
}

// Raft log retention (issue 15, memory). Each write is a log entry of
// about 1.7 KB in raft.db (a key record of 3 versions, encrypted, base64 in
// the command, base64 again in its authenticated envelope, plus bbolt's
// page overhead). raft's defaults keep at least 10,240 entries and snapshot
// only every 120–240 s once 8,192 entries accrued, so a bulk load of
// 100,000 writes grew raft.db to ~170 MB; bbolt never shrinks its file,
// and the pages raft reads back (replication, and DeleteRange reading
// every page it frees at compaction) stay resident in its mmap, in the
// process's RSS (a 10,000-key × 3 load: 50 MB file, 16 MB resident, 50 MB
// after the first compaction). Snapshots are streamed (keystore/snapenc.go)
// and so cheap enough to take often: the log now holds at most about
// snapshotThreshold + trailingLogs + 2 × snapshotInterval of writes (for a
// small state, ~1–2 s of writes instead of 2 × snapshotInterval:
// snapsoon.go).
//
// The cost: a follower more than trailingLogs entries behind (down for a
// few seconds under a sustained write load) catches up from a snapshot
// instead of the log (about a second with 100,000 keys), and a node under
// sustained writes takes a snapshot every 5–10 s (writing the whole
// state: ~0.3 s of CPU at 100,000 keys × 3 versions; none while idle or
// serving only crypto requests, since no entries accrue).
const (
	snapshotInterval  = 5 * time.Second
	snapshotThreshold = 1024
	trailingLogs      = 1024
)

func setLogRetention(rc *raft.Config) {
	rc.SnapshotInterval = snapshotInterval
	rc.SnapshotThreshold = snapshotThreshold
	rc.TrailingLogs = trailingLogs
}

// WaitLeader blocks until a leader is known or ctx ends.
func (n *Node) WaitLeader(ctx context.Context) error {
	// Short: a write waiting here during a failover goes out as soon as
	// the new leader is known (a poll costs a mutex and nothing else).
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ErrNoLeader
		case <-t.C:
		}
	}
}

// Propose commits cmd through raft and returns the FSM's response. On a
// follower the command is forwarded to the leader over mutual TLS. It gives
// up with ErrNoLeader after ctx's deadline or ApplyTimeout. It implements
// keystore.Proposer.
func (n *Node) Propose(ctx context.Context, cmd []byte) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	if n.raft.State() == raft.Leader {
		return n.applyLocal(ctx, cmd)
	}
	if n.cfg.Net == nil {
		// A single node is always its own leader once elected.
		if err := n.WaitLeader(ctx); err != nil || n.raft.State() != raft.Leader {
			return nil, ErrNoLeader
		}
		return n.applyLocal(ctx, cmd)
	}
	return n.forward(ctx, cmd)
}

func (n *Node) applyLocal(ctx context.Context, cmd []byte) (any, error) {
	for {
		resp, err := n.applyOnce(ctx, cmd)
		if errors.Is(err, errNotApplied) && n.raft.State() != raft.Leader && n.cfg.Net != nil {
			// Not applied, and another node leads now: send it there.
			return n.forward(ctx, cmd)
		}
		if !errors.Is(err, raft.ErrLeadershipTransferInProgress) && !errors.Is(err, errNotApplied) {
			return resp, err
		}
		// A leadership transfer (TransferLeadership, or a sealed leader
		// handing over) refuses new entries without appending them: wait
		// for it to end, then apply here or forward to the new leader.
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return nil, ErrNoLeader
		}
		if n.raft.State() != raft.Leader && n.cfg.Net != nil {
			return n.forward(ctx, cmd)
		}
	}
}

func (n *Node) applyOnce(ctx context.Context, cmd []byte) (any, error) {
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	f := n.raft.Apply(cmd, timeout)
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrLeadershipLost):
			// The entry was appended and may still be committed by the
			// next leader: wait (bounded) to see which (settle.go).
			resp, applied, known := n.settleLost(ctx, f.Index(), cmd)
			switch {
			case known && applied:
				return resp, nil
			case known:
				return nil, errNotApplied
			}
			return nil, fmt.Errorf("%w (leadership was lost while the write was in flight)", ErrOutcomeUnknown)
		case errors.Is(err, raft.ErrRaftShutdown):
			// The entry may have been appended before the shutdown and be
			// committed after a restart.
			return nil, fmt.Errorf("%w (raft shut down while the write was in flight)", ErrOutcomeUnknown)
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrEnqueueTimeout):
			return nil, ErrNoLeader
		case errors.Is(err, raft.ErrLeadershipTransferInProgress):
			return nil, err
		}
		return nil, fmt.Errorf("raft apply: %w", err)
	}
	return f.Response(), nil
}

// IsLeader reports whether this node is the raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderID returns the leader's node id, or "" when none is known.
func (n *Node) LeaderID() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// LeaderCh delivers leadership changes of this node (true = became leader).
func (n *Node) LeaderCh() <-chan bool { return n.raft.LeaderCh() }

// Close shuts raft down and closes the stores.
func (n *Node) Close() error {
	select {
	case <-n.closed:
	default:
		close(n.closed)
	}
	var err error
	if n.raft != nil {
		err = n.raft.Shutdown().Error()
	}
	n.closeTransport()
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

func (n *Node) closeTransport() {
	// The mux first: it unblocks the RPC server's Accept, which
	// http.Server.Close waits for.
	if n.mux != nil {
		n.mux.Close()
	}
	if n.rpcSrv != nil {
		n.rpcSrv.Close()
	}
	if n.self != nil {
		n.self.Close()
	}
	if c, ok := n.trans.(io.Closer); ok {
		c.Close()
	}
}

// fsm adapts the StateMachine to raft.FSM.
// fsm adapts the StateMachine to raft.FSM and tracks the index the state
// machine has really applied: raft's own AppliedIndex moves when entries
// are handed to the FSM goroutine, before they are applied, so waiting on it
// would let a follower answer a forwarded write before it can read it.
type fsm struct {
	sm      StateMachine
	snaps   raft.SnapshotStore
	applied atomic.Uint64
	// started: raft has restored this node's own snapshot at start; any
	// later restore comes from elsewhere (InstallSnapshot, a user restore).
	started atomic.Bool
	// offline: cofferd recover's replay (its snapshot stays local).
	offline bool
	// notify is closed (and replaced) when applied moves, so that
	// waitApplied sleeps until then instead of polling.
	notifyMu sync.Mutex
	notify   chan struct{}
	// recent: the responses to the last entries applied (settle.go).
	recent recentResponses
}

func (f *fsm) response(index uint64) (any, bool) { return f.recent.get(index) }

// appliedCh returns a channel closed at the next change of applied. Take it
// before reading applied, so that no change is missed.
func (f *fsm) appliedCh() <-chan struct{} {
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	if f.notify == nil {
		f.notify = make(chan struct{})
	}
	return f.notify
}

func (f *fsm) setApplied(index uint64) {
	f.applied.Store(index)
	f.notifyMu.Lock()
	if f.notify != nil {
		close(f.notify)
		f.notify = nil
	}
	f.notifyMu.Unlock()
}

// RemoteRestorer is implemented by a StateMachine that checks snapshots
// from other nodes more strictly than its own (the keystore).
type RemoteRestorer interface {
	RestoreRemote(io.Reader) error
}

func (f *fsm) Apply(l *raft.Log) any {
	var resp any
	if l.Type == raft.LogCommand {
		resp = f.sm.Apply(l.Data)
	}
	f.recent.put(l.Index, resp)
	f.setApplied(l.Index)
	return resp
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	// A sealed node of an initialised cluster cannot authenticate a
	// snapshot, and raft may ship this node's newest snapshot to others
	// (InstallSnapshot) once it leads, which they would refuse: it keeps
	// its log instead until it is unsealed. (Offline recovery snapshots
	// stay on the node: allowed.)
	if ss, ok := f.sm.(SealState); ok && !f.offline && ss.Initialized() && ss.Sealed() {
		return nil, errSealedSnapshot
	}
	return &snapshot{write: f.sm.SnapshotTo()}, nil
}

var errSealedSnapshot = errors.New("not taking a snapshot while sealed: it could not be authenticated; the raft log is kept until the node is unsealed")

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	restore := f.sm.Restore
	if rr, ok := f.sm.(RemoteRestorer); ok && f.started.Load() {
		restore = rr.RestoreRemote
	}
	if err := restore(rc); err != nil {
		return err
	}
	// raft restores from the newest snapshot in the store (at start, on
	// InstallSnapshot and on a user restore alike): that is the index now.
	if list, err := f.snaps.List(); err == nil && len(list) > 0 {
		f.setApplied(list[0].Index)
	}
	return nil
}

type snapshot struct{ write func(io.Writer) error }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() {}

// Barrier waits until every entry committed before the call has been applied
// to the state machine. Only the leader can do this; elsewhere it returns at
// once (followers apply what they receive).
func (n *Node) Barrier(ctx context.Context) error {
	if n.raft.State() != raft.Leader {
		return nil
	}
	timeout := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return n.raft.Barrier(timeout).Error()
}

// Peer is one member of the raft configuration.
type Peer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
	Leader  bool   `json:"leader"`
}

// Peers lists the members of the raft configuration as this node knows it.
func (n *Node) Peers() ([]Peer, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	_, leader := n.raft.LeaderWithID()
	var out []Peer
	for _, s := range f.Configuration().Servers {
		out = append(out, Peer{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter, Leader: s.ID == leader})
	}
	return out, nil
}

// ErrNoSuchPeer: remove of a node that is not a member.
var ErrNoSuchPeer = errors.New("no such peer")

// RemovePeer removes a member (forwarded to the leader from a follower).
func (n *Node) RemovePeer(ctx context.Context, id string) error {
	peers, err := n.Peers()
	if err != nil {
		return err
	}
	found := false
	for _, p := range peers {
		found = found || p.ID == id
	}
	if !found {
		return fmt.Errorf("%w: %q is not a member of this cluster (see `coffer operator raft list-peers`)", ErrNoSuchPeer, id)
	}
	// Revoke first (a replicated write): the leader carries out only a
	// removal whose revocation is committed, and from then on the node's
	// current certificate is refused once it has left the configuration.
	if n.cfg.Trust != nil {
		if err := n.cfg.Trust.RevokeNode(ctx, id); err != nil {
			return fmt.Errorf("revoking node %s: %w", id, err)
		}
	}
	if n.raft.State() == raft.Leader {
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
			return err
		}
		if n.cfg.OnMembership != nil {
			n.cfg.OnMembership("remove", id, "")
		}
		return nil
	}
	if n.cfg.Net == nil {
		return ErrNoLeader
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	for {
		addr, _ := n.raft.LeaderWithID()
		if addr == "" {
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return ErrNoLeader
			}
			continue
		}
		out, status, err := n.call(ctx, string(addr), "/rpc/remove", []byte(id))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNoLeader, err)
		}
		if status == http.StatusMisdirectedRequest {
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return ErrNoLeader
			}
			continue
		}
		if out.Error != "" {
			return errors.New(out.Error)
		}
		return nil
	}
}

// Restore installs a snapshot (as written by the state machine's
// SnapshotTo) as the whole cluster's state. Only the leader can; a follower
// answers ErrNotLeaderForRestore.
func (n *Node) Restore(r io.Reader, size int64) error {
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		return fmt.Errorf("%w: send the snapshot to the leader (%s)", ErrNotLeaderForRestore, addr)
	}
	return n.raft.Restore(&raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size}, r, 5*time.Minute)
}

// ErrNotLeaderForRestore: a restore sent to a follower.
var ErrNotLeaderForRestore = errors.New("snapshots are restored on the leader")

// HasState reports whether this node has raft state (it has bootstrapped or
// joined a cluster before).
func (n *Node) HasState() bool {
	has, err := raft.HasExistingState(n.store, n.store, n.snaps)
	return err == nil && has
}

// CatchUp waits until this node has applied what the cluster committed when
// it started: on the leader a barrier, on a follower until its applied
// index reaches the commit index it learns from the leader.
func (n *Node) CatchUp(ctx context.Context) error {
	if n.raft.State() == raft.Leader {
		return n.Barrier(ctx)
	}
	for {
		// CommitIndex is updated by the leader's AppendEntries.
		if c := n.raft.CommitIndex(); c > 0 {
			return n.waitApplied(ctx, c)
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return ErrNoLeader
		}
	}
}

// Recover rewrites this node's raft configuration to exactly peers, offline
// (the node must not be running), as hashicorp/raft's documentation
// describes for a cluster that lost its quorum: run it with the same peers
// file on every surviving node, then start them. The state machine is used
// only to replay and snapshot the log.
func Recover(cfg Config, peers []Peer) error {
	if len(peers) == 0 {
		return errors.New("the peers file lists no servers")
	}
	var conf raft.Configuration
	self := false
	for _, p := range peers {
		if p.ID == "" || p.Address == "" {
			return fmt.Errorf("every peer needs an id and an address, got %+v", p)
		}
		self = self || p.ID == cfg.NodeID
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Address), Suffrage: raft.Voter})
	}
	if !self {
		return fmt.Errorf("the peers file does not list this node (%s): add it, or run recover only on the nodes it lists", cfg.NodeID)
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	dir := filepath.Join(cfg.DataDir, "raft")
	if _, err := os.Stat(filepath.Join(dir, "raft.db")); err != nil {
		return fmt.Errorf("no raft state in %s: nothing to recover", dir)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return fmt.Errorf("opening raft log (is cofferd still running?): %w", err)
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, cfg.Logger.Named("snapshots"))
	if err != nil {
		return err
	}
	_, trans := raft.NewInmemTransport(raft.ServerAddress(cfg.NodeID))
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = cfg.Logger.Named("raft")
	setLogRetention(rc)
	return raft.RecoverCluster(rc, &fsm{sm: cfg.FSM, snaps: snaps, offline: true}, store, store, snaps, trans, conf)
}

// OnLeaderChange calls fn (from a goroutine of its own, in order) with the
// new leader's node id, "" while there is none, each time this node sees
// the leadership change. It stops when the node closes.
func (n *Node) OnLeaderChange(fn func(leaderID string)) {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	go func() {
		defer n.raft.DeregisterObserver(obs)
		for {
			select {
			case <-n.closed:
				return
			case o := <-ch:
				fn(string(o.Data.(raft.LeaderObservation).LeaderID))
			}
		}
	}()
}
