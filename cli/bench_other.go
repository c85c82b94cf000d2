//go:build !linux

package cli

import (
	"context"
	"errors"
	"time"
)

var errNoProc = errors.New("needs Linux (SO_PEERCRED and /proc)")

func serverPID(context.Context, string) (int, error) { return 0, errNoProc }

func processCPU(int) (time.Duration, error) { return 0, errNoProc }
