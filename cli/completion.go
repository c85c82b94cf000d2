package cli

import (
	"fmt"
	"io"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// The bash and zsh scripts are urfave/cli's autocomplete templates
// (autocomplete/bash_autocomplete, zsh_autocomplete) with the program name
// fixed to coffer: they call `coffer ... --generate-bash-completion`, which
// urfave answers with the commands and flags that fit.
const bashCompletion = `# bash completion for coffer. Load it with:
#   source <(coffer completion bash)
# or install it:  coffer completion bash > /etc/bash_completion.d/coffer

_coffer_bash_autocomplete() {
  if [[ "${COMP_WORDS[0]}" != "source" ]]; then
    local cur opts
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    if [[ "$cur" == "-"* ]]; then
      opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "${cur}" --generate-bash-completion 2>/dev/null)
    else
      opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
    fi
    COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
    return 0
  fi
}

complete -o bashdefault -o default -F _coffer_bash_autocomplete coffer
`

const zshCompletion = `#compdef coffer
# zsh completion for coffer. Load it with:
#   source <(coffer completion zsh)
# or install it as _coffer in a directory of $fpath.

_coffer_zsh_autocomplete() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi

  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}

compdef _coffer_zsh_autocomplete coffer
`

func (e *env) completionCommand() *ucli.Command {
	shell := func(name string, script func(c *ucli.Context) (string, error)) *ucli.Command {
		return e.newCmd(&ucli.Command{
			Name:        name,
			Usage:       "print the " + name + " completion script",
			UsageText:   "coffer completion " + name,
			Description: "Prints a " + name + " script that completes coffer's commands and flags.",
		}, completionExamples[name], 0, 0, func(x *cmd) error {
			s, err := script(x.c)
			if err != nil {
				return fmt.Errorf("generate the %s completion script: %w", name, err)
			}
			_, err = io.WriteString(x.stdout, s)
			return err
		})
	}
	fixed := func(s string) func(*ucli.Context) (string, error) {
		return func(*ucli.Context) (string, error) { return s, nil }
	}
	return group(&ucli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		UsageText: "coffer completion bash|zsh|fish",
		Description: "Prints a script that makes the shell complete coffer's commands and flags.\n" +
			"Load it in the shell's startup file.",
		Subcommands: []*ucli.Command{
			shell("bash", fixed(bashCompletion)),
			shell("zsh", fixed(zshCompletion)),
			shell("fish", func(c *ucli.Context) (string, error) {
				s, err := c.App.ToFishCompletion()
				// urfave copies flag usages verbatim, with the backquotes
				// that mark placeholders in help; the template has none.
				return strings.ReplaceAll(s, "`", ""), err
			}),
		},
	}, `source <(coffer completion bash)
coffer completion fish > ~/.config/fish/completions/coffer.fish`)
}

var completionExamples = map[string]string{
	"bash": "source <(coffer completion bash)   # in ~/.bashrc",
	"zsh":  "source <(coffer completion zsh)    # in ~/.zshrc",
	"fish": "coffer completion fish > ~/.config/fish/completions/coffer.fish",
}

// complete answers `coffer ... --generate-bash-completion` (what the
// scripts above call): the subcommands of the command reached, or, when
// the word being completed starts with "-", the flags that fit it,
// including the global ones. urfave's default does the same but reads
// os.Args instead of the arguments given to Main.
func (e *env) complete(c *ucli.Context) {
	var last string
	if n := len(e.args); n >= 3 {
		last = e.args[n-2]
	}
	cmd := c.Command
	if strings.HasPrefix(last, "-") {
		flags := append(append([]ucli.Flag(nil), cmd.Flags...), c.App.Flags...)
		seen := map[string]bool{}
		for _, f := range flags {
			for _, name := range f.Names() {
				cand := "--" + name
				if len(name) == 1 {
					cand = "-" + name
				}
				if strings.HasPrefix(cand, last) && !seen[cand] {
					seen[cand] = true
					fmt.Fprintln(e.stdout, cand)
				}
			}
		}
		return
	}
	for _, s := range cmd.Subcommands {
		if !s.Hidden {
			fmt.Fprintln(e.stdout, s.Name)
		}
	}
}
