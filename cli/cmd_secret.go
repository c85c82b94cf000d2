package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"

	"github.com/coffer-kms/coffer/api"
	ucli "github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func (e *env) secretCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "secret",
		Usage:     "store, read and manage versioned secrets (passwords, API keys, certificates)",
		UsageText: "coffer secret command [command options] [arguments...]",
		Description: "Secrets are named, versioned values kept encrypted in the cluster. Services get\n" +
			"them with 'coffer secret get', with 'coffer run', or from systemd's LoadCredential=\n" +
			"through cofferd's credential socket. Values are read from a file or stdin, never\n" +
			"from the command line.",
		Subcommands: []*ucli.Command{
			e.secretPutCommand(),
			e.secretGetCommand(),
			e.secretListCommand(),
			e.secretShowCommand(),
			e.secretUpdateCommand(),
			e.secretDestroyCommand(),
			e.secretDeleteCommand(),
			e.secretRestoreCommand(),
		},
	}, `coffer secret put db-password ./db-password.txt
coffer secret get db-password > /run/billing/db-password`)
}

func secretName(x *cmd) (string, error) {
	name := x.c.Args().First()
	return name, checkName("secret", name)
}

// readSecretValue reads put's value from FILE or stdin (the second
// argument, "-" or none), refusing more than api.MaxSecretValue bytes.
func readSecretValue(x *cmd) ([]byte, error) {
	src, name := x.stdin, "stdin"
	if arg := x.c.Args().Get(1); arg != "" && arg != "-" {
		f, err := os.Open(arg)
		if err != nil {
			return nil, fmt.Errorf("read the secret value: %w", err)
		}
		defer f.Close()
		src, name = f, arg
	} else if _, tty := terminalFD(src); tty {
		fmt.Fprintln(x.stderr, "Reading the secret value from the terminal; end it with Ctrl-D (a final newline is kept).")
	}
	data, err := readAllSecret(io.LimitReader(src, api.MaxSecretValue+1), api.MaxSecretValue+1, api.MaxSecretValue+2)
	if err != nil {
		return nil, fmt.Errorf("read the secret value from %s: %w", name, err)
	}
	if len(data) > api.MaxSecretValue {
		clear(data)
		return nil, fmt.Errorf("the value in %s is larger than 64 KiB, the most a secret holds: "+
			"encrypt the data with 'coffer encrypt' and store only what it needs", name)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("the value in %s is empty: a secret holds at least one byte", name)
	}
	return data, nil
}

func (e *env) secretPutCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "put",
		Usage:     "store a new version of a secret from FILE or stdin",
		UsageText: "coffer secret put NAME [FILE|-] [--cas N]",
		Description: "Stores the bytes of FILE (or stdin, without FILE or with -) exactly, as the\n" +
			"secret's next version; the first put creates the secret. At most 64 KiB. The\n" +
			"value is never taken from a flag or argument (it would show in ps and shell\n" +
			"history). --cas N writes only if N is the latest version (0: only if the\n" +
			"secret does not exist yet), else fails with version_conflict.",
		Flags: []ucli.Flag{
			&ucli.IntFlag{Name: "cas", Usage: "write only if the latest version is `N` (0: the secret must not exist)"},
		},
	}, `coffer secret put db-password ./db-password.txt
printf '%s' "$PASSWORD" | coffer secret put db-password --cas 3`, 1, 2, func(x *cmd) error {
		name, err := secretName(x)
		if err != nil {
			return err
		}
		var cas *int
		if x.c.IsSet("cas") {
			n := x.c.Int("cas")
			if n < 0 {
				return usagef("invalid --cas %d: give the latest version, or 0 for a new secret", n)
			}
			cas = &n
		}
		value, err := readSecretValue(x)
		if err != nil {
			return err
		}
		defer clear(value)
		body, err := json.Marshal(api.PutSecretRequest{Value: value, Cas: cas})
		if err != nil {
			return err
		}
		defer clear(body)
		var out api.SecretWriteResponse
		return x.request(http.MethodPut, api.SecretPath(name), body, &out, func() error {
			_, err := fmt.Fprintf(x.stdout, "Stored secret %s version %d.\n", out.Name, out.Version)
			return err
		})
	})
}

func (e *env) secretGetCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "get",
		Usage:     "write a secret's raw value to stdout (or --out FILE)",
		UsageText: "coffer secret get NAME [--version N] [--out FILE]",
		Description: "Writes the value of the latest version (or --version N) exactly as stored, with\n" +
			"no newline added. --out FILE writes it to FILE instead, created with mode 0600\n" +
			"(an existing FILE is truncated and set to 0600).",
		Flags: []ucli.Flag{
			&ucli.IntFlag{Name: "version", Usage: "read version `N` (default: the latest)"},
			&ucli.StringFlag{Name: "out", Usage: "write the value to `FILE` (mode 0600) instead of stdout"},
		},
	}, `coffer secret get db-password > /run/billing/db-password
coffer secret get db-password --version 2 --out ./old-password`, 1, 1, func(x *cmd) error {
		name, err := secretName(x)
		if err != nil {
			return err
		}
		path := api.SecretPath(name)
		if x.c.IsSet("version") {
			v := x.c.Int("version")
			if v < 1 {
				return usagef("invalid --version %d: versions start at 1", v)
			}
			path += "?version=" + strconv.Itoa(v)
		}
		var out api.SecretValue
		defer func() { clear(out.Value) }()
		file := x.c.String("out")
		if file == "" {
			return x.request(http.MethodGet, path, nil, &out, func() error {
				_, err := x.stdout.Write(out.Value)
				return err
			})
		}
		// With --out the value goes only to the file, whatever the output
		// format: --format json (or COFFER_FORMAT=json) must not print the
		// API answer, which holds the value, instead.
		if _, err := x.client.Do(x.ctx, http.MethodGet, path, nil, &out); err != nil {
			return err
		}
		if err := writeSecretFile(file, out.Value); err != nil {
			return err
		}
		if x.json {
			return x.printValue(map[string]any{"name": out.Name, "version": out.Version, "out": file})
		}
		return nil
	})
}

// writeSecretFile writes value to path with mode 0600, never following a
// symlink at path.
func writeSecretFile(path string, value []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write the secret: %w", err)
	}
	// An existing file keeps its mode on open: narrow it before writing.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write the secret: %w", err)
	}
	if _, err := f.Write(value); err != nil {
		f.Close()
		return fmt.Errorf("write the secret to %s: %w", path, err)
	}
	return f.Close()
}

func (e *env) secretListCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "list",
		Usage:       "list the secrets you may read",
		UsageText:   "coffer secret list",
		Description: "Lists the names of the secrets the caller may read (all of them for an admin).",
	}, `coffer secret list`, 0, 0, func(x *cmd) error {
		var out api.SecretList
		return x.request(http.MethodGet, api.PathSecrets, nil, &out, func() error {
			return printNames(x.stdout, "NAME", "No secrets.", out.Secrets)
		})
	})
}

// showSecret runs a request that answers with metadata and prints it.
func (x *cmd) showSecret(method, path string, body any) error {
	var m api.SecretMetadata
	return x.request(method, path, body, &m, func() error { return printSecretMetadata(x.stdout, &m) })
}

func printSecretMetadata(w io.Writer, m *api.SecretMetadata) error {
	t := newTable(w)
	t.row("Name", m.Name)
	t.row("Latest version", strconv.Itoa(m.LatestVersion))
	t.row("Max versions", strconv.Itoa(m.MaxVersions))
	t.row("Created", formatTime(m.CreatedAt))
	t.row("Updated", formatTime(m.UpdatedAt))
	if m.DeletionDate != nil {
		t.row("Deletion date", formatTime(*m.DeletionDate)+" (pending; cancel with: coffer secret restore "+m.Name+")")
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(m.Versions) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable(w)
	t.row("VERSION", "CREATED", "DESTROYED")
	for _, v := range m.Versions {
		d := "no"
		if v.Destroyed {
			d = "yes"
		}
		t.row(strconv.Itoa(v.Version), formatTime(v.CreatedAt), d)
	}
	return t.flush()
}

func (e *env) secretShowCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "show",
		Usage:       "describe a secret: versions, max versions, deletion",
		UsageText:   "coffer secret show NAME",
		Description: "Shows a secret's metadata and versions. It never shows a value.",
	}, `coffer secret show db-password`, 1, 1, func(x *cmd) error {
		name, err := secretName(x)
		if err != nil {
			return err
		}
		return x.showSecret(http.MethodGet, api.SecretPath(name, "metadata"), nil)
	})
}

func (e *env) secretUpdateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "update",
		Usage:     "change how many versions a secret keeps",
		UsageText: "coffer secret update NAME --max-versions N",
		Description: "Sets the number of versions kept (1-100, default 10); the oldest versions\n" +
			"beyond it are destroyed at once.",
		Flags: []ucli.Flag{
			&ucli.IntFlag{Name: "max-versions", Usage: "keep the latest `N` versions (1-100)"},
		},
	}, `coffer secret update db-password --max-versions 3`, 1, 1, func(x *cmd) error {
		name, err := secretName(x)
		if err != nil {
			return err
		}
		if !x.c.IsSet("max-versions") {
			return usagef("nothing to update: give --max-versions N")
		}
		n := x.c.Int("max-versions")
		if n < 1 || n > api.MaxSecretMaxVersionsLimit {
			return usagef("invalid --max-versions %d: give 1 to %d", n, api.MaxSecretMaxVersionsLimit)
		}
		return x.showSecret(http.MethodPatch, api.SecretPath(name, "metadata"), api.UpdateSecretMetadataRequest{MaxVersions: &n})
	})
}

func (e *env) secretDestroyCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "destroy",
		Usage:     "erase the values of chosen versions for good",
		UsageText: "coffer secret destroy NAME --version N [--version N]…",
		Description: "Erases the values of the given versions; their metadata stays, marked\n" +
			"destroyed, and reading them fails with version_destroyed. This cannot be undone.",
		Flags: []ucli.Flag{
			&ucli.IntSliceFlag{Name: "version", Usage: "a version `N` to destroy (repeat for several)"},
		},
	}, `coffer secret destroy db-password --version 1 --version 2`, 1, 1, func(x *cmd) error {
		name, err := secretName(x)
		if err != nil {
			return err
		}
		vs := x.c.IntSlice("version")
		if len(vs) == 0 {
			return usagef("no versions given: add --version N (repeat for several)")
		}
		for _, v := range vs {
			if v < 1 {
				return usagef("invalid --version %d: versions start at 1", v)
			}
		}
		return x.showSecret(http.MethodPost, api.SecretPath(name, "destroy"), api.DestroySecretRequest{Versions: vs})
	})
}

func (e *env) secretDeleteCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "delete",
		Usage:     "schedule a secret's deletion",
		UsageText: "coffer secret delete NAME [--pending-window DUR]",
		Description: "Schedules the secret's erasure after --pending-window (default 168h, at least\n" +
			"24h). Until then its value cannot be read or written (pending_deletion) and\n" +
			"'coffer secret restore NAME' cancels the deletion.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "pending-window", Usage: "erase the secret after `DURATION` (default 168h, minimum 24h)"},
		},
	}, `coffer secret delete db-password
coffer secret delete db-password --pending-window 720h`, 1, 1, func(x *cmd) error {
		name, err := secretName(x)
		if err != nil {
			return err
		}
		path := api.SecretPath(name)
		if x.c.IsSet("pending-window") {
			window := x.c.String("pending-window")
			if err := checkDuration("pending-window", window, minPendingWindow); err != nil {
				return err
			}
			path += "?pending_window=" + url.QueryEscape(window)
		}
		return x.showSecret(http.MethodDelete, path, nil)
	})
}

func (e *env) secretRestoreCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "restore",
		Usage:       "cancel a secret's pending deletion",
		UsageText:   "coffer secret restore NAME",
		Description: "Cancels a deletion scheduled by 'coffer secret delete'.",
	}, `coffer secret restore db-password`, 1, 1, func(x *cmd) error {
		name, err := secretName(x)
		if err != nil {
			return err
		}
		return x.showSecret(http.MethodPost, api.SecretPath(name, "restore"), nil)
	})
}
