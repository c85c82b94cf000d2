package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
)

// Who may talk on the cluster port (issue 9). A certificate of the cluster
// CA only proves that the CA signed it; what a peer may do depends on the
// node id it names:
//
//   - a current member (in the raft configuration) whose certificate is not
//     revoked gets raft and every node RPC;
//   - any other certificate gets one RPC, join, which the leader grants only
//     before init or with an enrolment token issued for that node id;
//   - a revoked certificate (its node id was removed after the certificate
//     was issued) gets nothing: the handshake is completed, then the
//     connection is closed before a byte is read.
//
// hashicorp/raft's NetworkTransport does not tell its RPC consumer which
// connection a request came from (and heartbeats bypass the consumer), so
// the check is made where connections are accepted, and every accepted
// connection is re-checked whenever membership may have changed (sweep):
// a removed member's open raft and RPC connections are closed.

// Trust is the replicated trust state that the cluster port follows (the
// keystore implements it). A nil Trust admits every member and lets any
// certificate join (tests of this package).
type Trust interface {
	// Initialized reports whether the cluster has been initialised: from
	// then on a new node id joins only with an enrolment token.
	Initialized() bool
	// NodeRevoked reports whether nodeID's certificate issued at issued
	// is revoked.
	NodeRevoked(nodeID string, issued time.Time) bool
	// UseEnrolToken uses up token for nodeID through a raft write (called
	// on the leader while it admits a joiner).
	UseEnrolToken(ctx context.Context, nodeID, token string) error
	// RevokeNode commits nodeID on the deny list (before its removal).
	RevokeNode(ctx context.Context, nodeID string) error
	// RevokedAt reports when nodeID was put on the deny list.
	RevokedAt(nodeID string) (time.Time, bool)
	// RemovalCommitted reports whether nodeID's revocation was committed
	// after it was last admitted (the leader removes only such nodes).
	RemovalCommitted(nodeID string) bool
	// MemberAllowed reports whether nodeID is on the replicated member
	// allow list (true where there is none yet).
	MemberAllowed(nodeID string) bool
}

// Refusal is one refused connection or RPC, for the audit log.
type Refusal struct {
	Remote string // the peer's address
	NodeID string // the node id its certificate names ("" if none)
	What   string // "raft", "rpc", "handshake" or an RPC path
	Reason string
}

// ErrInvalidToken is how a join refused for its token is reported to the
// joining node (400 invalid_token on its API).
var ErrInvalidToken = errors.New("the leader refused the enrolment token")

// ErrForbidden: the cluster refused this node (not a member, revoked).
var ErrForbidden = errors.New("the cluster refused this node")

// peer identity of an accepted connection.
type peerInfo struct {
	id   string
	leaf *x509.Certificate
}

func peerOf(cs tls.ConnectionState) (peerInfo, error) {
	id, err := tlsutil.PeerNodeID(cs)
	if err != nil {
		return peerInfo{}, err
	}
	return peerInfo{id: id, leaf: cs.VerifiedChains[0][0]}, nil
}

// isMember reports whether id is in this node's raft configuration, or,
// while that is empty (a node waiting to be joined), one of the nodes it
// asked to join it (the leader then adds it and starts replicating).
func (n *Node) isMember(id string) bool {
	if n.raft == nil {
		return false
	}
	servers := n.raft.GetConfiguration().Configuration().Servers
	for _, s := range servers {
		if string(s.ID) == id {
			// The raft configuration is not authenticated by the keyring:
			// the replicated allow list must agree.
			return n.cfg.Trust == nil || n.cfg.Trust.MemberAllowed(id)
		}
	}
	if len(servers) == 0 {
		n.joinMu.Lock()
		defer n.joinMu.Unlock()
		return n.joinedVia[id]
	}
	return false
}

func (n *Node) revoked(p peerInfo) bool {
	return n.cfg.Trust != nil && n.cfg.Trust.NodeRevoked(p.id, issuedAt(p.leaf))
}

// issuedAt is when `coffer tls cert create` made the certificate: it
// backdates NotBefore by tlsutil.NodeCertBackdate.
func issuedAt(leaf *x509.Certificate) time.Time {
	return leaf.NotBefore.Add(tlsutil.NodeCertBackdate)
}

// admit decides at accept time whether a connection for proto may be
// served; "" when it may.
func (n *Node) admit(p peerInfo, proto string) string {
	if n.revoked(p) {
		return "the node was removed from the cluster after its certificate was issued"
	}
	if proto == alpnRaft && !n.isMember(p.id) {
		return "not a member of the cluster"
	}
	return ""
}

// refused logs (rate-limited per node id and reason) and reports a refusal.
func (n *Node) refused(r Refusal) {
	key := refusalKey(r)
	n.refuseMu.Lock()
	if n.refuseSeen == nil {
		n.refuseSeen = map[string]time.Time{}
	}
	now := time.Now()
	last, seen := n.refuseSeen[key]
	quiet := seen && now.Sub(last) < refuseEvery
	if !quiet {
		n.refuseSeen[key] = now
		if len(n.refuseSeen) > 4096 {
			// A flood of distinct ids: forget old ones rather than grow.
			for k, t := range n.refuseSeen {
				if now.Sub(t) >= refuseEvery {
					delete(n.refuseSeen, k)
				}
			}
		}
	}
	n.refuseMu.Unlock()
	if quiet {
		n.refuseDropped.Add(1)
		return
	}
	n.log.Warn("cluster peer refused", "remote", r.Remote, "cert-node-id", r.NodeID, "what", r.What, "reason", r.Reason, "refusals-not-logged", n.refuseDropped.Swap(0))
	if n.cfg.OnRefused != nil {
		n.cfg.OnRefused(r)
	}
}

// refusalKey is what makes a refusal new for the rate limit. Only what the
// peer cannot vary at will counts: a failed handshake's error text quotes
// the client (the ALPN protocols or versions it offered, the name of an
// unknown issuer), so all failed handshakes are one kind; a path that is
// not a node RPC is "other". Without a certificate, varying them made
// every refusal a log line and an audit entry of its own.
func refusalKey(r Refusal) string {
	what, reason := r.What, r.Reason
	switch {
	case what == "handshake":
		reason = ""
	case strings.HasPrefix(what, "/") && !isRPCPath(what):
		what = "other"
	}
	return r.NodeID + "\x00" + what + "\x00" + reason
}

// isRPCPath reports whether path is a node RPC (rpcRoutes, rpc_server.go).
func isRPCPath(path string) bool {
	_, ok := rpcRoutes[path]
	return ok
}

// refuseEvery: one log line and audit entry per node id, path and reason
// in this interval; the rest are counted (a flood cannot fill the disk).
const refuseEvery = 10 * time.Second

// member wraps an RPC handler that only current, unrevoked members may
// call.
func (n *Node) member(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := peerOfRequest(r)
		reason := ""
		switch {
		case err != nil:
			reason = err.Error()
		case n.revoked(p):
			reason = "the node was removed from the cluster after its certificate was issued"
		case !n.isMember(p.id):
			reason = "not a member of the cluster"
		}
		if reason != "" {
			n.refused(Refusal{Remote: r.RemoteAddr, NodeID: p.id, What: r.URL.Path, Reason: reason})
			w.Header().Set("Connection", "close") // a refused peer keeps no idle connection
			writeRPC(w, http.StatusForbidden, applyResponse{Error: "forbidden: " + reason})
			return
		}
		h(w, r)
	}
}

func peerOfRequest(r *http.Request) (peerInfo, error) {
	cs, ok := r.Context().Value(peerTLSKey{}).(tls.ConnectionState)
	if !ok {
		return peerInfo{}, errors.New("no TLS peer")
	}
	return peerOf(cs)
}

// maxNonMemberConns bounds the RPC connections a node id that is not a
// member keeps open (see gate).
const maxNonMemberConns = 4

// tracked is an accepted connection and whom it belongs to.
type tracked struct {
	peer  peerInfo
	proto string
}

// trackLimited records c as p's connection for proto (sweep re-checks it),
// unless limit > 0 and p's node id already has limit of them; it reports
// whether it tracked c.
func (n *Node) trackLimited(c net.Conn, p peerInfo, proto string, limit int) bool {
	n.connMu.Lock()
	defer n.connMu.Unlock()
	if limit > 0 {
		have := 0
		for _, t := range n.conns {
			if t.peer.id == p.id && t.proto == proto {
				have++
			}
		}
		if have >= limit {
			return false
		}
	}
	if n.conns == nil {
		n.conns = map[net.Conn]tracked{}
	}
	n.conns[c] = tracked{peer: p, proto: proto}
	return true
}

func (n *Node) untrack(c net.Conn) {
	n.connMu.Lock()
	defer n.connMu.Unlock()
	delete(n.conns, c)
}

// sweep closes accepted connections whose peer may no longer use them: a
// revoked certificate, or a raft connection from a node that is no longer a
// member. (RPC connections of non-members are kept: each request is checked
// again, and join is open to them.)
func (n *Node) sweep() {
	n.connMu.Lock()
	var drop []net.Conn
	for c, t := range n.conns {
		if n.admit(t.peer, t.proto) != "" {
			drop = append(drop, c)
			delete(n.conns, c)
		}
	}
	n.connMu.Unlock()
	for _, c := range drop {
		c.Close()
	}
	if len(drop) > 0 {
		n.log.Info("closed connections of a peer that is no longer admitted", "connections", len(drop))
	}
}

// sweepLoop re-checks open connections every sweepEvery and whenever the
// raft configuration changes.
func (n *Node) sweepLoop() {
	ch := make(chan raft.Observation, 4)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.PeerObservation, raft.LeaderObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-n.closed:
			return
		case <-ch:
		case <-t.C:
		}
		n.sweep()
		if n.leaderSealed() {
			n.handOff()
		}
	}
}

const sweepEvery = 250 * time.Millisecond

// trackedConn untracks itself when closed.
type trackedConn struct {
	net.Conn
	n      *Node
	once   sync.Once
	peerID string
	raft   bool // a raft connection (failover.go watches them end)
	ended  atomic.Bool
}

// Read reports the end of a raft connection a peer opened to this node:
// when the peer is the leader, its process may be gone (failover.go).
func (c *trackedConn) Read(b []byte) (int, error) {
	k, err := c.Conn.Read(b)
	if err != nil && c.raft && c.ended.CompareAndSwap(false, true) {
		c.n.leaderConnLost(c.peerID)
	}
	return k, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.n.untrack(c) })
	return c.Conn.Close()
}

// joinAuth decides on the leader whether id may join at addr; it uses up
// the token when one is needed (used reports that it did). It returns the
// HTTP status and error of a refusal.
func (n *Node) joinAuth(ctx context.Context, p peerInfo, id, addr, token string) (status int, used bool, err error) {
	status, err = n.joinAuthCheck(ctx, p, id, addr, token, &used)
	return status, used, err
}

func (n *Node) joinAuthCheck(ctx context.Context, p peerInfo, id, addr, token string, used *bool) (int, error) {
	if n.revoked(p) {
		at, _ := n.cfg.Trust.RevokedAt(id)
		return http.StatusForbidden, fmt.Errorf("node %s was removed at %s: it may join again only with a certificate issued after that (`coffer tls cert create`) and a new enrolment token", id, at.UTC().Format(time.RFC3339))
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return http.StatusServiceUnavailable, err
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == id && string(s.Address) == addr && (n.cfg.Trust == nil || n.cfg.Trust.MemberAllowed(id)) {
			return 0, nil // a member re-joining from its own address
		}
		if string(s.ID) != id && string(s.Address) == addr {
			return http.StatusConflict, fmt.Errorf("address %s belongs to member %s: a node may not take over another member's address (remove %s first: `coffer operator raft remove-peer %s`)", addr, s.ID, s.ID, s.ID)
		}
	}
	if n.cfg.Trust == nil || !n.cfg.Trust.Initialized() {
		return 0, nil // before init nothing is protected yet (docs/api.md)
	}
	if token == "" {
		return http.StatusBadRequest, &tokenError{fmt.Sprintf("the cluster is initialised: node %s needs an enrolment token to join (an admin runs `coffer operator enrol token create --node %s`, then `coffer operator raft join ADDR --token -`)", id, id)}
	}
	if err := n.cfg.Trust.UseEnrolToken(ctx, id, token); err != nil {
		if errors.Is(err, ErrNoLeader) {
			return http.StatusServiceUnavailable, err
		}
		return http.StatusBadRequest, &tokenError{err.Error()}
	}
	*used = true
	return 0, nil
}

// gate is the mux's admission check (see the top of this file). hsErr is a
// failed handshake's error (reported, nothing served).
func (n *Node) gate(tc *tls.Conn, proto string, hsErr error) net.Conn {
	remote := tc.RemoteAddr().String()
	if hsErr != nil {
		n.refused(Refusal{Remote: remote, What: "handshake", Reason: hsErr.Error()})
		return nil
	}
	p, err := peerOf(tc.ConnectionState())
	if err != nil {
		n.refused(Refusal{Remote: remote, What: proto, Reason: err.Error()})
		return nil
	}
	if reason := n.admit(p, proto); reason != "" {
		n.refused(Refusal{Remote: remote, NodeID: p.id, What: proto, Reason: reason})
		return nil
	}
	c := &trackedConn{Conn: tc, n: n, peerID: p.id, raft: proto == alpnRaft}
	// A non-member's RPC connections are kept (join is open to it), but
	// not any number of them: each costs a file descriptor, and the
	// certificate may be stolen or issued ahead of a join.
	limit := 0
	if proto == alpnRPC && !n.isMember(p.id) {
		limit = maxNonMemberConns
	}
	if !n.trackLimited(c, p, proto, limit) {
		n.refused(Refusal{Remote: remote, NodeID: p.id, What: proto, Reason: "too many connections of a node that is not a member"})
		return nil
	}
	return c
}

// ConnectionState lets the RPC server find the peer's certificate.
func (c *trackedConn) ConnectionState() tls.ConnectionState {
	return c.Conn.(*tls.Conn).ConnectionState()
}

// noteDialed remembers the node id of a peer this node called while its
// raft configuration is empty: it is asking to be joined, and the leader it
// reaches will start replicating to it (isMember).
func (n *Node) noteDialed(c net.Conn) {
	if n.raft == nil || len(n.raft.GetConfiguration().Configuration().Servers) > 0 {
		return
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	id, err := tlsutil.PeerNodeID(tc.ConnectionState())
	if err != nil {
		return
	}
	n.joinMu.Lock()
	defer n.joinMu.Unlock()
	if n.joinedVia == nil {
		n.joinedVia = map[string]bool{}
	}
	n.joinedVia[id] = true
}

// tokenError is a join refused for its token (errors.Is ErrInvalidToken).
type tokenError struct{ msg string }

func (e *tokenError) Error() string        { return e.msg }
func (e *tokenError) Is(target error) bool { return target == ErrInvalidToken }

// CommandVerifier is implemented by a StateMachine that authenticates
// commands (the keystore): the leader checks a forwarded command before it
// appends it, so that a member's certificate alone cannot fill the log.
type CommandVerifier interface {
	VerifyCommand(cmd []byte) error
}

// CommandPreparer is implemented by a StateMachine that decodes a
// forwarded command once for all the leader's checks: PrepareCommand
// refuses what Codec.Validate refuses, and what it returns verifies the
// command as CommandVerifier does and names it as Describer does (the
// command carries a whole key record, so each decode costs).
type CommandPreparer interface {
	PrepareCommand(cmd []byte) (interface {
		Verify() error
		Describe() (op, path string)
	}, error)
}

// SealState is implemented by a StateMachine that can be sealed: a sealed
// leader of an initialised cluster cannot authenticate commands and hands
// leadership to another member.
type SealState interface {
	Initialized() bool
	Sealed() bool
}

func (n *Node) leaderSealed() bool {
	ss, ok := n.cfg.FSM.(SealState)
	return ok && n.raft.State() == raft.Leader && ss.Initialized() && ss.Sealed()
}

// handOff transfers leadership to a member that reports itself unsealed
// (rpcSealState), at most every handOffEvery. If none is, leadership
// stays: passing it among sealed members would only churn elections.
func (n *Node) handOff() {
	n.handOffMu.Lock()
	defer n.handOffMu.Unlock()
	if time.Since(n.lastHandOff) < handOffEvery || len(n.raft.GetConfiguration().Configuration().Servers) < 2 {
		return
	}
	n.lastHandOff = time.Now()
	go func() {
		for _, s := range n.raft.GetConfiguration().Configuration().Servers {
			if string(s.ID) == n.cfg.NodeID || s.Suffrage != raft.Voter {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			out, status, err := n.call(ctx, string(s.Address), "/rpc/seal-state", nil)
			cancel()
			if err != nil || status != http.StatusOK || out.Response != "unsealed" {
				continue
			}
			n.log.Info("this leader is sealed and cannot authenticate commands: handing leadership to an unsealed member", "to", s.ID)
			if err := n.raft.LeadershipTransferToServer(s.ID, s.Address).Error(); err != nil {
				n.log.Warn("leadership transfer failed", "to", s.ID, "error", err)
				continue
			}
			return
		}
	}()
}

// rpcSealState tells a member whether this node can authenticate commands.
func (n *Node) rpcSealState(w http.ResponseWriter, r *http.Request) {
	state := "unsealed"
	if ss, ok := n.cfg.FSM.(SealState); ok && ss.Sealed() {
		state = "sealed"
	}
	writeRPC(w, http.StatusOK, applyResponse{Response: state})
}

const handOffEvery = 5 * time.Second
