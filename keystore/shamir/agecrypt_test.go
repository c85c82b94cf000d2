package shamir

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"filippo.io/age/armor"
	"filippo.io/age/plugin"
	"filippo.io/age/tag"
	"golang.org/x/crypto/ssh"
)

// TestMain doubles as the age plugins age-plugin-coffertest and
// age-plugin-cofferprompt: installTestPlugins links the test binary under
// those names, the way age's own plugin tests do.
func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "age-plugin-coffertest":
		os.Exit(runTestPlugin("coffertest", false))
	case "age-plugin-cofferprompt":
		os.Exit(runTestPlugin("cofferprompt", true))
	}
	os.Exit(m.Run())
}

// runTestPlugin runs a toy plugin whose stanza body is the file key in
// clear (for tests only). With prompt, wrapping and unwrapping first ask
// the client for a secret, as a PIN-protected hardware plugin would.
func runTestPlugin(name string, prompt bool) int {
	p, err := plugin.New(name)
	if err != nil {
		return 1
	}
	ask := func() error {
		if !prompt {
			return nil
		}
		_, err := p.RequestValue("Enter the token PIN", true)
		return err
	}
	p.HandleRecipient(func([]byte) (age.Recipient, error) {
		return testPluginRecipient{name: name, ask: ask}, nil
	})
	p.HandleIdentity(func([]byte) (age.Identity, error) {
		return testPluginIdentity{name: name, ask: ask}, nil
	})
	return p.Main()
}

type testPluginRecipient struct {
	name string
	ask  func() error
}

func (r testPluginRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	if err := r.ask(); err != nil {
		return nil, err
	}
	return []*age.Stanza{{Type: r.name, Body: bytes.Clone(fileKey)}}, nil
}

type testPluginIdentity struct {
	name string
	ask  func() error
}

func (i testPluginIdentity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	for _, s := range stanzas {
		if s.Type == i.name {
			if err := i.ask(); err != nil {
				return nil, err
			}
			return bytes.Clone(s.Body), nil
		}
	}
	return nil, age.ErrIncorrectIdentity
}

// installTestPlugins puts the test plugins on PATH and returns their
// directory.
func installTestPlugins(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"coffertest", "cofferprompt"} {
		if err := os.Symlink(exe, filepath.Join(dir, "age-plugin-"+name)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return dir
}

// testShare returns a fresh valid share in canonical text form.
func testShare(t *testing.T) string {
	t.Helper()
	secret := make([]byte, 32)
	rand.Read(secret)
	shares, err := Split(secret, 3, 2, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return Encode(shares[1])
}

// keyPair is a recipient string and the identity file that opens it.
type keyPair struct {
	recipient string
	identity  []byte
}

func x25519Pair(t *testing.T) keyPair {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{id.Recipient().String(), []byte("# created: by the test\n# public key: " + id.Recipient().String() + "\n" + id.String() + "\n")}
}

func hybridPair(t *testing.T) keyPair {
	t.Helper()
	id, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{id.Recipient().String(), []byte(id.String() + "\n")}
}

func sshEd25519Pair(t *testing.T) keyPair {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "operator@example")
	if err != nil {
		t.Fatal(err)
	}
	rcpt := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " operator@example"
	return keyPair{rcpt, pem.EncodeToMemory(block)}
}

func sshRSAPair(t *testing.T) keyPair {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{string(ssh.MarshalAuthorizedKey(sshPub)), pem.EncodeToMemory(block)}
}

func pluginPair(t *testing.T, name string) keyPair {
	t.Helper()
	return keyPair{plugin.EncodeRecipient(name, []byte("recipient data")), []byte(plugin.EncodeIdentity(name, []byte("identity data")) + "\n")}
}

func TestAge_RoundTrip(t *testing.T) {
	installTestPlugins(t)
	for _, tt := range []struct {
		name string
		pair func(*testing.T) keyPair
	}{
		{"x25519", x25519Pair},
		{"hybrid", hybridPair},
		{"ssh-ed25519", sshEd25519Pair},
		{"ssh-rsa", sshRSAPair},
		{"plugin", func(t *testing.T) keyPair { return pluginPair(t, "coffertest") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kp := tt.pair(t)
			r, err := ParseRecipient(kp.recipient)
			if err != nil {
				t.Fatalf("ParseRecipient: %v", err)
			}
			share := testShare(t)
			armored, err := EncryptShare(share, r)
			if err != nil {
				t.Fatalf("EncryptShare: %v", err)
			}
			if !strings.HasPrefix(armored, armor.Header+"\n") || !strings.HasSuffix(armored, armor.Footer+"\n") {
				t.Fatalf("EncryptShare output is not an armored age file:\n%s", armored)
			}
			if strings.Contains(armored, share[len(Prefix):]) {
				t.Fatal("EncryptShare output contains the share")
			}
			ids, err := ParseIdentities(kp.identity)
			if err != nil {
				t.Fatalf("ParseIdentities: %v", err)
			}
			got, err := DecryptShares([]byte(armored), ids)
			if err != nil {
				t.Fatalf("DecryptShares: %v", err)
			}
			if len(got) != 1 || got[0] != share {
				t.Fatalf("DecryptShares gave %d shares, want the one encrypted", len(got))
			}

			// What the age command would see: the share and a newline.
			rd, err := age.Decrypt(armor.NewReader(strings.NewReader(armored)), ids...)
			if err != nil {
				t.Fatal(err)
			}
			plain, err := io.ReadAll(rd)
			if err != nil {
				t.Fatal(err)
			}
			if string(plain) != share+"\n" {
				t.Fatal("the age plaintext is not the share followed by a newline")
			}
		})
	}
}

func TestEncryptShare_Canonicalises(t *testing.T) {
	kp := x25519Pair(t)
	r, _ := ParseRecipient(kp.recipient)
	ids, _ := ParseIdentities(kp.identity)
	share := testShare(t)
	armored, err := EncryptShare("  "+strings.ToUpper(share)+"\n", r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecryptShares([]byte(armored), ids)
	if err != nil || len(got) != 1 || got[0] != share {
		t.Fatalf("DecryptShares = %d shares, %v; want the canonical share", len(got), err)
	}
}

func TestEncryptShare_Errors(t *testing.T) {
	kp := x25519Pair(t)
	r, _ := ParseRecipient(kp.recipient)
	for _, tt := range []struct {
		name  string
		share string
		r     age.Recipient
		want  string
	}{
		{"no recipient", testShare(t), nil, "no age recipient"},
		{"not a share", "hello", r, "refusing to encrypt"},
		{"mistyped share", testShare(t) + "a", r, "refusing to encrypt"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := EncryptShare(tt.share, tt.r)
			if err == nil || out != "" {
				t.Fatalf("EncryptShare = %q, %v; want an error", out, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestParseRecipient_Tag(t *testing.T) {
	// Tag recipients are decrypted by hardware plugins; here it is enough
	// that they parse and encrypt as the age command does.
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Compress the point: 0x02 or 0x03 (the parity of y), then x.
	u := k.PublicKey().Bytes()
	compressed := append([]byte{2 | u[64]&1}, u[1:33]...)
	tr, err := tag.NewClassicRecipient(compressed)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseRecipient(tr.String())
	if err != nil {
		t.Fatalf("ParseRecipient(%s): %v", tr, err)
	}
	if _, ok := r.(*tag.Recipient); !ok {
		t.Fatalf("ParseRecipient gave %T, want *tag.Recipient", r)
	}
	out, err := EncryptShare(testShare(t), r)
	if err != nil {
		t.Fatalf("EncryptShare: %v", err)
	}
	if !strings.HasPrefix(out, armor.Header) {
		t.Fatal("not armored")
	}
}

func TestParseRecipient_Types(t *testing.T) {
	installTestPlugins(t)
	for _, tt := range []struct {
		name string
		in   string
		want string // %T of the result
	}{
		{"x25519", x25519Pair(t).recipient, "*age.X25519Recipient"},
		{"x25519 with whitespace", " " + x25519Pair(t).recipient + "\n", "*age.X25519Recipient"},
		{"hybrid", hybridPair(t).recipient, "*age.HybridRecipient"},
		{"ssh-ed25519", sshEd25519Pair(t).recipient, "*agessh.Ed25519Recipient"},
		{"plugin", pluginPair(t, "coffertest").recipient, "shamir.pluginRecipient"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRecipient(tt.in)
			if err != nil {
				t.Fatalf("ParseRecipient: %v", err)
			}
			if got := fmt.Sprintf("%T", r); got != tt.want {
				t.Errorf("ParseRecipient gave %s, want %s", got, tt.want)
			}
		})
	}
}

func TestParseRecipient_Errors(t *testing.T) {
	x := x25519Pair(t)
	id := strings.TrimSpace(string(x.identity[bytes.LastIndex(bytes.TrimSpace(x.identity), []byte("\n"))+1:]))
	broken := x.recipient[:len(x.recipient)-1] + flip(x.recipient[len(x.recipient)-1:])
	long := "x" + strings.Repeat("0123456789", 50)
	for _, tt := range []struct {
		name      string
		in        string
		want      []string
		forbidden string // must not appear in the error
	}{
		{"empty", "  ", []string{"empty", "age1"}, ""},
		{"identity instead of recipient", id, []string{"secret key", "age-keygen -y"}, id[16:]},
		{"broken checksum", broken, []string{"malformed recipient", "copied completely"}, broken},
		{"truncated", x.recipient[:30], []string{"malformed recipient"}, x.recipient[:30]},
		{"hybrid broken", "age1pq1qqqqqqqqqqqqqqqqqqqqqqqq", []string{"malformed recipient"}, ""},
		{"unknown type", long, []string{"not a recognised recipient", "age1pq1", "ssh-ed25519", "age-plugin-NAME"}, long},
		{"ssh dss", "ssh-dss AAAAB3NzaC1kc3MAAACBAP== user", []string{"SSH"}, ""},
		{"ssh garbage", "ssh-ed25519 not-base64!", []string{"SSH"}, ""},
		{"github", "github:someone", []string{"github:", "not supported"}, ""},
		{"private key PEM", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", []string{"PEM block"}, "abc"},
		{"missing plugin", plugin.EncodeRecipient("nosuchplugin", []byte("x")), []string{`"age-plugin-nosuchplugin"`, "PATH"}, ""},
		{"bad plugin encoding", "age1foo1bar", []string{"malformed plugin recipient"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRecipient(tt.in)
			if err == nil || r != nil {
				t.Fatalf("ParseRecipient = %v, %v; want an error", r, err)
			}
			if !errors.Is(err, ErrInvalidRecipient) {
				t.Errorf("error %q does not wrap ErrInvalidRecipient", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.forbidden != "" && strings.Contains(err.Error(), tt.forbidden) {
				t.Errorf("error echoes the input: %q", err)
			}
		})
	}
}

func flip(c string) string {
	if c == "q" {
		return "p"
	}
	return "q"
}

func TestParseIdentities(t *testing.T) {
	x, h := x25519Pair(t), hybridPair(t)
	data := append(append([]byte("# two keys\n\n"), x.identity...), append([]byte("\r\n   \n"), h.identity...)...)
	ids, err := ParseIdentities(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 {
		t.Fatalf("ParseIdentities gave %d identities, want 2", len(ids))
	}
	// Either identity opens a share encrypted to its recipient.
	for _, rcpt := range []string{x.recipient, h.recipient} {
		r, err := ParseRecipient(rcpt)
		if err != nil {
			t.Fatal(err)
		}
		share := testShare(t)
		armored, err := EncryptShare(share, r)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := DecryptShares([]byte(armored), ids); err != nil || len(got) != 1 || got[0] != share {
			t.Fatalf("DecryptShares: %d shares, %v", len(got), err)
		}
	}
}

func TestParseIdentities_Errors(t *testing.T) {
	x := x25519Pair(t)
	secret := strings.TrimSpace(string(x.identity[bytes.LastIndex(bytes.TrimSpace(x.identity), []byte("\n"))+1:]))
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	encBlock, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("passphrase"))
	if err != nil {
		t.Fatal(err)
	}
	armoredIdentity, err := EncryptShare(testShare(t), mustRecipient(t, x.recipient)) // any age file will do
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"only comments", []byte("# nothing here\n\n"), "no identities found"},
		{"recipient instead of identity", []byte(x.recipient + "\n"), "line 1: this is an age recipient"},
		{"ssh public key", []byte(sshEd25519Pair(t).recipient), "SSH public key"},
		{"a share", []byte("# mine\n" + testShare(t)), "line 2: this is a Coffer share"},
		{"unknown line", []byte(secret + "\nhello\n"), "line 2: unknown identity type"},
		{"broken secret key", []byte(secret[:len(secret)-2] + "\n"), "line 1: malformed secret key"},
		{"invalid UTF-8", []byte("\xff\xfe\n"), "not valid UTF-8"},
		{"very long line", bytes.Repeat([]byte("A"), 70000), "line 1"},
		{"encrypted ssh key", pem.EncodeToMemory(encBlock), "passphrase-protected"},
		{"age-encrypted identity file", []byte(armoredIdentity), "itself age-encrypted"},
		{"binary age-encrypted identity file", []byte("age-encryption.org/v1\n-> scrypt abc 18\n"), "itself age-encrypted"},
		{"other PEM", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), "not a usable SSH private key"},
		{"missing plugin", []byte(plugin.EncodeIdentity("nosuchplugin", []byte("x")) + "\n"), `"age-plugin-nosuchplugin"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ids, err := ParseIdentities(tt.in)
			if err == nil || ids != nil {
				t.Fatalf("ParseIdentities = %v, %v; want an error", ids, err)
			}
			if !errors.Is(err, ErrInvalidIdentity) {
				t.Errorf("error %q does not wrap ErrInvalidIdentity", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret[len("AGE-SECRET-KEY-1"):len("AGE-SECRET-KEY-1")+12]) {
				t.Errorf("error echoes the secret key: %q", err)
			}
		})
	}
}

func mustRecipient(t *testing.T, s string) age.Recipient {
	t.Helper()
	r, err := ParseRecipient(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDecryptShares_Mixed(t *testing.T) {
	x, h := x25519Pair(t), hybridPair(t)
	ids, err := ParseIdentities(append(append([]byte{}, x.identity...), h.identity...))
	if err != nil {
		t.Fatal(err)
	}
	s1, s2, s3, s4 := testShare(t), testShare(t), testShare(t), testShare(t)
	e2, err := EncryptShare(s2, mustRecipient(t, x.recipient))
	if err != nil {
		t.Fatal(err)
	}
	e4, err := EncryptShare(s4, mustRecipient(t, h.recipient))
	if err != nil {
		t.Fatal(err)
	}
	indent := func(s string) string {
		return "    " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n    ") + "\n"
	}
	input := "\n" + s1 + "\n\n" + e2 + "  " + s3 + "  \r\n" + indent(strings.ReplaceAll(e4, "\n", "\r\n")) + "\n\n"
	got, err := DecryptShares([]byte(input), ids)
	if err != nil {
		t.Fatalf("DecryptShares: %v", err)
	}
	want := []string{s1, s2, s3, s4}
	if len(got) != len(want) {
		t.Fatalf("DecryptShares gave %d shares, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("share %d is not the one at that place in the input", i+1)
		}
	}
}

func TestDecryptShares_BinaryAgeFile(t *testing.T) {
	x := x25519Pair(t)
	ids, _ := ParseIdentities(x.identity)
	share := testShare(t)
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, mustRecipient(t, x.recipient))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, share+"\n")
	w.Close()
	got, err := DecryptShares(buf.Bytes(), ids)
	if err != nil || len(got) != 1 || got[0] != share {
		t.Fatalf("DecryptShares = %d shares, %v", len(got), err)
	}
}

func TestDecryptShares_WrongIdentity(t *testing.T) {
	alice, bob := x25519Pair(t), x25519Pair(t)
	ids, _ := ParseIdentities(bob.identity)
	armored, err := EncryptShare(testShare(t), mustRecipient(t, alice.recipient))
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecryptShares([]byte(testShare(t)+"\n"+armored), ids)
	if err == nil || got != nil {
		t.Fatalf("DecryptShares = %v, %v; want an error", got, err)
	}
	if !errors.Is(err, ErrNoMatchingIdentity) {
		t.Errorf("error %q does not wrap ErrNoMatchingIdentity", err)
	}
	for _, w := range []string{"line 2", "this share was encrypted to another recipient"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestDecryptShares_Errors(t *testing.T) {
	x := x25519Pair(t)
	ids, _ := ParseIdentities(x.identity)
	armored, err := EncryptShare(testShare(t), mustRecipient(t, x.recipient))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(armored, "\n"), "\n")
	damaged := strings.Join(append(append([]string{}, lines[:2]...), append([]string{"!" + lines[2][1:]}, lines[3:]...)...), "\n")
	// A valid-looking but altered payload: change one base64 character of
	// the last (payload) line.
	last := lines[len(lines)-2]
	alteredLast := flipBase64(last, len(last)/2)
	tampered := strings.Join(append(append([]string{}, lines[:len(lines)-2]...), alteredLast, lines[len(lines)-1]), "\n")
	encrypt := func(plaintext []byte, armored bool) string {
		var buf bytes.Buffer
		var dst io.Writer = &buf
		aw := armor.NewWriter(&buf)
		if armored {
			dst = aw
		}
		w, err := age.Encrypt(dst, mustRecipient(t, x.recipient))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plaintext)
		w.Close()
		if armored {
			aw.Close()
		}
		return buf.String()
	}
	binary := encrypt([]byte(testShare(t)), false)
	for _, tt := range []struct {
		name string
		in   string
		ids  []age.Identity
		want string
	}{
		{"empty", "", ids, "no shares found"},
		{"cut-off binary file", binary[:len(binary)-5], ids, "damaged"},
		{"binary file without payload", binary[:strings.Index(binary, "\n---")+50], ids, "cannot decrypt it: failed to read nonce"},
		{"too much plaintext", encrypt(bytes.Repeat([]byte("a"), maxSharePlaintext+1), true), ids, "more than 4096 bytes"},
		{"empty plaintext", encrypt(nil, true), ids, "decrypts to nothing"},
		{"blank lines", "\n \n\t\n", ids, "no shares found"},
		{"no END line", strings.Join(lines[:len(lines)-1], "\n"), ids, "line 1 has no -----END AGE ENCRYPTED FILE----- line"},
		{"END without BEGIN", strings.Join(lines[1:], "\n"), ids, "never started"},
		{"damaged armor", damaged, ids, "damaged"},
		{"tampered payload", tampered, ids, "encrypted share at line 1: the encrypted share is damaged"},
		{"no identities", armored, nil, "no identity was given"},
		{"other PEM block", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", ids, "not an age-encrypted share"},
		{"too large", strings.Repeat("a", maxSharesInput+1), ids, "larger than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecryptShares([]byte(tt.in), tt.ids)
			if err == nil || got != nil {
				t.Fatalf("DecryptShares = %v, %v; want an error", got, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func flipBase64(s string, i int) string {
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	return s[:i] + string(c) + s[i+1:]
}

func TestPlugin_RemovedAfterParse(t *testing.T) {
	dir := installTestPlugins(t)
	r, err := ParseRecipient(pluginPair(t, "coffertest").recipient)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "age-plugin-coffertest")); err != nil {
		t.Fatal(err)
	}
	_, err = EncryptShare(testShare(t), r)
	if err == nil {
		t.Fatal("EncryptShare worked without the plugin binary")
	}
	if !strings.Contains(err.Error(), `age plugin binary "age-plugin-coffertest" was not found on PATH`) {
		t.Errorf("error %q does not name the missing binary", err)
	}
}

func TestPlugin_NeedsInteraction(t *testing.T) {
	installTestPlugins(t)
	kp := pluginPair(t, "cofferprompt")
	r, err := ParseRecipient(kp.recipient)
	if err != nil {
		t.Fatal(err)
	}
	_, err = EncryptShare(testShare(t), r)
	if err == nil {
		t.Fatal("EncryptShare worked though the plugin could not get its PIN")
	}
	for _, w := range []string{"age-plugin-cofferprompt asked for a secret", "Enter the token PIN", "cannot answer age plugin prompts"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}

	// The identity side: wrap the file key as the plugin's recipient would
	// have (without its prompt), then the plugin's identity prompts.
	ids, err := ParseIdentities(kp.identity)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, stanzaRecipient("cofferprompt"))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, testShare(t))
	w.Close()
	aw.Close()
	_, err = DecryptShares(buf.Bytes(), ids)
	if err == nil {
		t.Fatal("DecryptShares worked though the plugin could not get its PIN")
	}
	if !strings.Contains(err.Error(), "age-plugin-cofferprompt asked for a secret") {
		t.Errorf("error %q does not say what the plugin asked for", err)
	}
}

// stanzaRecipient wraps the file key the way the test plugins do.
type stanzaRecipient string

func (r stanzaRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	return []*age.Stanza{{Type: string(r), Body: bytes.Clone(fileKey)}}, nil
}
