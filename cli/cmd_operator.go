package cli

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/coffer-kms/coffer/api"
	ucli "github.com/urfave/cli/v2"
)

func (e *env) statusCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "status",
		Usage:     "show seal state, unseal progress, seal type, node, leader and cluster",
		UsageText: "coffer status",
		Description: "Shows the status of the node behind the socket. The exit status tells scripts\n" +
			"whether the node serves keys: 0 unsealed, 2 sealed or not initialised, 1 error.",
	}, `coffer status
coffer status --format json
until coffer status >/dev/null; do sleep 1; done   # wait for an unsealed node`, 0, 0, func(x *cmd) error {
		var st api.Status
		err := x.request(http.MethodGet, api.PathStatus, nil, &st, func() error { return printStatus(x.stdout, &st) })
		if err != nil {
			return err
		}
		switch {
		case !st.Initialized:
			if !x.json {
				fmt.Fprintln(x.stderr, "cofferd is not initialised: run 'coffer operator init'.")
			}
			return exitCode(ExitUsage)
		case st.Sealed:
			if !x.json {
				fmt.Fprintln(x.stderr, "cofferd is sealed: run 'coffer operator unseal' (or 'coffer operator reseal' after replacing its device).")
			}
			return exitCode(ExitUsage)
		}
		return nil
	})
}

func (e *env) operatorCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "operator",
		Usage:     "initialise, unseal, seal, reseal and rotate the node's keyring",
		UsageText: "coffer operator command [command options] [arguments...]",
		Description: "Operator commands change the node's seal state and its root of trust.\n" +
			"They need the socket's admin rights (root or cofferd's admin uids/groups),\n" +
			"except unseal, which needs only the shares.",
		Subcommands: []*ucli.Command{
			e.initCommand(),
			e.unsealCommand(),
			e.sealCommand(),
			e.resealCommand(),
			e.rotateCommand(),
			e.rekeyCommand(),
			e.raftCommand(),
			e.enrolCommand(),
		},
	}, `coffer operator init --shares 5 --threshold 3
coffer operator unseal`)
}

func (e *env) initCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "init",
		Usage:     "initialise the cluster and print the unseal shares once",
		UsageText: "coffer operator init [--shares 5] [--threshold 3] [--recipient AGE_RECIPIENT]...",
		Description: "Creates the cluster's root key, splits it into --shares Shamir shares of which\n" +
			"any --threshold unseal a node, and prints the shares. They are shown only this once.\n" +
			"With one --recipient per share, share i is age-encrypted (ASCII armor) to recipient i,\n" +
			"so each operator can decrypt only their own (see 'coffer operator unseal --identity').",
		Flags: []ucli.Flag{
			&ucli.IntFlag{Name: "shares", Usage: "number of shares to create (1-255)", Value: 5},
			&ucli.IntFlag{Name: "threshold", Usage: "number of shares that unseal a node (1-shares)", Value: 3},
			&ucli.StringSliceFlag{Name: "recipient", Usage: "age `RECIPIENT` to encrypt one share to; repeat once per share, in order"},
		},
	}, `coffer operator init --shares 5 --threshold 3
coffer operator init --shares 2 --threshold 2 --recipient "$(cat alice.pub)" --recipient "$(cat bob.pub)"`, 0, 0, func(x *cmd) error {
		n, t := x.c.Int("shares"), x.c.Int("threshold")
		recipients := x.c.StringSlice("recipient")
		switch {
		case n < 1 || n > 255:
			return usagef("invalid --shares %d: give 1 to 255", n)
		case t < 1 || t > n:
			return usagef("invalid --threshold %d: give 1 to --shares (%d)", t, n)
		case len(recipients) > 0 && len(recipients) != n:
			return usagef("give one --recipient per share: %d shares but %d recipients", n, len(recipients))
		}
		for i, r := range recipients {
			if strings.TrimSpace(r) == "" {
				return usagef("--recipient %d is empty", i+1)
			}
		}
		req := api.InitRequest{Shares: n, Threshold: t, Recipients: recipients}
		var out api.InitResponse
		return x.request(http.MethodPost, api.PathInit, req, &out, func() error {
			return printInit(x, &out, req)
		})
	})
}

func printInit(x *cmd, out *api.InitResponse, req api.InitRequest) error {
	w := x.stdout
	for i, s := range out.Shares {
		if out.Encrypted {
			to := ""
			if i < len(req.Recipients) {
				to = " to " + req.Recipients[i]
			}
			fmt.Fprintf(w, "Share %d (age-encrypted%s):\n%s\n\n", i+1, to, strings.TrimRight(s, "\n"))
			continue
		}
		fmt.Fprintf(w, "Share %d: %s\n", i+1, s)
	}
	if !out.Encrypted {
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Coffer is initialised with %d shares and a threshold of %d: any %d shares unseal a node.\n",
		len(out.Shares), req.Threshold, req.Threshold)
	fmt.Fprintf(w, "WARNING: the shares are shown only this once; cofferd does not keep them.\n"+
		"Store each share apart from the others (a different person, safe or password manager),\n"+
		"never all in one place: whoever holds %d of them can unseal Coffer.\n", req.Threshold)
	if out.Encrypted {
		fmt.Fprintln(w, "Send each encrypted share to the holder of its recipient's identity.")
	}
	return nil
}

func (e *env) sealCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "seal",
		Usage:     "seal this node: zero its key material",
		UsageText: "coffer operator seal",
		Description: "Seals the node behind the socket: it zeroes the root key, keyring and every\n" +
			"decrypted key, and stops serving crypto until it is unsealed again. Other nodes\n" +
			"are not affected.",
	}, "coffer operator seal", 0, 0, func(x *cmd) error {
		return x.request(http.MethodPost, api.PathSeal, nil, nil, func() error {
			_, err := fmt.Fprintln(x.stdout, "Sealed: this node's key material is zeroed. Unseal it with 'coffer operator unseal'.")
			return err
		})
	})
}

func (e *env) resealCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "reseal",
		Usage:     "wrap the root key with this node's device again",
		UsageText: "coffer operator reseal",
		Description: "Reopens the node's configured HSM or TPM and wraps the root key with it,\n" +
			"replacing the node's old sealed blob, so that the node unseals itself at its\n" +
			"next start. Run it on an unsealed node after its device was replaced or its\n" +
			"TPM PCR policy changed.",
	}, "coffer operator unseal && coffer operator reseal", 0, 0, func(x *cmd) error {
		return x.request(http.MethodPost, api.PathReseal, nil, nil, func() error {
			_, err := fmt.Fprintln(x.stdout, "Resealed: the root key is wrapped with this node's device; it will unseal itself at its next start.")
			return err
		})
	})
}

func (e *env) rotateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "rotate",
		Usage:     "add a keyring term (barrier rotation)",
		UsageText: "coffer operator rotate",
		Description: "Adds a new keyring term: new writes are encrypted under it, older records\n" +
			"stay readable. Named keys and ciphertexts are not affected.",
	}, "coffer operator rotate", 0, 0, func(x *cmd) error {
		var out api.RotateResponse
		return x.request(http.MethodPost, api.PathRotate, nil, &out, func() error {
			_, err := fmt.Fprintf(x.stdout, "New keyring term: %d\n", out.Term)
			return err
		})
	})
}

// isCode reports whether err is an API error with the given code.
func isCode(err error, code string) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == code
}
