package client

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDeps: a service that imports the client links only the standard
// library and the api package (no CLI framework, no age, no cgo).
func TestDeps(t *testing.T) {
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", "github.com/coffer-kms/coffer/client")
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, std, _ := strings.Cut(line, " ")
		if std == "true" || pkg == "github.com/coffer-kms/coffer/api" || pkg == "github.com/coffer-kms/coffer/client" {
			continue
		}
		t.Errorf("the client depends on %s", pkg)
	}
}
