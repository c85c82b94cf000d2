package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
)

// Node-to-node RPC: HTTP/1.1 over the mutual-TLS connections that the mux
// hands over for the coffer-rpc ALPN protocol. Every peer holds a
// certificate from the cluster CA; that is the authorisation.

const maxRPCBody = 64 << 20 // a keyring or key record; snapshots are not forwarded

type applyResponse struct {
	Response string `json:"response"`        // Codec.EncodeResponse of the FSM's answer
	Index    uint64 `json:"index"`           // the log index it was applied at
	Leader   string `json:"leader"`          // set with errNotLeader: who to ask instead
	Error    string `json:"error,omitempty"` // "not_leader", or a failure to commit
}

type joinRequest struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

const errNotLeader = "not_leader"

func (n *Node) newRPCServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /rpc/apply", n.rpcApply)
	mux.HandleFunc("POST /rpc/join", n.rpcJoin)
	mux.HandleFunc("POST /rpc/remove", n.rpcRemove)
	mux.HandleFunc("POST /rpc/read-index", n.rpcReadIndex)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: n.log.Named("rpc").StandardLogger(nil),
		// The mux hands net/http a plainConn, so r.TLS is nil: keep the
		// verified peer's TLS state for the handlers that need its node id.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(plainConn); ok {
				if tc, ok := pc.Conn.(*tls.Conn); ok {
					return context.WithValue(ctx, peerTLSKey{}, tc.ConnectionState())
				}
			}
			return ctx
		}}
}

type peerTLSKey struct{}

// peerNodeID is the node id in the verified certificate of the peer that
// sent r.
func peerNodeID(r *http.Request) (string, error) {
	cs, ok := r.Context().Value(peerTLSKey{}).(tls.ConnectionState)
	if !ok {
		return "", errors.New("no TLS peer")
	}
	return tlsutil.PeerNodeID(cs)
}

// rpcReadIndex answers the leader's commit index after confirming it still
// leads (a heartbeat round), so a follower that waits for it reads
// linearizably.
func (n *Node) rpcReadIndex(w http.ResponseWriter, r *http.Request) {
	index, err := n.readIndex()
	if err != nil {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	writeRPC(w, http.StatusOK, applyResponse{Index: index})
}

// readIndex is the leader's commit index once it has confirmed that it
// still leads. A new leader's commit index may lag behind what the previous
// leader acknowledged until an entry of the new term commits (raft thesis
// §6.4), so the first read of a term waits for a barrier, which commits one.
func (n *Node) readIndex() (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, raft.ErrNotLeader
	}
	term := n.raft.CurrentTerm()
	if n.readTerm.Load() != term {
		if err := n.raft.Barrier(n.cfg.ApplyTimeout).Error(); err != nil {
			return 0, err
		}
		n.readTerm.Store(term)
	}
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return 0, err
	}
	return n.raft.CommitIndex(), nil
}

// Sync waits until this node has applied every write committed before the
// call, so that a read after it sees them (a linearizable read point). On a
// single node it returns at once: its writes are applied before they are
// acknowledged.
func (n *Node) Sync(ctx context.Context) error {
	if n.cfg.Net == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	for {
		if n.raft.State() == raft.Leader {
			index, err := n.readIndex()
			if err != nil {
				return ErrNoLeader
			}
			return n.waitApplied(ctx, index)
		}
		addr, _ := n.raft.LeaderWithID()
		if addr != "" {
			// Reads are idempotent: when the leader changes, ask the new one.
			callCtx, cancel := n.whileLeader(ctx, addr)
			out, status, err := n.call(callCtx, string(addr), "/rpc/read-index", nil)
			cancel()
			if err == nil && status == http.StatusOK {
				return n.waitApplied(ctx, out.Index)
			}
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ErrNoLeader
		}
	}
}

func writeRPC(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (n *Node) rpcApply(w http.ResponseWriter, r *http.Request) {
	cmd, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRPCBody))
	if err != nil {
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: err.Error()})
		return
	}
	if err := n.cfg.Codec.Validate(cmd); err != nil {
		n.log.Warn("refusing a forwarded command that cannot be applied", "error", err)
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: "invalid command: " + err.Error()})
		return
	}
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	f := n.raft.Apply(cmd, n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		// Only ErrNotLeader means the entry was never appended, so that the
		// follower may send it again. After ErrLeadershipLost the entry may
		// still be committed by the next leader: sending it again could
		// apply it twice (a rotation would add two versions).
		if errors.Is(err, raft.ErrNotLeader) {
			addr, _ := n.raft.LeaderWithID()
			writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
			return
		}
		writeRPC(w, http.StatusServiceUnavailable, applyResponse{Error: err.Error()})
		return
	}
	writeRPC(w, http.StatusOK, applyResponse{Response: n.cfg.Codec.EncodeResponse(f.Response()), Index: f.Index()})
}

func (n *Node) rpcJoin(w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil || req.ID == "" || req.Address == "" {
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: "join needs the node id and its cluster address"})
		return
	}
	// A node joins as itself: the id must be the one its certificate names,
	// or any certificate holder could take over (remove and replace) a
	// member by naming its id.
	if id, err := peerNodeID(r); err != nil || id != req.ID {
		n.log.Warn("join refused: the node id does not match the peer certificate", "node-id", req.ID, "cert-node-id", id, "error", err)
		writeRPC(w, http.StatusForbidden, applyResponse{Error: fmt.Sprintf("a node may join only as the node its certificate names (%q), not %q", id, req.ID)})
		return
	}
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	if err := n.addVoter(req.ID, req.Address); err != nil {
		writeRPC(w, http.StatusConflict, applyResponse{Error: err.Error()})
		return
	}
	n.log.Info("node joined the cluster", "node-id", req.ID, "address", req.Address)
	writeRPC(w, http.StatusOK, applyResponse{Index: n.raft.LastIndex()})
}

func (n *Node) rpcRemove(w http.ResponseWriter, r *http.Request) {
	id, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 256))
	if err != nil || len(id) == 0 {
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: "remove needs a node id"})
		return
	}
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		writeRPC(w, http.StatusConflict, applyResponse{Error: err.Error()})
		return
	}
	n.log.Info("node removed from the cluster", "node-id", string(id))
	writeRPC(w, http.StatusOK, applyResponse{})
}

// addVoter adds (or re-adds at a new address) a voter. The leader only.
func (n *Node) addVoter(id, addr string) error {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, s := range cf.Configuration().Servers {
		if s.ID == raft.ServerID(id) && s.Address == raft.ServerAddress(addr) {
			return nil // already a member: joining twice is harmless
		}
		if s.ID == raft.ServerID(id) || s.Address == raft.ServerAddress(addr) {
			if err := n.raft.RemoveServer(s.ID, 0, 10*time.Second).Error(); err != nil {
				return fmt.Errorf("replacing member %s: %w", s.ID, err)
			}
		}
	}
	return n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error()
}

// dialError: a call that failed before a connection to the peer was made,
// so the peer never saw the request (safe to send again).
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func notSent(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}

// whileLeader returns a context that ends with ctx, or as soon as this node
// stops seeing addr as the leader (an election started or ended elsewhere):
// a call to a leader that froze or was cut off then gives up within about an
// election timeout instead of waiting for ctx's deadline.
func (n *Node) whileLeader(ctx context.Context, addr raft.ServerAddress) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-c.Done():
				return
			case <-t.C:
				if a, _ := n.raft.LeaderWithID(); a != addr {
					cancel()
					return
				}
			}
		}
	}()
	return c, cancel
}

// rpcClient calls peers over mutual TLS.
func (n *Node) rpcClient() *http.Client {
	n.rpcOnce.Do(func() {
		client := n.cfg.Net.ClientTLS
		// The URL says http: the dialer makes the mutual-TLS connection
		// itself and hands net/http a plain stream (see plainConn).
		n.rpcHTTP = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				if _, ok := ctx.Deadline(); !ok {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
				}
				c, err := dialTLSContext(ctx, addr, alpnRPC, client)
				if err != nil {
					return nil, &dialError{err}
				}
				return plainConn{c}, nil
			},
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     time.Minute,
		}}
	})
	return n.rpcHTTP
}

func (n *Node) call(ctx context.Context, addr, path string, body []byte) (*applyResponse, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	resp, err := n.rpcClient().Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	var out applyResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return nil, resp.StatusCode, fmt.Errorf("bad answer from %s: %w", addr, err)
	}
	return &out, resp.StatusCode, nil
}

// forward sends a command to the leader and waits until this node has
// applied it too, so that a client reads its own write from any node.
func (n *Node) forward(ctx context.Context, cmd []byte) (any, error) {
	for {
		addr, _ := n.raft.LeaderWithID()
		if addr == "" {
			if err := n.WaitLeader(ctx); err != nil {
				return nil, ErrNoLeader
			}
			continue
		}
		if n.raft.State() == raft.Leader {
			return n.applyLocal(ctx, cmd)
		}
		callCtx, cancel := n.whileLeader(ctx, addr)
		out, status, err := n.call(callCtx, string(addr), "/rpc/apply", cmd)
		cancel()
		if err != nil {
			if notSent(err) && ctx.Err() == nil {
				n.log.Debug("cannot reach the leader; retrying", "leader", addr, "error", err)
				if !sleepCtx(ctx, 100*time.Millisecond) {
					return nil, ErrNoLeader
				}
				continue
			}
			// The leader may have received the command and committed it:
			// sending it again could apply it twice, so the outcome is
			// unknown to the caller.
			return nil, fmt.Errorf("%w (the leader %s did not answer)", ErrOutcomeUnknown, addr)
		}
		switch {
		case status == http.StatusMisdirectedRequest && out.Error == errNotLeader:
			if !sleepCtx(ctx, 50*time.Millisecond) {
				return nil, ErrNoLeader
			}
			continue
		case status == http.StatusBadRequest:
			// A bug on this side, not a cluster problem: say so.
			return nil, fmt.Errorf("the leader refused the command: %s", out.Error)
		case status == http.StatusServiceUnavailable && out.Error != "":
			// The leader's apply failed after the entry may have been
			// appended (leadership lost): the outcome is unknown.
			return nil, fmt.Errorf("%w (the leader answered: %s)", ErrOutcomeUnknown, out.Error)
		case out.Error != "":
			return nil, fmt.Errorf("%w: %s", ErrNoLeader, out.Error)
		}
		if err := n.waitApplied(ctx, out.Index); err != nil {
			// Committed by the leader, not yet applied here: retrying
			// would apply it twice.
			return nil, fmt.Errorf("%w (the leader committed it; this node did not catch up in time)", ErrOutcomeUnknown)
		}
		return n.cfg.Codec.DecodeResponse(out.Response), nil
	}
}

// waitApplied waits until this node's state machine has applied everything
// up to index. raft's AppliedIndex says entries were handed to the FSM
// goroutine; the FSM's own counter says the last command it applied. Not
// every entry reaches the FSM (no-ops, configuration changes), so the
// target for the FSM is the last command at or before index.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	for n.raft.AppliedIndex() < index {
		if !sleepCtx(ctx, 2*time.Millisecond) {
			return fmt.Errorf("%w: this node did not catch up with the leader in time", ErrNoLeader)
		}
	}
	target := n.lastCommandAtOrBefore(index)
	for n.fsm.applied.Load() < target {
		if !sleepCtx(ctx, time.Millisecond) {
			return fmt.Errorf("%w: this node did not catch up with the leader in time", ErrNoLeader)
		}
	}
	return nil
}

// lastCommandAtOrBefore finds the newest command entry at or before index
// in the log (0 when the entries were compacted into a snapshot, which raft
// restores before it reports them applied).
func (n *Node) lastCommandAtOrBefore(index uint64) uint64 {
	for i := index; i > 0 && index-i < 256; i-- {
		var l raft.Log
		if err := n.store.GetLog(i, &l); err != nil {
			return 0
		}
		if l.Type == raft.LogCommand {
			return i
		}
	}
	return 0
}

// Join asks the cluster member at addr (any member: a follower passes the
// request on) to add this node as a voter.
func (n *Node) Join(ctx context.Context, addr string) error {
	if n.cfg.Net == nil {
		return errors.New("this node has no cluster block in its config: add one (addr, TLS files) and restart it before joining")
	}
	body, _ := json.Marshal(joinRequest{ID: n.cfg.NodeID, Address: n.cfg.Net.AdvertiseAddr})
	for attempt := 0; attempt < 10; attempt++ {
		out, status, err := n.call(ctx, addr, "/rpc/join", body)
		if err != nil {
			return fmt.Errorf("cannot reach %s over mutual TLS: %w (check the address, that both nodes' certificates come from the same CA, and the firewall)", addr, err)
		}
		switch {
		case status == http.StatusOK:
			return nil
		case out.Error == errNotLeader && out.Leader != "":
			addr = out.Leader
			continue
		case out.Error == errNotLeader:
			if !sleepCtx(ctx, 200*time.Millisecond) {
				return ErrNoLeader
			}
			continue
		}
		return fmt.Errorf("the leader refused the join: %s", out.Error)
	}
	return ErrNoLeader
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
