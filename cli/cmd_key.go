package cli

import (
	"net/http"
	"time"

	"github.com/coffer-kms/coffer/api"
	ucli "github.com/urfave/cli/v2"
)

// minPendingWindow is the shortest deletion window cofferd accepts.
const minPendingWindow = 24 * time.Hour

func (e *env) keyCommand() *ucli.Command {
	return group(&ucli.Command{
		Name:      "key",
		Usage:     "create, list, show, rotate, update, delete and restore named keys",
		UsageText: "coffer key command [command options] [arguments...]",
		Description: "Named keys encrypt callers' secrets and data keys. Their key material never\n" +
			"leaves cofferd; these commands manage versions and configuration.",
		Subcommands: []*ucli.Command{
			e.keyCreateCommand(),
			e.keyListCommand(),
			e.keyShowCommand(),
			e.keyRotateCommand(),
			e.keyUpdateCommand(),
			e.keyDeleteCommand(),
			e.keyRestoreCommand(),
		},
	}, `coffer key create billing-db --rotation-period 720h
coffer key list`)
}

// keyName returns the NAME argument, checked.
func keyName(x *cmd) (string, error) {
	name := x.c.Args().First()
	return name, checkName("key", name)
}

// showKey runs a request that answers with a key and prints it.
func (x *cmd) showKey(method, path string, body any) error {
	var k api.Key
	return x.request(method, path, body, &k, func() error { return printKey(x.stdout, &k) })
}

// checkDuration validates a duration flag client-side (cofferd takes the
// string), so that a typo is a usage error rather than a round trip.
func checkDuration(flag, value string, minimum time.Duration) error {
	d, err := time.ParseDuration(value)
	if err != nil {
		return usagef("invalid --%s %q: give a Go duration such as 720h or 30m", flag, value)
	}
	if d < minimum {
		if minimum == 0 {
			return usagef("invalid --%s %q: must not be negative", flag, value)
		}
		return usagef("invalid --%s %q: the minimum is %s", flag, value, minimum)
	}
	return nil
}

func rotationPeriodFlag() ucli.Flag {
	return &ucli.StringFlag{Name: "rotation-period", Usage: "rotate the key automatically after `DURATION` (e.g. 720h; 0 = never)"}
}

func (e *env) keyCreateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "create",
		Usage:     "create a key",
		UsageText: "coffer key create NAME [--type aes256-gcm|xaes256-gcm|chacha20-poly1305] [--rotation-period DUR]",
		Description: "Creates a named key with its first version. NAME is 1-128 letters, digits,\n" +
			"'.', '_' or '-', starting with a letter or digit.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "type", Usage: "key type: aes256-gcm, xaes256-gcm (192-bit nonces: for keys that encrypt billions of times) or chacha20-poly1305", Value: api.KeyTypeAES256GCM},
			rotationPeriodFlag(),
		},
	}, `coffer key create billing-db
coffer key create billing-db --type chacha20-poly1305 --rotation-period 720h`, 1, 1, func(x *cmd) error {
		name, err := keyName(x)
		if err != nil {
			return err
		}
		req := api.CreateKeyRequest{Name: name, Type: x.c.String("type"), RotationPeriod: x.c.String("rotation-period")}
		if req.Type != api.KeyTypeAES256GCM && req.Type != api.KeyTypeXAES256GCM && req.Type != api.KeyTypeChaCha20Poly1305 {
			return usagef("invalid --type %q: use %s, %s or %s", req.Type, api.KeyTypeAES256GCM, api.KeyTypeXAES256GCM, api.KeyTypeChaCha20Poly1305)
		}
		if x.c.IsSet("rotation-period") {
			if err := checkDuration("rotation-period", req.RotationPeriod, 0); err != nil {
				return err
			}
		}
		return x.showKey(http.MethodPost, api.PathKeys, req)
	})
}

func (e *env) keyListCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "list",
		Usage:       "list the names of all keys",
		UsageText:   "coffer key list",
		Description: "Lists the names of all keys, sorted. 'coffer key show NAME' describes one.",
	}, `coffer key list
coffer key list --format json`, 0, 0, func(x *cmd) error {
		var out api.KeyList
		return x.request(http.MethodGet, api.PathKeys, nil, &out, func() error {
			return printNames(x.stdout, "NAME", "No keys.", out.Keys)
		})
	})
}

func (e *env) keyShowCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "show",
		Usage:       "describe a key: type, versions, rotation, deletion",
		UsageText:   "coffer key show NAME",
		Description: "Shows a key's metadata and versions. It never shows key material.",
	}, `coffer key show billing-db`, 1, 1, func(x *cmd) error {
		name, err := keyName(x)
		if err != nil {
			return err
		}
		return x.showKey(http.MethodGet, api.KeyPath(name), nil)
	})
}

func (e *env) keyRotateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "rotate",
		Usage:     "add a new key version",
		UsageText: "coffer key rotate NAME",
		Description: "Adds a key version: new wraps use it, ciphertexts of older versions stay\n" +
			"readable until the min decryption version is raised ('coffer rewrap' moves them).",
	}, `coffer key rotate billing-db`, 1, 1, func(x *cmd) error {
		name, err := keyName(x)
		if err != nil {
			return err
		}
		return x.showKey(http.MethodPost, api.KeyPath(name, "rotate"), nil)
	})
}

func (e *env) keyUpdateCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "update",
		Usage:     "change a key's min decryption version or rotation period",
		UsageText: "coffer key update NAME [--min-decryption-version N] [--rotation-period DUR]",
		Description: "Changes a key's configuration; options not given are left as they are.\n" +
			"Raising --min-decryption-version makes ciphertexts of older versions\n" +
			"unreadable (version_disabled): rewrap them first.",
		Flags: []ucli.Flag{
			&ucli.IntFlag{Name: "min-decryption-version", Usage: "oldest key version that may still decrypt (`N`)"},
			rotationPeriodFlag(),
		},
	}, `coffer key update billing-db --min-decryption-version 3
coffer key update billing-db --rotation-period 0`, 1, 1, func(x *cmd) error {
		name, err := keyName(x)
		if err != nil {
			return err
		}
		var req api.UpdateKeyRequest
		if x.c.IsSet("min-decryption-version") {
			v := x.c.Int("min-decryption-version")
			if v < 1 {
				return usagef("invalid --min-decryption-version %d: key versions start at 1", v)
			}
			req.MinDecryptionVersion = &v
		}
		if x.c.IsSet("rotation-period") {
			p := x.c.String("rotation-period")
			if err := checkDuration("rotation-period", p, 0); err != nil {
				return err
			}
			req.RotationPeriod = &p
		}
		if req.MinDecryptionVersion == nil && req.RotationPeriod == nil {
			return usagef("nothing to update: give --min-decryption-version or --rotation-period")
		}
		return x.showKey(http.MethodPatch, api.KeyPath(name), req)
	})
}

func (e *env) keyDeleteCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "delete",
		Usage:     "schedule a key's deletion",
		UsageText: "coffer key delete NAME [--pending-window DUR]",
		Description: "Schedules the key's deletion after --pending-window (default 168h, at least\n" +
			"24h). Until then the key refuses crypto (key_pending_deletion) and\n" +
			"'coffer key restore NAME' cancels the deletion.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "pending-window", Usage: "delete the key after `DURATION` (default 168h, minimum 24h)"},
		},
	}, `coffer key delete billing-db
coffer key delete billing-db --pending-window 720h`, 1, 1, func(x *cmd) error {
		name, err := keyName(x)
		if err != nil {
			return err
		}
		window := ""
		if x.c.IsSet("pending-window") {
			window = x.c.String("pending-window")
			if err := checkDuration("pending-window", window, minPendingWindow); err != nil {
				return err
			}
		}
		return x.showKey(http.MethodDelete, deleteKeyPath(name, window), nil)
	})
}

func (e *env) keyRestoreCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:        "restore",
		Usage:       "cancel a key's pending deletion",
		UsageText:   "coffer key restore NAME",
		Description: "Cancels a deletion scheduled by 'coffer key delete'; the key serves again.",
	}, `coffer key restore billing-db`, 1, 1, func(x *cmd) error {
		name, err := keyName(x)
		if err != nil {
			return err
		}
		return x.showKey(http.MethodPost, api.KeyPath(name, "restore"), nil)
	})
}
