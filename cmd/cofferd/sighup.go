package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/daemon"
)

// reopenAuditOnHUP reopens the audit log on every SIGHUP until ctx ends or
// the returned stop is called: after log rotation (rename the file, then
// `systemctl reload cofferd` or `kill -HUP`), the chain continues in a new
// file at the configured path. A failed reopen is logged; the daemon then
// refuses audited requests and keeps trying, as for any audit failure.
func reopenAuditOnHUP(ctx context.Context, srv *daemon.Server, log hclog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-quit:
				return
			case <-hup:
				if err := srv.ReopenAudit(); err != nil {
					log.Error("SIGHUP: cannot reopen the audit log", "error", err)
				} else {
					log.Info("SIGHUP: audit log reopened")
				}
			}
		}
	}()
	var stopped bool
	return func() {
		if stopped {
			return
		}
		stopped = true
		signal.Stop(hup)
		close(quit)
		<-done
	}
}
