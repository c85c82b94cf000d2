package shamir

import (
	"errors"
	"fmt"
	"io"
)

// Limits of the scheme.
const (
	// MaxShares is the largest N: x coordinates are the nonzero bytes.
	MaxShares = 255
	// MaxSecretLen is the longest secret Split accepts, and so the longest y
	// that Combine and Parse accept. Coffer splits a 32-byte root key; the
	// limit keeps hostile input small.
	MaxSecretLen = 64
)

var (
	// ErrInvalidShare is wrapped by every error about a share given by an
	// operator: its text fails the format or checksum check ([Parse]), or a
	// set of shares cannot be combined ([Combine]). The daemon reports it as
	// the API error code invalid_share.
	ErrInvalidShare = errors.New("invalid share")

	// ErrInvalidParameters is wrapped by errors from [Split] about its
	// arguments (share count, threshold, secret length).
	ErrInvalidParameters = errors.New("invalid secret sharing parameters")
)

// Split splits secret into n shares of which any t reconstruct it.
//
// It requires 2 ≤ t ≤ n ≤ 255, or t = n = 1 (a development setup with a
// single share, which is the secret itself with x = 1 prepended), and
// 1 ≤ len(secret) ≤ [MaxSecretLen]. Share i (counting from 0) is
// [x = i+1] || y with len(y) = len(secret); see the package documentation.
//
// rand supplies the polynomial coefficients and must be crypto/rand.Reader
// in production. Split reads exactly (t-1)·len(secret) bytes from it, in this
// order: for secret byte j and degree k = 1..t-1, the coefficient of x^k is
// byte j·(t-1) + (k-1) of the stream. Coefficients are used as read (zero
// included), which is what makes every value of the secret equally likely
// given t-1 shares. Tests rely on this order for known-answer vectors.
//
// The caller owns the returned shares and should zero them after use; Split
// zeroes its own copy of the coefficients.
func Split(secret []byte, n, t int, rand io.Reader) ([][]byte, error) {
	switch {
	case len(secret) == 0:
		return nil, fmt.Errorf("%w: the secret is empty", ErrInvalidParameters)
	case len(secret) > MaxSecretLen:
		return nil, fmt.Errorf("%w: the secret is %d bytes long; at most %d bytes can be split", ErrInvalidParameters, len(secret), MaxSecretLen)
	case n < 1 || n > MaxShares:
		return nil, fmt.Errorf("%w: the number of shares must be between 1 and %d, got %d", ErrInvalidParameters, MaxShares, n)
	case t < 1 || t > n:
		return nil, fmt.Errorf("%w: the threshold must be between 1 and the number of shares (%d), got %d", ErrInvalidParameters, n, t)
	case t == 1 && n > 1:
		// With t = 1 every share would be the secret itself.
		return nil, fmt.Errorf("%w: a threshold of 1 is only allowed with a single share; use a threshold of at least 2 for %d shares", ErrInvalidParameters, n)
	case rand == nil:
		return nil, fmt.Errorf("%w: no random source", ErrInvalidParameters)
	}

	deg := t - 1
	coeffs := make([]byte, len(secret)*deg)
	defer clear(coeffs)
	if _, err := io.ReadFull(rand, coeffs); err != nil {
		return nil, fmt.Errorf("failed to read random polynomial coefficients: %w", err)
	}

	shares := make([][]byte, n)
	for i := range shares {
		x := byte(i + 1)
		share := make([]byte, 1+len(secret))
		share[0] = x
		for j, s := range secret {
			c := coeffs[j*deg : (j+1)*deg]
			// Horner's rule, highest degree first:
			// y = ((c[deg-1]·x + c[deg-2])·x + ... + c[0])·x + s.
			var y byte
			for k := deg - 1; k >= 0; k-- {
				y = gfMul(y, x) ^ c[k]
			}
			share[1+j] = gfMul(y, x) ^ s
		}
		shares[i] = share
	}
	return shares, nil
}

// Combine reconstructs the secret from shares made by [Split], each
// [x] || y, by Lagrange interpolation at x = 0. The order of the shares does
// not matter.
//
// It rejects, with an error wrapping [ErrInvalidShare]: no shares, shares of
// different lengths (they cannot come from the same split), a share with
// x = 0 or with an empty or too long y, and the same x twice (the same share
// entered twice). A single share returns its y, which is the secret when
// t = 1.
//
// Combine cannot detect that fewer than t shares were given: it then returns
// a wrong secret and no error. The caller must verify the result, as the
// daemon does by opening the keyring with it.
//
// The caller owns the returned secret and should zero it after use.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) == 0 {
		return nil, fmt.Errorf("%w: no shares given", ErrInvalidShare)
	}
	if len(shares) > MaxShares {
		return nil, fmt.Errorf("%w: %d shares given, but a secret has at most %d shares", ErrInvalidShare, len(shares), MaxShares)
	}
	size := len(shares[0])
	switch {
	case size < 2:
		return nil, fmt.Errorf("%w: share 1 is too short to hold a value", ErrInvalidShare)
	case size-1 > MaxSecretLen:
		return nil, fmt.Errorf("%w: share 1 holds %d bytes, more than the %d a Coffer share has", ErrInvalidShare, size-1, MaxSecretLen)
	}
	// seen[x] is the 1-based position of the share with that x, 0 if none.
	var seen [256]int
	for i, s := range shares {
		if len(s) != size {
			return nil, fmt.Errorf("%w: share %d is %d bytes long but share 1 is %d bytes long; the shares are from different splits, use shares printed by the same init or rekey", ErrInvalidShare, i+1, len(s), size)
		}
		x := s[0]
		if x == 0 {
			return nil, fmt.Errorf("%w: share %d has index 0, which no share made by Coffer has", ErrInvalidShare, i+1)
		}
		if prev := seen[x]; prev != 0 {
			return nil, fmt.Errorf("%w: shares %d and %d are the same share (number %d); enter each share only once", ErrInvalidShare, prev, i+1, x)
		}
		seen[x] = i + 1
	}

	// Lagrange basis polynomials at 0:
	//   w_i = Π_{j≠i} x_j / (x_j - x_i),  secret = Σ_i w_i · y_i.
	// The weights depend only on the x coordinates, which are not secret, so
	// computing them once per share set (not per byte) leaks nothing.
	weights := make([]byte, len(shares))
	defer clear(weights)
	for i, si := range shares {
		num, den := byte(1), byte(1)
		for j, sj := range shares {
			if j == i {
				continue
			}
			num = gfMul(num, sj[0])
			den = gfMul(den, sj[0]^si[0])
		}
		weights[i] = gfMul(num, gfInv(den))
	}

	secret := make([]byte, size-1)
	for i, s := range shares {
		w := weights[i]
		for b, y := range s[1:] {
			secret[b] ^= gfMul(y, w)
		}
	}
	return secret, nil
}
