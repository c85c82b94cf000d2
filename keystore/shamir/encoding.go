package shamir

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"strings"
)

const (
	// Prefix starts every share in text form; the 1 is the format version.
	Prefix = "coffer-share-1-"

	// checksumDomain separates the share checksum from any other SHA-256 use.
	checksumDomain = "coffer-share-v1"
	checksumLen    = 4

	// maxShareText bounds Parse's input before any work is done. A canonical
	// share of a MaxSecretLen-byte secret is 15 + 111 characters; this leaves
	// ample room for grouping characters and surrounding whitespace.
	maxShareText = 1024
)

// shareEncoding is RFC 4648 base32 with a lower-case alphabet, no padding.
var shareEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// checksum returns the first checksumLen bytes of
// SHA-256("coffer-share-v1" || raw).
func checksum(raw []byte) []byte {
	h := sha256.New()
	h.Write([]byte(checksumDomain))
	h.Write(raw)
	return h.Sum(nil)[:checksumLen]
}

// Encode returns the canonical text form of a raw share ([x] || y, as made
// by [Split]): "coffer-share-1-" followed by the lower-case, unpadded base32
// of raw and its 4-byte checksum. See the package documentation.
//
// Encode does not validate raw; [Parse] rejects the text of a raw share that
// Split could not have made (empty y, x = 0, too long).
func Encode(raw []byte) string {
	buf := make([]byte, 0, len(raw)+checksumLen)
	buf = append(buf, raw...)
	buf = append(buf, checksum(raw)...)
	defer clear(buf)
	return Prefix + shareEncoding.EncodeToString(buf)
}

// Parse decodes a share in text form and returns the raw share [x] || y.
//
// It tolerates surrounding whitespace, upper case, and "-" or " " inside the
// base32 part, and nothing else; it verifies the checksum. Every error wraps
// [ErrInvalidShare], says what is wrong and what to do, and never contains
// the share. On success, Encode of the result is the canonical form of s.
//
// The caller owns the returned slice and should zero it after use.
func Parse(s string) ([]byte, error) {
	if len(s) > maxShareText {
		return nil, invalidShare("the input is %d characters long, far longer than a share; enter one share at a time", len(s))
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, invalidShare("the share is empty; enter it exactly as printed at init")
	}
	if len(s) < len(Prefix) || !strings.EqualFold(s[:len(Prefix)], Prefix) {
		return nil, badPrefix(s)
	}

	// Normalise the base32 part: drop grouping characters, lower-case, and
	// reject anything outside the alphabet here rather than in the decoder
	// (encoding/base32 silently skips '\r' and '\n').
	body := s[len(Prefix):]
	text := make([]byte, 0, len(body))
	// A closure, because text grows after this line (within its capacity).
	defer func() { clear(text) }()
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '2' && c <= '7':
		default:
			return nil, invalidShare("character %d is not part of a share: shares use only the letters a-z and the digits 2-7 (never 0, 1, 8 or 9), grouped by '-' or spaces; re-enter the share exactly as printed at init", len(Prefix)+i+1)
		}
		text = append(text, c)
	}

	// No byte string encodes to 1, 3 or 6 characters modulo 8, but
	// encoding/base32 decodes such lengths without complaint.
	if r := len(text) % 8; r == 1 || r == 3 || r == 6 {
		return nil, invalidShare("the share has the wrong length: it was truncated or has extra characters; re-enter it exactly as printed at init")
	}
	decoded := make([]byte, shareEncoding.DecodedLen(len(text)))
	defer clear(decoded)
	n, err := shareEncoding.Decode(decoded, text)
	if err != nil {
		// Not reached: the alphabet and the length were checked above.
		return nil, invalidShare("the share cannot be decoded; re-enter it exactly as printed at init")
	}
	decoded = decoded[:n]
	if n < 1+1+checksumLen {
		return nil, invalidShare("the share is too short: it was truncated; re-enter it exactly as printed at init")
	}
	raw, sum := decoded[:n-checksumLen], decoded[n-checksumLen:]

	// A wrong last character can leave nonzero unused bits, which the
	// decoder ignores; requiring the canonical encoding keeps Parse
	// one-to-one with Encode. Either failure means a mistyped share.
	want := checksum(raw)
	if subtle.ConstantTimeCompare(want, sum) != 1 || !canonical(decoded, text) {
		return nil, invalidShare("share checksum mismatch: the share was mistyped or truncated; re-enter it exactly as printed at init")
	}
	if raw[0] == 0 {
		return nil, invalidShare("the share has index 0, which no share made by Coffer has; enter a share printed at init")
	}
	if len(raw)-1 > MaxSecretLen {
		return nil, invalidShare("the share holds %d bytes, more than the %d a Coffer share has; enter a share printed at init", len(raw)-1, MaxSecretLen)
	}
	return append([]byte(nil), raw...), nil
}

// canonical reports whether text is exactly the encoding of decoded.
func canonical(decoded, text []byte) bool {
	enc := make([]byte, shareEncoding.EncodedLen(len(decoded)))
	defer clear(enc)
	shareEncoding.Encode(enc, decoded)
	return subtle.ConstantTimeCompare(enc, text) == 1
}

// badPrefix explains why s does not start with Prefix. It recognises the
// usual mix-ups so the operator knows what to do, and never quotes s.
func badPrefix(s string) error {
	lower := strings.ToLower(s)
	switch {
	case strings.HasPrefix(s, "-----BEGIN AGE ENCRYPTED FILE-----") || strings.HasPrefix(lower, "age-encryption.org/"):
		return invalidShare("this is an age-encrypted share: decrypt it first, for example with coffer operator unseal --identity FILE")
	case strings.HasPrefix(lower, "coffer-share-"):
		return invalidShare("this share has a format version this Coffer does not support (it reads %q shares); use a Coffer release that matches the one that printed it", Prefix)
	default:
		return invalidShare("not a Coffer share: shares start with %q; enter the share exactly as printed at init", Prefix)
	}
}

// invalidShare returns an error wrapping ErrInvalidShare.
func invalidShare(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidShare}, args...)...)
}
