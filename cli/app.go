package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// Version and Commit identify the build; the Makefile sets them (and the
// daemon's, internal/version) with
//
//	-ldflags "-X github.com/coffer-kms/coffer/cli.Version=1.2.3 -X github.com/coffer-kms/coffer/cli.Commit=abc123"
var (
	Version = "dev"
	Commit  = ""
)

// Environment variables that stand in for the global flags.
const (
	EnvSocket = "COFFER_SOCKET"
	EnvFormat = "COFFER_FORMAT"
)

// Exit statuses (docs/cli.md).
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// Main runs the coffer command line args (args[0] is the program name) and
// returns the process exit status: 0 on success, 1 on an error (reported on
// stderr as the daemon's "code: message"), 2 on a usage error. `coffer
// status` returns 2 for a sealed or uninitialised node. Prompts and errors go
// to stderr; results go to stdout. ctx cancels in-flight requests (wire it to
// SIGINT/SIGTERM).
//
// Main builds a fresh command tree on every call, so it can be called many
// times in one process (tests do).
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		args = []string{"coffer"}
	}
	e := &env{args: args, stdin: stdin, stdout: stdout, stderr: stderr, jsonErrors: wantsJSON(args)}
	app := e.newApp()
	return e.exitStatus(app.RunContext(ctx, normalizeArgs(app, args)))
}

// env holds the arguments and streams of one Main call.
type env struct {
	args           []string
	stdin          io.Reader
	stdout, stderr io.Writer
	// jsonErrors: --format json is in effect, so errors go to stderr as
	// the API's error body (cli/errors_json.go).
	jsonErrors bool
}

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitCode ends a command with a status and no message of its own, for
// outcomes that are answers rather than failures (a sealed node's status).
type exitCode int

func (e exitCode) Error() string { return "exit status " + strconv.Itoa(int(e)) }

func (e *env) exitStatus(err error) int {
	var code exitCode
	var ue *usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &code):
		return int(code)
	case e.jsonErrors:
		return e.printJSONError(err)
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "coffer: %s\n", ue.msg)
		return ExitUsage
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(e.stderr, "coffer: interrupted")
		return ExitError
	default:
		fmt.Fprintf(e.stderr, "coffer: %v\n", err)
		return ExitError
	}
}

const globalOptionsHelp = `
GLOBAL OPTIONS (before or after the command):
   --socket PATH          cofferd's unix socket (default: /run/coffer/coffer.sock) [$COFFER_SOCKET]
   --format table|json    output format (default: table) [$COFFER_FORMAT]
`

const exitCodesHelp = `
EXIT CODES:
   0  success
   1  error: cofferd's "code: message" or a local problem, on stderr
   2  usage error (unknown command or flag, missing argument, bad flag value);
      for "coffer status": the node is sealed or not initialised
`

func (e *env) newApp() *ucli.App {
	app := &ucli.App{
		Name:      "coffer",
		HelpName:  "coffer",
		Usage:     "administer and use cofferd, the Coffer key-management daemon",
		UsageText: "coffer [--socket PATH] [--format table|json] command [command options] [arguments...]",
		Description: "coffer talks to the local cofferd over its unix socket: initialise and unseal it,\n" +
			"manage keys and policies, and wrap/unwrap small secrets (envelope encryption).\n" +
			"Shares are never taken from flags: type them at the hidden prompt or pipe them on stdin.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "socket", Usage: "`PATH` of cofferd's unix socket", EnvVars: []string{EnvSocket}, Value: DefaultSocket},
			&ucli.StringFlag{Name: "format", Usage: "output `FORMAT`: table or json", EnvVars: []string{EnvFormat}, Value: "table"},
			helpFlag(),
		},
		Commands: []*ucli.Command{
			e.statusCommand(),
			e.operatorCommand(),
			e.keyCommand(),
			e.wrapCommand(),
			e.unwrapCommand(),
			e.rewrapCommand(),
			e.datakeyCommand(),
			e.encryptCommand(),
			e.decryptCommand(),
			e.policyCommand(),
			e.secretCommand(),
			e.runCommand(),
			e.tlsCommand(),
			e.auditCommand(),
			e.benchCommand(),
			e.versionCommand(),
			e.completionCommand(),
		},
		Action:                    groupAction,
		OnUsageError:              onUsageError,
		EnableBashCompletion:      true,
		DisableSliceFlagSeparator: true, // recipients are given one per flag
		// The built-in help flag, help command and version flag are package
		// globals that urfave mutates while running; per-call copies keep
		// concurrent Main calls race-free.
		HideHelp:        true,
		HideHelpCommand: true,
		HideVersion:     true,
		Reader:          e.stdin,
		Writer:          e.stdout,
		ErrWriter:       e.stderr,
		// Never let urfave call os.Exit: Main returns the status.
		ExitErrHandler: func(*ucli.Context, error) {},
		CustomAppHelpTemplate: ucli.AppHelpTemplate + `
EXAMPLES:
   coffer status
   coffer --format json key list
   coffer wrap --key billing-db secret.txt > secret.txt.coffer
` + exitCodesHelp,
	}
	app.BashComplete = e.complete
	for _, c := range app.Commands {
		e.finishCommand(c)
	}
	return app
}

// helpFlag is a fresh copy of urfave's --help flag (see HideHelp above).
func helpFlag() ucli.Flag {
	return &ucli.BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: "show help"}
}

// finishCommand fills in what every command shares: the help flag,
// usage-error handling, and the action of a command group.
func (e *env) finishCommand(c *ucli.Command) {
	c.BashComplete = e.complete
	c.HideHelp = true
	c.HideHelpCommand = true
	c.Flags = append(c.Flags, helpFlag())
	c.OnUsageError = onUsageError
	if len(c.Subcommands) > 0 {
		// A group whose command runs itself too (`coffer operator enrol
		// [TOKEN|-]` beside `enrol token …`) keeps its action.
		if c.Action == nil {
			c.Action = groupAction
		}
		for _, s := range c.Subcommands {
			e.finishCommand(s)
		}
	}
}

// helpTemplate is urfave's help template plus the command's EXAMPLES and
// the global options, which urfave would only list in "coffer --help".
func helpTemplate(base, examples string) string {
	ex := "\nEXAMPLES:\n   " + strings.ReplaceAll(strings.TrimSpace(examples), "\n", "\n   ") + "\n"
	return base + ex + globalOptionsHelp
}

func onUsageError(c *ucli.Context, err error, _ bool) error {
	return usagef("%v; run '%s --help' for usage", err, helpNameOf(c))
}

func helpNameOf(c *ucli.Context) string {
	if c != nil && c.Command != nil && c.Command.HelpName != "" {
		return c.Command.HelpName
	}
	return "coffer"
}

// groupAction runs when a command that only groups subcommands (or coffer
// itself) is given no valid subcommand.
func groupAction(c *ucli.Context) error {
	var names []string
	for _, s := range c.Command.Subcommands {
		if !s.Hidden {
			names = append(names, s.Name)
		}
	}
	if c.Args().Present() {
		return usagef("unknown command %q for %q (one of: %s); run '%s --help' for usage",
			c.Args().First(), helpNameOf(c), strings.Join(names, ", "), helpNameOf(c))
	}
	return usagef("missing command (one of: %s); run '%s --help' for usage", strings.Join(names, ", "), helpNameOf(c))
}

// normalizeArgs reorders the command line so urfave/cli v2 parses what
// users type. Like package flag, urfave stops at the first positional
// argument and takes app-level flags only before the command; docs/cli.md
// allows --socket and --format anywhere and flags after arguments are
// common ("coffer key show NAME --format json"). So global flags move to the
// front, the command path follows, then the command's own flags, then its
// positional arguments. "--" ends flag parsing as usual. Unknown flags stay
// in place for urfave to report. Completion requests are left alone.
func normalizeArgs(app *ucli.App, args []string) []string {
	if len(args) < 2 || args[len(args)-1] == "--generate-bash-completion" {
		return args
	}
	var global, path, flags, pos []string
	cmdFlags, subs := app.Flags, app.Commands
	dashdash := false
	rest := args[1:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			pos = append(pos, rest[i+1:]...)
			dashdash = true
			break
		}
		if len(a) > 1 && a[0] == '-' {
			name, inline := flagName(a)
			dst, set := &flags, cmdFlags
			if found, _ := lookupFlag(app.Flags, name); found && name != "help" && name != "h" {
				dst, set = &global, app.Flags
			}
			*dst = append(*dst, a)
			if found, takesValue := lookupFlag(set, name); found && takesValue && !inline && i+1 < len(rest) {
				*dst = append(*dst, rest[i+1])
				i++
			}
			continue
		}
		if len(pos) == 0 {
			if cmd := findCommand(subs, a); cmd != nil {
				path = append(path, a)
				cmdFlags, subs = cmd.Flags, cmd.Subcommands
				continue
			}
		}
		pos = append(pos, a)
	}
	out := make([]string, 0, len(args)+1)
	out = append(out, args[0])
	out = append(out, global...)
	out = append(out, path...)
	out = append(out, flags...)
	if dashdash {
		out = append(out, "--")
	}
	return append(out, pos...)
}

// flagName returns the name of a flag argument ("--key=x" → "key") and
// whether the value is inline.
func flagName(arg string) (string, bool) {
	name := strings.TrimLeft(arg, "-")
	if i := strings.IndexByte(name, '='); i >= 0 {
		return name[:i], true
	}
	return name, false
}

func lookupFlag(flags []ucli.Flag, name string) (found, takesValue bool) {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				tv, ok := f.(ucli.DocGenerationFlag)
				return true, ok && tv.TakesValue()
			}
		}
	}
	return false, false
}

func findCommand(cmds []*ucli.Command, name string) *ucli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// cmd is what a command's action works with: the parsed command line, the
// output format and a client for the socket.
type cmd struct {
	*env
	c      *ucli.Context
	ctx    context.Context
	json   bool
	client *Client
}

// newCmd builds a leaf command. examples become the EXAMPLES section of its
// help; minArgs/maxArgs bound its positional arguments (maxArgs < 0: no
// bound).
func (e *env) newCmd(c *ucli.Command, examples string, minArgs, maxArgs int, run func(x *cmd) error) *ucli.Command {
	c.CustomHelpTemplate = helpTemplate(ucli.CommandHelpTemplate, examples)
	c.Action = func(cc *ucli.Context) error {
		x, err := e.prepare(cc, minArgs, maxArgs)
		if err != nil {
			return err
		}
		defer x.client.Close()
		return run(x)
	}
	return c
}

// group builds a command that only holds subcommands.
func group(c *ucli.Command, examples string) *ucli.Command {
	c.CustomHelpTemplate = helpTemplate(ucli.SubcommandHelpTemplate, examples)
	return c
}

func (e *env) prepare(cc *ucli.Context, minArgs, maxArgs int) (*cmd, error) {
	n := cc.NArg()
	switch {
	case n < minArgs:
		return nil, usagef("missing argument: %s; run '%s --help' for usage", cc.Command.UsageText, helpNameOf(cc))
	case maxArgs >= 0 && n > maxArgs:
		return nil, usagef("unexpected argument %q; usage: %s", cc.Args().Get(maxArgs), cc.Command.UsageText)
	}
	x := &cmd{env: e, c: cc, ctx: cc.Context}
	switch f := cc.String("format"); f {
	case "json":
		x.json = true
	case "table", "":
	default:
		return nil, usagef("invalid --format %q: use table or json", f)
	}
	socket := cc.String("socket")
	if socket == "" {
		socket = DefaultSocket
	}
	x.client = NewClient(socket)
	return x, nil
}

// request sends one API request and decodes the answer into out (if not
// nil). With --format json it then prints the answer body as it is (an
// empty answer as {}); otherwise it calls render.
func (x *cmd) request(method, path string, body, out any, render func() error) error {
	var raw []byte
	resp, err := x.client.Do(x.ctx, method, path, body, &raw)
	if err != nil {
		return err
	}
	defer clear(raw)
	if out != nil && (len(raw) > 0 || !x.json) {
		if err := decodeAnswer(resp, method, path, raw, out); err != nil {
			return err
		}
	}
	if x.json {
		return x.printJSON(raw)
	}
	return render()
}

// printJSON prints one JSON document, indented, on stdout.
func (x *cmd) printJSON(raw []byte) error {
	if len(strings.TrimSpace(string(raw))) == 0 {
		_, err := io.WriteString(x.stdout, "{}\n")
		return err
	}
	// The answer may hold a plaintext: size the buffer so it rarely grows
	// (growing leaves an unzeroed copy behind) and zero it afterwards.
	buf := bytes.NewBuffer(make([]byte, 0, len(raw)+len(raw)/2+64))
	defer func() { b := buf.Bytes(); clear(b[:cap(b)]) }()
	if err := json.Indent(buf, raw, "", "  "); err != nil {
		return fmt.Errorf("cofferd's answer is not valid JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := x.stdout.Write(buf.Bytes())
	return err
}

// printValue prints v as one JSON document (for output that is not an API
// answer, e.g. bench results and the version).
func (x *cmd) printValue(v any) error {
	enc := json.NewEncoder(x.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (e *env) versionCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "version",
		Usage:     "print the client's version",
		UsageText: "coffer version",
		Description: "Prints coffer's version, commit and Go version. It does not contact cofferd:\n" +
			"\"coffer status\" shows the daemon's version.",
	}, "coffer version", 0, 0, func(x *cmd) error {
		if x.json {
			return x.printValue(map[string]string{"version": Version, "commit": Commit, "go": runtime.Version()})
		}
		commit := Commit
		if commit == "" {
			commit = "unknown"
		}
		_, err := fmt.Fprintf(x.stdout, "coffer %s (commit %s, %s %s/%s)\n", Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return err
	})
}
