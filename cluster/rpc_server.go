package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

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
	Code     string `json:"code,omitempty"`  // "invalid_token" on a join refused for its token
}

const errNotLeader = "not_leader"

func (n *Node) newRPCServer() *http.Server {
	mux := http.NewServeMux()
	// Every route but join is for current members only (trust.go); join
	// decides itself (joinAuth).
	mux.HandleFunc("POST /rpc/apply", n.member(n.rpcApply))
	mux.HandleFunc("POST /rpc/join", n.rpcJoin)
	mux.HandleFunc("POST /rpc/remove", n.member(n.rpcRemove))
	mux.HandleFunc("POST /rpc/read-index", n.member(n.rpcReadIndex))
	mux.HandleFunc("POST /rpc/seal-state", n.member(n.rpcSealState))
	mux.HandleFunc("POST /rpc/enrol", n.member(n.rpcEnrol))
	mux.HandleFunc("POST /rpc/transfer-leadership", n.member(n.rpcTransferLeadership))
	mux.HandleFunc("/", n.member(http.NotFound))
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: n.log.Named("rpc").StandardLogger(nil),
		// The mux hands net/http a plainConn, so r.TLS is nil: keep the
		// verified peer's TLS state for the handlers that need its node id.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(plainConn); ok {
				if tc, ok := pc.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
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

func writeRPC(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
