package api

import "time"

// CodeInvalidToken (400): an enrolment token that is wrong, expired, used,
// revoked or another node's (docs/api.md).
const CodeInvalidToken = "invalid_token"

// EnrolTokenRequest is the body of POST /v1/sys/enrol/tokens.
type EnrolTokenRequest struct {
	NodeID string `json:"node_id"`
	TTL    string `json:"ttl,omitempty"` // Go duration, 1m–24h; default 1h
}

// EnrolTokenResponse answers POST /v1/sys/enrol/tokens. The token is shown
// only here.
type EnrolTokenResponse struct {
	Token     string    `json:"token"`
	NodeID    string    `json:"node_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// EnrolToken is one entry of GET /v1/sys/enrol/tokens (never the token).
type EnrolToken struct {
	ID        string     `json:"id"`
	NodeID    string     `json:"node_id"`
	ExpiresAt time.Time  `json:"expires_at"`
	UsedAt    *time.Time `json:"used_at"`
}

// EnrolTokenList answers GET /v1/sys/enrol/tokens.
type EnrolTokenList struct {
	Tokens []EnrolToken `json:"tokens"`
}

// EnrolRequest is the body of POST /v1/sys/enrol, sent to the sealed node
// that is to be enrolled; the answer is the status body.
type EnrolRequest struct {
	Token string `json:"token"`
}

// TransferLeadershipRequest is the body of POST
// /v1/sys/raft/transfer-leadership: ID "" hands leadership to any
// unsealed member.
type TransferLeadershipRequest struct {
	ID string `json:"id,omitempty"`
}
