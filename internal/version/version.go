// Package version holds the build's version, set at link time by the
// Makefile (-ldflags "-X github.com/coffer-kms/coffer/internal/version.Version=…").
package version

import (
	"fmt"
	"runtime"
)

// Set by the linker; the defaults are for `go run` and tests.
var (
	Version = "0.1.0-dev"
	Commit  = "unknown"
)

// String is "VERSION (commit COMMIT, GOVERSION)".
func String() string {
	return fmt.Sprintf("%s (commit %s, %s)", Version, Commit, runtime.Version())
}
