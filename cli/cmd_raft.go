package cli

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/coffer-kms/coffer/api"
)

func (e *env) raftCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "raft",
		Usage:     "cluster membership and snapshots",
		UsageText: "coffer operator raft command [command options] [arguments...]",
		Description: "Raft commands manage the cluster this node belongs to: join it to a cluster,\n" +
			"list and remove peers, save and restore encrypted snapshots.",
		Subcommands: []*ucli.Command{
			e.raftJoinCommand(),
			e.raftListPeersCommand(),
			e.raftRemovePeerCommand(),
			e.raftTransferLeadershipCommand(),
			group(&ucli.Command{
				Name:      "snapshot",
				Usage:     "save or restore an encrypted snapshot of the cluster state",
				UsageText: "coffer operator raft snapshot save|restore FILE",
				Description: "A snapshot holds the cluster's replicated state with its key material still\n" +
					"encrypted: a backup that is useless without the cluster's shares.",
				Subcommands: []*ucli.Command{e.snapshotSaveCommand(), e.snapshotRestoreCommand()},
			}, "coffer operator raft snapshot save /backup/coffer-$(date +%F).snap"),
		},
	}, `coffer operator raft join 10.0.0.1:8201
coffer operator raft list-peers`)
}

func (e *env) raftJoinCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "join",
		Usage:     "join this node to a cluster",
		UsageText: "coffer operator raft join LEADER_ADDR [--token TOKEN|-]",
		Description: "Asks the cluster member at LEADER_ADDR (its cluster address, host:port; any\n" +
			"member works, a follower passes the request to the leader) to add this node\n" +
			"as a voter. The node then receives the cluster's encrypted state and is\n" +
			"unsealed by its device or by shares. Both nodes need certificates from the\n" +
			"same cluster CA (coffer tls cert create).\n" +
			"Once the cluster is initialised, a node id that is not a member needs a\n" +
			"one-time enrolment token for its id (coffer operator enrol token create\n" +
			"--node ID on a member). --token - reads it from stdin, which keeps it out of\n" +
			"the process list and shell history.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "token", Usage: "enrolment `TOKEN` for this node (- reads it from stdin)"},
		},
	}, "coffer operator enrol token create --node node4 --format json | jq -r .token | ssh node4 coffer operator raft join 10.0.0.1:8201 --token -", 1, 1, func(x *cmd) error {
		addr := x.c.Args().First()
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return usagef("LEADER_ADDR %q is not host:port (e.g. 10.0.0.1:8201)", addr)
		}
		token := x.c.String("token")
		if token == "-" {
			data, err := readAllSecret(x.stdin, 0, 4096)
			if err != nil {
				return fmt.Errorf("reading the token from stdin: %w", err)
			}
			token = strings.TrimSpace(string(data))
			clear(data)
			if token == "" {
				return usagef("--token -: stdin was empty; pipe the token printed by 'coffer operator enrol token create'")
			}
		}
		return x.request(http.MethodPost, "/v1/sys/raft/join", api.JoinRequest{LeaderAddress: addr, Token: token}, nil, func() error {
			msg := "Joined the cluster via %s. Unseal this node (coffer operator unseal) unless its device does it.\n"
			if token != "" {
				msg = "Joined the cluster via %s. A node with a seal device is now enrolled and unsealed (coffer operator status).\n"
			}
			_, err := fmt.Fprintf(x.stdout, msg, addr)
			return err
		})
	})
}

func (e *env) raftListPeersCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "list-peers",
		Usage:       "list the cluster's members",
		UsageText:   "coffer operator raft list-peers",
		Description: "Prints each member's node id, cluster address, whether it votes and which one leads.",
	}, "coffer operator raft list-peers", 0, 0, func(x *cmd) error {
		var out api.PeerList
		return x.request(http.MethodGet, "/v1/sys/raft/peers", nil, &out, func() error {
			t := newTable(x.stdout)
			t.row("NODE", "ADDRESS", "VOTER", "STATE")
			for _, p := range out.Peers {
				state := "follower"
				if p.Leader {
					state = "leader"
				}
				t.row(p.ID, p.Address, yesNo(p.Voter), state)
			}
			return t.flush()
		})
	})
}

func (e *env) raftRemovePeerCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "remove-peer",
		Usage:     "remove a member from the cluster",
		UsageText: "coffer operator raft remove-peer ID",
		Description: "Removes the node with id ID from the raft configuration (for a node that is\n" +
			"gone for good). The cluster keeps a quorum of the remaining voters.",
	}, "coffer operator raft remove-peer node3", 1, 1, func(x *cmd) error {
		id := x.c.Args().First()
		return x.request(http.MethodDelete, "/v1/sys/raft/peers/"+url.PathEscape(id), nil, nil, func() error {
			_, err := fmt.Fprintf(x.stdout, "Removed %s from the cluster.\n", id)
			return err
		})
	})
}

func (e *env) snapshotSaveCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "save",
		Usage:     "save an encrypted snapshot of the cluster state to FILE",
		UsageText: "coffer operator raft snapshot save FILE",
		Description: "Writes the replicated state (keys, policies, keyring) to FILE. Key material\n" +
			"in it stays encrypted under the keyring and the keyring under the root key:\n" +
			"restoring it needs the cluster's shares. FILE is created 0600 and not overwritten.",
	}, "coffer operator raft snapshot save /backup/coffer.snap", 1, 1, func(x *cmd) error {
		path := x.c.Args().First()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("cannot create %s: %w (choose a new file name)", path, err)
		}
		n, err := x.client.Download(x.ctx, "/v1/sys/raft/snapshot", f)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return err
		}
		if x.json {
			return x.printValue(map[string]any{"file": path, "bytes": n})
		}
		abs, _ := filepath.Abs(path)
		_, err = fmt.Fprintf(x.stdout, "Saved a snapshot of %d bytes to %s.\n", n, abs)
		return err
	})
}

func (e *env) snapshotRestoreCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "restore",
		Usage:     "replace the cluster state with a snapshot",
		UsageText: "coffer operator raft snapshot restore FILE",
		Description: "Installs the snapshot in FILE as the state of the whole cluster (run it on the\n" +
			"leader). An initialised cluster takes only its own snapshots; restore another\n" +
			"cluster's backup into a fresh, uninitialised node, then unseal it with the\n" +
			"snapshot's shares.",
	}, "coffer operator raft snapshot restore /backup/coffer.snap", 1, 1, func(x *cmd) error {
		data, err := os.ReadFile(x.c.Args().First())
		if err != nil {
			return err
		}
		return x.request(http.MethodPost, "/v1/sys/raft/snapshot", data, nil, func() error {
			_, err := fmt.Fprintln(x.stdout, "Restored. Check `coffer status` on each node; unseal sealed nodes with the snapshot's shares.")
			return err
		})
	})
}

func (e *env) raftTransferLeadershipCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "transfer-leadership",
		Usage:     "hand leadership to another member",
		UsageText: "coffer operator raft transfer-leadership [--to ID]",
		Description: "Asks the leader to hand leadership to member ID (or, without --to, to any\n" +
			"member that is unsealed), so that restarting or upgrading the leader costs\n" +
			"no election timeout. The new leader must be unsealed (a sealed leader\n" +
			"cannot authenticate writes).",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "to", Usage: "the member `ID` to lead (default: any unsealed member)"},
		},
	}, "coffer operator raft transfer-leadership --to node2", 0, 0, func(x *cmd) error {
		to := x.c.String("to")
		return x.request(http.MethodPost, "/v1/sys/raft/transfer-leadership", api.TransferLeadershipRequest{ID: to}, nil, func() error {
			who := "another member"
			if to != "" {
				who = to
			}
			_, err := fmt.Fprintf(x.stdout, "Leadership handed to %s.\n", who)
			return err
		})
	})
}
