package keystore

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// AuditHMACPrefix starts every value AuditHMAC returns.
const AuditHMACPrefix = "hmac-sha256:"

// auditKeyInfo is the HKDF info of the audit HMAC key.
const auditKeyInfo = "coffer-audit-hmac-v1"

// AuditHMAC returns "hmac-sha256:" + hex(HMAC-SHA256(k, data)), the form in
// which the audit log records sensitive request fields (aad), so that an
// operator can search the log for a value without the log holding it.
//
// k = HKDF-SHA256(secret = the keyring's term-1 barrier key, no salt,
// info "coffer-audit-hmac-v1", 32 bytes). Term 1 is replicated to every node
// and kept by keyring rotation and rekey (which re-encrypt the keyring, not
// its terms), so every node of a cluster computes the same value, before
// and after either. k is derived per call and zeroed after use rather than
// cached, so that sealing has nothing more to forget; the derivation costs
// about a microsecond, paid only by requests that carry aad.
//
// It returns ErrSealed while the node is sealed.
func (ks *Keystore) AuditHMAC(data []byte) (string, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.root == nil {
		return "", ErrSealed
	}
	t1 := ks.terms[1]
	if t1 == nil {
		return "", fmt.Errorf("%w: keyring term 1 is missing: cannot derive the audit HMAC key", ErrCorrupt)
	}
	k, err := hkdf.Key(sha256.New, t1.Bytes(), nil, auditKeyInfo, 32)
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, k)
	clear(k)
	m.Write(data)
	var sum [sha256.Size]byte
	b := make([]byte, 0, len(AuditHMACPrefix)+2*sha256.Size)
	b = append(b, AuditHMACPrefix...)
	return string(hex.AppendEncode(b, m.Sum(sum[:0]))), nil
}
