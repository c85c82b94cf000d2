// Command coffer is the command-line client of cofferd: see docs/cli.md or
// run `coffer --help`. All of it lives in package cli; main only wires the
// process to it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/coffer-kms/coffer/cli"
)

func main() {
	// The first SIGINT/SIGTERM cancels in-flight requests (and restores
	// the terminal at a hidden prompt); a second one kills as usual.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	os.Exit(cli.Main(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr))
}
