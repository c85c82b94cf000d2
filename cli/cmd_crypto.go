package cli

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/coffer-kms/coffer/api"
	ucli "github.com/urfave/cli/v2"
)

// maxCiphertextInput bounds a ciphertext read from stdin: the ciphertext of
// the largest plaintext is about 88 KiB.
const maxCiphertextInput = 1 << 20

func keyFlag() ucli.Flag {
	return &ucli.StringFlag{Name: "key", Usage: "`NAME` of the key (required)"}
}

func aadFlag() ucli.Flag {
	return &ucli.StringFlag{Name: "aad", Usage: "additional authenticated `TEXT`: bound to the ciphertext, needed again to unwrap it"}
}

// requireKey returns the --key value, checked.
func requireKey(x *cmd) (string, error) {
	name := x.c.String("key")
	if name == "" {
		return "", usagef("missing --key NAME; usage: %s", x.c.Command.UsageText)
	}
	return name, checkName("key", name)
}

// checkName refuses a name cofferd would refuse, before any request.
func checkName(kind, name string) error {
	if !api.ValidName(name) {
		return usagef("invalid %s name %q: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit", kind, name)
	}
	return nil
}

func aad(x *cmd) []byte {
	if s := x.c.String("aad"); s != "" {
		return []byte(s)
	}
	return nil
}

func (e *env) wrapCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "wrap",
		Usage:     "encrypt a small secret (at most 64 KiB) with a key; prints the ciphertext",
		UsageText: "coffer wrap --key NAME [--aad TEXT] [FILE|-]",
		Description: "Encrypts the bytes of FILE (or stdin, without FILE or with -) under the key's\n" +
			"latest version and prints the ciphertext (coffer:v<N>:...) on one line.\n" +
			"One plaintext is at most 64 KiB: for larger data use 'coffer encrypt' (envelope\n" +
			"encryption of any size, streamed).",
		Flags: []ucli.Flag{keyFlag(), aadFlag()},
	}, `coffer wrap --key billing-db db-password.txt > db-password.coffer
printf 's3cret' | coffer wrap --key billing-db --aad "db=billing"`, 0, 1, func(x *cmd) error {
		key, err := requireKey(x)
		if err != nil {
			return err
		}
		plaintext, err := readPlaintext(x)
		if err != nil {
			return err
		}
		defer clear(plaintext)
		body, err := json.Marshal(api.WrapRequest{Plaintext: plaintext, AAD: aad(x)})
		if err != nil {
			return err
		}
		defer clear(body)
		var out api.WrapResult
		return x.request(http.MethodPost, api.KeyPath(key, "wrap"), body, &out, func() error {
			_, err := fmt.Fprintln(x.stdout, out.Ciphertext)
			return err
		})
	})
}

// readPlaintext reads wrap's input, refusing more than api.MaxPlaintext
// bytes before anything is sent.
func readPlaintext(x *cmd) ([]byte, error) {
	src, name := x.stdin, "stdin"
	if arg := x.c.Args().First(); arg != "" && arg != "-" {
		f, err := os.Open(arg)
		if err != nil {
			return nil, fmt.Errorf("read the plaintext: %w", err)
		}
		defer f.Close()
		src, name = f, arg
	} else if _, tty := terminalFD(src); tty {
		fmt.Fprintln(x.stderr, "Reading the plaintext from the terminal; end it with Ctrl-D.")
	}
	data, err := readAllSecret(io.LimitReader(src, api.MaxPlaintext+1), api.MaxPlaintext+1, api.MaxPlaintext+2)
	if err != nil {
		return nil, fmt.Errorf("read the plaintext from %s: %w", name, err)
	}
	if len(data) > api.MaxPlaintext {
		clear(data)
		return nil, fmt.Errorf("the plaintext in %s is larger than 64 KiB, the most one wrap takes; "+
			"use envelope encryption instead: 'coffer encrypt --key NAME [FILE]' (any size, streamed)", name)
	}
	return data, nil
}

// readCiphertext returns the CIPHERTEXT argument, or stdin's content with
// surrounding whitespace trimmed.
func readCiphertext(x *cmd) (string, error) {
	if arg := x.c.Args().First(); arg != "" && arg != "-" {
		return string(bytes.TrimSpace([]byte(arg))), nil
	}
	if _, tty := terminalFD(x.stdin); tty {
		fmt.Fprintln(x.stderr, "Reading the ciphertext from the terminal; end it with Ctrl-D.")
	}
	data, err := readAllSecret(x.stdin, 0, maxCiphertextInput)
	if err != nil {
		return "", fmt.Errorf("read the ciphertext from stdin: %w", err)
	}
	ct := string(bytes.TrimSpace(data))
	if ct == "" {
		return "", usagef("no ciphertext given: pass it as an argument or on stdin; usage: %s", x.c.Command.UsageText)
	}
	return ct, nil
}

func (e *env) unwrapCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "unwrap",
		Usage:     "decrypt a ciphertext; writes the raw plaintext bytes to stdout",
		UsageText: "coffer unwrap --key NAME [--aad TEXT] [CIPHERTEXT|-]",
		Description: "Decrypts CIPHERTEXT (or stdin, without it or with -; surrounding whitespace\n" +
			"is ignored) and writes the plaintext bytes to stdout exactly, with no newline\n" +
			"added. --aad must repeat the text given to wrap.",
		Flags: []ucli.Flag{keyFlag(), aadFlag()},
	}, `coffer unwrap --key billing-db < db-password.coffer > db-password.txt
coffer unwrap --key billing-db --aad "db=billing" "$(cat db-password.coffer)"`, 0, 1, func(x *cmd) error {
		key, err := requireKey(x)
		if err != nil {
			return err
		}
		ct, err := readCiphertext(x)
		if err != nil {
			return err
		}
		var out api.UnwrapResult
		defer func() { clear(out.Plaintext) }()
		return x.request(http.MethodPost, api.KeyPath(key, "unwrap"), api.CiphertextRequest{Ciphertext: ct, AAD: aad(x)}, &out, func() error {
			_, err := x.stdout.Write(out.Plaintext)
			return err
		})
	})
}

func (e *env) rewrapCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "rewrap",
		Usage:     "re-encrypt a ciphertext under the key's latest version",
		UsageText: "coffer rewrap --key NAME [--aad TEXT] [CIPHERTEXT|-]",
		Description: "Re-encrypts CIPHERTEXT (or stdin) under the key's latest version and prints\n" +
			"the new ciphertext on one line. The plaintext never leaves cofferd. Use it after\n" +
			"'coffer key rotate', before raising the key's min decryption version.",
		Flags: []ucli.Flag{keyFlag(), aadFlag()},
	}, `coffer rewrap --key billing-db < db-password.coffer > db-password.coffer.new`, 0, 1, func(x *cmd) error {
		key, err := requireKey(x)
		if err != nil {
			return err
		}
		ct, err := readCiphertext(x)
		if err != nil {
			return err
		}
		var out api.WrapResult
		return x.request(http.MethodPost, api.KeyPath(key, "rewrap"), api.CiphertextRequest{Ciphertext: ct, AAD: aad(x)}, &out, func() error {
			_, err := fmt.Fprintln(x.stdout, out.Ciphertext)
			return err
		})
	})
}

func (e *env) datakeyCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "datakey",
		Usage:     "generate a data key: its base64 plaintext and its ciphertext",
		UsageText: "coffer datakey --key NAME [--bytes 32] [--no-plaintext] [--aad TEXT]",
		Description: "Generates a fresh random data key of --bytes bytes (16-64) and prints two lines:\n" +
			"\"plaintext: <base64>\" and \"ciphertext: <ciphertext>\". Encrypt your data locally\n" +
			"with the plaintext key, forget it, and store the ciphertext with the data; later\n" +
			"'coffer unwrap' gives the key back (envelope encryption). --no-plaintext prints\n" +
			"only the ciphertext line, for a key to be unwrapped elsewhere.",
		Flags: []ucli.Flag{
			keyFlag(),
			&ucli.IntFlag{Name: "bytes", Usage: "length of the data key in bytes (16-64)", Value: api.DefaultDataKey},
			&ucli.BoolFlag{Name: "no-plaintext", Usage: "print only the ciphertext"},
			aadFlag(),
		},
	}, `coffer datakey --key billing-db
coffer datakey --key billing-db --bytes 32 --no-plaintext`, 0, 0, func(x *cmd) error {
		key, err := requireKey(x)
		if err != nil {
			return err
		}
		n := x.c.Int("bytes")
		if n < api.MinDataKeyLen || n > api.MaxDataKeyLen {
			return usagef("invalid --bytes %d: give %d to %d", n, api.MinDataKeyLen, api.MaxDataKeyLen)
		}
		include := !x.c.Bool("no-plaintext")
		var out api.DataKeyResponse
		defer func() { clear(out.Plaintext) }()
		return x.request(http.MethodPost, api.KeyPath(key, "datakey"),
			api.DataKeyRequest{Bytes: &n, AAD: aad(x), IncludePlaintext: &include}, &out, func() error {
				if include {
					if len(out.Plaintext) == 0 {
						return errors.New("cofferd's answer has no plaintext data key")
					}
					// Encode into a buffer of our own so it can be zeroed.
					line := make([]byte, 0, len("plaintext: \n")+base64.StdEncoding.EncodedLen(len(out.Plaintext)))
					line = append(line, "plaintext: "...)
					line = base64.StdEncoding.AppendEncode(line, out.Plaintext)
					line = append(line, '\n')
					_, err := x.stdout.Write(line)
					clear(line)
					if err != nil {
						return err
					}
				}
				_, err := fmt.Fprintf(x.stdout, "ciphertext: %s\n", out.Ciphertext)
				return err
			})
	})
}

// readFileLimited reads a whole file of at most limit bytes into a buffer
// the caller zeroes. what names the file in errors ("the --identity file").
func readFileLimited(path string, limit int64, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer f.Close()
	var hint int64
	if fi, err := f.Stat(); err == nil {
		hint = fi.Size()
	}
	data, err := readAllSecret(f, hint, limit)
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	return data, nil
}
