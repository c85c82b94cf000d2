package shamir

// Arithmetic in GF(2^8) = GF(2)[x]/(x^8+x^4+x^3+x+1), the AES field.
// Addition and subtraction are both XOR.
//
// The usual log/exp tables are deliberately not used: a table lookup indexed
// by a share byte leaks that byte through the cache. Both functions below run
// the same instructions whatever their inputs.

// gfMul returns a·b in GF(2^8).
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		// -(b&1) is 0xff when the low bit of b is set and 0x00 otherwise, so
		// a is added without a branch.
		p ^= a & -(b & 1)
		// Multiply a by x; when the x^7 term overflows, reduce by
		// x^8 = x^4+x^3+x+1 (0x1b), again through a mask.
		a = (a << 1) ^ (0x1b & -(a >> 7))
		b >>= 1
	}
	return p
}

// gfInv returns the multiplicative inverse of a, and 0 for a = 0.
//
// The multiplicative group has order 255, so a^255 = 1 and a^254 = a^-1. The
// power is computed with a fixed chain of squarings and multiplications:
// a^254 = a^2 · a^4 · a^8 · a^16 · a^32 · a^64 · a^128.
func gfInv(a byte) byte {
	sq := gfMul(a, a) // a^2
	r := sq
	for range 6 {
		sq = gfMul(sq, sq) // a^4, a^8, ..., a^128
		r = gfMul(r, sq)
	}
	return r
}
