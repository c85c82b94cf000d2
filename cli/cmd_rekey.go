package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore/shamir"
	ucli "github.com/urfave/cli/v2"
)

func (e *env) rekeyCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "rekey",
		Usage:     "make a new root key and new shares, authorised by the current shares",
		UsageText: "coffer operator rekey --shares N --threshold T [--recipient AGE_RECIPIENT]... [--identity AGE_IDENTITY_FILE]",
		Description: "Reads T current shares the way unseal does (a hidden prompt on a terminal, one\n" +
			"share per line on stdin, age-armored with --identity), then asks cofferd for a new\n" +
			"root key split into --shares new shares with --threshold. The keyring is\n" +
			"re-encrypted under the new root key on every node; the old shares stop working.\n" +
			"The new shares are printed once, like init's.",
		Flags: []ucli.Flag{
			&ucli.IntFlag{Name: "shares", Usage: "number of new shares (1-255)", Required: true},
			&ucli.IntFlag{Name: "threshold", Usage: "number of new shares that unseal a node", Required: true},
			&ucli.StringSliceFlag{Name: "recipient", Usage: "age `RECIPIENT` to encrypt one new share to; repeat once per share, in order"},
			&ucli.StringFlag{Name: "identity", Usage: "age identity `FILE` to decrypt age-armored current shares with"},
		},
	}, `coffer operator rekey --shares 5 --threshold 3        # prompts for the current shares
coffer operator rekey --shares 3 --threshold 2 < current-shares.txt`, 0, 0, func(x *cmd) error {
		n, t := x.c.Int("shares"), x.c.Int("threshold")
		if n < 1 || n > 255 || t < 1 || t > n || (t == 1 && n > 1) {
			return usagef("--shares must be 1-255 and --threshold 2-shares (or 1 with a single share), got %d and %d", n, t)
		}
		recipients := x.c.StringSlice("recipient")
		if len(recipients) != 0 && len(recipients) != n {
			return usagef("%d --recipient for %d shares: give one per share, or none", len(recipients), n)
		}
		st, _, err := x.status()
		if err != nil {
			return err
		}
		if !st.Initialized {
			return errors.New("the node is not initialised: nothing to rekey")
		}
		current, err := x.currentShares(st.Threshold)
		if err != nil {
			return err
		}
		req := api.RekeyRequest{CurrentShares: current, Shares: n, Threshold: t, Recipients: recipients}
		var out api.RekeyResponse
		return x.request(http.MethodPost, "/v1/sys/rekey", req, &out, func() error {
			fmt.Fprintln(x.stdout, "Rekeyed: the old shares no longer unseal any node.")
			return printInit(x, &out, api.InitRequest{Shares: n, Threshold: t, Recipients: recipients})
		})
	})
}

// currentShares collects t shares: from a hidden prompt on a terminal
// (checked locally, so a typo is asked for again), from stdin lines, or
// age-armored input with --identity.
func (x *cmd) currentShares(t int) ([]string, error) {
	if id := x.c.String("identity"); id != "" {
		ids, err := readFileLimited(id, maxIdentityInput, "the --identity file")
		if err != nil {
			return nil, err
		}
		defer clear(ids)
		input, err := x.readArmoredShares()
		if err != nil {
			return nil, err
		}
		defer clear(input)
		identities, err := shamir.ParseIdentities(ids)
		if err != nil {
			return nil, fmt.Errorf("read the --identity file: %w", err)
		}
		shares, err := shamir.DecryptShares(input, identities)
		if err != nil {
			return nil, fmt.Errorf("decrypt the shares with the --identity file: %w", err)
		}
		if len(shares) < t {
			return nil, fmt.Errorf("rekey needs %d current shares, the input holds %d", t, len(shares))
		}
		return shares[:t], nil
	}
	var out []string
	if fd, ok := terminalFD(x.stdin); ok {
		for len(out) < t {
			fmt.Fprintf(x.stderr, "Current share %d of %d (will be hidden): ", len(out)+1, t)
			share, err := readHidden(x.ctx, fd)
			fmt.Fprintln(x.stderr)
			if err != nil {
				clear(share)
				return nil, err
			}
			s := string(bytes.TrimSpace(share))
			clear(share)
			if s == "" {
				continue
			}
			if _, err := shamir.Parse(s); err != nil {
				fmt.Fprintf(x.stderr, "coffer: share refused: %v; try again.\n", err)
				continue
			}
			out = append(out, s)
		}
		return out, nil
	}
	lr := &lineReader{r: x.stdin}
	defer lr.wipe()
	for len(out) < t {
		line, err := lr.nextShare()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("rekey needs %d current shares on stdin (one per line), got %d", t, len(out))
		}
		if err != nil {
			return nil, err
		}
		out = append(out, string(line))
	}
	return out, nil
}
