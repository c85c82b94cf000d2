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
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// ErrNoLeader: a write could not reach a raft leader in time.
var ErrNoLeader = errors.New("no raft leader: the write could not be committed in time; check that a quorum of nodes is up (`coffer status`)")

// StateMachine is what the node replicates: the keystore. Apply must be
// deterministic; Snapshot must return quickly with a copy that can be
// written while Apply runs; Restore discards all earlier state.
type StateMachine interface {
	Apply(cmd []byte) any
	SnapshotTo() func(io.Writer) error
	Restore(io.Reader) error
}

// Config configures a Node.
type Config struct {
	NodeID  string
	DataDir string // raft state goes in DataDir/raft
	Logger  hclog.Logger
	FSM     StateMachine
	// ApplyTimeout bounds one write once a leader is known (default 10s).
	ApplyTimeout time.Duration
}

// Node is one raft member.
type Node struct {
	cfg   Config
	log   hclog.Logger
	raft  *raft.Raft
	store *raftboltdb.BoltStore
	trans raft.Transport
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
	addr, trans := raft.NewInmemTransport(raft.ServerAddress(cfg.NodeID))

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = cfg.Logger.Named("raft")
	// One voter: it can only ever elect itself, so short timeouts just mean
	// a node serves sooner after start.
	rc.HeartbeatTimeout = 200 * time.Millisecond
	rc.ElectionTimeout = 200 * time.Millisecond
	rc.LeaderLeaseTimeout = 100 * time.Millisecond

	n := &Node{cfg: cfg, log: cfg.Logger, store: store, trans: trans}
	r, err := raft.NewRaft(rc, &fsm{sm: cfg.FSM}, store, store, snaps, trans)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("starting raft: %w", err)
	}
	n.raft = r
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("reading raft state: %w", err)
	}
	if !has {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: addr}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.Close()
			return nil, fmt.Errorf("bootstrapping raft: %w", err)
		}
		n.log.Info("bootstrapped a single-node raft cluster", "node-id", cfg.NodeID)
	}
	return n, nil
}

// WaitLeader blocks until a leader is known or ctx ends.
func (n *Node) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
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

// Propose commits cmd through raft and returns the FSM's response. It
// implements keystore.Proposer.
func (n *Node) Propose(ctx context.Context, cmd []byte) (any, error) {
	if n.raft.State() != raft.Leader {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := n.WaitLeader(wctx)
		cancel()
		if err != nil {
			return nil, ErrNoLeader
		}
		if n.raft.State() != raft.Leader {
			// Forwarding to another leader comes with clustering; a single
			// node is always its own leader once elected.
			return nil, ErrNoLeader
		}
	}
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	f := n.raft.Apply(cmd, timeout)
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
			errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrRaftShutdown):
			return nil, ErrNoLeader
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
	var err error
	if n.raft != nil {
		err = n.raft.Shutdown().Error()
	}
	if c, ok := n.trans.(io.Closer); ok {
		c.Close()
	}
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// fsm adapts the StateMachine to raft.FSM.
type fsm struct{ sm StateMachine }

func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.sm.Apply(l.Data)
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) { return &snapshot{write: f.sm.SnapshotTo()}, nil }

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return f.sm.Restore(rc)
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
