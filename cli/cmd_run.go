//go:build linux

package cli

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/coffer-kms/coffer/api"
	ucli "github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// EnvCredentialsDirectory is the variable that names the directory of
// credential files, as systemd sets it for LoadCredential=.
const EnvCredentialsDirectory = "CREDENTIALS_DIRECTORY"

// forwardedSignals are passed on to the command; after it exits, coffer
// removes the directory and exits with its status.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

func (e *env) runCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "run",
		Usage:     "run a command with secrets as files in $CREDENTIALS_DIRECTORY (as systemd's LoadCredential= does)",
		UsageText: "coffer run [--secret NAME[:FILE]]… [--env VAR=NAME]… -- COMMAND [ARG…]",
		Description: "Reads the latest version of each secret, writes each --secret into a fresh\n" +
			"private directory on a tmpfs (/run/user/UID, else /dev/shm; mode 0700, files 0400,\n" +
			"named FILE or NAME), sets $CREDENTIALS_DIRECTORY to it and runs COMMAND. --env\n" +
			"VAR=NAME puts a secret in an environment variable instead (only where asked:\n" +
			"the environment is inherited by every child and often shows in crash reports\n" +
			"and /proc). Signals to coffer (INT, TERM, HUP, QUIT, USR1, USR2) are passed on\n" +
			"to COMMAND. When COMMAND exits, even when killed by a signal, the directory is\n" +
			"removed and coffer exits with COMMAND's status (128+N for signal N). Nothing is\n" +
			"started unless every secret could be read. If coffer itself is killed with\n" +
			"SIGKILL the directory stays (on tmpfs, gone at reboot).",
		Flags: []ucli.Flag{
			&ucli.StringSliceFlag{Name: "secret", Usage: "secret `NAME[:FILE]` as file FILE (default NAME) in $CREDENTIALS_DIRECTORY (repeat for several)"},
			&ucli.StringSliceFlag{Name: "env", Usage: "secret NAME in environment variable VAR (`VAR=NAME`; repeat for several)"},
		},
	}, `coffer run --secret db-password -- /usr/bin/billing --db-password-file '$CREDENTIALS_DIRECTORY/db-password'
coffer run --secret tls-key:server.key --env API_TOKEN=billing-api-token -- ./server`, 1, -1, func(x *cmd) error {
		return x.run()
	})
}

type runFile struct{ secret, file string }
type runEnv struct{ variable, secret string }

func (x *cmd) parseRunFlags() ([]runFile, []runEnv, error) {
	var files []runFile
	seen := map[string]bool{}
	for _, s := range x.c.StringSlice("secret") {
		name, file, hasFile := strings.Cut(s, ":")
		if !hasFile {
			file = name
		}
		if err := checkName("secret", name); err != nil {
			return nil, nil, err
		}
		// A file name, never a path: the directory is coffer's.
		if !api.ValidName(file) {
			return nil, nil, usagef("invalid file name %q in --secret %s: use 1 to 128 letters, digits, '.', '_' or '-' (no '/')", file, s)
		}
		if seen[file] {
			return nil, nil, usagef("two --secret flags write the file %q: give one of them another name (NAME:FILE)", file)
		}
		seen[file] = true
		files = append(files, runFile{name, file})
	}
	var envs []runEnv
	seenVar := map[string]bool{}
	for _, s := range x.c.StringSlice("env") {
		v, name, ok := strings.Cut(s, "=")
		if !ok || !validEnvName(v) {
			return nil, nil, usagef("invalid --env %q: give VAR=NAME, VAR made of letters, digits and '_', not starting with a digit", s)
		}
		if err := checkName("secret", name); err != nil {
			return nil, nil, err
		}
		if v == EnvCredentialsDirectory || seenVar[v] {
			return nil, nil, usagef("invalid --env %q: %s is set twice or is reserved", s, v)
		}
		seenVar[v] = true
		envs = append(envs, runEnv{v, name})
	}
	return files, envs, nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

func (x *cmd) run() error {
	args := x.c.Args().Slice()
	if len(args) == 0 {
		return usagef("missing COMMAND: usage: %s", x.c.Command.UsageText)
	}
	files, envs, err := x.parseRunFlags()
	if err != nil {
		return err
	}
	// Read everything first: start nothing and write nothing unless every
	// secret is there and readable by this caller.
	values := map[string][]byte{}
	defer func() {
		for _, v := range values {
			clear(v)
		}
	}()
	need := make([]string, 0, len(files)+len(envs))
	for _, f := range files {
		need = append(need, f.secret)
	}
	for _, e := range envs {
		need = append(need, e.secret)
	}
	for _, n := range need {
		if _, ok := values[n]; ok {
			continue
		}
		sv, err := x.client.GetSecret(x.ctx, n, 0)
		if err != nil {
			return fmt.Errorf("secret %s: %w", n, err)
		}
		values[n] = sv.Value
	}
	env := os.Environ()
	for _, e := range envs {
		v := values[e.secret]
		if bytes.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("secret %s holds a NUL byte and cannot go in an environment variable: use --secret %s (a file) instead", e.secret, e.secret)
		}
		env = append(env, e.variable+"="+string(v))
	}

	var dir string
	if len(files) > 0 {
		dir, err = makeCredentialsDir()
		if err != nil {
			return err
		}
		// Removed on every way out of this function; the command has
		// exited by then.
		defer os.RemoveAll(dir)
		for _, f := range files {
			if err := writeCredential(filepath.Join(dir, f.file), values[f.secret]); err != nil {
				return err
			}
		}
		env = append(env, EnvCredentialsDirectory+"="+dir)
	}
	for _, v := range values {
		clear(v)
	}

	c := exec.Command(args[0], args[1:]...)
	c.Env = env
	c.Stdin, c.Stdout, c.Stderr = x.stdin, x.stdout, x.stderr
	// Catch the signals before the start, so that none is lost between
	// the start and the forwarding loop.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)
	if err := c.Start(); err != nil {
		return fmt.Errorf("start %s: %w", args[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	for {
		select {
		case s := <-sigs:
			c.Process.Signal(s)
		case err := <-done:
			return exitStatusOf(c, err)
		}
	}
}

// exitStatusOf turns the command's end into coffer's exit status: its exit
// code, or 128+N when signal N killed it (as shells report it).
func exitStatusOf(c *exec.Cmd, err error) error {
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return fmt.Errorf("wait for %s: %w", c.Path, err)
	}
	ws, ok := c.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		return exitCode(128 + int(ws.Signal()))
	case c.ProcessState.ExitCode() == 0:
		return nil
	default:
		return exitCode(c.ProcessState.ExitCode())
	}
}

// makeCredentialsDir creates a fresh 0700 directory on a tmpfs, so that
// secrets never reach a disk: the caller's /run/user/UID when it is the
// caller's own tmpfs, else /dev/shm.
func makeCredentialsDir() (string, error) {
	uid := os.Getuid()
	var bases []string
	if ud := "/run/user/" + strconv.Itoa(uid); ownedTmpfs(ud, uid) {
		bases = append(bases, ud)
	}
	if isTmpfs("/dev/shm") {
		bases = append(bases, "/dev/shm")
	}
	if len(bases) == 0 {
		return "", errors.New("no tmpfs to hold the secrets: neither /run/user/" + strconv.Itoa(uid) + " (yours) nor /dev/shm is a tmpfs; mount one, or use systemd's LoadCredential= with cofferd's credential socket")
	}
	dir, err := os.MkdirTemp(bases[0], "coffer-run-")
	if err != nil {
		return "", fmt.Errorf("create the credentials directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("create the credentials directory: %w", err)
	}
	return dir, nil
}

func ownedTmpfs(dir string, uid int) bool {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil || int(st.Uid) != uid || st.Mode&0o077 != 0 {
		return false
	}
	return isTmpfs(dir)
}

func isTmpfs(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC
}

// writeCredential creates path (new, 0400) with value.
func writeCredential(path string, value []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o400)
	if err != nil {
		return fmt.Errorf("write the credential file: %w", err)
	}
	if _, err := f.Write(value); err != nil {
		f.Close()
		return fmt.Errorf("write the credential file %s: %w", path, err)
	}
	return f.Close()
}
