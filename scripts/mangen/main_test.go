package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/cli"
)

// TestManPages renders every page, checks that man(1) formats each one
// without a warning, and that every command listed by `coffer --help` (and
// every subcommand of it) has its page.
func TestManPages(t *testing.T) {
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man is not installed: make deps installs man-db and groff-base")
	}
	out := t.TempDir()
	if err := run(out, "../../docs/man", "test"); err != nil {
		t.Fatal(err)
	}
	pages, _ := filepath.Glob(filepath.Join(out, "man*", "*"))
	rendered := map[string]string{}
	for _, p := range pages {
		cmd := exec.Command("man", "--warnings", "-l", p)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "MAN_KEEP_FORMATTING=0", "LANG=C.UTF-8")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("man -l %s: %v: %s", filepath.Base(p), err, stderr.String())
			continue
		}
		// Drop grotty's overstrike (bold, underline) when not on a tty.
		text := regexp.MustCompile(".\x08").ReplaceAllString(stdout.String(), "")
		if !strings.Contains(text, "NAME") || !strings.Contains(text, "SEE ALSO") {
			t.Errorf("%s renders without NAME or SEE ALSO:\n%s", filepath.Base(p), text)
		}
		rendered[filepath.Base(p)] = text
	}
	for _, want := range []string{"coffer.1", "cofferd.8", "cofferd.hcl.5"} {
		if rendered[want] == "" {
			t.Errorf("no page %s", want)
		}
	}

	// The commands of `coffer --help`.
	var help bytes.Buffer
	cli.Main(context.Background(), []string{"coffer", "--help"}, strings.NewReader(""), &help, io.Discard)
	sec := help.String()
	sec = sec[strings.Index(sec, "COMMANDS:"):strings.Index(sec, "GLOBAL OPTIONS:")]
	n := 0
	for _, line := range strings.Split(sec, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		n++
		name := strings.TrimSuffix(f[0], ",")
		page := rendered["coffer-"+name+".1"]
		if page == "" {
			t.Errorf("coffer %s has no man page", name)
			continue
		}
		if !strings.Contains(rendered["coffer.1"], "coffer-"+name+"(1)") {
			t.Errorf("coffer(1) does not point to coffer-%s(1)", name)
		}
		// Every subcommand is in its group's page.
		var sub bytes.Buffer
		cli.Main(context.Background(), []string{"coffer", name, "--help"}, strings.NewReader(""), &sub, io.Discard)
		if s := sub.String(); strings.Contains(s, "COMMANDS:") {
			s = s[strings.Index(s, "COMMANDS:"):]
			for _, l := range strings.Split(s, "\n")[1:] {
				ff := strings.Fields(l)
				if len(ff) == 0 || !strings.HasPrefix(l, "   ") || strings.HasPrefix(l, "    ") {
					if len(ff) == 0 || strings.HasSuffix(strings.TrimSpace(l), ":") {
						break
					}
					continue
				}
				sc := strings.TrimSuffix(ff[0], ",")
				if !strings.Contains(page, "coffer "+name+" "+sc) {
					t.Errorf("coffer-%s(1) does not document coffer %s %s", name, name, sc)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("found only %d commands in coffer --help:\n%s", n, sec)
	}
}
