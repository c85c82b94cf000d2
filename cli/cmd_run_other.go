//go:build !linux

package cli

import (
	"errors"

	ucli "github.com/urfave/cli/v2"
)

func (e *env) runCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "run",
		Usage:     "run a command with secrets as files (Linux only)",
		UsageText: "coffer run [--secret NAME[:FILE]]… [--env VAR=NAME]… -- COMMAND [ARG…]",
	}, "coffer run --secret db-password -- ./server", 1, -1, func(x *cmd) error {
		return errors.New("coffer run needs Linux (a private tmpfs directory)")
	})
}
