package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/daemon"
	"github.com/coffer-kms/coffer/daemon/config"
)

// startTimeout bounds the wait for the API's first answer once the listener
// is up. The node is already open by then, so this only catches a server
// that never accepts; systemd's TimeoutStartSec= is the outer bound.
const startTimeout = 30 * time.Second

// serveAPI serves the API on its socket (passed by systemd or made here)
// until ctx ends, and keeps systemd informed: READY=1 once a status request
// is answered on the socket, then STATUS= and WATCHDOG=1, and STOPPING=1
// when ctx ends. It closes srv (sealing the node) before it returns.
func serveAPI(ctx context.Context, srv *daemon.Server, cfg *config.Config, log hclog.Logger, notify *notifier) error {
	ln, err := listenAPI(cfg, log)
	if err != nil {
		srv.Close()
		return err
	}
	probe := apiProbe(ln.Addr().String())

	// ServeListener stops (and closes srv) when serveCtx ends; it is not
	// ctx itself so that STOPPING=1 goes out before shutdown begins.
	serveCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	var serveErr error
	served := make(chan struct{})
	go func() {
		serveErr = srv.ServeListener(serveCtx, ln)
		close(served)
	}()

	err = waitServing(ctx, probe, served, startTimeout)
	switch {
	case err == nil:
		notify.ready(srv.Status())
		nctx, stopNotify := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			notify.run(nctx, srv.Status, probe)
		}()
		select {
		case <-ctx.Done():
		case <-served:
		}
		stopNotify()
		wg.Wait()
	case ctx.Err() != nil:
		// Asked to stop while starting: stop as usual.
	default:
		stopServing()
		<-served
		srv.Close()
		if serveErr != nil {
			return serveErr
		}
		return err
	}
	notify.stopping()
	stopServing()
	<-served
	if serveErr != nil {
		srv.Close()
		return serveErr
	}
	if ctx.Err() == nil {
		// The server stopped by itself (Close from elsewhere).
		return errors.New("the API server stopped unexpectedly")
	}
	return nil
}
