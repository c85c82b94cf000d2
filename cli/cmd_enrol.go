package cli

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/coffer-kms/coffer/api"
)

// enrolCommand: one-time enrolment tokens (docs/cli.md). Using a token to
// unseal a node with its device (`coffer operator enrol [TOKEN|-]`) comes
// with node enrolment (issue 14); here the token admits a node id to join.
func (e *env) enrolCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "enrol",
		Usage:     "one-time enrolment tokens for new nodes",
		UsageText: "coffer operator enrol token create|list|revoke",
		Description: "Once the cluster is initialised, a node id that is not a member joins only\n" +
			"with a one-time token issued by an admin for that node id.",
		Subcommands: []*ucli.Command{group(&ucli.Command{
			Name:        "token",
			Usage:       "issue, list and revoke enrolment tokens",
			UsageText:   "coffer operator enrol token create --node ID [--ttl 1h] | list | revoke ID",
			Description: "Tokens are printed once; the cluster keeps only their hashes.",
			Subcommands: []*ucli.Command{e.enrolTokenCreateCommand(), e.enrolTokenListCommand(), e.enrolTokenRevokeCommand()},
		}, "coffer operator enrol token create --node node4 --ttl 30m")},
	}, "coffer operator enrol token create --node node4")
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
