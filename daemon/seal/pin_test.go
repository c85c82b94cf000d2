package seal

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/daemon/config"
)

// TestReadPIN_Sources covers the three ways the HSM PIN reaches cofferd,
// pin_credential (a systemd credential) in particular: its errors must say
// which unit setting is missing.
func TestReadPIN_Sources(t *testing.T) {
	const pin = "pin-4711"
	credDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(credDir, "hsm-pin"), []byte(pin+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(credDir, "empty"), nil, 0o400); err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(t.TempDir(), "hsm.pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		cfg     config.PKCS11Config
		credDir string // CREDENTIALS_DIRECTORY; "" unsets it
		env     string // COFFER_TEST_PIN
		wantErr []string
	}{
		{name: "pin_file", cfg: config.PKCS11Config{PINFile: pinFile}},
		{name: "pin_env", cfg: config.PKCS11Config{PINEnv: "COFFER_TEST_PIN"}, env: pin + "\n"},
		{name: "pin_credential", cfg: config.PKCS11Config{PINCredential: "hsm-pin"}, credDir: credDir},
		{
			name:    "pin_credential outside systemd",
			cfg:     config.PKCS11Config{PINCredential: "hsm-pin"},
			wantErr: []string{"$CREDENTIALS_DIRECTORY is not set", "LoadCredentialEncrypted=hsm-pin"},
		},
		{
			name:    "pin_credential not passed",
			cfg:     config.PKCS11Config{PINCredential: "other"},
			credDir: credDir,
			wantErr: []string{"no credential of that name", "/etc/credstore.encrypted/other", "LoadCredential=other:"},
		},
		{
			name:    "pin_credential empty",
			cfg:     config.PKCS11Config{PINCredential: "empty"},
			credDir: credDir,
			wantErr: []string{"pin_credential empty is empty"},
		},
		{
			name:    "pin_env unset",
			cfg:     config.PKCS11Config{PINEnv: "COFFER_TEST_PIN"},
			wantErr: []string{"COFFER_TEST_PIN (pin_env) is not set"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CREDENTIALS_DIRECTORY", tc.credDir)
			if tc.credDir == "" {
				os.Unsetenv("CREDENTIALS_DIRECTORY")
			}
			t.Setenv("COFFER_TEST_PIN", tc.env)
			if tc.env == "" {
				os.Unsetenv("COFFER_TEST_PIN")
			}
			got, err := readPIN(&tc.cfg)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("readPIN: %v", err)
				}
				if string(got) != pin {
					t.Fatalf("readPIN returned %d bytes, not the %d-byte PIN", len(got), len(pin))
				}
				return
			}
			if err == nil {
				t.Fatal("readPIN: no error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), pin) {
				t.Error("the error contains the PIN")
			}
		})
	}
}
