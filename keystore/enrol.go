package keystore

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// Cluster trust state, replicated with the rest of the keystore (issue 9):
//
//   - enrolment tokens: an admin issues a one-time token for a node id; a
//     node id that is not a member joins an initialised cluster only by
//     presenting one. Only a hash of the token is replicated, so a snapshot,
//     a raft log or a stolen disk does not reveal a usable token. Using a
//     token is a raft write (opEnrol/"use"), so two nodes cannot both use
//     one: the second use finds it used when it is applied.
//   - the deny list: remove-peer records the removed node id with the
//     removal time; the cluster port refuses that id's certificates issued
//     at or before it (a new certificate, issued later, plus a new token
//     are needed to come back; live members rotating their certificates are
//     not affected).
//
// The same token (purpose "join") also enrols a node's seal device (issue
// 14: the answering member sends the root key to the node's one-time HPKE
// key, cluster/enrol.go and daemon/seal/enrol.go). Nothing of that exchange
// enters the replicated state: the "use" write is all it needs, so the
// record format is unchanged.
//
// Every time used by Apply comes from the command (the proposer's clock),
// never from the applying node's clock, so that all nodes decide alike.

// ErrInvalidToken: an enrolment token that is wrong, expired, used, revoked
// or issued for another node id. One error for all of these, so that a
// guesser learns nothing about which tokens exist.
var ErrInvalidToken = errors.New("invalid enrolment token: it is wrong, expired, used, revoked or issued for another node id; ask an admin for a new one (`coffer operator enrol token create --node ID`)")

const (
	// TokenPrefix starts every enrolment token.
	TokenPrefix = "coffer-enrol-"
	// MinTokenTTL and MaxTokenTTL bound a token's lifetime.
	MinTokenTTL = time.Minute
	MaxTokenTTL = 24 * time.Hour
	// maxTokens bounds the token table (an admin loop cannot grow the
	// replicated state without bound). Used and expired tokens are pruned
	// a day after they expire.
	maxTokens = 1000
	// tokenKeep is how long a used or expired token stays listed.
	tokenKeep = 24 * time.Hour

	purposeJoin = "join"
)

// EnrolToken is the replicated record of one token. The token itself is
// never stored: Hash is SHA-256 over a domain string and the token.
type EnrolToken struct {
	ID        string     `json:"id"`
	NodeID    string     `json:"node_id"`
	Purpose   string     `json:"purpose"`
	Hash      []byte     `json:"hash"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	UsedAt    *time.Time `json:"used_at,omitempty"`
}

// EnrolTokenInfo is what listing shows of a token (never the token).
type EnrolTokenInfo struct {
	ID        string     `json:"id"`
	NodeID    string     `json:"node_id"`
	ExpiresAt time.Time  `json:"expires_at"`
	UsedAt    *time.Time `json:"used_at"`
}

// clusterState is the replicated trust state.
type clusterState struct {
	Tokens map[string]*EnrolToken `json:"tokens,omitempty"`
	// Denied maps a removed node id to the time of its removal.
	Denied map[string]time.Time `json:"denied,omitempty"`
	// Admitted maps a node id to when it last used a token to join, so
	// that a removal is known to be newer than the node's admission.
	Admitted map[string]time.Time `json:"admitted,omitempty"`
	// Members is the member allow list, kept by authenticated commands:
	// the members at init, plus each node admitted with a token, minus
	// each node revoked. The cluster port admits a raft member only if it
	// is on it (so a raft configuration change that no authenticated
	// write backs admits nobody). nil in clusters initialised before it
	// existed: then the raft configuration alone decides.
	Members map[string]bool `json:"members,omitempty"`
}

func (c *clusterState) clone() *clusterState {
	out := &clusterState{Tokens: map[string]*EnrolToken{}, Denied: map[string]time.Time{}, Admitted: map[string]time.Time{}}
	if c == nil {
		return out
	}
	for k, v := range c.Admitted {
		out.Admitted[k] = v
	}
	if c.Members != nil {
		out.Members = maps.Clone(c.Members)
	}
	for k, v := range c.Tokens {
		t := *v
		out.Tokens[k] = &t
	}
	for k, v := range c.Denied {
		out.Denied[k] = v
	}
	return out
}

// enrolCmd is the body of an opEnrol command.
type enrolCmd struct {
	Do     string      `json:"do"` // "issue", "use", "revoke", "deny"
	Token  *EnrolToken `json:"token,omitempty"`
	ID     string      `json:"id,omitempty"`      // token id (use, revoke)
	Hash   []byte      `json:"hash,omitempty"`    // use: hash of the presented token
	NodeID string      `json:"node_id,omitempty"` // use, deny
	Now    time.Time   `json:"now"`               // the proposer's clock
}

const opEnrol = "enrol"

func (e *enrolCmd) validate() error {
	switch e.Do {
	case "issue":
		t := e.Token
		if t == nil || t.ID == "" || !api.ValidNodeID(t.NodeID) || len(t.Hash) != sha256.Size || t.UsedAt != nil || !t.ExpiresAt.After(t.CreatedAt) {
			return errors.New("malformed token issue")
		}
	case "use":
		if e.ID == "" || len(e.Hash) != sha256.Size || e.NodeID == "" {
			return errors.New("malformed token use")
		}
	case "revoke":
		if e.ID == "" {
			return errors.New("malformed token revoke")
		}
	case "deny":
		if e.NodeID == "" {
			return errors.New("malformed node revocation")
		}
	default:
		return fmt.Errorf("unknown enrol operation %q", e.Do)
	}
	if e.Now.IsZero() {
		return errors.New("enrol command without a time")
	}
	return nil
}

// applyEnrolLocked applies an opEnrol command. ks.mu is held.
func (ks *Keystore) applyEnrolLocked(e *enrolCmd) any {
	if ks.trust == nil {
		ks.trust = (*clusterState)(nil).clone()
	}
	cs := ks.trust
	// Prune tokens that expired more than tokenKeep ago (deterministic:
	// the command's time).
	for id, t := range cs.Tokens {
		if e.Now.Sub(t.ExpiresAt) > tokenKeep {
			delete(cs.Tokens, id)
		}
	}
	switch e.Do {
	case "issue":
		if cs.Tokens == nil {
			cs.Tokens = map[string]*EnrolToken{}
		}
		if len(cs.Tokens) >= maxTokens {
			return invalidf("there are %d enrolment tokens already: revoke unused ones (`coffer operator enrol token list`) or wait for them to expire", maxTokens)
		}
		if _, ok := cs.Tokens[e.Token.ID]; ok {
			return ErrConflict
		}
		t := *e.Token
		cs.Tokens[t.ID] = &t
	case "use":
		t, ok := cs.Tokens[e.ID]
		if !ok || !t.usable(e.NodeID, e.Hash, e.Now) {
			return ErrInvalidToken
		}
		now := e.Now
		t.UsedAt = &now
		if cs.Admitted == nil {
			cs.Admitted = map[string]time.Time{}
		}
		cs.Admitted[e.NodeID] = now
		if cs.Members != nil {
			cs.Members[e.NodeID] = true
		}
	case "revoke":
		t, ok := cs.Tokens[e.ID]
		if !ok {
			return wrapf(ErrNotFound, "no enrolment token %q (see `coffer operator enrol token list`)", e.ID)
		}
		if t.UsedAt != nil {
			return invalidf("enrolment token %s was used at %s already: remove the node it admitted instead (`coffer operator raft remove-peer %s`)", t.ID, t.UsedAt.Format(time.RFC3339), t.NodeID)
		}
		delete(cs.Tokens, e.ID)
	case "deny":
		if cs.Denied == nil {
			cs.Denied = map[string]time.Time{}
		}
		cs.Denied[e.NodeID] = e.Now
		delete(cs.Members, e.NodeID)
	}
	return nil
}

func (t *EnrolToken) usable(nodeID string, hash []byte, now time.Time) bool {
	ok := subtle.ConstantTimeCompare(t.Hash, hash) == 1
	return ok && t.UsedAt == nil && t.NodeID == nodeID && now.Before(t.ExpiresAt) && t.Purpose == purposeJoin
}

// tokenHash is what the state keeps of a token.
func tokenHash(token string) []byte {
	h := sha256.New()
	io.WriteString(h, "coffer enrolment token v1\x00")
	io.WriteString(h, token)
	return h.Sum(nil)
}

// parseToken splits "coffer-enrol-<id>-<secret>" and returns the id.
func parseToken(token string) (id string, ok bool) {
	rest, ok := strings.CutPrefix(token, TokenPrefix)
	if !ok {
		return "", false
	}
	id, secret, ok := strings.Cut(rest, "-")
	if !ok || len(id) != 16 || len(secret) != 43 {
		return "", false
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", false
	}
	if _, err := base64.RawURLEncoding.DecodeString(secret); err != nil {
		return "", false
	}
	return id, true
}

// IssueEnrolToken commits a new one-time token for nodeID valid for ttl and
// returns the token (shown once: only its hash is kept). Any node may call
// it; the write goes through raft.
func (ks *Keystore) IssueEnrolToken(ctx context.Context, nodeID string, ttl time.Duration) (string, EnrolTokenInfo, error) {
	if !api.ValidNodeID(nodeID) {
		return "", EnrolTokenInfo{}, invalidf("node_id %q is not a valid node id (letters, digits, '.', '_' and '-')", nodeID)
	}
	if ttl < MinTokenTTL || ttl > MaxTokenTTL {
		return "", EnrolTokenInfo{}, invalidf("ttl %s is out of range: give between %s and %s", ttl, MinTokenTTL, "24h")
	}
	if !ks.Initialized() {
		return "", EnrolTokenInfo{}, ErrNotInitialized
	}
	var raw [8 + 32]byte
	if _, err := io.ReadFull(ks.cfg.Rand, raw[:]); err != nil {
		return "", EnrolTokenInfo{}, fmt.Errorf("reading random bytes: %w", err)
	}
	id := hex.EncodeToString(raw[:8])
	token := TokenPrefix + id + "-" + base64.RawURLEncoding.EncodeToString(raw[8:])
	clear(raw[:])
	now := ks.cfg.Now().UTC().Truncate(time.Second)
	t := &EnrolToken{ID: id, NodeID: nodeID, Purpose: purposeJoin, Hash: tokenHash(token), CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := ks.propose(ctx, &command{Op: opEnrol, Enrol: &enrolCmd{Do: "issue", Token: t, Now: now}}); err != nil {
		return "", EnrolTokenInfo{}, err
	}
	return token, EnrolTokenInfo{ID: id, NodeID: nodeID, ExpiresAt: t.ExpiresAt}, nil
}

// ListEnrolTokens lists the tokens, oldest first.
func (ks *Keystore) ListEnrolTokens() []EnrolTokenInfo {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	out := []EnrolTokenInfo{}
	if ks.trust == nil {
		return out
	}
	for _, t := range ks.trust.Tokens {
		out = append(out, EnrolTokenInfo{ID: t.ID, NodeID: t.NodeID, ExpiresAt: t.ExpiresAt, UsedAt: t.UsedAt})
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].ExpiresAt.Equal(out[j].ExpiresAt) {
			return out[i].ExpiresAt.Before(out[j].ExpiresAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// RevokeEnrolToken removes an unused token.
func (ks *Keystore) RevokeEnrolToken(ctx context.Context, id string) error {
	if id == "" || len(id) > 64 {
		return invalidf("a token id is 16 hex digits (see `coffer operator enrol token list`)")
	}
	return ks.propose(ctx, &command{Op: opEnrol, Enrol: &enrolCmd{Do: "revoke", ID: id, Now: ks.cfg.Now().UTC()}})
}

// UseEnrolToken uses up token for nodeID through a raft write. It checks
// the token against the local state first, so that a wrong guess costs no
// log entry; the write then decides (a concurrent use of the same token
// loses there).
func (ks *Keystore) UseEnrolToken(ctx context.Context, nodeID, token string) error {
	id, ok := parseToken(token)
	if !ok {
		return ErrInvalidToken
	}
	hash := tokenHash(token)
	now := ks.cfg.Now().UTC()
	ks.mu.RLock()
	var t *EnrolToken
	if ks.trust != nil {
		t = ks.trust.Tokens[id]
	}
	usable := t != nil && t.usable(nodeID, hash, now)
	ks.mu.RUnlock()
	if !usable {
		return ErrInvalidToken
	}
	return ks.propose(ctx, &command{Op: opEnrol, Enrol: &enrolCmd{Do: "use", ID: id, Hash: hash, NodeID: nodeID, Now: now}})
}

// RevokeNode puts nodeID on the replicated deny list as of now: its
// certificates issued at or before now are refused at the cluster port.
func (ks *Keystore) RevokeNode(ctx context.Context, nodeID string) error {
	return ks.propose(ctx, &command{Op: opEnrol, Enrol: &enrolCmd{Do: "deny", NodeID: nodeID, Now: ks.cfg.Now().UTC()}})
}

// NodeRevoked reports whether a certificate for nodeID issued at notBefore
// is revoked: the node was removed at or after the certificate's issue.
func (ks *Keystore) NodeRevoked(nodeID string, notBefore time.Time) bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.trust == nil {
		return false
	}
	at, ok := ks.trust.Denied[nodeID]
	return ok && !notBefore.After(at)
}

// RevokedAt returns when nodeID was removed (ok false if never).
func (ks *Keystore) RevokedAt(nodeID string) (time.Time, bool) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.trust == nil {
		return time.Time{}, false
	}
	at, ok := ks.trust.Denied[nodeID]
	return at, ok
}

// RemovalCommitted reports whether nodeID's removal has been committed
// (RevokeNode) since it was last admitted with a token: the leader carries
// out only such removals.
func (ks *Keystore) RemovalCommitted(nodeID string) bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.trust == nil {
		return false
	}
	at, ok := ks.trust.Denied[nodeID]
	adm, admitted := ks.trust.Admitted[nodeID]
	return ok && (!admitted || at.After(adm))
}

// MemberAllowed reports whether nodeID is on the member allow list (always
// true in a cluster that has none: initialised before it existed, or not
// initialised yet).
func (ks *Keystore) MemberAllowed(nodeID string) bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.trust == nil || ks.trust.Members == nil {
		return true
	}
	return ks.trust.Members[nodeID]
}

// EnrolTokenID returns the id part of a well-formed token (ok false for a
// malformed one). The id is not secret: it names the token in lists and
// audit entries, and binds an enrolment's HPKE exchange to the token.
func EnrolTokenID(token string) (string, bool) { return parseToken(token) }

// EnrolTokenRefusal says, for the audit log (admins only), why token id
// presented by nodeID was refused: the caller was told only "invalid", so
// that a guesser learns nothing.
func (ks *Keystore) EnrolTokenRefusal(id, nodeID string) string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var t *EnrolToken
	if ks.trust != nil {
		t = ks.trust.Tokens[id]
	}
	now := ks.cfg.Now().UTC()
	switch {
	case t == nil:
		return "no such token (never issued, revoked, or pruned a day after expiry)"
	case t.NodeID != nodeID:
		return "issued for node " + t.NodeID
	case t.UsedAt != nil:
		return "used already at " + t.UsedAt.Format(time.RFC3339)
	case !now.Before(t.ExpiresAt):
		return "expired at " + t.ExpiresAt.Format(time.RFC3339)
	}
	return "wrong secret for this token id"
}
