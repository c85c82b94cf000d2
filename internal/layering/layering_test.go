// Package layering_test checks the import graph against the layering rules
// of docs/architecture.md ("Packages"): what each layer may import, with
// `go list`.
package layering_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const module = "github.com/coffer-kms/coffer"

// imports returns each package's direct (non-test) imports, or with deps
// its transitive dependencies, from `go list` run at the module root.
func imports(t *testing.T, deps bool, pkgs ...string) map[string][]string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	field := "{{join .Imports \" \"}}"
	if deps {
		field = "{{join .Deps \" \"}}"
	}
	args := append([]string{"list", "-f", "{{.ImportPath}}|" + field}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, list, _ := strings.Cut(line, "|")
		m[strings.TrimPrefix(pkg, module+"/")] = strings.Fields(list)
	}
	return m
}

// rule: packages matching from must not import anything matching one of
// banned (prefix match on the import path, module prefix stripped).
type rule struct {
	from   func(pkg string) bool
	banned []string
	why    string
}

func under(prefixes ...string) func(string) bool {
	return func(p string) bool {
		for _, pre := range prefixes {
			if p == pre || strings.HasPrefix(p, pre+"/") {
				return true
			}
		}
		return false
	}
}

func is(names ...string) func(string) bool {
	return func(p string) bool {
		for _, n := range names {
			if p == n {
				return true
			}
		}
		return false
	}
}

// matches reports whether imp is one of banned or below one; an entry
// ending in "$" bans only that package itself, not the ones below it.
func matches(imp string, banned []string) bool {
	imp = strings.TrimPrefix(imp, module+"/")
	for _, b := range banned {
		if exact, ok := strings.CutSuffix(b, "$"); ok {
			if imp == exact {
				return true
			}
			continue
		}
		if imp == b || strings.HasPrefix(imp, b+"/") {
			return true
		}
	}
	return false
}

var deviceLibraries = []string{"github.com/miekg/pkcs11", "github.com/google/go-tpm"}

// TestLayering_DirectImports checks each package's own imports.
func TestLayering_DirectImports(t *testing.T) {
	rules := []rule{
		{is("keystore"), []string{"net", "os", "syscall", "hsm", "cluster", "daemon", "cli", "github.com/hashicorp/raft", "golang.org/x/sys"},
			"keystore applies commands deterministically: no network, files, devices or raft"},
		{is("api"), []string{"github.com", "golang.org", "hsm", "keystore", "cluster", "daemon", "cli", "internal"},
			"api is the wire contract: standard library only"},
		{is("hsm"), []string{"github.com", "golang.org", "hsm/", "keystore", "cluster", "daemon", "cli", "internal"},
			"hsm is the device contract: standard library only"},
		{under("hsm/pkcs11", "hsm/tpm", "hsm/soft", "hsm/hsmtest"), []string{"keystore", "cluster", "daemon", "cli", "api"},
			"a device knows only the hsm contract"},
		{under("daemon"), deviceLibraries,
			"the daemon never imports a device's library: devices are reached through hsm (hsm.ErrPINRefused, hsm.Reopener)"},
		{is("daemon", "daemon/auth", "daemon/audit", "daemon/platform"), []string{"hsm/pkcs11", "hsm/tpm", "hsm/soft"},
			"only daemon/seal (the device factory) and daemon/config (device Validate) name device packages"},
		{under("cluster"), []string{"daemon", "cli", "hsm", "keystore"},
			"cluster is raft wiring over a StateMachine interface"},
		{under("cli", "cmd/coffer"), []string{"hsm", "daemon/seal", "daemon/config", "daemon/auth", "cluster$", "keystore$"},
			"the CLI talks to cofferd over the socket only (it may use cluster/tlsutil and keystore/shamir, which hold no state)"},
		{under("internal"), []string{"api", "hsm", "keystore", "cluster", "daemon", "cli"},
			"internal helpers depend on nothing of Coffer's"},
	}
	graph := imports(t, false, "./...")
	if len(graph) < 15 {
		t.Fatalf("go list found only %d packages", len(graph))
	}
	checked := 0
	for pkg, imps := range graph {
		for _, r := range rules {
			if !r.from(pkg) {
				continue
			}
			checked++
			for _, imp := range imps {
				if matches(imp, r.banned) {
					t.Errorf("%s imports %s: %s", pkg, imp, r.why)
				}
			}
		}
	}
	if checked < 15 {
		t.Fatalf("the rules matched only %d packages: are the package paths right?", checked)
	}
}

// TestLayering_Dependencies checks transitive dependencies where the rule
// is about everything a binary links: the coffer CLI never links a device
// (nor cgo's PKCS#11), and keystore links no raft.
func TestLayering_Dependencies(t *testing.T) {
	deps := imports(t, true, "./cli", "./cmd/coffer", "./keystore")
	for _, pkg := range []string{"cli", "cmd/coffer"} {
		for _, d := range deps[pkg] {
			if matches(d, append([]string{"hsm", "daemon/seal", "daemon/config", "keystore$", "cluster$"}, deviceLibraries...)) {
				t.Errorf("%s depends on %s: the CLI must not link devices or the daemon's state", pkg, d)
			}
		}
	}
	for _, d := range deps["keystore"] {
		if matches(d, []string{"github.com/hashicorp/raft", "hsm", "cluster", "daemon"}) {
			t.Errorf("keystore depends on %s", d)
		}
	}
}
