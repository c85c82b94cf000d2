package e2e

// End-to-end tests of the hardware seal devices: cofferd as a separate
// process against a real SoftHSM2 token (its own SOFTHSM2_CONF, passed in
// the child's environment) and a real swtpm emulator (its own state dir and
// ports), with every fault a node meets in production: restart, device
// lost, device replaced, wrong PIN, PCRs changed, device gone while serving.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	softhsmtest "github.com/coffer-kms/coffer/softhsm-test"
)

// deviceCheckEvery is the seal device health interval the tests give
// cofferd (COFFER_DEVICE_CHECK_INTERVAL; the default is 10s).
const deviceCheckEvery = 100 * time.Millisecond

// deviceKeyLabel is the PKCS#11 key label every test config uses.
const deviceKeyLabel = "coffer-seal"

func pkcs11HCL(tk *softhsmtest.Token, pinFile string) string {
	return fmt.Sprintf(`
seal "pkcs11" {
  library      = %q
  token_label  = %q
  pin_file     = %q
  key_label    = %q
  generate_key = true
}
`, tk.Library, tk.Label, pinFile, deviceKeyLabel)
}

func tpmHCL(addr string, pcrs ...int) string {
	pcrLine := ""
	if len(pcrs) > 0 {
		s := make([]string, len(pcrs))
		for i, p := range pcrs {
			s[i] = fmt.Sprint(p)
		}
		pcrLine = "\n  pcrs    = [" + strings.Join(s, ", ") + "]"
	}
	return fmt.Sprintf(`
seal "tpm" {
  address = %q%s
}
`, addr, pcrLine)
}

// newDeviceDaemon is a daemon with a seal block and a short device health
// interval; env is added to its environment (a token's Env()).
func newDeviceDaemon(t *testing.T, sealHCL string, env ...string) *daemon {
	t.Helper()
	d := newDaemon(t, sealHCL)
	d.env = append([]string{"COFFER_DEVICE_CHECK_INTERVAL=" + deviceCheckEvery.String()}, env...)
	return d
}

// initNode initialises the node with 5 shares, threshold 3, and returns the
// shares.
func (d *daemon) initNode() []string {
	d.t.Helper()
	var ir api.InitResponse
	out := d.mustCoffer("", "--format", "json", "operator", "init", "--shares", "5", "--threshold", "3")
	if err := json.Unmarshal([]byte(out), &ir); err != nil || len(ir.Shares) != 5 {
		d.t.Fatalf("operator init printed %d bytes that are not 5 shares: %v", len(out), err)
	}
	return ir.Shares
}

// unsealWith enters shares through `coffer operator unseal` on stdin and
// checks that the node is then unsealed.
func (d *daemon) unsealWith(shares []string) {
	d.t.Helper()
	d.mustCoffer(strings.Join(shares, "\n")+"\n", "operator", "unseal")
	if st := d.status(); st.Sealed {
		d.t.Fatalf("still sealed after %d shares: %+v", len(shares), st)
	}
}

// wrap wraps pt with key name through the CLI and returns the ciphertext.
func (d *daemon) wrap(name, pt string) string {
	d.t.Helper()
	ct := strings.TrimSpace(d.mustCoffer(pt, "wrap", "--key", name))
	if !strings.HasPrefix(ct, "coffer:v1:") {
		d.t.Fatalf("wrap printed %q, want a coffer:v1: ciphertext", ct)
	}
	return ct
}

// expectUnwrap checks that ct unwraps to want with key name.
func (d *daemon) expectUnwrap(name, ct, want string) {
	d.t.Helper()
	if pt := d.mustCoffer(ct, "unwrap", "--key", name); pt != want {
		d.t.Fatalf("unwrap gave %d bytes, not the %d-byte plaintext that was wrapped", len(pt), len(want))
	}
}

// expectAutoUnsealed checks that the node came up unsealed by its device.
func (d *daemon) expectAutoUnsealed(sealType string) {
	d.t.Helper()
	st := d.status()
	if !st.Initialized || st.Sealed || st.SealType != sealType || st.SealDeviceError != "" {
		d.t.Fatalf("after start: want initialised, unsealed by %s with a healthy device; got %+v\nlog:\n%s", sealType, st, d.logs())
	}
	if !strings.Contains(d.logs(), "auto-unsealed with the seal device") {
		d.t.Fatal("the log does not say the node auto-unsealed")
	}
}

// expectSealed checks that the node is sealed and that its reason contains
// every one of want, and returns the status.
func (d *daemon) expectSealed(sealType string, want ...string) api.Status {
	d.t.Helper()
	st := d.status()
	if !st.Initialized || !st.Sealed || st.SealType != sealType {
		d.t.Fatalf("want initialised and sealed with seal_type %s, got %+v", sealType, st)
	}
	// Whatever failed, the reason must show the way out.
	want = append(want, "coffer operator unseal", "coffer operator reseal")
	for _, w := range want {
		if !strings.Contains(st.SealedReason, w) {
			d.t.Errorf("sealed_reason does not mention %q: %s", w, st.SealedReason)
		}
	}
	d.expectAPI("POST", "/v1/keys/app/unwrap", `{"ciphertext":"coffer:v1:AAAA"}`, 503, api.CodeSealed)
	return st
}

// waitStatus polls status until cond holds, failing after within.
func (d *daemon) waitStatus(what string, within time.Duration, cond func(api.Status) bool) api.Status {
	d.t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := d.status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: not within %v; last status %+v\nlog:\n%s", what, within, st, d.logs())
		}
		time.Sleep(deviceCheckEvery / 4)
	}
}

// resealAndRestart runs `coffer operator reseal`, restarts the daemon and
// checks that it auto-unseals and still opens ct.
func (d *daemon) resealAndRestart(sealType, ct, want string) {
	d.t.Helper()
	d.mustCoffer("", "operator", "reseal")
	if st := d.status(); st.Sealed || st.SealDeviceError != "" {
		d.t.Fatalf("after reseal: %+v", st)
	}
	d.stop()
	d.start()
	d.expectAutoUnsealed(sealType)
	d.expectUnwrap("app", ct, want)
}

// TestE2E_PKCS11_Lifecycle: init with a SoftHSM token, auto-unseal across
// restarts, a key that never leaves the token, then the token wiped: the
// node comes up sealed and says why, shares unseal it, a replacement token
// with the same label is enrolled with reseal, and the next start
// auto-unseals with the old ciphertexts still readable.
func TestE2E_PKCS11_Lifecycle(t *testing.T) {
	tk := softhsmtest.NewToken(t, "coffer-e2e")
	pinFile := tk.PINFile(t)
	d := newDeviceDaemon(t, pkcs11HCL(tk, pinFile), tk.Env()...)
	d.start()
	shares := d.initNode()
	if st := d.status(); st.Sealed || st.SealType != "pkcs11" {
		t.Fatalf("after init: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "data", "seal-blob.json")); err != nil {
		t.Fatalf("init with a device wrote no seal blob: %v", err)
	}
	d.mustCoffer("", "key", "create", "app")
	ct := d.wrap("app", secret1)

	// Restart: the token unseals the node, no shares needed.
	d.stop()
	checkTokenKey(t, tk)
	d.start()
	d.expectAutoUnsealed("pkcs11")
	d.expectUnwrap("app", ct, secret1)

	// A crash (SIGKILL) while logged in to the token leaves nothing behind
	// that stops the next start.
	d.kill()
	d.start()
	d.expectAutoUnsealed("pkcs11")

	// The token is wiped while the node is down.
	d.stop()
	softhsmtest.DeleteToken(t, tk)
	d.start()
	st := d.expectSealed("pkcs11", `"`+tk.Label+`"`)
	if st.SealDeviceError == "" {
		t.Error("seal_device_error is empty while the token is missing")
	}
	t.Logf("sealed_reason with the token gone: %s", st.SealedReason)

	// Break-glass: 3 operators' shares unseal it, with a warning in the log.
	d.unsealWith(shares[1:4])
	if !strings.Contains(d.logs(), "break-glass unseal") {
		t.Error("the break-glass unseal is not logged as such")
	}
	d.expectUnwrap("app", ct, secret1)

	// A replacement token with the same label (a new HSM configured like
	// the old one) appears while the node runs: reseal finds it (the library
	// is re-initialised), creates a fresh key in it and seals the root key.
	softhsmtest.AddToken(t, tk.Dir, tk.Label)
	d.resealAndRestart("pkcs11", ct, secret1)
	checkTokenKey(t, tk)

	checkNoSecrets(t, d, map[string][]byte{
		"plaintext": []byte(secret1),
		"root key":  combineShares(t, shares[:3]),
		"share 2":   []byte(shares[1]),
	})
}

// checkTokenKey lists the token's secret keys with pkcs11-tool (the daemon
// must not hold the token: stop it first) and checks that Coffer's key is
// an AES-256 key for encrypt/decrypt only that can never leave the token.
func checkTokenKey(t *testing.T, tk *softhsmtest.Token) {
	t.Helper()
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatalf("pkcs11-tool not found: install opensc (make deps): %v", err)
	}
	// The PIN on the command line is acceptable for a throw-away token only.
	cmd := exec.Command("pkcs11-tool", "--module", tk.Library, "--token-label", tk.Label,
		"--login", "--pin", tk.PIN, "--list-objects", "--type", "secrkey")
	cmd.Env = append(os.Environ(), tk.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	// Each object is a "Secret Key Object; …" line followed by indented
	// "name: value" lines; find the one labelled deviceKeyLabel.
	var block []string
	for _, obj := range strings.Split(string(out), "Secret Key Object")[1:] {
		lines := strings.Split(obj, "\n")
		for i := range lines {
			lines[i] = strings.TrimSpace(lines[i])
		}
		if slices.Contains(lines, "label:      "+deviceKeyLabel) {
			block = lines
			break
		}
	}
	field := func(name string) string {
		for _, l := range block {
			if v, ok := strings.CutPrefix(l, name+":"); ok {
				return strings.TrimSpace(v)
			}
		}
		return ""
	}
	if block == nil {
		t.Fatalf("no secret key labelled %q on token %q; pkcs11-tool printed:\n%s", deviceKeyLabel, tk.Label, out)
	}
	if !strings.Contains(block[0], "AES length 32") {
		t.Errorf("the seal key is not AES-256: %q", block[0])
	}
	access := strings.Split(field("Access"), ", ")
	for _, want := range []string{"sensitive", "always sensitive", "never extractable", "local"} {
		if !slices.Contains(access, want) {
			t.Errorf("the seal key's access lacks %q: %v", want, access)
		}
	}
	if slices.Contains(access, "extractable") {
		t.Errorf("the seal key is extractable: %v", access)
	}
	if usage := field("Usage"); usage != "encrypt, decrypt" {
		t.Errorf("the seal key's usage is %q, want encrypt and decrypt only", usage)
	}
}

// TestE2E_PKCS11_WrongPIN: a PIN the token rejects leaves the node sealed
// with a reason that says so; cofferd tries it once, not at every health
// check (which would lock a real HSM's user PIN), so once the PIN file is
// fixed the next start auto-unseals.
func TestE2E_PKCS11_WrongPIN(t *testing.T) {
	tk := softhsmtest.NewToken(t, "coffer-e2e-pin")
	pinFile := tk.PINFile(t)
	d := newDeviceDaemon(t, pkcs11HCL(tk, pinFile), tk.Env()...)
	d.start()
	shares := d.initNode()
	d.stop()

	// A distinctive wrong PIN, long enough to search the log for.
	const wrongPIN = "wrong-PIN-5c1e9a07"
	if err := os.WriteFile(pinFile, []byte(wrongPIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.expectSealed("pkcs11", "rejected the PIN", `"`+tk.Label+`"`)
	// Proving that something does not happen needs time to pass: let the
	// health monitor run a good number of times.
	time.Sleep(15 * deviceCheckEvery)
	const rejected = "the HSM rejected the PIN; not retrying"
	if n := strings.Count(d.logs(), rejected); n != 1 {
		t.Errorf("the token rejected the PIN %d times in %v, want exactly 1 login attempt (no retries); the log's PIN lines:\n%s",
			n, 15*deviceCheckEvery, grepLines(d.logs(), "PIN"))
	}
	if st := d.status(); !strings.Contains(st.SealDeviceError, "rejected the PIN") {
		t.Errorf("seal_device_error = %q, want the PIN rejection", st.SealDeviceError)
	}
	// Shares still work with a broken device.
	d.unsealWith(shares[:3])
	d.stop()
	if strings.Contains(d.logs(), wrongPIN) {
		t.Error("the wrong PIN appears in the daemon log")
	}

	// The right PIN again: the next start auto-unseals. (SoftHSM 2.6 never
	// locks a user PIN, so this shows recovery; the login count above is
	// what protects a real HSM's retry counter.)
	if err := os.WriteFile(pinFile, []byte(tk.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.expectAutoUnsealed("pkcs11")
}

// TestE2E_TPM_Lifecycle: the same cycle against swtpm. The TPM answers at
// every restart; then it is gone when the node starts (sealed, shares,
// reseal once it is back); then it is cleared (new seeds, so the sealed
// root key no longer loads): sealed, shares, reseal, auto-unseal.
func TestE2E_TPM_Lifecycle(t *testing.T) {
	sw := softhsmtest.StartSWTPM(t)
	d := newDeviceDaemon(t, tpmHCL(sw.Addr))
	d.start()
	shares := d.initNode()
	if st := d.status(); st.Sealed || st.SealType != "tpm" {
		t.Fatalf("after init: %+v", st)
	}
	d.mustCoffer("", "key", "create", "app")
	ct := d.wrap("app", secret1)

	d.stop()
	d.start()
	d.expectAutoUnsealed("tpm")
	d.expectUnwrap("app", ct, secret1)

	t.Run("daemon killed", func(t *testing.T) {
		d.t = t
		defer func() { d.t = t }()
		// swtpm does not flush the objects of a client that went away,
		// and holds only three: a node killed more often than that must
		// still auto-unseal (it flushes the leftovers when it connects).
		for range 4 {
			d.kill()
			d.start()
			d.expectAutoUnsealed("tpm")
		}
		if !strings.Contains(d.logs(), "flushed TPM handles left by an earlier client") {
			t.Error("the restarted node did not flush what the killed one left in the TPM")
		}
		d.expectUnwrap("app", ct, secret1)
	})
	d.t = t

	t.Run("TPM absent at start", func(t *testing.T) {
		d.t = t
		defer func() { d.t = t }()
		d.stop()
		sw.Kill()
		d.start()
		st := d.expectSealed("tpm", sw.Addr)
		if st.SealDeviceError == "" {
			t.Error("seal_device_error is empty while the TPM is unreachable")
		}
		t.Logf("sealed_reason with the TPM gone: %s", st.SealedReason)
		d.unsealWith(shares[:3])
		sw.Restart(t)
		d.resealAndRestart("tpm", ct, secret1)
	})
	d.t = t

	t.Run("TPM cleared", func(t *testing.T) {
		d.t = t
		defer func() { d.t = t }()
		d.stop()
		// Clearing the TPM (or moving the disk to another machine) gives
		// new seeds, so a new storage root key.
		sw.Stop()
		if err := os.Remove(filepath.Join(sw.Dir, "tpm2-00.permall")); err != nil {
			t.Fatalf("clearing the emulator's state: %v", err)
		}
		sw.Restart(t)
		d.start()
		st := d.expectSealed("tpm", "could not unseal", "was cleared")
		t.Logf("sealed_reason with the TPM cleared: %s", st.SealedReason)
		d.unsealWith(shares[2:5])
		d.resealAndRestart("tpm", ct, secret1)
	})
}

// TestE2E_TPM_PCRPolicy: a root key bound to PCR 16 is refused once the PCR
// changes (as a firmware or boot change would change PCRs 0-7); shares
// unseal, reseal binds it to the new value, and the next start
// auto-unseals. swtpm stays up throughout: its restart resets the PCRs.
func TestE2E_TPM_PCRPolicy(t *testing.T) {
	sw := softhsmtest.StartSWTPM(t)
	d := newDeviceDaemon(t, tpmHCL(sw.Addr, 16))
	d.start()
	shares := d.initNode()
	d.mustCoffer("", "key", "create", "app")
	ct := d.wrap("app", secret2)
	d.stop()
	d.start()
	d.expectAutoUnsealed("tpm")

	// swtpm serves one client: the daemon must let go before tpm2-tools
	// can extend the PCR.
	d.stop()
	sw.PCRExtend(t, 16, "e2e: a new boot component")
	d.start()
	st := d.expectSealed("tpm", "PCR policy", "16")
	t.Logf("sealed_reason after PCR 16 changed: %s", st.SealedReason)
	d.unsealWith(shares[:3])
	d.resealAndRestart("tpm", ct, secret2)
}

// TestE2E_TPM_DeviceLostWhileRunning: the TPM dies under a running node.
// The node keeps serving (its keys are in memory), status and health
// report the device failure within a bounded time, and the error clears
// once the TPM is back.
func TestE2E_TPM_DeviceLostWhileRunning(t *testing.T) {
	sw := softhsmtest.StartSWTPM(t)
	d := newDeviceDaemon(t, tpmHCL(sw.Addr))
	d.start()
	d.initNode()
	d.mustCoffer("", "key", "create", "app")

	sw.Kill()
	// The monitor runs every deviceCheckEvery; allow for a slow machine.
	const bound = 5 * time.Second
	st := d.waitStatus("seal_device_error after the TPM was killed", bound, func(st api.Status) bool { return st.SealDeviceError != "" })
	t.Logf("seal_device_error with the TPM gone: %s", st.SealDeviceError)
	if st.Sealed {
		t.Fatal("the node sealed itself when its TPM went away; it should keep serving from memory")
	}
	var js api.Status
	if err := json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "status")), &js); err != nil || js.SealDeviceError == "" {
		t.Errorf("coffer status --format json does not report the device error: %v %+v", err, js)
	}
	code, _, body := d.api("GET", "/v1/sys/health", "")
	var hs api.Status
	if err := json.Unmarshal(body, &hs); err != nil || code != http.StatusOK || hs.SealDeviceError == "" {
		t.Errorf("health with the TPM gone: %d %s, want 200 with seal_device_error", code, body)
	}
	ct := d.wrap("app", secret1)
	d.expectUnwrap("app", ct, secret1)

	sw.Restart(t)
	d.waitStatus("seal_device_error cleared after the TPM came back", bound, func(st api.Status) bool { return st.SealDeviceError == "" })
	if !strings.Contains(d.logs(), "seal device healthy again") {
		t.Error("the log does not say the device recovered")
	}
	d.expectUnwrap("app", ct, secret1)
}

// TestE2E_AutoUnsealTiming measures, for each seal device, the time from
// exec'ing cofferd to its first status answer that says unsealed (the
// node unseals before it listens). Reproduce with:
//
//	GOTOOLCHAIN=local go test -count=1 ./e2e/ -run AutoUnsealTiming -v
func TestE2E_AutoUnsealTiming(t *testing.T) {
	const runs = 5
	type device struct {
		name  string
		setup func(t *testing.T) *daemon
	}
	for _, dev := range []device{
		{"soft", func(t *testing.T) *daemon {
			return newDaemon(t, "dev = true\n"+`seal "soft" { key_file = "dev-seal.key" }`+"\n")
		}},
		{"pkcs11", func(t *testing.T) *daemon {
			tk := softhsmtest.NewToken(t, "coffer-e2e-timing")
			return newDeviceDaemon(t, pkcs11HCL(tk, tk.PINFile(t)), tk.Env()...)
		}},
		{"tpm", func(t *testing.T) *daemon {
			return newDeviceDaemon(t, tpmHCL(softhsmtest.StartSWTPM(t).Addr))
		}},
	} {
		t.Run(dev.name, func(t *testing.T) {
			d := dev.setup(t)
			d.pollEvery = time.Millisecond
			d.start()
			d.initNode()
			var times, afterLeader []time.Duration
			for range runs {
				d.stop()
				logFrom := len(d.logs())
				d.start()
				// cofferd auto-unseals before it listens, so its first
				// answer is normally already unsealed; poll in case not.
				took := d.servingAfter
				for d.status().Sealed {
					took = time.Since(d.startedAt)
					if took > 15*time.Second {
						t.Fatalf("not auto-unsealed 15s after start:\n%s", d.logs())
					}
					time.Sleep(d.pollEvery)
				}
				if st := d.status(); st.SealType != dev.name {
					t.Fatalf("seal_type = %q, want %q", st.SealType, dev.name)
				}
				times = append(times, took)
				// The share of it after raft elected this node: reading
				// the log, opening the device, unsealing.
				run := d.logs()[logFrom:]
				leader, ok1 := logTime(run, "entering leader state")
				unsealed, ok2 := logTime(run, "auto-unsealed with the seal device")
				if !ok1 || !ok2 {
					t.Fatalf("no leader or auto-unseal line in this run's log:\n%s", run)
				}
				afterLeader = append(afterLeader, unsealed.Sub(leader))
			}
			slices.Sort(times)
			slices.Sort(afterLeader)
			ms := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
			t.Logf("auto-unseal %s: exec to first unsealed status, median %v of %d runs (min %v, max %v); of which after the raft election (device open + unseal): median %v",
				dev.name, ms(times[runs/2]), runs, ms(times[0]), ms(times[runs-1]), ms(afterLeader[runs/2]))
		})
	}
}

// logTime returns the time stamp of the first hclog line in log that
// contains marker.
func logTime(log, marker string) (time.Time, bool) {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, marker) {
			continue
		}
		ts, _, _ := strings.Cut(line, " ")
		t, err := time.Parse("2006-01-02T15:04:05.000Z0700", ts)
		return t, err == nil
	}
	return time.Time{}, false
}

// grepLines returns the lines of log that contain s.
func grepLines(log, s string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
