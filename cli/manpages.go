package cli

import (
	"fmt"
	"io"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// ManPage is one manual page, in the markdown dialect of go-md2man (which
// renders it to roff at build time: scripts/mangen).
type ManPage struct {
	Name     string // "coffer", "coffer-key"
	Section  int
	Markdown string
}

// ManPages returns coffer(1) and one page per command of `coffer --help`
// (coffer-key(1) documents every key subcommand), made from the same command
// tree as --help, so that they cannot drift apart.
func ManPages() []ManPage {
	e := &env{args: []string{"coffer"}, stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}
	app := e.newApp()
	var pages []ManPage
	var b strings.Builder
	fmt.Fprintf(&b, "%% coffer 1\n\n# NAME\n\ncoffer - %s\n\n# SYNOPSIS\n\n", mdEscape(app.Usage))
	fmt.Fprintf(&b, "**coffer** [**--socket** *PATH*] [**--format** *table|json*] *command* [*options*] [*arguments*]\n\n")
	fmt.Fprintf(&b, "# DESCRIPTION\n\n%s\n\n", mdParagraphs(app.Description))
	b.WriteString("# GLOBAL OPTIONS\n\nThey may be given before or after the command.\n\n")
	writeFlags(&b, app.Flags)
	b.WriteString("# COMMANDS\n\n")
	var see []string
	for _, c := range app.Commands {
		if c.Hidden {
			continue
		}
		name := "coffer-" + c.Name
		fmt.Fprintf(&b, "**%s**\n:   %s; see **%s**(1).\n\n", c.Name, mdEscape(c.Usage), name)
		see = append(see, "**"+name+"**(1)")
		pages = append(pages, ManPage{Name: name, Section: 1, Markdown: commandPage(name, c)})
	}
	b.WriteString(`# ENVIRONMENT

**COFFER_SOCKET**
:   cofferd's socket, as **--socket**.

**COFFER_FORMAT**
:   output format, as **--format**.

# EXIT STATUS

0 on success; 1 on an error (cofferd's "code: message", or a local problem, on stderr; with **--format json**, one JSON line {"error": {"code", "message", "request_id"}}); 2 on a usage error, and for **coffer status** when the node is sealed or not initialised.

# FILES

*/run/coffer/coffer.sock*
:   cofferd's API socket (default).

# SEE ALSO

`)
	b.WriteString(strings.Join(append(see, "**cofferd**(8)", "**cofferd.hcl**(5)"), ", "))
	b.WriteString("\n")
	return append([]ManPage{{Name: "coffer", Section: 1, Markdown: b.String()}}, pages...)
}

// commandPage documents a top-level command and, for a group, every
// subcommand below it.
func commandPage(name string, c *ucli.Command) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%% %s 1\n\n# NAME\n\n%s - %s\n\n", name, name, mdEscape(c.Usage))
	leaves := collect(c, "coffer")
	b.WriteString("# SYNOPSIS\n\n")
	for _, l := range leaves {
		fmt.Fprintf(&b, "    %s\n", l.usage())
	}
	b.WriteString("\n")
	if len(leaves) == 1 && leaves[0].cmd == c {
		writeCommand(&b, leaves[0], false)
	} else {
		if c.Description != "" {
			fmt.Fprintf(&b, "# DESCRIPTION\n\n%s\n\n", mdParagraphs(c.Description))
		}
		b.WriteString("# COMMANDS\n\n")
		for _, l := range leaves {
			writeCommand(&b, l, true)
		}
	}
	b.WriteString("# GLOBAL OPTIONS\n\n**--socket** *PATH*, **--format** *table|json*, before or after the command: see **coffer**(1).\n\n")
	b.WriteString("# SEE ALSO\n\n**coffer**(1), **cofferd**(8)\n")
	return b.String()
}

type leaf struct {
	path string // "coffer key create"
	cmd  *ucli.Command
}

func (l leaf) usage() string {
	if l.cmd.UsageText != "" {
		return strings.ReplaceAll(l.cmd.UsageText, "\n", "\n    ")
	}
	return l.path
}

func collect(c *ucli.Command, parent string) []leaf {
	path := parent + " " + c.Name
	if len(c.Subcommands) == 0 {
		return []leaf{{path, c}}
	}
	var out []leaf
	for _, s := range c.Subcommands {
		if !s.Hidden {
			out = append(out, collect(s, path)...)
		}
	}
	return out
}

func writeCommand(b *strings.Builder, l leaf, sub bool) {
	h := "#"
	if sub {
		h = "##"
		fmt.Fprintf(b, "## %s\n\n%s.\n\n    %s\n\n", l.path, mdEscape(strings.TrimSuffix(l.cmd.Usage, ".")), l.usage())
	}
	if l.cmd.Description != "" {
		if !sub {
			fmt.Fprintf(b, "# DESCRIPTION\n\n")
		}
		fmt.Fprintf(b, "%s\n\n", mdParagraphs(l.cmd.Description))
	}
	var flags []ucli.Flag
	for _, f := range l.cmd.Flags {
		if f.Names()[0] != "help" {
			flags = append(flags, f)
		}
	}
	if len(flags) > 0 {
		fmt.Fprintf(b, "%s OPTIONS\n\n", h)
		writeFlags(b, flags)
	}
	if ex := examplesOf(l.cmd); ex != "" {
		fmt.Fprintf(b, "%s EXAMPLES\n\n", h)
		for _, line := range strings.Split(ex, "\n") {
			fmt.Fprintf(b, "    %s\n", line)
		}
		b.WriteString("\n")
	}
}

func writeFlags(b *strings.Builder, flags []ucli.Flag) {
	for _, f := range flags {
		if f.Names()[0] == "help" {
			continue
		}
		var names []string
		for _, n := range f.Names() {
			d := "--"
			if len(n) == 1 {
				d = "-"
			}
			names = append(names, "**"+d+n+"**")
		}
		usage, arg := "", ""
		if df, ok := f.(ucli.DocGenerationFlag); ok {
			usage = df.GetUsage()
			if df.TakesValue() {
				arg = "VALUE"
				if i := strings.IndexByte(usage, '`'); i >= 0 {
					if j := strings.IndexByte(usage[i+1:], '`'); j >= 0 {
						arg = usage[i+1 : i+1+j]
						usage = usage[:i] + arg + usage[i+2+j:]
					}
				}
				if v := strings.Trim(df.GetDefaultText(), `"`); v != "" {
					usage += " (default: " + v + ")"
				}
				if env := df.GetEnvVars(); len(env) > 0 {
					usage += " [$" + strings.Join(env, ", $") + "]"
				}
			}
		}
		if arg != "" {
			arg = " *" + arg + "*"
		}
		fmt.Fprintf(b, "%s%s\n:   %s\n\n", strings.Join(names, ", "), arg, mdEscape(usage))
	}
}

// examplesOf extracts a command's EXAMPLES from its help template.
func examplesOf(c *ucli.Command) string {
	t := c.CustomHelpTemplate
	i := strings.Index(t, "\nEXAMPLES:\n")
	if i < 0 {
		return ""
	}
	t = t[i+len("\nEXAMPLES:\n"):]
	t = strings.TrimSuffix(t, globalOptionsHelp)
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(t, "\n"), "\n") {
		lines = append(lines, strings.TrimPrefix(l, "   "))
	}
	return strings.Join(lines, "\n")
}

// mdParagraphs turns a help description (hard-wrapped lines, blank lines
// between paragraphs, indented examples) into markdown.
func mdParagraphs(s string) string {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if strings.HasPrefix(line, "   ") || strings.HasPrefix(line, "\t") {
			out = append(out, "    "+strings.TrimLeft(line, " \t"))
			continue
		}
		out = append(out, mdEscape(line))
	}
	return strings.Join(out, "\n")
}

// mdEscape escapes what markdown would take as markup in help text.
func mdEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, "*", `\*`, "_", `\_`, "`", "'", "[", `\[`, "]", `\]`, "<", `\<`, ">", `\>`, "#", `\#`)
	return r.Replace(s)
}
