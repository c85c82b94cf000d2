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

// UnsealBody encodes {"share": share} without making a string copy of the
// share (json.Marshal would, and strings cannot be zeroed).
func UnsealBody(share []byte) []byte {
	const hex = "0123456789abcdef"
	b := make([]byte, 0, len(share)+16)
	b = append(b, `{"share":"`...)
	for _, ch := range share {
		switch {
		case ch == '"' || ch == '\\':
			b = append(b, '\\', ch)
		case ch < 0x20 || ch == 0x7f:
			b = append(b, '\\', 'u', '0', '0', hex[ch>>4], hex[ch&0xf])
		default:
			// Bytes >= 0x80 pass through: valid UTF-8 stays valid, and
			// cofferd refuses anything else as a bad share.
			b = append(b, ch)
		}
	}
	return append(b, `"}`...)
}
