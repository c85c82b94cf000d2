package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/coffer-kms/coffer/client"
	ucli "github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// Envelope encryption of data of any size (docs/envelope.md): the format
// and its streaming live in the client package; these commands only choose
// the input and output and make a file output atomic.

func envelopeOutFlag(what string) ucli.Flag {
	return &ucli.StringFlag{Name: "out", Aliases: []string{"o"}, Usage: "write the " + what + " to `FILE` (created 0600, replaced only once complete) instead of stdout"}
}

func (e *env) encryptCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "encrypt",
		Usage:     "encrypt data of any size under a fresh data key of a key (envelope encryption, streamed)",
		UsageText: "coffer encrypt --key NAME [--out FILE] [FILE|-]",
		Description: "Encrypts FILE (or stdin, without FILE or with -) locally under a fresh data\n" +
			"key from cofferd (needs the datakey operation on the key) and writes an envelope:\n" +
			"a header with the data key's ciphertext, the key's name and version, then\n" +
			"authenticated 64 KiB chunks (docs/envelope.md). Memory use is constant; the\n" +
			"data never goes to cofferd. Output goes to stdout (never a terminal) or --out.",
		Flags: []ucli.Flag{keyFlag(), envelopeOutFlag("envelope")},
	}, `coffer encrypt --key backups dump.sql > dump.sql.cfe
pg_dump billing | coffer encrypt --key backups --out billing.sql.cfe`, 0, 1, func(x *cmd) error {
		key, err := requireKey(x)
		if err != nil {
			return err
		}
		src, name, closeSrc, err := openInput(x)
		if err != nil {
			return err
		}
		defer closeSrc()
		return writeOutput(x, "envelope", true, func(dst io.Writer) error {
			w, err := x.client.Encrypt(x.ctx, dst, key)
			if err != nil {
				return err
			}
			if err := copySecret(x.ctx, w, src); err != nil {
				w.Close()
				return fmt.Errorf("encrypt %s: %w", name, err)
			}
			return w.Close()
		})
	})
}

func (e *env) decryptCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "decrypt",
		Usage:     "decrypt an envelope made by 'coffer encrypt' (streamed)",
		UsageText: "coffer decrypt [--out FILE] [FILE|-]",
		Description: "Reads the envelope in FILE (or stdin), unwraps its data key with the key named\n" +
			"in its header (needs the unwrap operation on that key) and writes the plaintext.\n" +
			"Every chunk is authenticated before it is written, and truncation, reordering,\n" +
			"appended data and tampering are refused. With --out the plaintext goes to a\n" +
			"temporary file renamed to FILE only when the whole envelope has been verified:\n" +
			"on failure nothing is left. To stdout it streams: on failure coffer exits 1\n" +
			"after writing the chunks verified so far, and the output must be discarded\n" +
			"(check the exit status, e.g. with set -o pipefail).",
		Flags: []ucli.Flag{envelopeOutFlag("plaintext")},
	}, `coffer decrypt --out dump.sql dump.sql.cfe
ssh vault cat billing.sql.cfe | coffer decrypt | psql billing   # with set -o pipefail`, 0, 1, func(x *cmd) error {
		src, name, closeSrc, err := openInput(x)
		if err != nil {
			return err
		}
		defer closeSrc()
		return writeOutput(x, "plaintext", false, func(dst io.Writer) error {
			r, err := x.client.Decrypt(x.ctx, src)
			if err != nil {
				return fmt.Errorf("decrypt %s: %w", name, err)
			}
			defer r.Close()
			if err := copySecret(x.ctx, dst, r); err != nil {
				return fmt.Errorf("decrypt %s: %w", name, err)
			}
			return nil
		})
	})
}

// openInput opens the FILE argument, or stdin.
func openInput(x *cmd) (io.Reader, string, func(), error) {
	arg := x.c.Args().First()
	if arg == "" || arg == "-" {
		if _, tty := terminalFD(x.stdin); tty {
			fmt.Fprintln(x.stderr, "Reading the input from the terminal; end it with Ctrl-D.")
		}
		return x.stdin, "stdin", func() {}, nil
	}
	f, err := os.Open(arg)
	if err != nil {
		return nil, "", nil, fmt.Errorf("open the input: %w", err)
	}
	return f, arg, func() { f.Close() }, nil
}

// writeOutput runs write against --out (atomically) or stdout. A binary
// envelope is never written to a terminal.
func writeOutput(x *cmd, what string, binary bool, write func(io.Writer) error) error {
	out := x.c.String("out")
	if out == "" || out == "-" {
		if f, ok := x.stdout.(*os.File); ok && binary && term.IsTerminal(int(f.Fd())) {
			return usagef("refusing to write the binary %s to a terminal: redirect stdout or use --out FILE", what)
		}
		return write(x.stdout)
	}
	return writeFileAtomic(out, write)
}

// writeFileAtomic writes to a temporary file (0600) in path's directory and
// renames it to path only once write succeeded and the data is on disk, so
// that path holds either its old content or the complete new one.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create the output: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("create the output: %w", err)
	}
	if err := write(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// copySecret copies src to dst through one buffer of its own, zeroed at
// the end (io.Copy may use pooled buffers that keep plaintext around).
//
// It stops at ctx's end between chunks: coffer's first SIGINT/SIGTERM only
// cancels ctx, and the callers' cleanup (the temporary --out file holding
// plaintext) must run then, not be skipped by the second signal's kill.
func copySecret(ctx context.Context, dst io.Writer, src io.Reader) error {
	buf := make([]byte, client.EnvelopeChunkSize)
	defer clear(buf)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
