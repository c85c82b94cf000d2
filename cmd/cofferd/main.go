// Command cofferd is the Coffer daemon. See docs/cli.md.
//
// The start-up sequence, top to bottom: harden the process (no core dumps,
// not ptrace-able by other users), load and validate the config, build the
// logger, open the node (raft state, seal device, auto-unseal), then serve on
// the unix socket (its own, or the one systemd passes) until SIGINT/SIGTERM,
// and seal (zero keys) on the way out. Under systemd it notifies readiness,
// seal state and watchdog pings (notify.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/urfave/cli/v2"

	"github.com/coffer-kms/coffer/daemon"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/daemon/platform"
	"github.com/coffer-kms/coffer/internal/lockedmem"
	"github.com/coffer-kms/coffer/internal/memtune"
	"github.com/coffer-kms/coffer/internal/version"
	"github.com/coffer-kms/coffer/keystore"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	app := &cli.App{
		Name:      "cofferd",
		Usage:     "the Coffer key-management daemon",
		UsageText: "cofferd --config FILE\n   cofferd --dev [--data-dir DIR] [--socket PATH]\n   cofferd version",
		Description: `Runs one Coffer node: it keeps the cluster's keys, unseals with its seal
device or with Shamir shares, and serves the HTTP/JSON API on a unix socket.

EXAMPLES:
   cofferd --config /etc/coffer/cofferd.hcl
   cofferd --dev                       # a throw-away node for trying Coffer out`,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "HCL config `FILE` (docs/config.md)"},
			&cli.BoolFlag{Name: "dev", Usage: "run a development node: soft seal device, initialised with 1 share, unsealed, key \"dev\" created"},
			&cli.StringFlag{Name: "data-dir", Usage: "with --dev: keep state in `DIR` (default: a new temp dir)"},
			&cli.StringFlag{Name: "socket", Usage: "with --dev: the API socket `PATH` (default: DATA_DIR/coffer.sock)"},
		},
		HideHelpCommand: true,
		Commands: []*cli.Command{recoverCommand(stdout), {
			Name:  "version",
			Usage: "print the version, commit and Go version",
			Action: func(c *cli.Context) error {
				fmt.Fprintln(stdout, "cofferd", version.String())
				return nil
			},
		}},
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return cli.Exit(fmt.Sprintf("cofferd: unexpected argument %q; see cofferd --help", c.Args().First()), 2)
			}
			switch {
			case c.Bool("dev") && c.String("config") != "":
				return cli.Exit("cofferd: use either --dev or --config, not both", 2)
			case c.Bool("dev"):
				return runDev(c.Context, c.String("data-dir"), c.String("socket"), stdout, stderr)
			case c.String("config") != "":
				if c.IsSet("data-dir") || c.IsSet("socket") {
					return cli.Exit("cofferd: --data-dir and --socket go with --dev; with --config set data_dir and listener in the file", 2)
				}
				cfg, err := config.LoadConfig(c.String("config"))
				if err != nil {
					return cli.Exit("cofferd: "+err.Error(), 1)
				}
				return serve(c.Context, cfg, stderr, nil)
			}
			return cli.Exit("cofferd: give --config FILE (or --dev to try Coffer out); see cofferd --help", 2)
		},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunContext(ctx, args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(stderr, msg)
			}
			return ec.ExitCode()
		}
		fmt.Fprintln(stderr, "cofferd:", err)
		return 1
	}
	return 0
}

func newLogger(cfg *config.Config, w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "cofferd",
		Level:      hclog.LevelFromString(cfg.LogLevel),
		JSONFormat: cfg.LogFormat == "json",
		Output:     w,
	})
}

// serve runs a node until ctx ends. ready, if set, runs once the node is
// open (dev mode uses it to initialise and print its banner).
func serve(ctx context.Context, cfg *config.Config, stderr io.Writer, ready func(*daemon.Server) error, extraAdmins ...uint32) error {
	if err := platform.HardenProcess(); err != nil {
		return cli.Exit("cofferd: hardening the process: "+err.Error(), 1)
	}
	log := newLogger(cfg, stderr)
	// Bound the heap's headroom as the state grows (internal/memtune).
	go memtune.Tune(ctx, 2*time.Second)
	notify, err := newNotifier(log)
	if err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	notify.starting("opening the raft store and the seal device")
	checkEvery, err := deviceCheckInterval()
	if err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	budget, err := nonceBudget()
	if err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	srv, err := daemon.New(daemon.Options{Config: cfg, Logger: log, Version: version.Version, ExtraAdminUIDs: extraAdmins, DeviceCheckInterval: checkEvery, NonceBudget: budget})
	if err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	defer reopenAuditOnHUP(ctx, srv, log)() // SIGHUP: reopen the audit log (log rotation)
	if !lockedmem.Locked() {
		log.Warn("key memory could not be locked (mlock): raise LimitMEMLOCK / RLIMIT_MEMLOCK or grant CAP_IPC_LOCK so that keys are never swapped")
	}
	if ready != nil {
		if err := ready(srv); err != nil {
			srv.Close()
			return cli.Exit("cofferd: "+err.Error(), 1)
		}
	}
	if err := serveAPI(ctx, srv, cfg, log, notify); err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	log.Info("stopped; key material zeroed")
	return nil
}

// deviceCheckIntervalEnv is an undocumented test hook: end-to-end tests
// shorten the seal device health check (default 10s) so that a device
// failure shows in status within a test's time budget. It is not in the
// config because operators have no reason to tune it.
const deviceCheckIntervalEnv = "COFFER_DEVICE_CHECK_INTERVAL"

// deviceCheckInterval reads deviceCheckIntervalEnv; 0 means the default.
func deviceCheckInterval() (time.Duration, error) {
	v := os.Getenv(deviceCheckIntervalEnv)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s=%q is not a positive Go duration (e.g. 500ms); unset it to use the default", deviceCheckIntervalEnv, v)
	}
	return d, nil
}

// nonceBudgetEnv is an undocumented test hook, like deviceCheckIntervalEnv:
// end-to-end tests lower the nonce budget (keystore.DefaultNonceBudget,
// 2^32 encryptions per key version) so that a cluster reaches it within a
// test. Lowering it only makes rotations come sooner.
const nonceBudgetEnv = "COFFER_NONCE_BUDGET"

// nonceBudget reads nonceBudgetEnv; 0 means the default.
func nonceBudget() (uint64, error) {
	v := os.Getenv(nonceBudgetEnv)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 || n > keystore.DefaultNonceBudget {
		return 0, fmt.Errorf("%s=%q is not a whole number from 1 to %d; unset it to use the default", nonceBudgetEnv, v, uint64(keystore.DefaultNonceBudget))
	}
	return n, nil
}

// runDev runs a throw-away development node (docs/cli.md: cofferd --dev).
func runDev(ctx context.Context, dataDir, socket string, stdout, stderr io.Writer) error {
	temp := dataDir == ""
	if temp {
		d, err := os.MkdirTemp("", "coffer-dev-")
		if err != nil {
			return cli.Exit("cofferd: "+err.Error(), 1)
		}
		dataDir = d
	}
	dataDir, _ = filepath.Abs(dataDir)
	if socket == "" {
		socket = filepath.Join(dataDir, "coffer.sock")
	}
	socket, _ = filepath.Abs(socket)
	cfg := config.DefaultConfig()
	cfg.Dev = true
	cfg.DataDir = dataDir
	cfg.Listener.Path = socket
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	seal, sealDesc, err := devSeal(dataDir)
	if err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	cfg.Seal = seal
	if err := cfg.Validate(); err != nil {
		return cli.Exit("cofferd: "+err.Error(), 1)
	}
	err = serve(ctx, cfg, stderr, func(srv *daemon.Server) error {
		return devReady(ctx, srv, cfg, temp, sealDesc, stdout)
	}, uint32(os.Getuid()))
	if temp {
		os.RemoveAll(dataDir)
	}
	return err
}

func devReady(ctx context.Context, srv *daemon.Server, cfg *config.Config, temp bool, sealDesc string, stdout io.Writer) error {
	ks := srv.Keystore()
	share := "(initialised earlier: use the share printed then)"
	if !ks.Initialized() {
		resp, err := srv.Initialize(ctx, 1, 1, nil)
		if err != nil {
			return fmt.Errorf("initialising the dev node: %w", err)
		}
		share = resp.Shares[0]
	}
	if ks.Sealed() {
		return errors.New("the dev node is sealed and its soft device could not unseal it; see the log above")
	}
	if _, err := ks.GetKey("dev"); err != nil {
		if _, err := ks.CreateKey(ctx, "dev", "", ""); err != nil {
			return fmt.Errorf("creating key dev: %w", err)
		}
	}
	state := cfg.DataDir
	if temp {
		state += " (deleted on exit)"
	}
	sock := cfg.Listener.Path
	fmt.Fprintf(stdout, `
Coffer dev node — NOT for production: one unseal share, state in %s.

    Seal device:  %s
    Socket:       %s
    Unseal share: %s
    Key:          dev

Try it (in another terminal):

    export COFFER_SOCKET=%s
    curl -s --unix-socket $COFFER_SOCKET -X POST http://coffer/v1/keys/dev/wrap -d '{"plaintext":"aGVsbG8="}'
    echo -n hello | bin/coffer wrap --key dev | bin/coffer unwrap --key dev

Press Ctrl-C to stop.

`, state, sealDesc, sock, share, sock)
	return nil
}
