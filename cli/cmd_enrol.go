package cli

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/coffer-kms/coffer/api"
)

// enrolCommand: one-time enrolment tokens, and `coffer operator enrol
// [TOKEN|-]`, which unseals a sealed member with its own seal device with a
// token instead of shares (docs/cli.md).
func (e *env) enrolCommand() *ucli.Command {
	c := e.newCmd(&ucli.Command{
		Name:      "enrol",
		Usage:     "enrol this node's seal device with a one-time token, or manage tokens",
		UsageText: "coffer operator enrol [TOKEN|-] | coffer operator enrol token create|list|revoke",
		Description: "Without a subcommand: on a sealed member that has its own seal device (it\n" +
			"joined before init, or its HSM or TPM was replaced), present a one-time token\n" +
			"issued for this node id. An unsealed member sends the root key encrypted to a\n" +
			"key this node makes for the exchange; the node seals it with its device and\n" +
			"is unsealed: no shares. The token comes from the hidden prompt on a terminal,\n" +
			"else from stdin (or -); an argument is visible in ps and shell history.\n" +
			"Once the cluster is initialised, a node id that is not a member joins only\n" +
			"with a one-time token issued by an admin for that node id.",
		Subcommands: []*ucli.Command{group(&ucli.Command{
			Name:        "token",
			Usage:       "issue, list and revoke enrolment tokens",
			UsageText:   "coffer operator enrol token create --node ID [--ttl 1h] | list | revoke ID",
			Description: "Tokens are printed once; the cluster keeps only their hashes.",
			Subcommands: []*ucli.Command{e.enrolTokenCreateCommand(), e.enrolTokenListCommand(), e.enrolTokenRevokeCommand()},
		}, "coffer operator enrol token create --node node4 --ttl 30m")},
	}, `coffer operator enrol token create --node node2 --format json | jq -r .token | ssh node2 coffer operator enrol -
coffer operator enrol          # prompts: Enrolment token (will be hidden):`, 0, 1, func(x *cmd) error {
		return x.enrol()
	})
	return c
}

// enrol reads the token (argument, prompt or stdin) and posts it.
func (x *cmd) enrol() error {
	arg := x.c.Args().First()
	// Check first, so nobody types a token into a node that would not use
	// it (the token stays valid then).
	if st, _, err := x.status(); err == nil && st.Initialized && !st.Sealed {
		_, err := fmt.Fprintf(x.stdout, "Node %s is already unsealed; the token was not used.\n", st.NodeID)
		return err
	}
	var token []byte
	switch {
	case arg != "" && arg != "-":
		fmt.Fprintln(x.stderr, "coffer: warning: a token given as an argument is visible in ps and in shell history; prefer the prompt or stdin.")
		token = []byte(arg)
	default:
		if fd, ok := terminalFD(x.stdin); ok && arg == "" {
			fmt.Fprint(x.stderr, "Enrolment token (will be hidden): ")
			b, err := readHidden(x.ctx, fd)
			fmt.Fprintln(x.stderr)
			if err != nil {
				clear(b)
				return fmt.Errorf("reading the token: %w", err)
			}
			token = b
		} else {
			b, err := readAllSecret(x.stdin, 0, 4096)
			if err != nil {
				return fmt.Errorf("reading the token from stdin: %w", err)
			}
			token = b
		}
	}
	defer clear(token)
	t := strings.TrimSpace(string(token))
	if t == "" {
		return usagef("no token given: pipe the token printed by 'coffer operator enrol token create --node ID' or type it at the prompt")
	}
	var st api.Status
	return x.request(http.MethodPost, "/v1/sys/enrol", api.EnrolRequest{Token: t}, &st, func() error {
		if st.Sealed {
			_, err := fmt.Fprintf(x.stdout, "Node %s is still sealed: %s\n", st.NodeID, st.SealedReason)
			return err
		}
		_, err := fmt.Fprintf(x.stdout, "Node %s is enrolled: its %s device sealed the root key and it is unsealed.\n", st.NodeID, st.SealType)
		return err
	})
}

func (e *env) enrolTokenCreateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "create",
		Usage:     "issue a one-time token for a node id",
		UsageText: "coffer operator enrol token create --node ID [--ttl 1h]",
		Description: "Prints a token that lets node ID join the cluster once, before it expires\n" +
			"(--ttl, 1m to 24h). Hand it to the new node's operator over a safe channel;\n" +
			"it is shown only this once.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "node", Usage: "the node `ID` that may use the token (its certificate's node id)", Required: true},
			&ucli.StringFlag{Name: "ttl", Usage: "lifetime `DURATION` (1m to 24h)", Value: "1h"},
		},
	}, "coffer operator enrol token create --node node4 --ttl 30m", 0, 0, func(x *cmd) error {
		ttl := x.c.String("ttl")
		if d, err := time.ParseDuration(ttl); err != nil || d < time.Minute || d > 24*time.Hour {
			return usagef("--ttl %q: give a duration from 1m to 24h (e.g. 30m, 1h)", ttl)
		}
		var out api.EnrolTokenResponse
		return x.request(http.MethodPost, "/v1/sys/enrol/tokens", api.EnrolTokenRequest{NodeID: x.c.String("node"), TTL: ttl}, &out, func() error {
			_, err := fmt.Fprintf(x.stdout, "%s\n", out.Token)
			if err == nil {
				_, err = fmt.Fprintf(x.stderr, "Enrolment token for %s, valid until %s; shown only once. On the new node: coffer operator raft join ADDR --token -\n", out.NodeID, out.ExpiresAt.UTC().Format(time.RFC3339))
			}
			return err
		})
	})
}

func (e *env) enrolTokenListCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "list",
		Usage:       "list enrolment tokens (never the tokens themselves)",
		UsageText:   "coffer operator enrol token list",
		Description: "Prints each token's id, node id, expiry and when it was used.",
	}, "coffer operator enrol token list", 0, 0, func(x *cmd) error {
		var out api.EnrolTokenList
		return x.request(http.MethodGet, "/v1/sys/enrol/tokens", nil, &out, func() error {
			t := newTable(x.stdout)
			t.row("ID", "NODE", "EXPIRES", "USED")
			for _, tk := range out.Tokens {
				used := "-"
				if tk.UsedAt != nil {
					used = tk.UsedAt.UTC().Format(time.RFC3339)
				}
				t.row(tk.ID, tk.NodeID, tk.ExpiresAt.UTC().Format(time.RFC3339), used)
			}
			return t.flush()
		})
	})
}

func (e *env) enrolTokenRevokeCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "revoke",
		Usage:       "revoke an unused enrolment token",
		UsageText:   "coffer operator enrol token revoke ID",
		Description: "ID is the token's id from 'coffer operator enrol token list'.",
	}, "coffer operator enrol token revoke 3f2a9c1b7d4e8a60", 1, 1, func(x *cmd) error {
		id := x.c.Args().First()
		return x.request(http.MethodDelete, "/v1/sys/enrol/tokens/"+url.PathEscape(id), nil, nil, func() error {
			_, err := fmt.Fprintf(x.stdout, "Revoked enrolment token %s.\n", id)
			return err
		})
	})
}
