package cluster

import (
	"context"
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
