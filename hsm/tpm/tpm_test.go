package tpm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/hsm/hsmtest"
	softhsmtest "github.com/coffer-kms/coffer/softhsm-test"
)

// syncBuffer collects log output from the device (which may log from any
// goroutine holding its lock).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

// testLogger returns a logger whose output is shown only if the test fails.
func testLogger(t testing.TB) (hclog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("device log:\n%s", buf.Bytes())
		}
	})
	return hclog.New(&hclog.LoggerOptions{Name: "tpm", Output: buf, Level: hclog.Debug}), buf
}

func mustOpen(t testing.TB, addr string, pcrs ...int) *Device {
	t.Helper()
	log, _ := testLogger(t)
	d, err := Open(context.Background(), Config{Address: addr, PCRs: pcrs}, log)
	if err != nil {
		t.Fatalf("Open(%s): %v", addr, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

var randomSecret = hsmtest.RandomBytes

// closedAddr is a TCP address on which nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestTPMDevice_SealUnseal(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	tests := []struct {
		name     string
		pcrs     []int
		size     int
		wantMeta map[string]string
	}{
		{name: "no pcrs", size: 32},
		{name: "no pcrs, empty secret", size: 0},
		{name: "no pcrs, largest secret", size: MaxSecret},
		{name: "pcr 16", pcrs: []int{16}, size: 32, wantMeta: map[string]string{metaPCRs: "16"}},
		{name: "several pcrs, unsorted", pcrs: []int{23, 0, 7, 16}, size: 32, wantMeta: map[string]string{metaPCRs: "0,7,16,23"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, logs := testLogger(t)
			d, err := Open(context.Background(), Config{Address: emu.Addr, PCRs: tt.pcrs}, log)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer d.Close()
			if got, exp := d.Kind(), "tpm"; got != exp {
				t.Errorf("Kind() = %q, want %q", got, exp)
			}
			secret := randomSecret(t, tt.size)
			aad := hsm.SealAAD("cluster-1", "node-1")
			b := hsmtest.MustSeal(t, d, secret, aad)
			if got, exp := b.Kind, Kind; got != exp {
				t.Errorf("blob kind = %q, want %q", got, exp)
			}
			if got, exp := len(b.KeyID), 64; got != exp {
				t.Errorf("blob key id %q has %d characters, want %d (hex SRK name digest)", b.KeyID, got, exp)
			}
			for k, v := range tt.wantMeta {
				if got := b.Meta[k]; got != v {
					t.Errorf("meta[%q] = %q, want %q", k, got, v)
				}
			}
			if tt.wantMeta == nil && len(b.Meta) != 0 {
				t.Errorf("meta = %v, want none without PCRs", b.Meta)
			}
			if len(tt.pcrs) > 0 && len(strings.Split(b.Meta[metaPCRValues], ",")) != len(tt.pcrs) {
				t.Errorf("meta[%q] = %q, want one value per PCR", metaPCRValues, b.Meta[metaPCRValues])
			}
			hsmtest.MustUnseal(t, d, b, aad, secret)

			// Fresh randomness: sealing the same secret twice differs.
			b2 := hsmtest.MustSeal(t, d, secret, aad)
			if bytes.Equal(b.Data, b2.Data) {
				t.Error("two seals of the same secret are identical")
			}
			if err := d.Health(context.Background()); err != nil {
				t.Errorf("Health: %v", err)
			}
			if len(secret) >= 8 && bytes.Contains(logs.Bytes(), secret) {
				t.Error("the secret appears in the device log")
			}
		})
	}
}

func TestTPMDevice_Seal_TooLarge(t *testing.T) {
	d := mustOpen(t, softhsmtest.StartSWTPM(t).Addr)
	_, err := d.Seal(context.Background(), make([]byte, MaxSecret+1), nil)
	if err == nil || !strings.Contains(err.Error(), "at most 96") {
		t.Fatalf("Seal of %d bytes: err = %v, want a size error", MaxSecret+1, err)
	}
}

func TestTPMDevice_Unseal_Refuses(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	d := mustOpen(t, emu.Addr)
	aad := hsm.SealAAD("cluster-1", "node-1")
	secret := randomSecret(t, 32)
	b := hsmtest.MustSeal(t, d, secret, aad)

	// A PCR-bound blob, for the meta tests.
	d.pcrs = []int{16}
	bp := hsmtest.MustSeal(t, d, secret, aad)
	d.pcrs = nil

	// A blob sealed by another TPM (other seeds, other SRK).
	other := mustOpen(t, softhsmtest.StartSWTPM(t).Addr)
	bo := hsmtest.MustSeal(t, other, secret, aad)

	with := func(b hsm.Blob, f func(*hsm.Blob)) hsm.Blob {
		b.Data = bytes.Clone(b.Data)
		m := map[string]string{}
		for k, v := range b.Meta {
			m[k] = v
		}
		b.Meta = m
		f(&b)
		return b
	}
	hsmtest.CheckRefusals(t, d, []hsmtest.Refusal{
		{Name: "other aad", Blob: b, AAD: hsm.SealAAD("cluster-1", "node-2"), WantErr: "aad does not match"},
		{Name: "nil aad", Blob: b, AAD: nil, WantErr: "aad does not match"},
		{Name: "other kind", Blob: with(b, func(b *hsm.Blob) { b.Kind = "soft" }), AAD: aad, WantErr: `sealed by a "soft" device`},
		{Name: "other tpm", Blob: bo, AAD: aad, WantErr: "sealed under TPM storage key"},
		{Name: "other tpm without key id", Blob: with(bo, func(b *hsm.Blob) { b.KeyID = "" }), AAD: aad, WantErr: "does not load under this TPM's storage key"},
		{Name: "empty data", Blob: with(b, func(b *hsm.Blob) { b.Data = nil }), AAD: aad, WantErr: "damaged"},
		{Name: "bad magic", Blob: with(b, func(b *hsm.Blob) { b.Data[0] ^= 1 }), AAD: aad, WantErr: "bad magic"},
		{Name: "other version", Blob: with(b, func(b *hsm.Blob) { b.Data[4] = 2 }), AAD: aad, WantErr: "layout version 2"},
		{Name: "truncated", Blob: with(b, func(b *hsm.Blob) { b.Data = b.Data[:len(b.Data)-1] }), AAD: aad, WantErr: "truncated"},
		{Name: "trailing bytes", Blob: with(b, func(b *hsm.Blob) { b.Data = append(b.Data, 0) }), AAD: aad, WantErr: "trailing"},
		{Name: "tampered private", Blob: with(b, func(b *hsm.Blob) { b.Data[len(b.Data)-5] ^= 1 }), AAD: aad, WantErr: "does not load"},
		{Name: "pcr meta removed", Blob: with(bp, func(b *hsm.Blob) { delete(b.Meta, metaPCRs) }), AAD: aad, WantErr: "requires a policy"},
		{Name: "pcr meta added", Blob: with(b, func(b *hsm.Blob) { b.Meta[metaPCRs] = "16" }), AAD: aad, WantErr: "has no policy"},
		{Name: "pcr meta garbage", Blob: with(bp, func(b *hsm.Blob) { b.Meta[metaPCRs] = "sixteen" }), AAD: aad, WantErr: "not a PCR list"},
		{Name: "pcr meta other pcr", Blob: with(bp, func(b *hsm.Blob) { b.Meta[metaPCRs] = "7" }), AAD: aad, WantErr: "PCR policy"},
	})
	// None of the refusals broke the device.
	hsmtest.MustUnseal(t, d, b, aad, secret)
	hsmtest.MustUnseal(t, d, bp, aad, secret)
}

func TestTPMDevice_BlobSurvivesReopenAndRestart(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	aad := hsm.SealAAD("c", "n")
	secret := randomSecret(t, 32)
	d := mustOpen(t, emu.Addr, 16)
	b := hsmtest.MustSeal(t, d, secret, aad)
	d.Close()

	t.Run("close and open", func(t *testing.T) {
		d := mustOpen(t, emu.Addr, 16)
		hsmtest.MustUnseal(t, d, b, aad, secret)
		d.Close()
	})
	t.Run("swtpm restart", func(t *testing.T) {
		emu.Restart(t)
		d := mustOpen(t, emu.Addr, 16)
		hsmtest.MustUnseal(t, d, b, aad, secret)
	})
	t.Run("swtpm restart while open", func(t *testing.T) {
		// The connection is stale; the call reconnects and retries once.
		d := mustOpen(t, emu.Addr, 16)
		emu.Restart(t)
		hsmtest.MustUnseal(t, d, b, aad, secret)
		if err := d.Health(context.Background()); err != nil {
			t.Fatalf("Health after reconnect: %v", err)
		}
	})
}

func TestTPMDevice_PCRPolicy(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	aad := hsm.SealAAD("c", "n")
	secret := randomSecret(t, 32)
	d := mustOpen(t, emu.Addr, 16)
	bound := hsmtest.MustSeal(t, d, secret, aad)
	d.pcrs = []int{7, 16}
	bound2 := hsmtest.MustSeal(t, d, secret, aad)
	d.pcrs = nil
	free := hsmtest.MustSeal(t, d, secret, aad)
	d.Close() // swtpm serves one client: release it for tpm2_pcrextend

	emu.PCRExtend(t, 16, "a new boot loader")

	d = mustOpen(t, emu.Addr, 16)
	for _, tt := range []struct {
		name    string
		blob    hsm.Blob
		wantErr string
	}{
		{"pcr 16", bound, "(PCRs 16 changed since the root key was sealed)"},
		{"pcrs 7 and 16", bound2, "(PCRs 16 changed since the root key was sealed)"},
		{"no recorded values", func() hsm.Blob {
			b := bound
			b.Meta = map[string]string{metaPCRs: "16"}
			return b
		}(), "(PCRs 16 no longer have the values"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.Unseal(context.Background(), tt.blob, aad)
			if err == nil {
				clear(got)
				t.Fatal("Unseal succeeded after PCR 16 changed")
			}
			if !errors.Is(err, hsm.ErrUnsealFailed) {
				t.Errorf("error %q does not wrap ErrUnsealFailed", err)
			}
			for _, want := range []string{"PCR policy", tt.wantErr, "coffer operator reseal"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
	// A blob without a PCR policy is unaffected.
	hsmtest.MustUnseal(t, d, free, aad, secret)
	// Resealing binds to the new value.
	hsmtest.MustUnseal(t, d, hsmtest.MustSeal(t, d, secret, aad), aad, secret)

	// A restart resets the PCRs: the old blob opens again.
	d.Close()
	emu.Restart(t)
	d = mustOpen(t, emu.Addr, 16)
	hsmtest.MustUnseal(t, d, bound, aad, secret)
}

func TestTPMDevice_Kill(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	aad := hsm.SealAAD("c", "n")
	secret := randomSecret(t, 32)
	d := mustOpen(t, emu.Addr)
	b := hsmtest.MustSeal(t, d, secret, aad)

	emu.Kill()
	ctx := context.Background()
	ops := []struct {
		name string
		op   func() error
	}{
		{"seal", func() error { _, err := d.Seal(ctx, secret, aad); return err }},
		{"unseal", func() error { _, err := d.Unseal(ctx, b, aad); return err }},
		{"health", func() error { return d.Health(ctx) }},
		{"reopen", func() error { return d.Reopen(ctx) }},
	}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			err := o.op()
			if !errors.Is(err, hsm.ErrDeviceUnavailable) {
				t.Fatalf("%s with swtpm killed: err = %v, want ErrDeviceUnavailable", o.name, err)
			}
			if !strings.Contains(err.Error(), emu.Addr) {
				t.Errorf("error %q does not name the address", err)
			}
		})
	}

	emu.Restart(t)
	if err := d.Reopen(ctx); err != nil {
		t.Fatalf("Reopen after restart: %v", err)
	}
	if err := d.Health(ctx); err != nil {
		t.Fatalf("Health after Reopen: %v", err)
	}
	hsmtest.MustUnseal(t, d, b, aad, secret)

	// Without Reopen: the next call after the restart reconnects by itself.
	emu.Kill()
	if err := d.Health(ctx); !errors.Is(err, hsm.ErrDeviceUnavailable) {
		t.Fatalf("Health with swtpm killed: %v", err)
	}
	emu.Restart(t)
	if err := d.Health(ctx); err != nil {
		t.Fatalf("Health after restart: %v", err)
	}
	hsmtest.MustUnseal(t, d, b, aad, secret)
}

func TestTPMOpen_Errors(t *testing.T) {
	closed := closedAddr(t)
	tests := []struct {
		name        string
		cfg         Config
		unavailable bool
		wantErr     []string
	}{
		{"nothing listening", Config{Address: closed}, true,
			[]string{"cannot open the TPM at " + closed, "connection refused", `check seal "tpm" device/address`, "tss group"}},
		{"missing device", Config{Device: "/nonexistent/tpmrm0"}, true,
			[]string{"cannot open the TPM at /nonexistent/tpmrm0", "no such file"}},
		{"not a device", Config{Device: "/dev/null"}, true, nil}, // a char device but no TPM: see below
		{"missing unix socket", Config{Address: "unix:/nonexistent/tpm.sock"}, true,
			[]string{"cannot open the TPM at unix:/nonexistent/tpm.sock"}},
		{"both", Config{Device: "/dev/tpmrm0", Address: "127.0.0.1:2321"}, false, []string{"both device and address"}},
		{"neither", Config{}, false, []string{"neither device nor address"}},
		{"bad address", Config{Address: "localhost"}, false, []string{`address "localhost" is neither`}},
		{"bad port", Config{Address: "127.0.0.1:99999"}, false, []string{"invalid port"}},
		{"empty unix path", Config{Address: "unix:"}, false, []string{"no socket path"}},
		{"pcr out of range", Config{Address: closed, PCRs: []int{24}}, false, []string{"PCR 24 is out of range"}},
		{"negative pcr", Config{Address: closed, PCRs: []int{-1}}, false, []string{"PCR -1 is out of range"}},
		{"duplicate pcr", Config{Address: closed, PCRs: []int{7, 7}}, false, []string{"PCR 7 is listed twice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if verr := tt.cfg.Validate(); (verr != nil) == tt.unavailable {
				t.Errorf("Validate() = %v: config errors (and only they) must be found without the TPM", verr)
			}
			d, err := Open(ctx, tt.cfg, nil)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			if tt.cfg.Device == "/dev/null" {
				// /dev/null is a device that swallows commands and answers
				// nothing: any clean error will do.
				if !errors.Is(err, hsm.ErrDeviceUnavailable) {
					t.Errorf("error %q does not wrap ErrDeviceUnavailable", err)
				}
				return
			}
			if got := errors.Is(err, hsm.ErrDeviceUnavailable); got != tt.unavailable {
				t.Errorf("errors.Is(%q, ErrDeviceUnavailable) = %v, want %v", err, got, tt.unavailable)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

// TestConformance runs the hsm.Device contract's suite on swtpm
// simulators, one per device.
func TestConformance(t *testing.T) {
	open := func(t *testing.T) hsm.Device { return mustOpen(t, softhsmtest.StartSWTPM(t).Addr, 16) }
	hsmtest.Run(t, hsmtest.Config{Open: open, Other: open, Goroutines: 4, Rounds: 3})
}

// TestTPMDevice_Closed: Close releases the simulator, so that another
// client gets it at once, and errors after Close say "closed" (the rest
// of Close's contract is in the conformance suite).
func TestTPMDevice_Closed(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	d := mustOpen(t, emu.Addr)
	b := hsmtest.MustSeal(t, d, []byte("root key"), nil)
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.Health(context.Background()); !errors.Is(err, hsm.ErrDeviceUnavailable) || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Health after Close: %v, want ErrDeviceUnavailable (closed)", err)
	}
	d2 := mustOpen(t, emu.Addr)
	hsmtest.MustUnseal(t, d2, b, nil, []byte("root key"))
}

// TestTPMDevice_Context: cancelled in the middle of an operation, the call
// fails with the cancellation and the device recovers without leaking
// objects (a cancelled context before the call is in the conformance
// suite).
func TestTPMDevice_Context(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	d := mustOpen(t, emu.Addr)
	b := hsmtest.MustSeal(t, d, []byte("root key"), nil)
	for n := 1; n <= 8; n++ {
		ctx, cancel := context.WithCancel(context.Background())
		sent := 0
		d.setTap(func(cmd, rsp []byte) {
			if sent++; sent == n {
				cancel()
			}
		})
		got, err := d.Unseal(ctx, b, nil)
		cancel()
		d.setTap(nil)
		if err == nil {
			clear(got) // n is past the last command
			continue
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled after command %d: %v, want context.Canceled", n, err)
		}
	}
	hsmtest.MustUnseal(t, d, b, nil, []byte("root key"))
	// Nothing leaked: swtpm has three object slots; many loads still work.
	for range 5 {
		hsmtest.MustUnseal(t, d, b, nil, []byte("root key"))
	}
}

func TestTPMDevice_FlushesLeftoversOfCrashedClient(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	// A client that dies with objects loaded: swtpm keeps them, and has
	// three object slots.
	c, err := dial(context.Background(), target{network: "tcp", address: emu.Addr})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(c); err != nil {
			t.Fatalf("CreatePrimary: %v", err)
		}
	}
	if _, _, err := tpm2.HMACSession(c, tpm2.TPMAlgSHA256, 16); err != nil {
		t.Fatalf("HMACSession: %v", err)
	}
	c.close()

	d := mustOpen(t, emu.Addr, 16)
	hsmtest.MustUnseal(t, d, hsmtest.MustSeal(t, d, []byte("root key"), nil), nil, []byte("root key"))
}

func (d *Device) setTap(f func(cmd, rsp []byte)) {
	d.sem <- struct{}{}
	d.tap = f
	d.unlock()
}

type exchange struct{ cmd, rsp []byte }

func commandCode(cmd []byte) tpm2.TPMCC {
	return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
}

// sessionAttrs returns the attributes of the first authorization of a
// command with one handle and sessions.
func sessionAttrs(t *testing.T, cmd []byte) byte {
	t.Helper()
	// header (10) | handle (4) | authorizationSize (4) | sessionHandle (4) | nonce (2B) | attributes (1)
	off := 10 + 4 + 4 + 4
	n := int(binary.BigEndian.Uint16(cmd[off:]))
	return cmd[off+2+n]
}

const (
	attrDecrypt = 0x20 // TPMA_SESSION.decrypt: the first command parameter is encrypted
	attrEncrypt = 0x40 // TPMA_SESSION.encrypt: the first response parameter is encrypted
)

// TestDevice_EncryptedSessions captures every byte exchanged with the TPM
// and checks that the secret never crosses in clear, and that the sessions
// are salted to the SRK with AES-128-CFB parameter encryption.
func TestTPMDevice_EncryptedSessions(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	for _, pcrs := range [][]int{nil, {16}} {
		t.Run("pcrs="+formatPCRs(pcrs), func(t *testing.T) {
			d := mustOpen(t, emu.Addr, pcrs...)
			secret := randomSecret(t, 32)
			var mu sync.Mutex
			var wire []exchange
			d.setTap(func(cmd, rsp []byte) {
				mu.Lock()
				defer mu.Unlock()
				wire = append(wire, exchange{bytes.Clone(cmd), bytes.Clone(rsp)})
			})
			b := hsmtest.MustSeal(t, d, secret, nil)
			hsmtest.MustUnseal(t, d, b, nil, secret)
			d.setTap(nil)

			seen := map[tpm2.TPMCC]int{}
			for _, x := range wire {
				cc := commandCode(x.cmd)
				seen[cc]++
				if bytes.Contains(x.cmd, secret) || bytes.Contains(x.rsp, secret) {
					t.Errorf("the secret crossed the wire in clear in command %#x", uint32(cc))
				}
				switch cc {
				case tpm2.TPMCCStartAuthSession:
					// header (10) | tpmKey (4) | bind (4) | nonceCaller (2B) | encryptedSalt (2B) | sessionType (1) | symmetric (alg, bits, mode)
					if got := tpm2.TPMHandle(binary.BigEndian.Uint32(x.cmd[10:])); got != d.srk.handle {
						t.Errorf("session salted to handle %#x, want the SRK %#x", uint32(got), uint32(d.srk.handle))
					}
					off := 18
					off += 2 + int(binary.BigEndian.Uint16(x.cmd[off:]))
					salt := int(binary.BigEndian.Uint16(x.cmd[off:]))
					if salt == 0 {
						t.Error("session has no encrypted salt")
					}
					off += 2 + salt + 1
					alg, bits, mode := binary.BigEndian.Uint16(x.cmd[off:]), binary.BigEndian.Uint16(x.cmd[off+2:]), binary.BigEndian.Uint16(x.cmd[off+4:])
					if tpm2.TPMAlgID(alg) != tpm2.TPMAlgAES || bits != 128 || tpm2.TPMAlgID(mode) != tpm2.TPMAlgCFB {
						t.Errorf("session symmetric = alg %#x bits %d mode %#x, want AES-128-CFB", alg, bits, mode)
					}
				case tpm2.TPMCCCreate:
					if sessionAttrs(t, x.cmd)&attrDecrypt == 0 {
						t.Error("TPM2_Create does not encrypt its sensitive parameter")
					}
				case tpm2.TPMCCUnseal:
					if sessionAttrs(t, x.cmd)&attrEncrypt == 0 {
						t.Error("TPM2_Unseal does not ask for response encryption")
					}
				}
			}
			for _, cc := range []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCCreate, tpm2.TPMCCLoad, tpm2.TPMCCUnseal} {
				if seen[cc] == 0 {
					t.Errorf("command %#x was not seen on the wire", uint32(cc))
				}
			}
			if len(pcrs) > 0 && seen[tpm2.TPMCCPolicyPCR] == 0 {
				t.Error("TPM2_PolicyPCR was not sent for a PCR-bound blob")
			}

			// Control: the capture does see a secret unsealed without
			// parameter encryption, so the checks above can fail.
			if len(pcrs) == 0 {
				var clearRsp []byte
				d.setTap(func(cmd, rsp []byte) {
					if commandCode(cmd) == tpm2.TPMCCUnseal {
						clearRsp = bytes.Clone(rsp)
					}
				})
				err := d.do(context.Background(), func(c *conn, k *srk) error {
					pub, priv, err := decodeBlob(b.Data)
					if err != nil {
						return err
					}
					ld, err := tpm2.Load{ParentHandle: tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)}, InPublic: *pub, InPrivate: *priv}.Execute(c)
					if err != nil {
						return err
					}
					defer d.flush(c, ld.ObjectHandle)
					_, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name, Auth: tpm2.PasswordAuth(nil)}}.Execute(c)
					return err
				})
				d.setTap(nil)
				if err != nil {
					t.Fatalf("plain unseal: %v", err)
				}
				if !bytes.Contains(clearRsp, secret) {
					t.Error("control failed: the secret is not visible in a plain TPM2_Unseal response")
				}
			}
		})
	}
}

func TestTPMClassify(t *testing.T) {
	d := &Device{target: target{network: "tcp", address: "127.0.0.1:1", display: "127.0.0.1:1"}, log: hclog.NewNullLogger()}
	tests := []struct {
		name        string
		err         error
		refusal     string
		unavailable bool
		unseal      bool
		broken      bool
		wantErr     string
	}{
		{"lockout", tpm2.TPMRCLockout, "", true, false, false, "dictionary-attack lockout"},
		{"lockout on unseal", tpm2.TPMRCLockout, "refused", true, false, false, "tpm2_dictionarylockout --clear-lockout"},
		{"retry", tpm2.TPMRCRetry, "", true, false, false, "busy or out of resources"},
		{"object memory", tpm2.TPMRCObjectMemory, "refused", true, false, false, "retry later"},
		{"pcr changed", tpm2.TPMRCPCRChanged, "refused", true, false, false, "PCRs changed while"},
		{"handle gone", tpm2.TPMRCHandle + 0x100, "refused", true, false, true, "no longer holds Coffer's storage key"},
		{"integrity on load", tpm2.TPMRCIntegrity + 0x100 + 0x40, "the blob does not load", false, true, false, "the blob does not load"},
		{"fmt1 without refusal", tpm2.TPMRCValue + 0x40 + 0x100, "", true, false, false, "the TPM refused the command"},
		{"transport", &transportError{err: errors.New("connection reset by peer")}, "refused", true, false, false, "lost the connection to the TPM: connection reset by peer at 127.0.0.1:1"},
		{"go-tpm local", errors.New("incorrect authorization HMAC"), "", true, false, true, "incorrect authorization HMAC"},
		{"cancelled", context.Canceled, "refused", false, false, false, "context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &conn{}
			err := d.classify(c, "op", tt.err, tt.refusal)
			if got := errors.Is(err, hsm.ErrDeviceUnavailable); got != tt.unavailable {
				t.Errorf("unavailable = %v, want %v (%v)", got, tt.unavailable, err)
			}
			if got := errors.Is(err, hsm.ErrUnsealFailed); got != tt.unseal {
				t.Errorf("unseal failed = %v, want %v (%v)", got, tt.unseal, err)
			}
			if got := c.broken != nil; got != tt.broken {
				t.Errorf("connection marked broken = %v, want %v", got, tt.broken)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func benchmarkUnseal(b *testing.B, pcrs ...int) {
	emu := softhsmtest.StartSWTPM(b)
	d := mustOpen(b, emu.Addr, pcrs...)
	aad := hsm.SealAAD("c", "n")
	secret := randomSecret(b, 32)
	blob := hsmtest.MustSeal(b, d, secret, aad)
	ctx := context.Background()
	for b.Loop() {
		got, err := d.Unseal(ctx, blob, aad)
		if err != nil {
			b.Fatal(err)
		}
		clear(got)
	}
}

func benchmarkSeal(b *testing.B, pcrs ...int) {
	emu := softhsmtest.StartSWTPM(b)
	d := mustOpen(b, emu.Addr, pcrs...)
	aad := hsm.SealAAD("c", "n")
	secret := randomSecret(b, 32)
	ctx := context.Background()
	for b.Loop() {
		if _, err := d.Seal(ctx, secret, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTPMSeal(b *testing.B)       { benchmarkSeal(b) }
func BenchmarkTPMSeal_PCR16(b *testing.B) { benchmarkSeal(b, 16) }

func BenchmarkTPMUnseal(b *testing.B)       { benchmarkUnseal(b) }
func BenchmarkTPMUnseal_PCR16(b *testing.B) { benchmarkUnseal(b, 16) }

// TestDevice_UnixSocket runs the device against swtpm's unix socket server
// ("unix:/path" addresses), which softhsmtest does not offer.
func TestTPMDevice_UnixSocket(t *testing.T) {
	softhsmtest.RequireSWTPM(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "tpm.sock")
	start := func() func() {
		cmd := exec.Command("swtpm", "socket", "--tpm2",
			"--tpmstate", "dir="+dir,
			"--server", "type=unixio,path="+sock,
			"--ctrl", "type=unixio,path="+sock+".ctrl",
			"--flags", "not-need-init,startup-clear")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stop := func() { cmd.Process.Kill(); cmd.Wait() }
		for deadline := time.Now().Add(5 * time.Second); ; {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				return stop
			}
			if time.Now().After(deadline) {
				stop()
				t.Fatal("swtpm did not open its unix socket")
			}
			time.Sleep(10 * time.Millisecond) // polling a socket; nothing to wait on
		}
	}
	stop := start()
	t.Cleanup(func() { stop() })

	d := mustOpen(t, "unix:"+sock, 7)
	secret := randomSecret(t, 32)
	b := hsmtest.MustSeal(t, d, secret, nil)
	hsmtest.MustUnseal(t, d, b, nil, secret)

	// The simulator restarts: the stale connection is replaced on the next call.
	stop()
	if err := d.Health(context.Background()); !errors.Is(err, hsm.ErrDeviceUnavailable) {
		t.Fatalf("Health with swtpm gone: %v", err)
	}
	stop = start()
	hsmtest.MustUnseal(t, d, b, nil, secret)
}

func TestTPMOpen_BusySimulator(t *testing.T) {
	emu := softhsmtest.StartSWTPM(t)
	mustOpen(t, emu.Addr) // holds the emulator's only client slot
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	d2, err := Open(ctx, Config{Address: emu.Addr}, nil)
	if err == nil {
		d2.Close()
		t.Fatal("Open of a busy simulator succeeded")
	}
	for _, want := range []string{emu.Addr, "serves one client at a time"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q does not wrap the context's deadline", err)
	}
}
