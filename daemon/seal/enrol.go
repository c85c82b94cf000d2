package seal

import (
	"context"
	"crypto/hpke"
	"errors"
	"fmt"

	"github.com/coffer-kms/coffer/keystore"
)

// Node enrolment (docs/api.md "Node enrolment"): a sealed member with its
// own seal device receives the root key from an unsealed member, encrypted
// to an HPKE key pair it made for this one exchange, and seals it with its
// device: no share holder is needed to add a node or replace its device.
//
// The suite is hybrid post-quantum: ML-KEM-768 + X25519 (so a recorded
// exchange stays safe if either breaks), HKDF-SHA256, AES-256-GCM. The HPKE
// info binds the cluster id, the receiving node id and the token id, so a
// ciphertext made for one node, cluster or token opens for no other. The
// private key lives only in memory, for one exchange.

// ErrEnrolFailed: the root key an enrolment received does not open (500,
// with the message; the node stays sealed and the token is used up).
var ErrEnrolFailed = errors.New("enrolment failed")

func enrolSuite() (hpke.KEM, hpke.KDF, hpke.AEAD) {
	return hpke.MLKEM768X25519(), hpke.HKDFSHA256(), hpke.AES256GCM()
}

func enrolInfo(clusterID, nodeID, tokenID string) []byte {
	return []byte("coffer node enrolment v1\x00" + clusterID + "\x00" + nodeID + "\x00" + tokenID)
}

// Enrolment is the new node's side of one exchange: its ephemeral HPKE key
// pair and the id of the token it presents.
type Enrolment struct {
	priv    hpke.PrivateKey
	Public  []byte // the HPKE public key, sent to the member that answers
	TokenID string
}

// NewEnrolment starts an enrolment with token on this node: it needs a seal
// device (ErrNoDevice otherwise) and a well-formed token (the member that
// answers checks it; a malformed one is refused here already).
func (m *Manager) NewEnrolment(token string) (*Enrolment, error) {
	if m.dev == nil {
		return nil, errorf(ErrNoDevice, "this node has no seal device configured, so it cannot be enrolled: add a seal \"pkcs11\" or seal \"tpm\" block to its config and restart it, or unseal it with shares (`coffer operator unseal`)")
	}
	id, ok := keystore.EnrolTokenID(token)
	if !ok {
		return nil, keystore.ErrInvalidToken
	}
	kem, _, _ := enrolSuite()
	priv, err := kem.GenerateKey()
	if err != nil {
		return nil, err
	}
	return &Enrolment{priv: priv, Public: priv.PublicKey().Bytes(), TokenID: id}, nil
}

// EncryptRootForEnrol runs on the unsealed member that answers an
// enrolment whose token it has just used up: it encrypts the root key to
// the new node's HPKE public key, bound to the cluster, the node id (from
// the caller's certificate) and the token id.
func (m *Manager) EncryptRootForEnrol(nodeID, tokenID string, pub []byte) ([]byte, error) {
	sc := m.ks.SealConfig()
	if sc == nil {
		return nil, keystore.ErrNotInitialized
	}
	kem, kdf, aead := enrolSuite()
	pk, err := kem.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("the enrolment public key is not an ML-KEM-768+X25519 key: %w", err)
	}
	var ct []byte
	err = m.ks.RootKey(func(root []byte) error {
		var err error
		ct, err = hpke.Seal(pk, kdf, aead, enrolInfo(sc.ClusterID, nodeID, tokenID), root)
		return err
	})
	return ct, err
}

// CompleteEnrolment opens the root key the answering member sent, checks it
// against the replicated keyring, seals it with this node's device (the
// same path as reseal: the old blob, if any, is replaced) and unseals the
// node. On any failure the node stays as it was (sealed).
func (m *Manager) CompleteEnrolment(ctx context.Context, e *Enrolment, ct []byte) error {
	sc := m.ks.SealConfig()
	if sc == nil {
		return keystore.ErrNotInitialized
	}
	_, kdf, aead := enrolSuite()
	root, err := hpke.Open(e.priv, kdf, aead, enrolInfo(sc.ClusterID, m.cfg.NodeID, e.TokenID), ct)
	if err != nil {
		return errorf(ErrEnrolFailed, "enrolment failed: the root key from the cluster does not open with this exchange's key (another cluster, node or token?); ask an admin for a new token")
	}
	defer clear(root)
	if err := m.ks.VerifyRoot(root); err != nil {
		return errorf(ErrEnrolFailed, "enrolment failed: the root key from the cluster does not open the keyring (%v); ask an admin for a new token", err)
	}
	// Reopen, as reseal does: a token or TPM replaced while the node runs
	// is found.
	dev, err := m.dev.reopen(ctx)
	if err != nil {
		return errorf(ErrDeviceUnavailable, "the %s seal device cannot be opened: %v; fix it and enrol again with a new token", m.dev.kind, err)
	}
	m.blobMu.Lock()
	err = m.sealWith(ctx, dev, sc.ClusterID, root)
	m.blobMu.Unlock()
	if err != nil {
		return errorf(ErrDeviceUnavailable, "%v; fix the device and enrol again with a new token", err)
	}
	if err := m.ks.Unseal(root); err != nil {
		return err
	}
	m.Reset()
	m.setSealedReason("")
	m.manualSeal.Store(false)
	m.log.Info("enrolled: the root key from the cluster is sealed with this node's device and the node is unsealed", "seal-type", m.dev.kind, "token-id", e.TokenID)
	if m.event != nil {
		m.event("enrolled", map[string]string{"seal_type": m.dev.kind, "token_id": e.TokenID})
	}
	return nil
}
