package seal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/hsm/pkcs11"
	"github.com/coffer-kms/coffer/hsm/soft"
	"github.com/coffer-kms/coffer/hsm/tpm"
)

// sealDevice is the node's configured seal device. The device may fail to
// open at start (token missing, TPM gone): the node then starts sealed with
// the reason in its status, and `reseal` tries again, so a broken device
// never stops an operator from unsealing with shares.
type sealDevice struct {
	cfg  *config.Config
	log  hclog.Logger
	kind string

	mu  sync.Mutex
	dev hsm.Device // nil until opened
	err error      // the last open or health failure; nil when healthy
	// pinRefused is set when opening failed because the token rejected the
	// PIN (or it is locked). get then does not open again until reopen
	// (`coffer operator reseal`): each try would cost one of the few wrong
	// PIN attempts a real HSM allows before it locks the user PIN.
	pinRefused error
}

func newSealDevice(cfg *config.Config, log hclog.Logger) *sealDevice {
	if cfg.Seal == nil {
		return nil
	}
	return &sealDevice{cfg: cfg, log: log.Named("seal"), kind: cfg.Seal.Type}
}

// openDevice opens the configured device.
func openDevice(ctx context.Context, cfg *config.Config, log hclog.Logger) (hsm.Device, error) {
	switch cfg.Seal.Type {
	case config.SealSoft:
		if !cfg.Dev {
			return nil, errors.New(`the soft seal device is for development only: set dev = true or use seal "pkcs11" or seal "tpm"`)
		}
		return soft.Open(cfg.Seal.Soft.KeyFile)
	case config.SealPKCS11:
		p := cfg.Seal.PKCS11
		pin, err := readPIN(p)
		if err != nil {
			return nil, err
		}
		defer clear(pin)
		return pkcs11.Open(ctx, pkcs11.Config{Library: p.Library, TokenLabel: p.TokenLabel, PIN: pin, KeyLabel: p.KeyLabel, GenerateKey: p.GenerateKey}, log)
	case config.SealTPM:
		t := cfg.Seal.TPM
		return tpm.Open(ctx, tpm.Config{Device: t.Device, Address: t.Address, PCRs: t.PCRs}, log)
	}
	return nil, fmt.Errorf("unknown seal type %q", cfg.Seal.Type)
}

// readPIN reads the HSM PIN from pin_file or pin_credential (a trailing
// newline is ignored) or pin_env. The caller zeroes it.
func readPIN(p *config.PKCS11Config) ([]byte, error) {
	switch {
	case p.PINFile != "":
		return readPINFile(p.PINFile, "pin_file "+p.PINFile)
	case p.PINCredential != "":
		// systemd sets CREDENTIALS_DIRECTORY for a unit with LoadCredential=
		// or LoadCredentialEncrypted= (and only when it passed at least one).
		dir := os.Getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return nil, fmt.Errorf("pin_credential %q: $CREDENTIALS_DIRECTORY is not set, so cofferd did not get the credential: run it from the cofferd.service unit with LoadCredentialEncrypted=%s (or LoadCredential=%s:/path/to/pin), or use pin_file", p.PINCredential, p.PINCredential, p.PINCredential)
		}
		path := filepath.Join(dir, p.PINCredential)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pin_credential %q: systemd passed no credential of that name (%s is missing): put the encrypted PIN at /etc/credstore.encrypted/%s (systemd-creds encrypt --name=%s), or add LoadCredential=%s:/path/to/pin to the unit", p.PINCredential, path, p.PINCredential, p.PINCredential, p.PINCredential)
		}
		return readPINFile(path, "pin_credential "+p.PINCredential)
	}
	v, ok := os.LookupEnv(p.PINEnv)
	if !ok || v == "" {
		return nil, fmt.Errorf("environment variable %s (pin_env) is not set: set it to the token's user PIN in cofferd's environment", p.PINEnv)
	}
	return []byte(strings.TrimRight(v, "\r\n")), nil
}

// readPINFile reads a PIN from path; what names the setting for errors.
func readPINFile(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the HSM PIN from %s: %w", what, err)
	}
	n := len(b)
	for n > 0 && (b[n-1] == '\n' || b[n-1] == '\r') {
		n--
	}
	pin := append([]byte(nil), b[:n]...)
	clear(b)
	if len(pin) == 0 {
		return nil, fmt.Errorf("%s is empty: write the token's user PIN into it", what)
	}
	return pin, nil
}

// get returns the open device, opening it if needed.
func (d *sealDevice) get(ctx context.Context) (hsm.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dev != nil {
		return d.dev, nil
	}
	if d.pinRefused != nil {
		return nil, d.pinRefused
	}
	dev, err := openDevice(ctx, d.cfg, d.log)
	if err != nil {
		d.err = err
		if isPINRefusal(err) {
			d.pinRefused = err
		}
		return nil, err
	}
	d.dev, d.err = dev, nil
	d.log.Info("seal device opened", "seal-type", d.kind)
	if d.kind == soft.Kind {
		d.log.Warn("the soft seal device is NOT hardware: its key is a file next to the data; use it for development only")
	}
	return dev, nil
}

// reopen drops and re-finds the device (PKCS#11: finalise and initialise the
// library again, so a token replaced while the node runs is found).
func (d *sealDevice) reopen(ctx context.Context) (hsm.Device, error) {
	d.mu.Lock()
	dev := d.dev
	// An operator asked for this: try the PIN (perhaps fixed) once more.
	d.pinRefused = nil
	// A device that holds a PIN the token refused reopens from the config,
	// which reads the PIN again: Reopen would retry the old, refused one.
	pinRefused := isPINRefusal(d.err)
	d.mu.Unlock()
	if dev != nil {
		if r, ok := dev.(hsm.Reopener); ok && !pinRefused {
			err := r.Reopen(ctx)
			d.mu.Lock()
			d.err = err
			d.mu.Unlock()
			if err != nil {
				return nil, err
			}
			return dev, nil
		}
		d.mu.Lock()
		if d.dev == dev {
			d.dev.Close()
			d.dev = nil
		}
		d.mu.Unlock()
	}
	return d.get(ctx)
}

// isPINRefusal reports whether err says the token refused the PIN, which
// trying again cannot fix and may make worse.
func isPINRefusal(err error) bool { return errors.Is(err, hsm.ErrPINRefused) }

// checkHealth asks the device whether it is usable and remembers the answer
// for status and health.
func (d *sealDevice) checkHealth(ctx context.Context) {
	dev, err := d.get(ctx)
	if err == nil {
		err = dev.Health(ctx)
	}
	d.mu.Lock()
	was := d.err
	d.err = err
	d.mu.Unlock()
	switch {
	case err != nil && was == nil:
		d.log.Error("seal device unhealthy", "seal-type", d.kind, "error", err)
	case err == nil && was != nil:
		d.log.Info("seal device healthy again", "seal-type", d.kind)
	}
}

// lastError is the device's last failure, "" when healthy.
func (d *sealDevice) lastError() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err == nil {
		return ""
	}
	return d.err.Error()
}

func (d *sealDevice) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dev != nil {
		d.dev.Close()
		d.dev = nil
	}
}
