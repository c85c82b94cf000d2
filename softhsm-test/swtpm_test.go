package softhsmtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// tpmTestConn is a minimal raw-command client for the emulator's command
// port: write a command, read the 10-byte header, then the announced rest.
type tpmTestConn struct{ c net.Conn }

func tpmDial(t *testing.T, addr string) *tpmTestConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return &tpmTestConn{c: c}
}

func (tc *tpmTestConn) Send(cmd []byte) ([]byte, error) {
	if err := tc.c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := tc.c.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(tc.c, hdr); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > 1<<16 {
		return nil, fmt.Errorf("bad response size %d", n)
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	_, err := io.ReadFull(tc.c, rsp[10:])
	return rsp, err
}

// tpmSRKName creates the standard ECC SRK and returns its name (which
// depends only on the owner seed), flushing it again.
func tpmSRKName(t *testing.T, addr string) []byte {
	t.Helper()
	tc := tpmDial(t, addr)
	defer tc.c.Close()
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tc)
	if err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	if _, err := (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(tc); err != nil {
		t.Fatalf("FlushContext: %v", err)
	}
	return rsp.Name.Buffer
}

func tpmReadPCR(t *testing.T, addr string, pcr uint) []byte {
	t.Helper()
	tc := tpmDial(t, addr)
	defer tc.c.Close()
	rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(pcr),
	}}}}.Execute(tc)
	if err != nil {
		t.Fatalf("PCRRead: %v", err)
	}
	if len(rsp.PCRValues.Digests) != 1 {
		t.Fatalf("PCRRead returned %d digests, want 1", len(rsp.PCRValues.Digests))
	}
	return rsp.PCRValues.Digests[0].Buffer
}

func tpmRefuses(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections", addr)
	}
}

func TestSWTPM_Lifecycle(t *testing.T) {
	s := StartSWTPM(t)
	if got, exp := s.CtrlAddr, "127.0.0.1:"+strconv.Itoa(s.port+1); got != exp {
		t.Errorf("CtrlAddr = %s, want %s (tpm2-tools' swtpm TCTI expects PORT+1)", got, exp)
	}
	if got, exp := s.TCTI(), "swtpm:host=127.0.0.1,port="+strconv.Itoa(s.port); got != exp {
		t.Errorf("TCTI() = %s, want %s", got, exp)
	}
	srk := tpmSRKName(t, s.Addr)
	zero := make([]byte, sha256.Size)

	// PCRExtend goes through tpm2-tools; no other client is connected now.
	s.PCRExtend(t, 16, "boot event")
	d := sha256.Sum256([]byte("boot event"))
	exp := sha256.Sum256(append(bytes.Clone(zero), d[:]...))
	if got := tpmReadPCR(t, s.Addr, 16); !bytes.Equal(got, exp[:]) {
		t.Fatalf("PCR 16 after extend = %x, want %x", got, exp)
	}

	tests := []struct {
		name string
		stop func()
	}{
		{"kill", s.Kill},
		{"stop", s.Stop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.stop()
			tpmRefuses(t, s.Addr)
			tt.stop() // idempotent
			s.Restart(t)
			if got := tpmSRKName(t, s.Addr); !bytes.Equal(got, srk) {
				t.Errorf("SRK after restart = %x, want %x (same state dir, same seeds)", got, srk)
			}
			if got := tpmReadPCR(t, s.Addr, 16); !bytes.Equal(got, zero) {
				t.Errorf("PCR 16 after restart = %x, want zeros (startup-clear)", got)
			}
		})
	}

	// Restart of a running emulator stops it first.
	s.Restart(t)
	if got := tpmSRKName(t, s.Addr); !bytes.Equal(got, srk) {
		t.Errorf("SRK after restart of a running emulator = %x, want %x", got, srk)
	}
}

func TestSWTPM_Independent(t *testing.T) {
	a, b := StartSWTPM(t), StartSWTPM(t)
	if a.Addr == b.Addr || a.Dir == b.Dir {
		t.Fatalf("two emulators share %s / %s", a.Addr, a.Dir)
	}
	if bytes.Equal(tpmSRKName(t, a.Addr), tpmSRKName(t, b.Addr)) {
		t.Error("two fresh emulators have the same SRK: they share seeds")
	}
}

func TestSWTPM_Script(t *testing.T) {
	RequireSWTPM(t)
	script, err := filepath.Abs("swtpm.sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	port, err := tpmFreePortPair()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t.Cleanup(func() { _ = exec.Command(script, "stop", dir).Run() })

	out, err := exec.Command(script, dir, strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm.sh %s %d: %v: %s", dir, port, err, out)
	}
	lines := strings.Split(string(out), "\n")
	if _, err := strconv.Atoi(lines[0]); err != nil {
		t.Errorf("first output line %q is not a PID", lines[0])
	}
	for _, want := range []string{"export TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=" + strconv.Itoa(port), "stop"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	srk := tpmSRKName(t, addr)

	// A second start on the same dir is refused while the first runs.
	if out, err := exec.Command(script, dir, strconv.Itoa(port)).CombinedOutput(); err == nil || !strings.Contains(string(out), "already running") {
		t.Errorf("second start: err=%v, output %s; want a refusal naming the running emulator", err, out)
	}

	if out, err := exec.Command(script, "stop", dir).CombinedOutput(); err != nil {
		t.Fatalf("swtpm.sh stop: %v: %s", err, out)
	}
	tpmRefuses(t, addr)

	// Restarting on the same dir keeps the seeds.
	if out, err := exec.Command(script, dir, strconv.Itoa(port)).CombinedOutput(); err != nil {
		t.Fatalf("swtpm.sh restart: %v: %s", err, out)
	}
	if got := tpmSRKName(t, addr); !bytes.Equal(got, srk) {
		t.Errorf("SRK after script restart = %x, want %x", got, srk)
	}

	for _, args := range [][]string{{}, {dir, "notaport"}, {dir, "65535"}, {"stop"}} {
		if err := exec.Command(script, args...).Run(); err == nil {
			t.Errorf("swtpm.sh %q succeeded, want a usage error", args)
		}
	}
}
