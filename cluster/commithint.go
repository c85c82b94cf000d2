package cluster

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Telling a follower at once that its forwarded write committed.
//
// A follower learns that an entry committed only from the leader's next
// AppendEntries. hashicorp/raft sends one when the leader appends a new
// entry, or after CommitTimeout when idle; nothing sends one when the commit
// index moves. The follower that forwarded a write answers only once it
// applied the write itself (read-your-writes), so it used to wait for that
// tick (5–10 ms), and then, with the barrier entry the leader appended after
// each forwarded write, for the barrier's fsync on the leader, its
// replication and its fsync on the follower (~1 ms in process, more under
// load; docs/benchmarks/issue15-follower.md).
//
// But the leader's answer to /rpc/apply already says what that
// AppendEntries would: entry Index, appended in Term by this leader, is
// committed. So the follower hands its own raft exactly the message the
// leader could have sent at that moment, an empty AppendEntries with
// PrevLogEntry = Index, PrevLogTerm = Term and LeaderCommitIndex = Index,
// through its own raft transport (selfTransport: a connection in memory to
// the node's raft listener). raft treats it like any AppendEntries: it
// accepts it only if this node's log holds the entry at Index with that
// term (so, by raft's log matching, the same log as the leader's up to
// Index), and refuses it if its term is older than this node's. raft is
// built to tolerate messages that arrive late or twice, and this is one of
// the leader's messages, relayed: it cannot commit anything the leader had
// not committed. The leader vouches for the term only when its term did not
// change while the entry was appended and committed (rpcApply), so the
// entry's term is that term and the leader led it.

// storeWatch wraps the raft log store to tell waiters that entries up to
// an index have been stored on this node, so that the commit hint is sent
// only once raft can accept it.
type storeWatch struct {
	raft.LogStore
	last   atomic.Uint64 // highest index stored since start (a hint only)
	mu     sync.Mutex
	notify chan struct{}
}

// storedCh returns a channel closed at the next store. Take it before
// reading last, so that no store is missed.
func (s *storeWatch) storedCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.notify == nil {
		s.notify = make(chan struct{})
	}
	return s.notify
}

func (s *storeWatch) stored(index uint64) {
	for {
		cur := s.last.Load()
		if index <= cur || s.last.CompareAndSwap(cur, index) {
			break
		}
	}
	s.mu.Lock()
	if s.notify != nil {
		close(s.notify)
		s.notify = nil
	}
	s.mu.Unlock()
}

func (s *storeWatch) StoreLog(l *raft.Log) error {
	if err := s.LogStore.StoreLog(l); err != nil {
		return err
	}
	s.stored(l.Index)
	return nil
}

func (s *storeWatch) StoreLogs(logs []*raft.Log) error {
	if err := s.LogStore.StoreLogs(logs); err != nil {
		return err
	}
	if len(logs) > 0 {
		s.stored(logs[len(logs)-1].Index)
	}
	return nil
}

// DeleteRange: a follower drops a conflicting suffix of its log (a new
// leader overwrites it), and compaction drops a prefix. Only the first moves
// the highest stored index back.
func (s *storeWatch) DeleteRange(min, max uint64) error {
	if err := s.LogStore.DeleteRange(min, max); err != nil {
		return err
	}
	if max >= s.last.Load() && min > 0 {
		s.last.Store(min - 1)
	}
	return nil
}

// selfStream is the stream layer of selfTransport: every dial is a
// connection in memory to this node's own raft listener (the one the mux
// feeds), served by raft's transport like a connection from a peer. It
// accepts nothing itself.
type selfStream struct {
	target *chanListener
	done   chan struct{}
	once   sync.Once
}

func (s *selfStream) Dial(_ raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	a, b := net.Pipe()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case s.target.ch <- b:
		return a, nil
	case <-s.done:
	case <-s.target.done:
	case <-t.C:
	}
	a.Close()
	b.Close()
	return nil, net.ErrClosed
}

func (s *selfStream) Accept() (net.Conn, error) {
	<-s.done
	return nil, net.ErrClosed
}

func (s *selfStream) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

func (s *selfStream) Addr() net.Addr { return s.target.addr }

func newSelfTransport(target *chanListener, n *Node) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &selfStream{target: target, done: make(chan struct{})},
		MaxPool: 1,
		Timeout: 5 * time.Second,
		Logger:  n.log.Named("raft-self"),
	})
}

// pushCommit tells this node's raft that the leader (id, addr) committed
// the entry at index, appended in term, once this node has stored it. It
// reports whether raft accepted the news; on false the node learns of the
// commit from the leader's next AppendEntries, as without it.
func (n *Node) pushCommit(ctx context.Context, id raft.ServerID, addr raft.ServerAddress, index, term uint64) bool {
	if n.self == nil || term == 0 || index == 0 || id == "" || addr == "" {
		return false
	}
	// Wait until raft has stored the entry: sent before, the message
	// would only be refused (and logged by raft as a mismatch). The
	// entry is on its way: the leader replicates it to every member.
	for {
		if n.raft.CommitIndex() >= index {
			return true // the leader's own AppendEntries came first
		}
		ch, applied := n.logs.storedCh(), n.fsm.appliedCh()
		if n.logs.last.Load() >= index {
			break
		}
		if n.raft.AppliedIndex() >= index {
			return true // from a snapshot of the leader's (InstallSnapshot)
		}
		select {
		case <-ch:
		case <-applied:
		case <-ctx.Done():
			return false
		}
	}
	n.selfMu.Lock()
	defer n.selfMu.Unlock()
	if n.raft.CommitIndex() >= index {
		return true
	}
	ok, err := n.relayCommit(id, addr, index, term)
	if ok {
		n.relayed.Add(1)
	}
	if err != nil {
		n.log.Debug("could not pass the commit index of a forwarded write to raft", "index", index, "error", err)
	}
	return ok
}

// relayCommit hands this node's raft the leader's empty AppendEntries
// described at the top of this file, and reports whether raft accepted it.
func (n *Node) relayCommit(id raft.ServerID, addr raft.ServerAddress, index, term uint64) (bool, error) {
	peer := n.trans.EncodePeer(id, addr)
	req := &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{
			ProtocolVersion: raft.ProtocolVersionMax,
			ID:              []byte(id),
			Addr:            peer,
		},
		Term:              term,
		Leader:            peer,
		PrevLogEntry:      index,
		PrevLogTerm:       term,
		LeaderCommitIndex: index,
	}
	var resp raft.AppendEntriesResponse
	if err := n.self.AppendEntries(raft.ServerID(n.cfg.NodeID), "self", req, &resp); err != nil {
		return false, err
	}
	return resp.Success, nil
}
