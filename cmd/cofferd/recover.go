package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/keystore"
)

// recoverCommand is `cofferd recover --config FILE --peers FILE`: offline
// quorum-loss recovery (docs/cli.md).
func recoverCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "recover",
		Usage:     "offline quorum-loss recovery: rewrite this node's raft configuration from a peers file",
		UsageText: "cofferd recover --config FILE --peers FILE",
		Description: `Run on each surviving node while cofferd is stopped, with the same peers file,
then start the nodes: they elect a leader among the listed peers. The peers file
is a JSON list: [{"id": "node1", "address": "10.0.0.1:8201"}, …]. Writes that
only the lost nodes had may be lost; prefer the node with the newest log.

EXAMPLES:
   cofferd recover --config /etc/coffer/cofferd.hcl --peers /root/peers.json`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "the node's HCL config `FILE`", Required: true},
			&cli.StringFlag{Name: "peers", Usage: "JSON peers `FILE`", Required: true},
		},
		Action: func(c *cli.Context) error {
			cfg, err := config.LoadConfig(c.String("config"))
			if err != nil {
				return cli.Exit("cofferd: "+err.Error(), 1)
			}
			data, err := os.ReadFile(c.String("peers"))
			if err != nil {
				return cli.Exit("cofferd: "+err.Error(), 1)
			}
			var peers []cluster.Peer
			if err := json.Unmarshal(data, &peers); err != nil {
				return cli.Exit(fmt.Sprintf("cofferd: %s is not a JSON list of {\"id\", \"address\"}: %v", c.String("peers"), err), 1)
			}
			log := newLogger(cfg, os.Stderr)
			err = cluster.Recover(cluster.Config{NodeID: cfg.NodeID, DataDir: cfg.DataDir, Logger: log, FSM: keystore.New(keystore.Config{Logger: log})}, peers)
			if err != nil {
				return cli.Exit("cofferd: recover: "+err.Error(), 1)
			}
			fmt.Fprintf(stdout, "Recovered: node %s now has %d peers; start cofferd on each of them.\n", cfg.NodeID, len(peers))
			return nil
		},
	}
}
