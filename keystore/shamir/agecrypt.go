package shamir

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"
	"filippo.io/age/plugin"
	"filippo.io/age/tag"
	"golang.org/x/crypto/ssh"
)

var (
	// ErrInvalidRecipient is wrapped by every [ParseRecipient] error.
	ErrInvalidRecipient = errors.New("invalid age recipient")

	// ErrInvalidIdentity is wrapped by every [ParseIdentities] error.
	ErrInvalidIdentity = errors.New("invalid age identity file")

	// ErrNoMatchingIdentity is wrapped by the [DecryptShares] error for an
	// encrypted share that none of the given identities can open.
	ErrNoMatchingIdentity = errors.New("no matching age identity")
)

const (
	// maxIdentityFile and maxSSHKeyFile are the limits of the age command.
	maxIdentityFile = 16 << 20
	maxSSHKeyFile   = 16 << 10
	// maxSharesInput bounds DecryptShares's input: a few hundred armored
	// shares fit in well under this.
	maxSharesInput = 1 << 20
	// maxSharePlaintext bounds what is read from one decrypted age file; a
	// share is about 100 bytes.
	maxSharePlaintext = 4 << 10

	// ageBinaryPrefix starts every binary (not armored) age file.
	ageBinaryPrefix = "age-encryption.org/"

	acceptedRecipients = "an age recipient (age1…), a post-quantum age recipient (age1pq1…), " +
		"a tag recipient (age1tag1…, age1tagpq1…), an age plugin recipient (age1NAME1…, which needs age-plugin-NAME on PATH), " +
		"or an SSH public key (ssh-ed25519 … or ssh-rsa …)"
	acceptedIdentities = "age identities (AGE-SECRET-KEY-1…, AGE-SECRET-KEY-PQ-1…, AGE-PLUGIN-…), one per line, " +
		"or an unencrypted SSH private key (ed25519 or RSA)"
)

// ParseRecipient parses one age recipient in any form the age command
// accepts on its -r flag (filippo.io/age/cmd/age, parseRecipient):
//
//   - age1… : X25519 ([age.X25519Recipient]);
//   - age1pq1… : post-quantum hybrid ML-KEM-768 + X25519 ([age.HybridRecipient]);
//   - age1tag1…, age1tagpq1… : tag recipients ([tag.Recipient]);
//   - age1NAME1… : a plugin recipient, encrypted by the binary age-plugin-NAME;
//   - ssh-ed25519 …, ssh-rsa … : an SSH public key in authorized_keys form.
//
// Surrounding whitespace is ignored. For a plugin recipient the plugin binary
// must be on PATH now, so that init fails before a root key is made rather
// than while shares are being encrypted; the plugin gets no user interface
// (see the package documentation).
//
// Errors wrap [ErrInvalidRecipient] and quote at most the start of s.
func ParseRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	var (
		r   age.Recipient
		err error
	)
	switch {
	case s == "":
		return nil, fmt.Errorf("%w: the recipient is empty; give %s", ErrInvalidRecipient, acceptedRecipients)
	case strings.HasPrefix(s, "AGE-SECRET-KEY-") || strings.HasPrefix(s, "AGE-PLUGIN-"):
		// Never quote it: it is a secret key.
		return nil, fmt.Errorf("%w: this is an age identity (a secret key), not a recipient; give its public key instead (age-keygen -y FILE prints it) and keep the identity secret", ErrInvalidRecipient)
	case strings.HasPrefix(s, "-----BEGIN"):
		return nil, fmt.Errorf("%w: this is a PEM block (a private key?), not a recipient; give the public key instead (for SSH keys, the line in the .pub file)", ErrInvalidRecipient)
	case strings.HasPrefix(s, "age1tag1") || strings.HasPrefix(s, "age1tagpq1"):
		r, err = tag.ParseRecipient(s)
	case strings.HasPrefix(s, "age1pq1"):
		r, err = age.ParseHybridRecipient(s)
	case strings.HasPrefix(s, "age1") && strings.Count(s, "1") > 1:
		// The bech32 data alphabet has no "1", so a second one ends a
		// plugin name: age1NAME1DATA.
		return parsePluginRecipient(s)
	case strings.HasPrefix(s, "age1"):
		r, err = age.ParseX25519Recipient(s)
	case strings.HasPrefix(s, "ssh-"):
		r, err = agessh.ParseRecipient(s)
	case strings.HasPrefix(s, "github:"):
		return nil, fmt.Errorf("%w: %q: github: recipients are not supported (age removed them); give the user's SSH public key itself", ErrInvalidRecipient, shorten(s))
	default:
		return nil, fmt.Errorf("%w: %q is not a recognised recipient; give %s", ErrInvalidRecipient, shorten(s), acceptedRecipients)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s; check that it was copied completely", ErrInvalidRecipient, redact(err, s))
	}
	return r, nil
}

func parsePluginRecipient(s string) (age.Recipient, error) {
	ui := &pluginUI{}
	r, err := plugin.NewRecipient(s, ui.clientUI())
	if err != nil {
		return nil, fmt.Errorf("%w: malformed plugin recipient %q: %s; check that it was copied completely", ErrInvalidRecipient, shorten(s), redact(err, s))
	}
	if err := lookPlugin(r.Name()); err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalidRecipient, shorten(s), err)
	}
	return pluginRecipient{Recipient: r, ui: ui}, nil
}

// lookPlugin checks that the binary for the named plugin is on PATH.
func lookPlugin(name string) error {
	bin := "age-plugin-" + name
	if _, err := exec.LookPath(bin); err != nil {
		return fmt.Errorf("it needs the age plugin binary %q, which was not found on PATH; install it on this machine, or use another recipient or identity", bin)
	}
	return nil
}

// EncryptShare age-encrypts a share to one recipient and returns the ASCII
// armored age file (-----BEGIN AGE ENCRYPTED FILE----- … -----END AGE
// ENCRYPTED FILE-----, with a final newline). The plaintext is the share's
// canonical text followed by a newline, so `age -d` prints it as is.
//
// The share is checked with [Parse] first, so an encrypted share is always
// one that unseal accepts.
func EncryptShare(share string, r age.Recipient) (string, error) {
	if r == nil {
		return "", errors.New("no age recipient given to encrypt the share to")
	}
	raw, err := Parse(share)
	if err != nil {
		return "", fmt.Errorf("refusing to encrypt: %w", err)
	}
	plaintext := []byte(Encode(raw) + "\n")
	clear(raw)
	defer clear(plaintext)

	var out bytes.Buffer
	aw := armor.NewWriter(&out)
	w, err := age.Encrypt(aw, r)
	if err != nil {
		return "", fmt.Errorf("failed to encrypt the share to %s: %w", describeRecipient(r), err)
	}
	if _, err := w.Write(plaintext); err != nil {
		return "", fmt.Errorf("failed to encrypt the share to %s: %w", describeRecipient(r), err)
	}
	if err := w.Close(); err != nil {
		return "", fmt.Errorf("failed to encrypt the share to %s: %w", describeRecipient(r), err)
	}
	if err := aw.Close(); err != nil {
		return "", fmt.Errorf("failed to armor the encrypted share: %w", err)
	}
	return out.String(), nil
}

func describeRecipient(r age.Recipient) string {
	if s, ok := r.(fmt.Stringer); ok {
		return fmt.Sprintf("recipient %q", shorten(s.String()))
	}
	return fmt.Sprintf("recipient of type %T", r)
}

// ParseIdentities parses an identity file as the age command accepts it on
// its -i flag:
//
//   - native identities, one per line: AGE-SECRET-KEY-1… (X25519),
//     AGE-SECRET-KEY-PQ-1… (post-quantum hybrid) and AGE-PLUGIN-NAME-1…
//     (run by age-plugin-NAME, which must be on PATH, with no user
//     interface); blank lines and lines starting with "#" are ignored;
//   - an SSH private key in PEM form (ed25519 or RSA).
//
// Unlike the age command it cannot prompt for a passphrase, so it rejects a
// passphrase-protected SSH key and an age-encrypted identity file, saying
// how to proceed. Errors wrap [ErrInvalidIdentity] and never contain key
// material.
func ParseIdentities(data []byte) ([]age.Identity, error) {
	if len(data) > maxIdentityFile {
		return nil, fmt.Errorf("%w: the file is larger than %d bytes; give a file with %s", ErrInvalidIdentity, maxIdentityFile, acceptedIdentities)
	}
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) == 0:
		return nil, fmt.Errorf("%w: the file is empty; give a file with %s", ErrInvalidIdentity, acceptedIdentities)
	case bytes.HasPrefix(trimmed, []byte(ageBinaryPrefix)) || bytes.HasPrefix(trimmed, []byte(armor.Header)):
		return nil, fmt.Errorf("%w: the identity file is itself age-encrypted (passphrase-protected), and Coffer cannot prompt for its passphrase; decrypt it into a private file with age -d first, or use an unencrypted identity", ErrInvalidIdentity)
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN")):
		return parseSSHIdentity(data)
	default:
		return parseNativeIdentities(data)
	}
}

func parseSSHIdentity(pemBytes []byte) ([]age.Identity, error) {
	if len(pemBytes) > maxSSHKeyFile {
		return nil, fmt.Errorf("%w: the PEM file is larger than %d bytes, too large for an SSH private key", ErrInvalidIdentity, maxSSHKeyFile)
	}
	id, err := agessh.ParseIdentity(pemBytes)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return nil, fmt.Errorf("%w: the SSH private key is passphrase-protected, and Coffer cannot prompt for the passphrase; use an unencrypted copy of the key (ssh-keygen -p -N \"\" on a private copy) or a native age identity", ErrInvalidIdentity)
	case err != nil:
		// x/crypto/ssh errors name the problem ("no key found", "unsupported
		// key type") and do not contain key bytes.
		return nil, fmt.Errorf("%w: not a usable SSH private key: %v; give %s", ErrInvalidIdentity, err, acceptedIdentities)
	}
	return []age.Identity{id}, nil
}

// parseNativeIdentities mirrors the age command's parseIdentities, with the
// non-interactive plugin UI.
func parseNativeIdentities(data []byte) ([]age.Identity, error) {
	var ids []age.Identity
	sc := bufio.NewScanner(bytes.NewReader(data))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !utf8.ValidString(line) {
			return nil, fmt.Errorf("%w: line %d is not valid UTF-8; give a file with %s", ErrInvalidIdentity, n, acceptedIdentities)
		}
		id, err := parseIdentityLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrInvalidIdentity, n, err)
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		// bufio.ErrTooLong: no identity line is 64 KiB long.
		return nil, fmt.Errorf("%w: line %d: %v; give a file with %s", ErrInvalidIdentity, n+1, err, acceptedIdentities)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: no identities found; give a file with %s", ErrInvalidIdentity, acceptedIdentities)
	}
	return ids, nil
}

// parseIdentityLine parses one non-empty line. Its errors never quote the
// line, which may be a secret key.
func parseIdentityLine(line string) (age.Identity, error) {
	switch {
	case strings.HasPrefix(line, "AGE-PLUGIN-"):
		ui := &pluginUI{}
		id, err := plugin.NewIdentity(line, ui.clientUI())
		if err != nil {
			return nil, errors.New("malformed plugin identity; check that it was copied completely")
		}
		if err := lookPlugin(id.Name()); err != nil {
			return nil, err
		}
		return pluginIdentity{Identity: id, ui: ui}, nil
	case strings.HasPrefix(line, "AGE-SECRET-KEY-1"):
		// age's parse errors ("malformed secret key: …") do not quote the key.
		return age.ParseX25519Identity(line)
	case strings.HasPrefix(line, "AGE-SECRET-KEY-PQ-1"):
		return age.ParseHybridIdentity(line)
	case strings.HasPrefix(line, "age1"):
		return nil, errors.New("this is an age recipient (a public key), not an identity; give the identity file that holds the matching AGE-SECRET-KEY-… line")
	case strings.HasPrefix(line, "ssh-"):
		return nil, errors.New("this is an SSH public key; give the SSH private key file instead (for example ~/.ssh/id_ed25519, not the .pub file)")
	case strings.HasPrefix(strings.ToLower(line), "coffer-share-"):
		return nil, errors.New("this is a Coffer share, not an identity; give the shares as input and the identity file with --identity")
	default:
		return nil, fmt.Errorf("unknown identity type; give %s", acceptedIdentities)
	}
}

// DecryptShares extracts shares from input, which may hold any mix, in any
// order, of
//
//   - ASCII-armored age files (-----BEGIN AGE ENCRYPTED FILE----- …
//     -----END AGE ENCRYPTED FILE-----, as [EncryptShare] makes them; lines
//     may be indented), decrypted with ids;
//   - plain share lines.
//
// An input that is one binary age file is decrypted as a whole. It returns
// the shares in input order, one per non-blank line of input or of decrypted
// plaintext, with surrounding whitespace removed. It does not check them:
// the caller passes each to [Parse] (or to the daemon), so that one mistyped
// share does not discard the others.
//
// An encrypted share that no identity opens is an error wrapping
// [ErrNoMatchingIdentity]: it was encrypted to another recipient.
func DecryptShares(input []byte, ids []age.Identity) ([]string, error) {
	if len(input) > maxSharesInput {
		return nil, fmt.Errorf("the input is larger than %d bytes, far more than any set of shares; give only the shares", maxSharesInput)
	}
	if bytes.HasPrefix(bytes.TrimSpace(input), []byte(ageBinaryPrefix)) {
		shares, err := decryptAgeFile(bytes.NewReader(bytes.TrimLeft(input, " \t\r\n")), ids)
		if err != nil {
			return nil, fmt.Errorf("encrypted share: %w", err)
		}
		return shares, nil
	}

	lines := strings.Split(string(input), "\n")
	var shares []string
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		switch {
		case line == "":
		case line == armor.Header:
			start := i
			var block bytes.Buffer
			block.WriteString(armor.Header + "\n")
			for i++; i < len(lines) && strings.TrimSpace(lines[i]) != armor.Footer; i++ {
				block.WriteString(strings.TrimSpace(lines[i]) + "\n")
			}
			if i == len(lines) {
				return nil, fmt.Errorf("the encrypted share starting at line %d has no %s line: it was cut off; paste the whole block", start+1, armor.Footer)
			}
			block.WriteString(armor.Footer + "\n")
			out, err := decryptAgeFile(armor.NewReader(&block), ids)
			if err != nil {
				return nil, fmt.Errorf("encrypted share at line %d: %w", start+1, err)
			}
			shares = append(shares, out...)
		case line == armor.Footer:
			return nil, fmt.Errorf("line %d ends an encrypted share that was never started: the %s line is missing; paste the whole block", i+1, armor.Header)
		case strings.HasPrefix(line, "-----BEGIN"):
			return nil, fmt.Errorf("line %d starts a PEM block that is not an age-encrypted share; give shares as printed at init (plain or -----BEGIN AGE ENCRYPTED FILE----- blocks)", i+1)
		default:
			shares = append(shares, line)
		}
	}
	if len(shares) == 0 {
		return nil, errors.New("no shares found in the input; give one share per line, or the age-encrypted shares printed at init")
	}
	return shares, nil
}

// decryptAgeFile decrypts one age file and returns the non-blank lines of
// its plaintext.
func decryptAgeFile(src io.Reader, ids []age.Identity) ([]string, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: the share is age-encrypted and no identity was given; give the identity file of the operator it was encrypted to", ErrNoMatchingIdentity)
	}
	r, err := age.Decrypt(src, ids...)
	if err != nil {
		var noMatch *age.NoIdentityMatchError
		var armorErr *armor.Error
		switch {
		case errors.As(err, &noMatch):
			return nil, fmt.Errorf("%w: this share was encrypted to another recipient; give the identity of the operator it was encrypted to", ErrNoMatchingIdentity)
		case errors.As(err, &armorErr):
			return nil, fmt.Errorf("the armored block is damaged (%v); paste it exactly as printed at init", armorErr.Unwrap())
		default:
			return nil, fmt.Errorf("cannot decrypt it: %w (check that it was pasted completely, exactly as printed at init)", err)
		}
	}
	// One fixed buffer (not io.ReadAll, which leaves copies behind as it
	// grows) so that all of the plaintext is zeroed afterwards.
	buf := make([]byte, maxSharePlaintext+1)
	defer clear(buf)
	// Only io.EOF means the whole payload was read and authenticated (age
	// reports a cut-off payload as io.ErrUnexpectedEOF, so io.ReadFull's
	// conventions do not fit).
	n := 0
	for {
		if n == len(buf) {
			return nil, fmt.Errorf("it decrypts to more than %d bytes, which is not a share", maxSharePlaintext)
		}
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("the encrypted share is damaged: %w", err)
		}
	}
	plaintext := buf[:n]
	var shares []string
	for line := range bytes.Lines(plaintext) {
		if line = bytes.TrimSpace(line); len(line) > 0 {
			shares = append(shares, string(line))
		}
	}
	if len(shares) == 0 {
		return nil, errors.New("it decrypts to nothing, which is not a share")
	}
	return shares, nil
}

// pluginUI is the plugin.ClientUI of Coffer, which has no user to ask: the
// daemon has no terminal, and the CLI reads shares from stdin. Every callback
// fails. Because age discards a callback's error (the plugin only learns
// "fail"), the callbacks also record what the plugin asked for, and
// explain adds that to the error the caller finally sees.
type pluginUI struct {
	mu    sync.Mutex
	asked []string
}

func (u *pluginUI) clientUI() *plugin.ClientUI {
	return &plugin.ClientUI{
		DisplayMessage: func(name, message string) error {
			return u.refuse(name, fmt.Sprintf("to show the message %q", shorten(message)))
		},
		RequestValue: func(name, prompt string, secret bool) (string, error) {
			kind := "a value"
			if secret {
				kind = "a secret"
			}
			return "", u.refuse(name, fmt.Sprintf("for %s (%q)", kind, shorten(prompt)))
		},
		Confirm: func(name, prompt, yes, no string) (bool, error) {
			return false, u.refuse(name, fmt.Sprintf("to confirm %q", shorten(prompt)))
		},
	}
}

func (u *pluginUI) refuse(name, what string) error {
	msg := fmt.Sprintf("age-plugin-%s asked %s", name, what)
	u.mu.Lock()
	// A misbehaving plugin could ask forever; a few requests explain enough.
	if len(u.asked) < 3 {
		u.asked = append(u.asked, msg)
	}
	u.mu.Unlock()
	return errors.New(msg + ", but Coffer cannot interact with age plugins")
}

// explain turns err from a plugin operation into an error that says what to
// do. It returns nil for a nil err.
func (u *pluginUI) explain(name string, err error) error {
	if err == nil {
		return nil
	}
	u.mu.Lock()
	asked := u.asked
	u.asked = nil
	u.mu.Unlock()
	var notFound *plugin.NotFoundError
	switch {
	case errors.As(err, &notFound):
		return fmt.Errorf("the age plugin binary %q was not found on PATH; install it on this machine, or use another recipient or identity: %w", "age-plugin-"+name, err)
	case len(asked) > 0:
		return fmt.Errorf("%w (%s, but Coffer cannot answer age plugin prompts; use a recipient or identity that works without interaction)", err, strings.Join(asked, "; "))
	default:
		return err
	}
}

// pluginRecipient is a plugin recipient whose errors are explained.
type pluginRecipient struct {
	*plugin.Recipient
	ui *pluginUI
}

var _ age.RecipientWithLabels = pluginRecipient{}

func (r pluginRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	stanzas, _, err := r.WrapWithLabels(fileKey)
	return stanzas, err
}

func (r pluginRecipient) WrapWithLabels(fileKey []byte) ([]*age.Stanza, []string, error) {
	stanzas, labels, err := r.Recipient.WrapWithLabels(fileKey)
	return stanzas, labels, r.ui.explain(r.Name(), err)
}

// pluginIdentity is a plugin identity whose errors are explained. Errors keep
// wrapping age.ErrIncorrectIdentity where the plugin's do, so age.Decrypt
// goes on to the next identity.
type pluginIdentity struct {
	*plugin.Identity
	ui *pluginUI
}

var _ age.Identity = pluginIdentity{}

func (i pluginIdentity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	fileKey, err := i.Identity.Unwrap(stanzas)
	return fileKey, i.ui.explain(i.Name(), err)
}

// shorten returns s, or its start followed by "…" when s is long, so that
// errors never echo long input.
func shorten(s string) string {
	const keep = 20
	if utf8.RuneCountInString(s) <= keep+4 {
		return s
	}
	r := []rune(s)
	return string(r[:keep]) + "…"
}

// redact returns err's message with the input s, which age's parsers quote in
// full, replaced by its shortened form.
func redact(err error, s string) string {
	msg := err.Error()
	msg = strings.ReplaceAll(msg, strconv.Quote(s), strconv.Quote(shorten(s)))
	return strings.ReplaceAll(msg, s, shorten(s))
}
