package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/internal/devnode"
)

// devNode starts a real `cofferd --dev` (key "dev") for the envelope tests.
func devNode(t *testing.T) *devnode.Node {
	t.Helper()
	n, err := devnode.Start(binDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	return n
}

type cofferRun struct {
	code           int
	stdout, stderr []byte
}

// cofferAt runs the real coffer binary against socket.
func cofferAt(t *testing.T, socket string, stdin io.Reader, args ...string) cofferRun {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "coffer"), append([]string{"--socket", socket}, args...)...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cofferRun{code, out.Bytes(), errb.Bytes()}
}

func patterned(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>16)
	}
	return b
}

// TestE2E_EnvelopeSizes: coffer encrypt/decrypt round-trip files and pipes
// of 0 B, 1 B and a chunk ±1 against a real node.
func TestE2E_EnvelopeSizes(t *testing.T) {
	n := devNode(t)
	dir := t.TempDir()
	const chunk = client.EnvelopeChunkSize
	for _, size := range []int{0, 1, chunk - 1, chunk, chunk + 1, 2*chunk + 3} {
		pt := patterned(size)
		in := filepath.Join(dir, fmt.Sprintf("pt-%d", size))
		if err := os.WriteFile(in, pt, 0o600); err != nil {
			t.Fatal(err)
		}
		// File to --out, then decrypt --out.
		env := in + ".cfe"
		if r := cofferAt(t, n.Socket, nil, "encrypt", "--key", "dev", "--out", env, in); r.code != 0 {
			t.Fatalf("encrypt %d: exit %d: %s", size, r.code, r.stderr)
		}
		back := in + ".back"
		if r := cofferAt(t, n.Socket, nil, "decrypt", "--out", back, env); r.code != 0 {
			t.Fatalf("decrypt %d: exit %d: %s", size, r.code, r.stderr)
		}
		if got, _ := os.ReadFile(back); !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: round trip through files differs", size)
		}
		if fi, _ := os.Stat(back); fi.Mode().Perm() != 0o600 {
			t.Errorf("decrypted file mode %v, want 0600", fi.Mode().Perm())
		}
		// stdin → stdout both ways.
		r := cofferAt(t, n.Socket, bytes.NewReader(pt), "encrypt", "--key", "dev")
		if r.code != 0 || !bytes.HasPrefix(r.stdout, []byte(client.EnvelopeMagic)) {
			t.Fatalf("encrypt stdin %d: exit %d: %s", size, r.code, r.stderr)
		}
		r = cofferAt(t, n.Socket, bytes.NewReader(r.stdout), "decrypt", "-")
		if r.code != 0 || !bytes.Equal(r.stdout, pt) {
			t.Fatalf("decrypt stdin %d: exit %d: %s", size, r.code, r.stderr)
		}
	}
}

// TestE2E_EnvelopeRefused: a tampered, truncated, reordered or extended
// envelope, or one whose header names another key, is refused with a clear
// error, exit 1, and --out is neither created nor replaced, nor a
// temporary file left behind.
func TestE2E_EnvelopeRefused(t *testing.T) {
	n := devNode(t)
	dir := t.TempDir()
	if r := cofferAt(t, n.Socket, nil, "key", "create", "dex"); r.code != 0 {
		t.Fatalf("key create: %s", r.stderr)
	}
	const chunk = client.EnvelopeChunkSize
	pt := patterned(3*chunk + 10)
	r := cofferAt(t, n.Socket, bytes.NewReader(pt), "encrypt", "--key", "dev")
	if r.code != 0 {
		t.Fatalf("encrypt: %s", r.stderr)
	}
	env := r.stdout
	body := len(env) - (len(pt) + 4*16) // offset of chunk 0
	at := func(i int) int { return body + i*(chunk+16) }
	cases := []struct {
		name, want string
		mut        func([]byte) []byte
	}{
		{"tampered chunk", "chunk 2 does not authenticate", func(b []byte) []byte { b[at(2)+9] ^= 4; return b }},
		{"truncated", "truncated", func(b []byte) []byte { return b[:at(3)] }},
		{"reordered", "chunk 0 does not authenticate", func(b []byte) []byte {
			out := append([]byte{}, b[:at(0)]...)
			out = append(out, b[at(1):at(2)]...)
			out = append(out, b[at(0):at(1)]...)
			return append(out, b[at(2):]...)
		}},
		{"appended", "does not authenticate", func(b []byte) []byte { return append(b, 'x') }},
		{"wrong key", `key "dex"`, func(b []byte) []byte {
			i := bytes.Index(b, []byte("\x03dev"))
			copy(b[i+1:], "dex")
			return b
		}},
		{"not an envelope", "not a coffer envelope", func([]byte) []byte { return []byte("hello") }},
	}
	// To stdout it streams: what was written before the failure is the
	// verified chunks only (docs/envelope.md, the streaming trade-off).
	t.Run("stdout gets only verified chunks", func(t *testing.T) {
		bad := append([]byte{}, env...)
		bad[at(2)+9] ^= 4
		r := cofferAt(t, n.Socket, bytes.NewReader(bad), "decrypt")
		if r.code != 1 || !bytes.Equal(r.stdout, pt[:2*chunk]) || !strings.Contains(string(r.stderr), "chunk 2 does not authenticate") {
			t.Fatalf("exit %d, %d bytes on stdout (want chunks 0-1: %d), stderr %q", r.code, len(r.stdout), 2*chunk, r.stderr)
		}
	})
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			bad := filepath.Join(dir, "bad.cfe")
			os.WriteFile(bad, tt.mut(append([]byte{}, env...)), 0o600)
			out := filepath.Join(dir, "out-"+strings.ReplaceAll(tt.name, " ", "-"))
			r := cofferAt(t, n.Socket, nil, "decrypt", "--out", out, bad)
			if r.code != 1 || !strings.Contains(string(r.stderr), tt.want) {
				t.Fatalf("exit %d, stderr %q; want 1 and %q", r.code, r.stderr, tt.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("--out exists after a failed decrypt: %v", err)
			}
			// An existing --out is left as it was.
			os.WriteFile(out, []byte("old"), 0o600)
			cofferAt(t, n.Socket, nil, "decrypt", "--out", out, bad)
			if got, _ := os.ReadFile(out); string(got) != "old" {
				t.Fatalf("--out replaced after a failed decrypt")
			}
			os.Remove(out)
			left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
			if len(left) > 0 {
				t.Fatalf("temporary files left: %v", left)
			}
		})
	}
}

// TestE2E_EnvelopeLarge: 1 GiB streams through `coffer encrypt | coffer
// decrypt` (real processes, pipes, never on disk) and each process's peak
// RSS stays under 32 MiB.
func TestE2E_EnvelopeLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 1 GiB")
	}
	n := devNode(t)
	const size = 1 << 30
	enc := exec.Command(filepath.Join(binDir, "coffer"), "--socket", n.Socket, "encrypt", "--key", "dev")
	dec := exec.Command(filepath.Join(binDir, "coffer"), "--socket", n.Socket, "decrypt")
	var encErr, decErr bytes.Buffer
	enc.Stderr, dec.Stderr = &encErr, &decErr
	in, err := enc.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pipe, err := enc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	dec.Stdin = pipe
	out, err := dec.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := enc.Start(); err != nil {
		t.Fatal(err)
	}
	if err := dec.Start(); err != nil {
		t.Fatal(err)
	}
	// ru_maxrss of a child is useless here (Go starts children with
	// CLONE_VM, so it reports this test's own RSS): sample each process's
	// VmHWM, the peak RSS of its own address space, while it runs.
	encHWM, decHWM := watchHWM(enc.Process.Pid), watchHWM(dec.Process.Pid)
	wantSum := sha256.New()
	go func() {
		buf := make([]byte, 1<<20)
		for off := 0; off < size; off += len(buf) {
			for i := range buf {
				buf[i] = byte(off>>20 + i)
			}
			wantSum.Write(buf)
			if _, err := in.Write(buf); err != nil {
				break
			}
		}
		in.Close()
	}()
	gotSum := sha256.New()
	got, err := io.Copy(gotSum, out)
	if err != nil {
		t.Fatal(err)
	}
	encHWM.sample()
	decHWM.sample()
	if err := enc.Wait(); err != nil {
		t.Fatalf("encrypt: %v: %s", err, encErr.String())
	}
	if err := dec.Wait(); err != nil {
		t.Fatalf("decrypt: %v: %s", err, decErr.String())
	}
	if got != size || !bytes.Equal(gotSum.Sum(nil), wantSum.Sum(nil)) {
		t.Fatalf("decrypted %d bytes, hash match %v", got, bytes.Equal(gotSum.Sum(nil), wantSum.Sum(nil)))
	}
	for name, h := range map[string]*hwm{"encrypt": encHWM, "decrypt": decHWM} {
		peak := h.stop()
		t.Logf("coffer %s: peak RSS (VmHWM) %d KiB for 1 GiB", name, peak)
		if peak == 0 {
			t.Errorf("coffer %s: no RSS sample", name)
		}
		if peak > 32<<10 {
			t.Errorf("coffer %s: peak RSS %d KiB, over 32 MiB", name, peak)
		}
	}
}

// hwm samples /proc/PID/status VmHWM until stopped.
type hwm struct {
	pid  int
	mu   sync.Mutex
	peak int
	done chan struct{}
	wg   sync.WaitGroup
}

func watchHWM(pid int) *hwm {
	h := &hwm{pid: pid, done: make(chan struct{})}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			h.sample()
			select {
			case <-h.done:
				return
			case <-tick.C:
			}
		}
	}()
	return h
}

func (h *hwm) sample() {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.pid))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			h.mu.Lock()
			h.peak = max(h.peak, kb)
			h.mu.Unlock()
		}
	}
}

func (h *hwm) stop() int {
	close(h.done)
	h.wg.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peak
}

// TestE2E_EnvelopePolicies: encrypting needs only datakey on the key,
// decrypting only unwrap on the key the header names (docs/cli.md), for a
// caller that is not an admin.
func TestE2E_EnvelopePolicies(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the client as uid 65534")
	}
	const nobody = 65534
	d := newDaemon(t, "")
	d.start()
	d.unsealWith(d.initNode()[:3])
	d.mustCoffer("", "key", "create", "files")
	dir, err := os.MkdirTemp("", "cofenv")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	in := filepath.Join(dir, "in")
	os.WriteFile(in, patterned(100000), 0o644)
	grant := func(ops string) {
		pol := filepath.Join(d.dir, "policy.json")
		os.WriteFile(pol, []byte(fmt.Sprintf(`{"subjects":{"uids":[%d]},"keys":["files"],"operations":[%s]}`, nobody, ops)), 0o644)
		d.mustCoffer("", "policy", "write", "nobody-files", pol)
	}
	env := filepath.Join(dir, "in.cfe")
	out := filepath.Join(dir, "out")

	// Without datakey: refused, nothing written.
	grant(`"wrap","unwrap"`)
	if r := d.coffer("", nobody, "encrypt", "--key", "files", "--out", env, in); r.code != 1 || !strings.Contains(r.stderr, "permission_denied") {
		t.Fatalf("encrypt without datakey: exit %d %q", r.code, r.stderr)
	}
	if _, err := os.Stat(env); !os.IsNotExist(err) {
		t.Fatal("a refused encrypt left its output")
	}
	// datakey alone encrypts.
	grant(`"datakey"`)
	if r := d.coffer("", nobody, "encrypt", "--key", "files", "--out", env, in); r.code != 0 {
		t.Fatalf("encrypt with datakey: exit %d %q", r.code, r.stderr)
	}
	// ... but does not decrypt.
	if r := d.coffer("", nobody, "decrypt", "--out", out, env); r.code != 1 || !strings.Contains(r.stderr, "permission_denied") || !strings.Contains(r.stderr, `key "files"`) {
		t.Fatalf("decrypt without unwrap: exit %d %q", r.code, r.stderr)
	}
	// unwrap alone decrypts.
	grant(`"unwrap"`)
	if r := d.coffer("", nobody, "decrypt", "--out", out, env); r.code != 0 {
		t.Fatalf("decrypt with unwrap: exit %d %q", r.code, r.stderr)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, patterned(100000)) {
		t.Fatal("decrypted file differs")
	}
}
