package keystore

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
)

// XAES-256-GCM (C2SP, https://c2sp.org/XAES-256-GCM): AES-256-GCM with
// 192-bit nonces, built from the standard library's AES and GCM. Each
// message derives its own AES-256 key from the key and the first 96 bits of
// the nonce (NIST SP 800-108r1 counter-mode KDF with CMAC-AES-256), and
// encrypts with AES-256-GCM under that key with the last 96 bits as the GCM
// nonce. Random 192-bit nonces can be used for about 2^80 messages before a
// collision becomes likelier than 2^-32, so an xaes256-gcm key needs no
// nonce budget (docs/threat-model.md, "Nonce budget").

const (
	xaesNonceSize = 24
	xaesKeySize   = 32
)

type xaes struct {
	block cipher.Block // AES-256 under the key
	k1    [aes.BlockSize]byte
}

var _ cipher.AEAD = (*xaes)(nil)

// newXAES returns the XAES-256-GCM AEAD of a 32-byte key.
func newXAES(key []byte) (cipher.AEAD, error) {
	if len(key) != xaesKeySize {
		return nil, errors.New("xaes256-gcm: the key must be 32 bytes")
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	x := &xaes{block: b}
	// L = AES-256_K(0^128); K1 = L << 1, with the CMAC reduction.
	b.Encrypt(x.k1[:], x.k1[:])
	msb := x.k1[0] >> 7
	for i := 0; i < len(x.k1)-1; i++ {
		x.k1[i] = x.k1[i]<<1 | x.k1[i+1]>>7
	}
	x.k1[len(x.k1)-1] = x.k1[len(x.k1)-1]<<1 ^ msb*0x87
	return x, nil
}

func (*xaes) NonceSize() int { return xaesNonceSize }
func (*xaes) Overhead() int  { return 16 }

// derive returns the GCM of the message key for nonce[:12]. The key
// schedule lives in the AEAD on the heap, like the other key types'
// (see aeadCache); the derived key bytes are zeroed here.
func (x *xaes) derive(nonce []byte) (cipher.AEAD, error) {
	var m1, m2, kx [aes.BlockSize * 2]byte
	// M1 = 0x00 0x01 'X' 0x00 || N[:12], M2 = 0x00 0x02 'X' 0x00 || N[:12]
	m1[1], m1[2] = 1, 'X'
	m2[1], m2[2] = 2, 'X'
	copy(m1[4:16], nonce[:12])
	copy(m2[4:16], nonce[:12])
	for i := 0; i < aes.BlockSize; i++ {
		m1[i] ^= x.k1[i]
		m2[i] ^= x.k1[i]
	}
	x.block.Encrypt(kx[:16], m1[:16])
	x.block.Encrypt(kx[16:], m2[:16])
	b, err := aes.NewCipher(kx[:])
	clear(kx[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func (x *xaes) Seal(dst, nonce, plaintext, aad []byte) []byte {
	if len(nonce) != xaesNonceSize {
		panic("xaes256-gcm: bad nonce length") // a caller bug, as in crypto/cipher
	}
	g, err := x.derive(nonce)
	if err != nil {
		panic(err) // a 32-byte key cannot fail
	}
	return g.Seal(dst, nonce[12:], plaintext, aad)
}

func (x *xaes) Open(dst, nonce, ciphertext, aad []byte) ([]byte, error) {
	if len(nonce) != xaesNonceSize {
		return nil, errors.New("xaes256-gcm: bad nonce length")
	}
	g, err := x.derive(nonce)
	if err != nil {
		return nil, err
	}
	return g.Open(dst, nonce[12:], ciphertext, aad)
}
