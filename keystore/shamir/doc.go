// Package shamir implements Coffer's break-glass secret sharing: Shamir's
// scheme over GF(2^8) for the cluster's 32-byte root key, the text encoding
// that operators store and type back in, and age encryption of shares to
// operators' recipients.
//
// # Splitting
//
// [Split] treats every byte of the secret as the constant term of its own
// random polynomial of degree T-1 over GF(2^8) with the AES reduction
// polynomial x^8+x^4+x^3+x+1 (0x11b), and evaluates it at x = 1..N. Share i
// (1-based) is the raw byte string
//
//	raw = x || y
//
// where x = i is one byte and y has one byte per secret byte, so "share 3 of
// 5" always has x = 3. Any T shares give the secret back with [Combine]
// (Lagrange interpolation at x = 0); T-1 or fewer shares give no information
// about it.
//
// [Combine] cannot know T. Given fewer than T shares (of the same split) it
// returns a wrong secret without an error, because every set of points
// interpolates to some polynomial. Callers must check the result: Coffer's
// daemon does so by trying to open the keyring with it, which fails for a
// wrong root key.
//
// All field arithmetic is constant-time: multiplication is a fixed
// eight-round shift-and-add with masks, and inversion is exponentiation to
// the power 254, so no table is indexed and no branch is taken on secret
// data.
//
// # Share text encoding
//
// This encoding is an interface that operators rely on: it is printed once at
// init (or rekey), stored on paper or in password managers, and typed back at
// unseal. It must not change; a new format gets a new version number.
//
// A share is written as
//
//	coffer-share-1-<base32(raw || checksum)>
//
// where
//   - "coffer-share-1-" is the literal prefix (1 is the format version);
//   - checksum is the first 4 bytes of SHA-256("coffer-share-v1" || raw), the
//     15 ASCII bytes of the domain string followed by the raw share;
//   - base32 is RFC 4648 base32 (alphabet a-z, 2-7) in lower case without
//     "=" padding.
//
// For the 32-byte root key the raw share has 33 bytes, 37 with the checksum,
// and the text has 15 + 60 = 75 characters. [Encode] produces exactly this
// canonical form.
//
// [Parse] accepts the canonical form and also tolerates, so that operators
// can copy shares by hand:
//   - whitespace before and after the share;
//   - upper case, in the prefix and in the base32 part;
//   - "-" and " " anywhere inside the base32 part, for grouping (for example
//     "coffer-share-1-abcd-efgh ijkl ...").
//
// Nothing else is accepted: no padding, no other separators, no line breaks
// inside the share, no non-canonical trailing bits. Parse rejects a share
// whose checksum does not match, so a mistyped share is refused when it is
// entered rather than after the threshold is reached; every error wraps
// [ErrInvalidShare] and never contains the share text. For any input Parse
// accepts, Encode of its result is the input's canonical form: trimmed,
// lower-cased, with the grouping characters removed.
//
// # age encryption
//
// At init each share may be encrypted to one operator's age recipient
// ([ParseRecipient], [EncryptShare]); the result is an ASCII-armored age file
// whose plaintext is the share text followed by a newline, so `age -d`
// decrypts it too. [ParseIdentities] and [DecryptShares] are the other side
// for `coffer operator unseal --identity FILE`. They accept what the age
// command accepts, except that age plugins get no user interface: a plugin
// that needs to prompt (for a PIN, a touch confirmation, ...) fails with an
// error that says so.
package shamir
