package seal

import (
	"crypto/rand"

	"filippo.io/age"

	"github.com/coffer-kms/coffer/keystore/shamir"
)

// MaxShares bounds the share count: GF(2^8) has 255 non-zero x coordinates.
const MaxShares = 255

// ShareParams validates a share count, threshold and age recipients (for
// init and rekey) and parses the recipients. Its errors are ErrInvalidRequest.
func ShareParams(shares, threshold int, recipients []string) ([]age.Recipient, error) {
	switch {
	case shares < 1 || shares > MaxShares:
		return nil, errorf(ErrInvalidRequest, "shares must be between 1 and %d, got %d", MaxShares, shares)
	case threshold < 1 || threshold > shares:
		return nil, errorf(ErrInvalidRequest, "threshold must be between 1 and shares (%d), got %d", shares, threshold)
	case threshold == 1 && shares > 1:
		return nil, errorf(ErrInvalidRequest, "threshold 1 with %d shares would make every share the whole root key: use a threshold of at least 2, or 1 share", shares)
	case len(recipients) != 0 && len(recipients) != shares:
		return nil, errorf(ErrInvalidRequest, "%d recipients for %d shares: give exactly one age recipient per share, or none", len(recipients), shares)
	}
	out := make([]age.Recipient, len(recipients))
	for i, r := range recipients {
		rcp, err := shamir.ParseRecipient(r)
		if err != nil {
			return nil, errorf(ErrInvalidRequest, "recipient %d: %v", i+1, err)
		}
		out[i] = rcp
	}
	return out, nil
}

// splitRoot splits root into encoded shares, age-encrypted to recipients
// when given.
func splitRoot(root []byte, shares, threshold int, recipients []age.Recipient) ([]string, error) {
	raw, err := shamir.Split(root, shares, threshold, rand.Reader)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(raw))
	for i, sh := range raw {
		out[i] = shamir.Encode(sh)
		clear(sh)
	}
	for i := range recipients {
		armored, err := shamir.EncryptShare(out[i], recipients[i])
		if err != nil {
			return nil, errorf(ErrInvalidRequest, "encrypting share %d to its recipient: %v", i+1, err)
		}
		out[i] = armored
	}
	return out, nil
}
