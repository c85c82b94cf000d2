package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/coffer-kms/coffer/daemon/config"
)

// softHSMLibraries are where Debian and others install SoftHSM2's module.
var softHSMLibraries = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// devSeal picks the dev node's seal device: a SoftHSM token in the data dir
// when SoftHSM2 is installed (so `make run` exercises the real PKCS#11
// path), the soft file device otherwise. It returns the seal config and a
// one-line description for the banner.
func devSeal(dataDir string) (*config.SealConfig, string, error) {
	lib := ""
	for _, l := range softHSMLibraries {
		if _, err := os.Stat(l); err == nil {
			lib = l
			break
		}
	}
	util, _ := exec.LookPath("softhsm2-util")
	if lib == "" || util == "" {
		return &config.SealConfig{Type: config.SealSoft, Soft: &config.SoftSealConfig{KeyFile: filepath.Join(dataDir, "dev-seal.key")}},
			"soft (a key in a file; install softhsm2 to use a SoftHSM token instead)", nil
	}
	dir := filepath.Join(dataDir, "softhsm")
	conf := filepath.Join(dir, "softhsm2.conf")
	pinFile := filepath.Join(dir, "pin")
	const label = "coffer-dev"
	if _, err := os.Stat(conf); err != nil {
		// A fresh token with random PINs; the user PIN goes to a 0600 file
		// that the config points at, as a production config would.
		if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
			return nil, "", err
		}
		body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", filepath.Join(dir, "tokens"))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return nil, "", err
		}
		pin, so := randomHex(8), randomHex(8)
		if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
			return nil, "", err
		}
		cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--so-pin", so, "--pin", pin)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("creating the dev SoftHSM token: %v: %s", err, out)
		}
	}
	// SoftHSM reads its config at C_Initialize, in this process.
	os.Setenv("SOFTHSM2_CONF", conf)
	return &config.SealConfig{Type: config.SealPKCS11, PKCS11: &config.PKCS11Config{
			Library: lib, TokenLabel: label, PINFile: pinFile, KeyLabel: "coffer-dev-seal", GenerateKey: true,
		}},
		fmt.Sprintf("pkcs11 (a SoftHSM2 token %q in %s)", label, dir), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
