package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"time"
)

// Node-to-node RPC: HTTP/1.1 over the mutual-TLS connections that the mux
// hands over for the coffer-rpc ALPN protocol. Every peer holds a
// certificate from the cluster CA; that is the authorisation.

const maxRPCBody = 64 << 20 // a keyring or key record; snapshots are not forwarded

type applyResponse struct {
	Response string `json:"response"` // Codec.EncodeResponse of the FSM's answer
	Index    uint64 `json:"index"`    // the log index it was applied at
	// Term: with Index on /rpc/apply, the term the entry was appended and
	// committed in by the answering leader (0: not known); pushCommit.
	Term   uint64 `json:"term,omitempty"`
	Leader string `json:"leader"`          // set with errNotLeader: who to ask instead
	Error  string `json:"error,omitempty"` // "not_leader", or a failure to commit
	Code   string `json:"code,omitempty"`  // "invalid_token" on a join refused for its token
}

const errNotLeader = "not_leader"

// rpcRoutes are the node RPCs (all POST). Every one but join is for
// current members only (trust.go); join decides itself (joinAuth). The
// refusal rate limit groups paths by this table (isRPCPath).
var rpcRoutes map[string]rpcRoute

type rpcRoute struct {
	open    bool // no membership check (join)
	handler func(*Node, http.ResponseWriter, *http.Request)
}

// init fills rpcRoutes: the handlers refer (through the refusal audit) to
// isRPCPath, which reads the table, so it cannot be a plain initialiser.
func init() {
	rpcRoutes = map[string]rpcRoute{
		"/rpc/apply":               {false, (*Node).rpcApply},
		"/rpc/join":                {true, (*Node).rpcJoin},
		"/rpc/remove":              {false, (*Node).rpcRemove},
		"/rpc/read-index":          {false, (*Node).rpcReadIndex},
		"/rpc/seal-state":          {false, (*Node).rpcSealState},
		"/rpc/enrol":               {false, (*Node).rpcEnrol},
		"/rpc/transfer-leadership": {false, (*Node).rpcTransferLeadership},
	}
}

func (n *Node) newRPCServer() *http.Server {
	mux := http.NewServeMux()
	for path, rt := range rpcRoutes {
		h := func(w http.ResponseWriter, r *http.Request) { rt.handler(n, w, r) }
		if !rt.open {
			h = n.member(h)
		}
		mux.HandleFunc("POST "+path, h)
	}
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

func writeRPC(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
