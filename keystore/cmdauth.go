package keystore

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
)

// Command authentication (issue 9). A certificate of the cluster CA lets a
// node talk on the cluster port, and a member that becomes leader appends
// whatever it likes to the raft log; neither may change the replicated
// state. So every command carries a MAC that only a node holding the root
// key can make, and every node's Apply refuses a command whose MAC does not
// verify.
//
// Key: K = HKDF-SHA256(secret = keyring term-1 barrier key, no salt, info
// "coffer-raft-command-mac-v1", 32 bytes). Term 1 is made at init and kept
// by keyring rotation and rekey (which re-encrypt the keyring, not its
// terms), so K is the same for the life of the cluster and every node that
// can open the keyring (holds the root key) derives it; nothing on disk
// without the root key gives it.
//
// MAC = HMAC-SHA256(K, "coffer-raft-command-v1" 0x00 cluster-id 0x00
// SHA-256(cmd)), where cmd is the exact bytes of the inner command: the MAC
// is bound to the cluster and to the whole content (operation, path,
// expected version, record, keyring, enrolment data, restore epoch). It
// travels in an envelope {"f":2,"mac":…,"cmd":{…}}. (The digest lets a
// sealed node keep 64 bytes per command to verify later, not the command.)
//
// A sealed node cannot verify. It applies the command (so that all nodes
// keep one replicated state and the node can unseal at all: the keyring and
// the seal configuration come from the log), but keeps every command it
// applied unverified, as its digest and MAC (Keystore.unverified, also in
// snapshots; at most maxUnverified, 64 MiB). Unseal
// verifies them all with K before the node serves anything; if one does not
// verify, the node was fed a forged command (only a hostile leader can
// commit one: an unsealed leader checks forwarded commands before appending
// them, VerifyCommand) and it refuses to unseal: its state must be rebuilt
// (remove it, wipe it, join it again). An unsealed node refuses a forged
// command outright (ErrUnauthenticated), changing nothing.
//
// Before init there is no key: commands are accepted without a MAC (nothing
// is protected yet, as with joins). Commands of older versions carry no
// MAC; they are accepted until the first authenticated command has been
// applied (authOn, replicated): from then on a command without a MAC is
// refused. A new cluster's init is authenticated, so a new cluster never
// accepts an unauthenticated command.

// ErrUnauthenticated: a committed command whose MAC does not verify under
// the cluster's key (forged by a holder of a node certificate without the
// root key, or replayed from another cluster).
var ErrUnauthenticated = errors.New("the command is not authenticated by this cluster's keyring: refused")

const (
	cmdMACInfo   = "coffer-raft-command-mac-v1"
	cmdMACDomain = "coffer-raft-command-v1"
	envFormat    = 2
	// maxUnverified bounds what a sealed node keeps to verify at unseal.
	// Past it the node keeps applying but will refuse to unseal until it
	// is rebuilt from a snapshot (it would have to trust too much unseen).
	maxUnverified = 1 << 20
)

type envelope struct {
	F   int             `json:"f"`
	MAC []byte          `json:"mac"`
	Cmd json.RawMessage `json:"cmd"`
}

// splitEnvelope returns the inner command and its MAC (nil for a legacy
// command without an envelope).
func splitEnvelope(b []byte) (inner, mac []byte, err error) {
	var probe struct {
		F int `json:"f"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, nil, fmt.Errorf("%w: command does not decode: %v", ErrCorrupt, err)
	}
	if probe.F != envFormat {
		return b, nil, nil
	}
	var env envelope
	if err := strictUnmarshal(b, &env); err != nil {
		return nil, nil, fmt.Errorf("%w: command envelope does not decode: %v", ErrCorrupt, err)
	}
	if len(env.MAC) != sha256.Size || len(env.Cmd) == 0 {
		return nil, nil, fmt.Errorf("%w: malformed command envelope", ErrCorrupt)
	}
	return env.Cmd, env.MAC, nil
}

// cmdMACKey derives K from the term-1 key.
func cmdMACKey(term1 []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, term1, nil, cmdMACInfo, 32)
}

func commandMAC(k []byte, clusterID string, inner []byte) []byte {
	d := sha256.Sum256(inner)
	return commandDigestMAC(k, clusterID, d[:])
}

func commandDigestMAC(k []byte, clusterID string, digest []byte) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(cmdMACDomain))
	m.Write([]byte{0})
	m.Write([]byte(clusterID))
	m.Write([]byte{0})
	m.Write(digest)
	return m.Sum(nil)
}

// unverifiedEntry returns what a sealed node keeps of a command it applied.
func unverifiedEntry(inner, mac []byte) snapProof {
	d := sha256.Sum256(inner)
	return snapProof{Digest: d[:], MAC: mac}
}

// sealEnvelope wraps inner with its MAC under k.
func sealEnvelope(k []byte, clusterID string, inner []byte) []byte {
	b, err := json.Marshal(envelope{F: envFormat, MAC: commandMAC(k, clusterID, inner), Cmd: inner})
	if err != nil {
		panic(err) // plain data
	}
	return b
}

// macKeyLocked derives K on an unsealed node. ks.mu is held (read or
// write). The caller zeroes the key.
func (ks *Keystore) macKeyLocked() ([]byte, error) {
	if ks.root == nil {
		return nil, ErrSealed
	}
	t1 := ks.terms[1]
	if t1 == nil {
		return nil, fmt.Errorf("%w: keyring term 1 is missing: cannot derive the command key", ErrCorrupt)
	}
	return cmdMACKey(t1.Bytes())
}

// authenticate wraps an encoded command for proposal. Before init the
// command goes as it is.
func (ks *Keystore) authenticate(inner []byte) ([]byte, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.seal == nil {
		return inner, nil
	}
	k, err := ks.macKeyLocked()
	if err != nil {
		if errors.Is(err, ErrSealed) {
			return nil, fmt.Errorf("%w: only a node holding the root key can change the cluster state; run this on an unsealed node, or unseal this one", ErrSealed)
		}
		return nil, err
	}
	defer clear(k)
	return sealEnvelope(k, ks.seal.ClusterID, inner), nil
}

// checkLocked decides whether a decoded command may be applied; ks.mu is
// held for writing. It returns a refusal, or nil and whether the command
// must be kept for verification at unseal.
func (ks *Keystore) checkLocked(c *command, inner, mac []byte) (error, bool) {
	clusterID := ""
	switch {
	case ks.seal != nil:
		clusterID = ks.seal.ClusterID
	case c.Op == opInit:
		clusterID = c.Seal.ClusterID
	default:
		return nil, false // before init: nothing protected yet
	}
	if ks.root == nil {
		// Sealed: apply, verify at unseal.
		return nil, mac != nil || ks.authOn
	}
	if mac == nil {
		if ks.authOn {
			return ErrUnauthenticated, false
		}
		return nil, false // a command of an older version, before the switch
	}
	k, err := ks.macKeyLocked()
	if err != nil {
		return err, false
	}
	defer clear(k)
	if !hmac.Equal(mac, commandMAC(k, clusterID, inner)) {
		return ErrUnauthenticated, false
	}
	return nil, false
}

// VerifyCommand is the leader's check before it appends a forwarded
// command: it must decode and, on an unsealed leader, carry a valid MAC
// once commands are authenticated. A sealed leader cannot check and says
// so (ErrSealed): it hands leadership to an unsealed member instead.
func (ks *Keystore) VerifyCommand(b []byte) error {
	p, err := ks.prepare(b)
	if err != nil {
		return err
	}
	return p.Verify()
}

// preparedCommand is a forwarded command decoded once for the leader's
// checks: the cluster validates it (PrepareCommand), verifies it and
// describes it for the audit log without decoding it again each time.
type preparedCommand struct {
	ks         *Keystore
	inner, mac []byte
	c          *command
}

// PrepareCommand decodes a forwarded command (what ResponseCodec.Validate
// checks): it returns what verifies and describes it.
func (ks *Keystore) PrepareCommand(b []byte) (interface {
	Verify() error
	Describe() (op, path string)
}, error) {
	p, err := ks.prepare(b)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (ks *Keystore) prepare(b []byte) (*preparedCommand, error) {
	inner, mac, err := splitEnvelope(b)
	if err != nil {
		return nil, err
	}
	c, err := DecodeCommand(inner)
	if err != nil {
		return nil, err
	}
	return &preparedCommand{ks: ks, inner: inner, mac: mac, c: c}, nil
}

// Describe names the command's operation and path (see Keystore.Describe).
func (p *preparedCommand) Describe() (op, path string) {
	if p.c.Op == opEnrol {
		return "enrol-" + p.c.Enrol.Do, p.c.Enrol.NodeID
	}
	return p.c.Op, p.c.Path
}

// Verify is VerifyCommand's check of the MAC, against the keyring as it is
// now.
func (p *preparedCommand) Verify() error {
	ks, c, inner, mac := p.ks, p.c, p.inner, p.mac
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.seal == nil && c.Op != opInit {
		return nil
	}
	if ks.root == nil {
		if ks.seal == nil {
			return nil // the init of a new cluster: verified at unseal
		}
		return ErrSealed
	}
	if mac == nil {
		if ks.authOn {
			return ErrUnauthenticated
		}
		return nil
	}
	k, err := ks.macKeyLocked()
	if err != nil {
		return err
	}
	defer clear(k)
	clusterID := ks.seal.ClusterID
	if !hmac.Equal(mac, commandMAC(k, clusterID, inner)) {
		return ErrUnauthenticated
	}
	return nil
}

// verifyUnverifiedLocked checks, at unseal (the keyring is loaded), every
// command this node applied while sealed. ks.mu is held.
func (ks *Keystore) verifyUnverifiedLocked() error {
	if ks.unverifiedOverflow {
		return fmt.Errorf("%w: this node applied more than %d commands while sealed and kept too few to verify them: rebuild it (remove it, wipe its data_dir, join it again)", ErrUnauthenticated, maxUnverified)
	}
	if len(ks.unverified) == 0 {
		return nil
	}
	k, err := ks.macKeyLocked()
	if err != nil {
		return err
	}
	defer clear(k)
	for i, u := range ks.unverified {
		if u.MAC == nil || !hmac.Equal(u.MAC, commandDigestMAC(k, ks.seal.ClusterID, u.Digest)) {
			return fmt.Errorf("%w: command %d of %d applied while this node was sealed was forged: this node's state cannot be trusted; remove it, wipe its data_dir and join it again (the other members refused the command)", ErrUnauthenticated, i+1, len(ks.unverified))
		}
	}
	ks.unverified = nil
	return nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// Describe names a command's operation and path (for the audit log of
// forwarded writes); "unknown" for what does not decode.
func (ks *Keystore) Describe(b []byte) (op, path string) {
	inner, _, err := splitEnvelope(b)
	if err != nil {
		return "unknown", ""
	}
	c, err := DecodeCommand(inner)
	if err != nil {
		return "unknown", ""
	}
	return (&preparedCommand{c: c}).Describe()
}
