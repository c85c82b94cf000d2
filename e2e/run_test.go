package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestE2E_Run: `coffer run` against a real cofferd. Files with the exact
// bytes and the right modes in a private tmpfs directory named by
// $CREDENTIALS_DIRECTORY, environment variables only where asked, the exit
// status passed through, and the directory gone after a normal exit, after
// the command is killed by SIGTERM or SIGKILL, and after coffer itself
// gets SIGTERM (passed on to the command).
func TestE2E_Run(t *testing.T) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &fs); err != nil || fs.Type != 0x01021994 {
		if err := syscall.Statfs(fmt.Sprintf("/run/user/%d", os.Getuid()), &fs); err != nil || fs.Type != 0x01021994 {
			t.Skip("coffer run needs a tmpfs at /dev/shm or /run/user/UID")
		}
	}
	d := newDaemon(t, "")
	d.start()
	d.mustCoffer("", "operator", "init", "--shares", "1", "--threshold", "1")
	value := "db\x00pass\nword\n"
	d.mustCoffer(value, "secret", "put", "db-password")
	d.mustCoffer("tok-123", "secret", "put", "api-token")

	script := `d="$CREDENTIALS_DIRECTORY"
echo "dir=$d"
stat -c 'dirmode=%a' "$d"
stat -f -c 'fstype=%T' "$d"
stat -c 'filemode=%n %a' "$d"/*
echo "token=${API_TOKEN-unset}"
echo "dbenv=${DB_PASSWORD-unset}"
cat "$d/pw" > "$OUT"
exit 7`
	out := filepath.Join(t.TempDir(), "value")
	r := d.coffer("", -1, "run", "--secret", "db-password:pw", "--secret", "api-token", "--env", "API_TOKEN=api-token",
		"--", "env", "OUT="+out, "sh", "-c", script)
	if r.code != 7 {
		t.Fatalf("exit status %d, want 7 (the command's)\n%s%s", r.code, r.stdout, r.stderr)
	}
	kv := map[string]string{}
	var fileModes []string
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		k, v, _ := strings.Cut(l, "=")
		if k == "filemode" {
			fileModes = append(fileModes, v)
			continue
		}
		kv[k] = v
	}
	dir := kv["dir"]
	if dir == "" || kv["dirmode"] != "700" || kv["fstype"] != "tmpfs" {
		t.Fatalf("credentials directory: %v", kv)
	}
	if len(fileModes) != 2 || !strings.HasSuffix(fileModes[0], "/api-token 400") || !strings.HasSuffix(fileModes[1], "/pw 400") {
		t.Fatalf("files: %v", fileModes)
	}
	if kv["token"] != "tok-123" || kv["dbenv"] != "unset" {
		t.Fatalf("environment: token=%q dbenv=%q (only --env secrets go in the environment)", kv["token"], kv["dbenv"])
	}
	if b, _ := os.ReadFile(out); string(b) != value {
		t.Fatalf("file content %q, want %q", b, value)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after the command exited: %v", dir, err)
	}

	// Killed by a signal (its own SIGTERM, then SIGKILL): status 128+N,
	// directory gone.
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		r := d.coffer("", -1, "run", "--secret", "db-password", "--", "sh", "-c", `echo "dir=$CREDENTIALS_DIRECTORY"; kill -`+sigName(sig)+` $$; sleep 5`)
		if r.code != 128+int(sig) {
			t.Fatalf("killed by %v: exit %d, want %d\n%s", sig, r.code, 128+int(sig), r.stderr)
		}
		dir := strings.TrimPrefix(strings.TrimSpace(r.stdout), "dir=")
		if dir == "" {
			t.Fatal("no directory printed")
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("%s still there after %v: %v", dir, sig, err)
		}
	}

	// coffer itself gets SIGTERM: it passes it on, the command ends, the
	// directory goes.
	cmd := exec.Command(filepath.Join(binDir, "coffer"), "run", "--secret", "db-password", "--",
		"sh", "-c", `trap 'echo got-term; exit 3' TERM; echo "dir=$CREDENTIALS_DIRECTORY"; while :; do sleep 0.05; done`)
	cmd.Env = append(os.Environ(), "COFFER_SOCKET="+d.sock)
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatalf("no output: %s", stderr.String())
	}
	dir = strings.TrimPrefix(sc.Text(), "dir=")
	if _, err := os.Stat(filepath.Join(dir, "db-password")); err != nil {
		t.Fatalf("credential file while running: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rest := make(chan string, 1)
	go func() {
		var b strings.Builder
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
		}
		rest <- b.String()
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case <-waited:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("coffer run did not end after SIGTERM")
	}
	if got := <-rest; !strings.Contains(got, "got-term") || cmd.ProcessState.ExitCode() != 3 {
		t.Fatalf("after SIGTERM to coffer: output %q exit %d (want the command's trap and status 3)", got, cmd.ProcessState.ExitCode())
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after coffer got SIGTERM: %v", dir, err)
	}

	// A missing secret: nothing runs, nothing is written.
	marker := filepath.Join(t.TempDir(), "ran")
	if r := d.coffer("", -1, "run", "--secret", "db-password", "--secret", "nope", "--", "touch", marker); r.code != 1 || !strings.Contains(r.stderr, "not_found") {
		t.Fatalf("missing secret: %d %q", r.code, r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran although a secret was missing")
	}
	if r := d.coffer("", -1, "run", "--secret", "db-password:../x", "--", "true"); r.code != 2 {
		t.Fatalf("a path as file name: exit %d, want 2", r.code)
	}
	if r := d.coffer("", -1, "run", "--env", "X=db-password", "--", "true"); r.code != 1 || !strings.Contains(r.stderr, "NUL") {
		t.Fatalf("a NUL value in the environment: %d %q", r.code, r.stderr)
	}
}

func sigName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGKILL:
		return "KILL"
	}
	return "TERM"
}
