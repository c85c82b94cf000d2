// Package docs_test checks that the reference documents describe the code:
// every route of the route table in api.md, every configuration key the
// loader accepts in config.md, every coffer command in cli.md.
package docs_test

import (
	"os"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/cli"
	"github.com/coffer-kms/coffer/daemon"
	"github.com/coffer-kms/coffer/daemon/config"
)

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDocs_ReferenceCoversCode(t *testing.T) {
	apiDoc := read(t, "api.md")
	routes := daemon.Routes()
	if len(routes) < 20 {
		t.Fatalf("daemon.Routes() lists only %d routes", len(routes))
	}
	for _, r := range routes {
		if want := "`" + r.Method + " " + r.Path + "`"; !strings.Contains(apiDoc, want) {
			t.Errorf("docs/api.md does not document %s", want)
		}
	}
	configDoc := read(t, "config.md")
	keys := config.Keys()
	if len(keys) < 30 {
		t.Fatalf("config.Keys() lists only %d keys", len(keys))
	}
	for _, k := range keys {
		if want := "`" + k + "`"; !strings.Contains(configDoc, want) {
			t.Errorf("docs/config.md does not document the key %s", want)
		}
	}
	cliDoc := read(t, "cli.md")
	cmds := cli.CommandPaths()
	if len(cmds) < 30 {
		t.Fatalf("cli.CommandPaths() lists only %d commands", len(cmds))
	}
	for _, c := range cmds {
		if want := "`coffer " + c; !strings.Contains(cliDoc, want) {
			t.Errorf("docs/cli.md does not document %q", "coffer "+c)
		}
	}
}

// The code's comments and messages point at the reference in the
// repository, not at the shared spec's files, which are not in it.
func TestDocs_NoPointersToSpec(t *testing.T) {
	var bad []string
	walk(t, "..", func(path string, data []byte) {
		for _, doc := range []string{"API", "CLI", "CONFIG"} {
			if strings.Contains(string(data), "spec/"+doc+".md") {
				bad = append(bad, path)
				return
			}
		}
	})
	if len(bad) > 0 {
		t.Errorf("these Go files point at spec/*.md, which is not in the repository; point at docs/api.md, docs/cli.md or docs/config.md: %v", bad)
	}
}
