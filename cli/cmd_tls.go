package cli

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
	ucli "github.com/urfave/cli/v2"
)

// The tls commands make the certificates of the cluster's mutual TLS
// locally, like `consul tls ca create`, so that setting up a cluster needs
// no openssl. They never contact cofferd.

// tlsFiles is the --format json output of both tls commands.
type tlsFiles struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

const tlsExamples = `coffer tls ca create --out tls/
coffer tls cert create --ca tls/ --node node1 --ip 10.0.0.1 --out tls/
coffer tls cert create --ca tls/ --node node2 --ip 10.0.0.2 --out tls/
coffer tls cert create --ca tls/ --node node3 --ip 10.0.0.3 --dns node3.example.internal --out tls/`

func (e *env) tlsCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "tls",
		Usage:     "make the CA and node certificates of the cluster's mutual TLS",
		UsageText: "coffer tls command [command options] [arguments...]",
		Description: "Nodes talk to each other (raft and forwarded requests) over mutual TLS 1.3:\n" +
			"each presents a certificate signed by the cluster CA and checks its peer's.\n" +
			"These commands make that CA and the node certificates locally, without\n" +
			"openssl and without cofferd. Then copy to each node ca.crt, its NODE.crt and\n" +
			"NODE.key, and set tls_ca_file, tls_cert_file and tls_key_file in its cluster\n" +
			"block.",
		Subcommands: []*ucli.Command{
			group(&ucli.Command{
				Name:        "ca",
				Usage:       "make the cluster CA",
				UsageText:   "coffer tls ca command [command options] [arguments...]",
				Description: "The cluster CA signs node certificates; nodes trust any certificate it signed.",
				Subcommands: []*ucli.Command{e.tlsCACreateCommand()},
			}, `coffer tls ca create --out tls/`),
			group(&ucli.Command{
				Name:        "cert",
				Usage:       "make node certificates",
				UsageText:   "coffer tls cert command [command options] [arguments...]",
				Description: "A node certificate identifies one node to its peers, as server and as client.",
				Subcommands: []*ucli.Command{e.tlsCertCreateCommand()},
			}, `coffer tls cert create --ca tls/ --node node1 --ip 10.0.0.1 --out tls/`),
		},
	}, tlsExamples)
}

func outFlag(what string) ucli.Flag {
	return &ucli.StringFlag{Name: "out", Usage: "`DIR` to write " + what + " to; created (mode 0700) if missing (required)"}
}

func daysFlag(def int) ucli.Flag {
	return &ucli.IntFlag{Name: "days", Usage: "validity in `DAYS`", Value: def}
}

// requireFlag returns a string flag's value, or a usage error if it is
// missing or empty.
func requireFlag(x *cmd, name, placeholder string) (string, error) {
	v := x.c.String(name)
	if strings.TrimSpace(v) == "" {
		return "", usagef("missing --%s %s; usage: %s", name, placeholder, x.c.Command.UsageText)
	}
	return v, nil
}

func checkDays(x *cmd) (int, error) {
	d := x.c.Int("days")
	if d < 1 || d > tlsutil.MaxDays {
		return 0, usagef("invalid --days %d: give 1 to %d", d, tlsutil.MaxDays)
	}
	return d, nil
}

// tlsError turns a bad argument found by tlsutil into a usage error; other
// failures (files, the CA) stay errors.
func tlsError(err error) error {
	if errors.Is(err, tlsutil.ErrInvalidArgument) {
		return usagef("%v", err)
	}
	return err
}

// printTLSFiles prints the paths written: a two-row table, or the JSON
// object {"cert", "key"}. In table format a hint on what to do next goes to
// stderr, so stdout stays the paths alone.
func (x *cmd) printTLSFiles(cert, key, hint string) error {
	if x.json {
		return x.printValue(tlsFiles{Cert: cert, Key: key})
	}
	t := newTable(x.stdout)
	t.row("Certificate", cert)
	t.row("Private key", key)
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(x.stderr, hint)
	return nil
}

func (e *env) tlsCACreateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "create",
		Usage:     "make a cluster CA: DIR/ca.crt and DIR/ca.key",
		UsageText: "coffer tls ca create --out DIR [--days 3650]",
		Description: "Makes a self-signed ECDSA P-256 CA for the cluster's mutual TLS and writes\n" +
			"DIR/ca.crt (0644) and DIR/ca.key (0600). It refuses to overwrite either file.\n" +
			"Whoever holds ca.key can make certificates that every node trusts: keep it\n" +
			"off the nodes, offline if you can; nodes need only ca.crt.",
		Flags: []ucli.Flag{outFlag("ca.crt and ca.key"), daysFlag(tlsutil.DefaultCADays)},
	}, `coffer tls ca create --out tls/
coffer tls ca create --out /secure/coffer-ca --days 1825`, 0, 0, func(x *cmd) error {
		out, err := requireFlag(x, "out", "DIR")
		if err != nil {
			return err
		}
		days, err := checkDays(x)
		if err != nil {
			return err
		}
		cert, key, err := tlsutil.CreateCA(out, days, time.Now())
		if err != nil {
			return tlsError(err)
		}
		return x.printTLSFiles(cert, key, fmt.Sprintf(
			"Keep %s secret: it signs certificates that every node trusts.\n"+
				"Next, one certificate per node: coffer tls cert create --ca %s --node NODE --ip ADDR --out DIR",
			key, out))
	})
}

func (e *env) tlsCertCreateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "create",
		Usage:     "make a node certificate for mutual TLS (server and client): DIR/ID.crt and DIR/ID.key",
		UsageText: "coffer tls cert create --ca DIR --node ID [--ip IP]... [--dns NAME]... --out DIR [--days 365]",
		Description: "Makes an ECDSA P-256 certificate for node ID, signed by the CA in DIR (ca.crt,\n" +
			"ca.key from 'coffer tls ca create'), valid as TLS server and client, and writes\n" +
			"DIR/ID.crt (0644) and DIR/ID.key (0600). It refuses to overwrite either file.\n" +
			"ID is the node's node_id: 1-64 letters, digits, '.', '_' or '-', starting with\n" +
			"a letter or digit. Peers check the address they dial against the certificate,\n" +
			"so give every address (--ip) and name (--dns) the node is reached at, one per\n" +
			"flag; at least one is required. The certificate also names the node as\n" +
			"coffer://node/ID, which peers use to know which node they talk to.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "ca", Usage: "`DIR` holding the CA's ca.crt and ca.key (required)"},
			&ucli.StringFlag{Name: "node", Usage: "the node's `ID`, its node_id (required)"},
			&ucli.StringSliceFlag{Name: "ip", Usage: "`IP` address the node is reached at; repeat for several"},
			&ucli.StringSliceFlag{Name: "dns", Usage: "DNS `NAME` the node is reached at; repeat for several"},
			outFlag("ID.crt and ID.key"),
			daysFlag(tlsutil.DefaultCertDays),
		},
	}, tlsExamples, 0, 0, func(x *cmd) error {
		caDir, err := requireFlag(x, "ca", "DIR")
		if err != nil {
			return err
		}
		node, err := requireFlag(x, "node", "ID")
		if err != nil {
			return err
		}
		if !tlsutil.ValidNodeID(node) {
			return usagef("invalid --node %q: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit (the node's node_id)", node)
		}
		out, err := requireFlag(x, "out", "DIR")
		if err != nil {
			return err
		}
		var ips []net.IP
		for _, s := range x.c.StringSlice("ip") {
			ip := net.ParseIP(strings.TrimSpace(s))
			if ip == nil {
				return usagef("invalid --ip %q: give one IPv4 or IPv6 address per --ip", s)
			}
			ips = append(ips, ip)
		}
		dns := x.c.StringSlice("dns")
		if len(ips) == 0 && len(dns) == 0 {
			return usagef("give at least one --ip or --dns: peers check the address they dial against the certificate, so a certificate without one cannot be used")
		}
		days, err := checkDays(x)
		if err != nil {
			return err
		}
		cert, key, err := tlsutil.CreateNodeCert(caDir, node, ips, dns, out, days, time.Now())
		if err != nil {
			return tlsError(err)
		}
		return x.printTLSFiles(cert, key, fmt.Sprintf(
			"Copy %s, %s and %s to node %s and point its config at them, e.g.:\n"+
				"  cluster {\n"+
				"    tls_ca_file   = \"/etc/coffer/tls/ca.crt\"\n"+
				"    tls_cert_file = \"/etc/coffer/tls/%s.crt\"\n"+
				"    tls_key_file  = \"/etc/coffer/tls/%s.key\"\n"+
				"  }",
			filepath.Join(caDir, tlsutil.CACertFile), cert, key, node, node, node))
	})
}
