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

// Membership over the node-to-node RPC: a node asks a member to add it
// (Join, /rpc/join), and the leader adds or removes voters.

type joinRequest struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	// Token is the enrolment token (needed once the cluster is
	// initialised, for a node id that is not a member at this address).
	Token string `json:"token,omitempty"`
	// EnrolKey is the joiner's ephemeral HPKE public key (enrol.go): with
	// a token, the leader answers with the root key encrypted to it.
	EnrolKey []byte `json:"enrol_key,omitempty"`
}

func (n *Node) rpcJoin(w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxEnrolBody)).Decode(&req); err != nil || req.ID == "" || req.Address == "" || len(req.EnrolKey) != 0 && len(req.EnrolKey) != enrolKeyLen {
		writeRPC(w, http.StatusBadRequest, applyResponse{Error: "join needs the node id and its cluster address"})
		return
	}
	// A node joins as itself: the id must be the one its certificate names,
	// or any certificate holder could take over (remove and replace) a
	// member by naming its id.
	p, err := peerOfRequest(r)
	if err != nil || p.id != req.ID {
		// A fixed reason: the claimed id is the peer's to vary, and the
		// refusal rate limit keys on the reason.
		n.refused(Refusal{Remote: r.RemoteAddr, NodeID: p.id, What: r.URL.Path, Reason: "join under a node id the certificate does not name"})
		writeRPC(w, http.StatusForbidden, applyResponse{Error: fmt.Sprintf("a node may join only as the node its certificate names (%q), not %q", p.id, req.ID)})
		return
	}
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader, Leader: string(addr)})
		return
	}
	// Admitting a node after init is an authenticated write (the token is
	// used up): a sealed leader hands over and the joiner retries.
	if n.leaderSealed() {
		n.handOff()
		writeRPC(w, http.StatusMisdirectedRequest, applyResponse{Error: errNotLeader})
		return
	}
	// One join at a time: two joiners must not both pass the address
	// check before either is added.
	n.joinOnce.Lock()
	defer n.joinOnce.Unlock()
	status, used, err := n.joinAuth(r.Context(), p, req.ID, req.Address, req.Token)
	if err != nil {
		n.refused(Refusal{Remote: r.RemoteAddr, NodeID: p.id, What: r.URL.Path, Reason: err.Error()})
		out := applyResponse{Error: err.Error()}
		if errors.Is(err, ErrInvalidToken) {
			out.Code = codeInvalidToken
		}
		writeRPC(w, status, out)
		return
	}
	// Enrolment in the same step needs a token used up by this request:
	// a member re-joining from its own address used none in joinAuth, so
	// it is used here, before anything changes. Before init there is no
	// root key to send (and no token to use).
	enrol := len(req.EnrolKey) > 0 && req.Token != "" && n.cfg.Trust != nil && n.cfg.Trust.Initialized()
	if enrol && !used {
		if err := n.cfg.Trust.UseEnrolToken(r.Context(), p.id, req.Token); err != nil {
			n.enrolRefused(r, p.id, tokenID(req.Token), err)
			writeEnrolError(w, err)
			return
		}
	}
	if err := n.addVoter(req.ID, req.Address); err != nil {
		writeRPC(w, http.StatusConflict, applyResponse{Error: err.Error()})
		return
	}
	n.log.Info("node joined the cluster", "node-id", req.ID, "address", req.Address)
	if n.cfg.OnMembership != nil {
		n.cfg.OnMembership("join", req.ID, req.Address)
	}
	out := applyResponse{Index: n.raft.LastIndex()}
	if enrol {
		ct, err := n.enrolAnswer(r, p.id, req.Token, req.EnrolKey)
		if err != nil {
			writeRPC(w, http.StatusInternalServerError, applyResponse{Error: err.Error()})
			return
		}
		out.Response = ct
	}
	writeRPC(w, http.StatusOK, out)
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
	// A removal is carried out only once its revocation is committed in
	// the replicated state (RemovePeer does that first): a member's
	// certificate alone cannot remove others.
	if n.cfg.Trust != nil {
		if !n.cfg.Trust.RemovalCommitted(string(id)) {
			writeRPC(w, http.StatusForbidden, applyResponse{Error: fmt.Sprintf("node %s is not revoked in the replicated state: remove it with `coffer operator raft remove-peer %s`", id, id)})
			return
		}
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		writeRPC(w, http.StatusConflict, applyResponse{Error: err.Error()})
		return
	}
	n.log.Info("node removed from the cluster", "node-id", string(id))
	if n.cfg.OnMembership != nil {
		n.cfg.OnMembership("remove", string(id), "")
	}
	writeRPC(w, http.StatusOK, applyResponse{})
}

// addVoter adds (or re-adds at a new address) a voter. The leader only,
// after joinAuth admitted it (which refuses another member's address).
func (n *Node) addVoter(id, addr string) error {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, s := range cf.Configuration().Servers {
		if s.ID == raft.ServerID(id) && s.Address == raft.ServerAddress(addr) {
			return nil // already a member: joining twice is harmless
		}
		if s.ID == raft.ServerID(id) {
			if err := n.raft.RemoveServer(s.ID, 0, 10*time.Second).Error(); err != nil {
				return fmt.Errorf("replacing member %s: %w", s.ID, err)
			}
		}
	}
	return n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error()
}

// Join asks the cluster member at addr (any member: a follower passes the
// request on) to add this node as a voter.
func (n *Node) Join(ctx context.Context, addr, token string) error {
	_, err := n.JoinEnrol(ctx, addr, token, nil)
	return err
}

// JoinEnrol is Join that also enrols this node (enrol.go) when enrolKey is
// set: it returns the root key encrypted to enrolKey, or nil when the
// leader sent none (the cluster is not initialised).
func (n *Node) JoinEnrol(ctx context.Context, addr, token string, enrolKey []byte) ([]byte, error) {
	if n.cfg.Net == nil {
		return nil, errors.New("this node has no cluster block in its config: add one (addr, TLS files) and restart it before joining")
	}
	body, _ := json.Marshal(joinRequest{ID: n.cfg.NodeID, Address: n.cfg.Net.AdvertiseAddr, Token: token, EnrolKey: enrolKey})
	for attempt := 0; attempt < 10; attempt++ {
		out, status, err := n.call(ctx, addr, "/rpc/join", body)
		if err != nil {
			return nil, fmt.Errorf("cannot reach %s over mutual TLS: %w (check the address, that both nodes' certificates come from the same CA, and the firewall)", addr, err)
		}
		switch {
		case status == http.StatusOK:
			if out.Response == "" {
				return nil, nil
			}
			ct, err := base64.StdEncoding.DecodeString(out.Response)
			if err != nil {
				return nil, fmt.Errorf("bad enrolment answer from %s: %w", addr, err)
			}
			return ct, nil
		case out.Error == errNotLeader && out.Leader != "":
			addr = out.Leader
			continue
		case out.Error == errNotLeader:
			if !sleepCtx(ctx, 200*time.Millisecond) {
				return nil, ErrNoLeader
			}
			continue
		case out.Code == codeInvalidToken:
			return nil, &tokenError{out.Error}
		case status == http.StatusForbidden:
			return nil, fmt.Errorf("%w: %s", ErrForbidden, out.Error)
		}
		return nil, fmt.Errorf("the leader refused the join: %s", out.Error)
	}
	return nil, ErrNoLeader
}

const codeInvalidToken = "invalid_token"
