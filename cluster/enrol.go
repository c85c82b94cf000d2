package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
)

// Node enrolment over the cluster port (docs/api.md "Node enrolment"). A
// sealed member with a seal device calls /rpc/enrol (members only) with an
// enrolment token and an ephemeral HPKE public key. The node it calls:
//
//   - if it is sealed, cannot read the root key: it answers 421 with the
//     address of a member that reports itself unsealed, and the caller asks
//     that member itself (so the token is always checked against the
//     caller's own certificate, never a relaying node's word);
//   - else it uses the token up through a raft write for the node id in the
//     caller's certificate (so two racing uses of one token: exactly one
//     wins) and answers with the root key encrypted to the public key.
//
// A joiner does the same in its join request (membership.go). The token and
// the root key are never logged; only the token's id is audited.

// EnrolEvent is one enrolment answered or refused here, for the audit log.
type EnrolEvent struct {
	NodeID  string // the enrolling node (its certificate's node id)
	Remote  string // its address
	TokenID string // the id part of the token ("" if malformed)
	Refused string // why it was refused; "" when the root key was sent
}

type enrolRequest struct {
	Token     string `json:"token"`
	PublicKey []byte `json:"public_key"`
}

// maxEnrolBody bounds an enrolment request: a token and an ML-KEM-768 +
// X25519 public key (1216 bytes) in base64.
const maxEnrolBody = 8 << 10

const codeSealed = "sealed"

// enrolKeyLen is the size of an ML-KEM-768 + X25519 HPKE public key: a key
// of another size is refused before the token is used up.
const enrolKeyLen = 1216

// tokenID is the id part of "coffer-enrol-<id>-<secret>", for audit; "" if
// the token does not look like one. (The keystore parses tokens properly.)
func tokenID(token string) string {
	const prefix = "coffer-enrol-"
	if len(token) < len(prefix)+17 || token[:len(prefix)] != prefix || token[len(prefix)+16] != '-' {
		return ""
	}
	id := token[len(prefix) : len(prefix)+16]
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return ""
		}
	}
	return id
}

func (n *Node) enrolRefused(r *http.Request, nodeID, tokenID string, err error) {
	reason := "invalid enrolment token"
	if errors.Is(err, ErrNoLeader) {
		reason = "no leader to use the token"
	}
	if !n.enrolAuditAllowed(nodeID) {
		return // a flood from one member: counted, logged once a minute
	}
	n.log.Warn("enrolment refused", "node-id", nodeID, "remote", r.RemoteAddr, "reason", reason)
	if n.cfg.OnEnrol != nil {
		n.cfg.OnEnrol(EnrolEvent{NodeID: nodeID, Remote: r.RemoteAddr, TokenID: tokenID, Refused: reason})
	}
}

func writeEnrolError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNoLeader) {
		writeRPC(w, http.StatusServiceUnavailable, applyResponse{Error: err.Error()})
		return
	}
	// One answer for every refusal: a guesser learns nothing.
	writeRPC(w, http.StatusBadRequest, applyResponse{Error: "the enrolment token is wrong, expired, used, revoked or issued for another node id", Code: codeInvalidToken})
}

// enrolWindow counts one member's refused enrolments in the current minute.
type enrolWindow struct {
	start   time.Time
	count   int
	dropped int
}

// enrolAuditEvery refusals per node id and minute are logged and audited
// each (an operator's typos, a test's refusals); past that a member that
// floods /rpc/enrol with bad tokens costs one log line a minute, not an
// audit entry each. The enrolling node audits its own requests anyway.
const enrolAuditEvery = 30

func (n *Node) enrolAuditAllowed(nodeID string) bool {
	n.enrolAuditMu.Lock()
	defer n.enrolAuditMu.Unlock()
	if n.enrolAudit == nil || len(n.enrolAudit) > 4096 {
		n.enrolAudit = map[string]*enrolWindow{}
	}
	w := n.enrolAudit[nodeID]
	now := time.Now()
	if w == nil || now.Sub(w.start) >= time.Minute {
		if w != nil && w.dropped > 0 {
			n.log.Warn("enrolment refusals not audited (over the per-minute limit)", "node-id", nodeID, "count", w.dropped)
		}
		w = &enrolWindow{start: now}
		n.enrolAudit[nodeID] = w
	}
	w.count++
	if w.count > enrolAuditEvery {
		w.dropped++
		return false
	}
	return true
}

// enrolAnswer encrypts the root key for nodeID (its token was just used up)
// and audits it; the answer is base64 for the RPC body.
func (n *Node) enrolAnswer(r *http.Request, nodeID, token string, pub []byte) (string, error) {
	if n.cfg.EnrolKey == nil {
		return "", errors.New("this node cannot answer enrolments")
	}
	ct, err := n.cfg.EnrolKey(nodeID, token, pub)
	if err != nil {
		n.log.Error("enrolment: cannot encrypt the root key for the node", "node-id", nodeID, "error", err)
		return "", fmt.Errorf("the token was used up, but the root key could not be encrypted for this node (%v): ask an admin for a new token", err)
	}
	n.log.Info("enrolment: root key sent to the node, encrypted to its one-time key", "node-id", nodeID, "remote", r.RemoteAddr, "token-id", tokenID(token))
	if n.cfg.OnEnrol != nil {
		n.cfg.OnEnrol(EnrolEvent{NodeID: nodeID, Remote: r.RemoteAddr, TokenID: tokenID(token)})
	}
	return base64.StdEncoding.EncodeToString(ct), nil
}

func (n *Node) sealed() bool {
	ss, ok := n.cfg.FSM.(SealState)
	return ok && (!ss.Initialized() || ss.Sealed())
}

// unsealedMember returns the cluster address of another voter that reports
// itself unsealed ("" if none).
func (n *Node) unsealedMember(ctx context.Context, except string) (raft.ServerID, string) {
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) == n.cfg.NodeID || string(s.ID) == except || s.Suffrage != raft.Voter {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		out, status, err := n.call(cctx, string(s.Address), "/rpc/seal-state", nil)
		cancel()
		if err == nil && status == http.StatusOK && out.Response == "unsealed" {
			return s.ID, string(s.Address)
		}
	}
	return "", ""
}

func (n *Node) rpcEnrol(w http.ResponseWriter, r *http.Request) {
	p, err := peerOfRequest(r)
	if err != nil {
		writeRPC(w, http.StatusForbidden, applyResponse{Error: "no TLS peer"})
		return
	}
	var req enrolRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxEnrolBody)).Decode(&req); err != nil || req.Token == "" || len(req.PublicKey) != enrolKeyLen {
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: "enrol needs a token and an ML-KEM-768+X25519 public key"})
		return
	}
	if n.sealed() {
		// This node cannot read the root key: point the caller at one that
		// can (it asks it itself, under its own certificate).
		if _, addr := n.unsealedMember(r.Context(), p.id); addr != "" {
			writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: codeSealed, Leader: addr})
			return
		}
		writeRPC(w, http.StatusServiceUnavailable, applyResponse{Error: "no member of the cluster is unsealed: unseal one with shares (`coffer operator unseal`), then enrol again"})
		return
	}
	// A token issued on another node a moment ago may not be applied here
	// yet: catch up with the leader before judging it. If that fails (the
	// leadership is moving, e.g. a sealed leader handing over), go on: the
	// raft write below waits for the new leader and decides; a stale local
	// check can only refuse, never admit.
	if err := n.Sync(r.Context()); err != nil {
		n.log.Debug("enrol: could not catch up with the leader before checking the token", "error", err)
	}
	if n.cfg.Trust == nil {
		writeRPC(w, http.StatusInternalServerError, applyResponse{Error: "this node keeps no enrolment tokens"})
		return
	}
	if err := n.cfg.Trust.UseEnrolToken(r.Context(), p.id, req.Token); err != nil {
		n.enrolRefused(r, p.id, tokenID(req.Token), err)
		writeEnrolError(w, err)
		return
	}
	ct, err := n.enrolAnswer(r, p.id, req.Token, req.PublicKey)
	if err != nil {
		writeRPC(w, http.StatusInternalServerError, applyResponse{Error: err.Error()})
		return
	}
	writeRPC(w, http.StatusOK, applyResponse{Response: ct})
}

// Enrol asks the cluster for the root key, encrypted to pub, with token:
// the leader first (else any other member), following a sealed member's
// pointer to an unsealed one. It returns the ciphertext.
func (n *Node) Enrol(ctx context.Context, token string, pub []byte) ([]byte, error) {
	if n.cfg.Net == nil {
		return nil, errors.New("this node has no cluster block in its config: it has nothing to enrol with")
	}
	addr, _ := n.raft.LeaderWithID()
	if addr == "" || string(addr) == n.cfg.Net.AdvertiseAddr {
		for _, s := range n.raft.GetConfiguration().Configuration().Servers {
			if string(s.ID) != n.cfg.NodeID {
				addr = s.Address
				break
			}
		}
	}
	if addr == "" {
		return nil, errors.New("this node is not a member of a cluster with other nodes: join one first (`coffer operator raft join ADDR --token -`)")
	}
	body, _ := json.Marshal(enrolRequest{Token: token, PublicKey: pub})
	target := string(addr)
	for hop := 0; hop < 3; hop++ {
		out, status, err := n.call(ctx, target, "/rpc/enrol", body)
		if err != nil {
			return nil, fmt.Errorf("cannot reach %s over mutual TLS: %w", target, err)
		}
		switch {
		case status == http.StatusOK:
			ct, err := base64.StdEncoding.DecodeString(out.Response)
			if err != nil {
				return nil, fmt.Errorf("bad enrolment answer from %s: %w", target, err)
			}
			return ct, nil
		case status == http.StatusMisdirectedRequest && out.Error == codeSealed && out.Leader != "":
			n.log.Info("the member asked is sealed; asking an unsealed member", "asked", target, "now", out.Leader)
			target = out.Leader
			continue
		case out.Code == codeInvalidToken:
			return nil, &tokenError{out.Error}
		case status == http.StatusForbidden:
			return nil, fmt.Errorf("%w: %s", ErrForbidden, out.Error)
		case status == http.StatusServiceUnavailable:
			return nil, fmt.Errorf("%w: %s", ErrNoLeader, out.Error)
		}
		return nil, fmt.Errorf("%s refused the enrolment: %s", target, out.Error)
	}
	return nil, errors.New("no unsealed member answered the enrolment")
}

// ---- leadership transfer ----

// TransferLeadership hands leadership to member id ("" any member) that
// reports itself unsealed. On a follower it asks the leader to do it.
func (n *Node) TransferLeadership(ctx context.Context, id string) error {
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		if addr == "" || n.cfg.Net == nil {
			return ErrNoLeader
		}
		out, status, err := n.call(ctx, string(addr), "/rpc/transfer-leadership", []byte(id))
		if err != nil {
			return fmt.Errorf("%w: cannot reach the leader: %v", ErrNoLeader, err)
		}
		switch status {
		case http.StatusOK:
			return nil
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s", ErrNoSuchPeer, out.Error)
		case http.StatusConflict:
			return &TransferError{out.Error}
		}
		return fmt.Errorf("%w: %s", ErrNoLeader, out.Error)
	}
	return n.transferLocal(ctx, id)
}

// TransferError: the leadership cannot go where it was asked (the target is
// sealed or not a voter, or the leader is the only voter).
type TransferError struct{ Msg string }

func (e *TransferError) Error() string { return e.Msg }

func (n *Node) transferLocal(ctx context.Context, id string) error {
	servers := n.raft.GetConfiguration().Configuration().Servers
	var target *raft.Server
	if id != "" {
		if id == n.cfg.NodeID {
			return nil // already the leader
		}
		for i := range servers {
			if string(servers[i].ID) == id {
				target = &servers[i]
			}
		}
		if target == nil {
			return fmt.Errorf("%w: %s is not a member (see `coffer operator raft list-peers`)", ErrNoSuchPeer, id)
		}
		if target.Suffrage != raft.Voter {
			return &TransferError{fmt.Sprintf("%s is not a voter and cannot lead", id)}
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		out, status, err := n.call(cctx, string(target.Address), "/rpc/seal-state", nil)
		cancel()
		if err != nil || status != http.StatusOK || out.Response != "unsealed" {
			return &TransferError{fmt.Sprintf("%s is sealed or unreachable: a sealed leader cannot authenticate writes; unseal it first or pick another member", id)}
		}
	} else {
		sid, addr := n.unsealedMember(ctx, "")
		if addr == "" {
			return &TransferError{"no other member is unsealed and reachable: leadership stays here"}
		}
		target = &raft.Server{ID: sid, Address: raft.ServerAddress(addr)}
	}
	if err := n.raft.LeadershipTransferToServer(target.ID, target.Address).Error(); err != nil {
		return fmt.Errorf("%w: leadership transfer to %s failed: %v", ErrNoLeader, target.ID, err)
	}
	n.log.Info("leadership transferred", "to", target.ID)
	return nil
}

func (n *Node) rpcTransferLeadership(w http.ResponseWriter, r *http.Request) {
	id, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 256))
	if err != nil {
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: "transfer-leadership takes a node id of at most 256 bytes"})
		return
	}
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	err = n.transferLocal(r.Context(), string(id))
	var te *TransferError
	switch {
	case err == nil:
		writeRPC(w, http.StatusOK, applyResponse{})
	case errors.Is(err, ErrNoSuchPeer):
		writeRPC(w, http.StatusNotFound, applyResponse{Error: err.Error()})
	case errors.As(err, &te):
		writeRPC(w, http.StatusConflict, applyResponse{Error: err.Error()})
	default:
		writeRPC(w, http.StatusServiceUnavailable, applyResponse{Error: err.Error()})
	}
}
