//go:build !linux

package cli

import (
	"context"
	"fmt"

	"golang.org/x/term"
)

// readHidden reads one line from the terminal fd without echo. On ctx
// cancellation it restores the terminal before returning, since the read
// itself cannot be interrupted.
func readHidden(ctx context.Context, fd int) ([]byte, error) {
	old, err := term.GetState(fd)
	if err != nil {
		return nil, fmt.Errorf("read from the terminal: %w", err)
	}
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := term.ReadPassword(fd)
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-ctx.Done():
		_ = term.Restore(fd, old)
		return nil, ctx.Err()
	}
}
