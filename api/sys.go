package api

// Wire bodies of the /v1/sys endpoints besides status, init and unseal
// (api.go). Both cofferd (daemon) and the coffer CLI use these types, so
// that the two sides cannot drift apart.

// RekeyRequest is the body of POST /v1/sys/rekey.
type RekeyRequest struct {
	// CurrentShares are threshold shares of the current root key.
	CurrentShares []string `json:"current_shares"`
	Shares        int      `json:"shares"`
	Threshold     int      `json:"threshold"`
	// Recipients, when given (one per share), age-encrypt the new shares.
	Recipients []string `json:"recipients,omitempty"`
}

// RekeyResponse is the answer of POST /v1/sys/rekey: the new shares, as
// init returns them.
type RekeyResponse = InitResponse

// JoinRequest is the body of POST /v1/sys/raft/join, sent to the node that
// joins.
type JoinRequest struct {
	// LeaderAddress is the cluster address (host:port) of any member.
	LeaderAddress string `json:"leader_address"`
	// Token is the enrolment token: needed once the cluster is initialised
	// by a node id that is not already a member at this address.
	Token string `json:"token,omitempty"`
}

// Peer is one member of the raft configuration.
type Peer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
	Leader  bool   `json:"leader"`
}

// PeerList is the answer of GET /v1/sys/raft/peers.
type PeerList struct {
	Peers []Peer `json:"peers"`
}
