package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	ucli "github.com/urfave/cli/v2"
)

// The audit commands. verify works on files alone (it imports only the
// log format from daemon/audit, which is standard library only); hmac asks
// the node, which holds the HMAC key.

const pathAuditHash = "/v1/sys/audit-hash"

// maxHMACInput bounds a VALUE read from stdin.
const maxHMACInput = 1 << 20

func (e *env) auditCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "audit",
		Usage:     "check an audit log's hash chain, or compute a value's audit HMAC to search the log",
		UsageText: "coffer audit command [command options] [arguments...]",
		Description: "cofferd writes one JSON line per request and per event to its audit log; each\n" +
			"line carries the SHA-256 of the previous one and a sequence number, and records\n" +
			"sensitive request fields (aad) only as HMACs. See docs/audit.md.",
		Subcommands: []*ucli.Command{e.auditVerifyCommand(), e.auditHMACCommand()},
	}, `coffer audit verify /var/log/coffer/audit.log
coffer audit hmac "db=billing"`)
}

// verifyResult is the --format json output of audit verify.
type verifyResult struct {
	OK       bool   `json:"ok"`
	Entries  int    `json:"entries"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	LastHash string `json:"last_hash"`
	// On failure: where and why.
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	Kind   string `json:"kind,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func (e *env) auditVerifyCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "verify",
		Usage:     "check an audit log's hash chain",
		UsageText: "coffer audit verify FILE [FILE...]",
		Description: "Walks the hash chain of FILE line by line: each line's hash must match its\n" +
			"content, its prev_hash the previous line's hash, and its seq the previous seq\n" +
			"plus one. Prints \"ok: N entries, last seq S, last hash H\", or the first bad\n" +
			"line and why (edited, deleted, reordered, truncated) and exits 1.\n" +
			"\n" +
			"Give rotated files oldest first to check them as one chain. A file that\n" +
			"starts after seq 1 continues an earlier one; that is noted on stderr.\n" +
			"\n" +
			"A log cut at its end still verifies: compare S and H with audit_seq and\n" +
			"audit_hash in 'coffer status' (on the node that wrote the log) to catch it.\n" +
			"verify reads only the files; it does not contact cofferd.",
	}, `coffer audit verify /var/log/coffer/audit.log
coffer audit verify /var/log/coffer/audit.log.1 /var/log/coffer/audit.log
coffer --format json audit verify audit.log`, 1, -1, func(x *cmd) error {
		sum, err := audit.VerifyFiles(x.c.Args().Slice()...)
		var ve *audit.VerifyError
		switch {
		case errors.As(err, &ve):
			if x.json {
				x.printValue(verifyResult{Entries: sum.Entries, FirstSeq: sum.FirstSeq, LastSeq: sum.LastSeq, LastHash: sum.LastHash,
					File: ve.File, Line: ve.Line, Kind: ve.Kind, Reason: ve.Reason})
				return exitCode(ExitError)
			}
			return fmt.Errorf("audit log is not intact: %w (the %d lines before it verify, up to seq %d)", err, sum.Entries, sum.LastSeq)
		case err != nil:
			return fmt.Errorf("cannot read the audit log: %w", err)
		}
		if x.json {
			return x.printValue(verifyResult{OK: true, Entries: sum.Entries, FirstSeq: sum.FirstSeq, LastSeq: sum.LastSeq, LastHash: sum.LastHash})
		}
		if sum.FirstSeq > 1 {
			fmt.Fprintf(x.stderr, "note: the first entry is seq %d: the file continues a rotated log; verify them together, oldest first, to check the link\n", sum.FirstSeq)
		}
		_, err = fmt.Fprintf(x.stdout, "ok: %d entries, last seq %d, last hash %s\n", sum.Entries, sum.LastSeq, sum.LastHash)
		return err
	})
}

func (e *env) auditHMACCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "hmac",
		Usage:     "print the audit HMAC of a value, to search an audit log for it",
		UsageText: "coffer audit hmac [VALUE|-]",
		Description: "The audit log records sensitive request fields, such as aad, only as\n" +
			"HMAC-SHA256 under a key derived from the cluster's keyring. This asks the local\n" +
			"node for the HMAC of VALUE (or of stdin, without VALUE or with -; one trailing\n" +
			"newline is dropped), so you can grep the log for it. Every node of a cluster\n" +
			"computes the same value. Needs admin rights and an unsealed node.",
	}, `coffer audit hmac "db=billing"
grep "$(coffer audit hmac 'db=billing')" /var/log/coffer/audit.log
printf 'tenant=42' | coffer audit hmac`, 0, 1, func(x *cmd) error {
		value, err := readHMACInput(x)
		if err != nil {
			return err
		}
		var out api.AuditHashResponse
		return x.request(http.MethodPost, pathAuditHash, api.AuditHashRequest{Input: value}, &out, func() error {
			_, err := fmt.Fprintln(x.stdout, out.Hash)
			return err
		})
	})
}

// readHMACInput returns VALUE, or stdin without one trailing newline (so
// that `echo VALUE | coffer audit hmac` means VALUE).
func readHMACInput(x *cmd) (string, error) {
	if arg := x.c.Args().First(); x.c.NArg() > 0 && arg != "-" {
		return arg, nil
	}
	if _, tty := terminalFD(x.stdin); tty {
		fmt.Fprintln(x.stderr, "Reading the value from the terminal; end it with Ctrl-D.")
	}
	data, err := io.ReadAll(io.LimitReader(x.stdin, maxHMACInput+1))
	if err != nil {
		return "", fmt.Errorf("read the value from stdin: %w", err)
	}
	if len(data) > maxHMACInput {
		return "", usagef("the value on stdin is over %d bytes", maxHMACInput)
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	return string(data), nil
}
