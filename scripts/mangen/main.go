// Command mangen renders Coffer's manual pages at build time (make man):
// coffer(1) and a page per command from the CLI's command tree, cofferd(8)
// and cofferd.hcl(5) from docs/man/*.md. It writes DIR/manN/NAME.N.
//
//	go run ./scripts/mangen -out bin/man -src docs/man -version 1.2.3
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/coffer-kms/coffer/cli"
	"github.com/cpuguy83/go-md2man/v2/md2man"
)

func main() {
	out := flag.String("out", "bin/man", "output `DIR`")
	src := flag.String("src", "docs/man", "`DIR` of the hand-written pages (NAME.SECTION.md)")
	version := flag.String("version", "", "version printed in the pages' footer")
	flag.Parse()
	if err := run(*out, *src, *version); err != nil {
		fmt.Fprintln(os.Stderr, "mangen:", err)
		os.Exit(1)
	}
}

func run(out, src, version string) error {
	pages := cli.ManPages()
	files, err := filepath.Glob(filepath.Join(src, "*.md"))
	if err != nil {
		return err
	}
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".md") // cofferd.hcl.5
		i := strings.LastIndexByte(base, '.')
		sec, err := strconv.Atoi(base[i+1:])
		if i < 0 || err != nil {
			return fmt.Errorf("%s: name it NAME.SECTION.md", f)
		}
		md, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		pages = append(pages, cli.ManPage{Name: base[:i], Section: sec, Markdown: string(md)})
	}
	for _, p := range pages {
		md := p.Markdown
		// The title block: % NAME SECTION DATE SOURCE MANUAL. No date, so
		// that builds are reproducible.
		if first, rest, ok := strings.Cut(md, "\n"); ok && strings.HasPrefix(first, "% ") {
			md = fmt.Sprintf("%% %s %d \"\" \"Coffer %s\" \"Coffer Manual\"\n%s", p.Name, p.Section, version, rest)
		}
		dir := filepath.Join(out, "man"+strconv.Itoa(p.Section))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		roff := md2man.Render([]byte(md))
		if err := os.WriteFile(filepath.Join(dir, p.Name+"."+strconv.Itoa(p.Section)), roff, 0o644); err != nil {
			return err
		}
	}
	return nil
}
