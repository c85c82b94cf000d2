package cli

import (
	"io"

	ucli "github.com/urfave/cli/v2"
)

// CommandPaths lists every coffer command that runs something (not the
// groups), as its full path: "status", "operator unseal", "operator raft
// join". For the reference docs' test: every command must be documented.
func CommandPaths() []string {
	e := &env{stdin: nil, stdout: io.Discard, stderr: io.Discard}
	var out []string
	var walk func(prefix string, cmds []*ucli.Command)
	walk = func(prefix string, cmds []*ucli.Command) {
		for _, c := range cmds {
			if c.Name == "help" {
				continue
			}
			if len(c.Subcommands) > 0 {
				walk(prefix+c.Name+" ", c.Subcommands)
				continue
			}
			out = append(out, prefix+c.Name)
		}
	}
	walk("", e.newApp().Commands)
	return out
}
