//go:build !linux

package platform

import (
	"errors"
	"runtime"
)

// HardenProcess is only implemented on Linux, the only platform cofferd
// supports; elsewhere it refuses rather than pretend the key is protected.
func HardenProcess() error {
	return errors.New("process hardening is not implemented on " + runtime.GOOS + "; cofferd runs on Linux only")
}
