package cluster

import (
	"context"
	"encoding/json"
	"net/http"
)

// Origin is who asked for a write: the caller on the node where the
// request arrived. A follower forwards it with the command, so that the
// leader's audit log records forwarded writes with their origin node (from
// the peer's certificate, not from this header) and original caller.
// It is informational: the command itself is authenticated by its MAC.
type Origin struct {
	RequestID string `json:"request_id,omitempty"`
	Operation string `json:"operation,omitempty"`
	UID       *int64 `json:"uid,omitempty"`
	Unit      string `json:"unit,omitempty"`
}

// Forwarded is one write a follower forwarded that this leader handled.
type Forwarded struct {
	NodeID  string // the origin node (its certificate's node id)
	Origin  Origin // what the origin node said about its caller
	Op      string // the command's operation and path (Describer)
	Path    string
	Outcome string // "ok", "refused" or the error
}

// Describer is implemented by a StateMachine that can name a command's
// operation and path, for the audit log.
type Describer interface {
	Describe(cmd []byte) (op, path string)
}

type originKey struct{}

// WithOrigin returns ctx carrying the caller of a write.
func WithOrigin(ctx context.Context, o Origin) context.Context {
	return context.WithValue(ctx, originKey{}, o)
}

const originHeader = "Coffer-Origin"

func setOrigin(ctx context.Context, req *http.Request) {
	if o, ok := ctx.Value(originKey{}).(Origin); ok {
		if b, err := json.Marshal(o); err == nil && len(b) <= 1024 {
			req.Header.Set(originHeader, string(b))
		}
	}
}

func originOf(r *http.Request) Origin {
	var o Origin
	if h := r.Header.Get(originHeader); h != "" && len(h) <= 1024 {
		json.Unmarshal([]byte(h), &o)
	}
	// Bound what a peer can put into the leader's audit log.
	o.RequestID, o.Operation, o.Unit = clip(o.RequestID), clip(o.Operation), clip(o.Unit)
	return o
}

func clip(s string) string {
	if len(s) > 128 {
		return s[:128]
	}
	return s
}
