// Package tlsutil makes and loads the certificates of Coffer's cluster
// mutual TLS: a cluster CA, node certificates signed by it (valid as server
// and client), and the tls.Config of both ends of a node-to-node
// connection.
//
// It is pure Go on the standard library so that the coffer CLI
// (`coffer tls ca create`, `coffer tls cert create`) can import it without
// pulling in the daemon.
//
// # Design notes
//
//   - Keys are ECDSA P-256: every TLS stack and every tool (openssl, cfssl,
//     Go, Java) reads them; Ed25519 certificates still are not universally
//     accepted.
//   - A node certificate carries its node id twice: as CommonName, for
//     people reading it with openssl, and as the URI SAN coffer://node/<ID>,
//     which [PeerNodeID] reads, because SANs are what verification covers.
//   - Files are never overwritten: each is written to a temporary file in
//     the target directory, synced, then hard-linked to its name, which fails
//     if the name exists. A crash leaves either no file or a whole one.
//   - Configs reload the node certificate and key on each handshake when
//     their files changed (os.Stat; same file, size and mtime means
//     unchanged), so a rotated certificate takes effect without a restart.
//     The CA pool is read once: changing the CA is a cluster-wide operation
//     that needs a restart anyway.
package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/coffer-kms/coffer/api"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/internal/atomicfile"
)

// File names inside a CA or output directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Defaults and limits of certificate lifetimes, in days.
const (
	DefaultCADays   = 3650
	DefaultCertDays = 365
	// NodeCertBackdate is how far a node certificate's NotBefore lies
	// before its issue (tolerating clocks a little behind). The cluster
	// takes NotBefore+NodeCertBackdate as the time of issue when it
	// decides whether a removed node's certificate predates the removal.
	NodeCertBackdate = time.Minute
	// MaxDays bounds --days so that a typo (36500000) is caught instead of
	// producing a certificate some verifiers reject.
	MaxDays = 36500
)

// URIScheme and URIHost make a node certificate's URI SAN:
// coffer://node/<ID>.
const (
	URIScheme = "coffer"
	URIHost   = "node"
)

// ErrInvalidArgument marks an error caused by a bad argument (node id, DNS
// name, days, missing SAN) rather than by the files or the system; the CLI
// reports it as a usage error.
var ErrInvalidArgument = errors.New("invalid argument")

// invalidf returns an error that wraps ErrInvalidArgument, with only the
// message shown.
func invalidf(format string, args ...any) error {
	return &argError{msg: fmt.Sprintf(format, args...)}
}

type argError struct{ msg string }

func (e *argError) Error() string        { return e.msg }
func (e *argError) Is(target error) bool { return target == ErrInvalidArgument }

// ValidNodeID reports whether id is a valid node id, the same rule as the
// daemon's node_id.
func ValidNodeID(id string) bool { return api.ValidNodeID(id) }

const nodeIDRule = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"

// checkDNSName accepts a host name as it may appear in a dNSName SAN:
// dot-separated labels of letters, digits and '-', not starting or ending
// with '-', at most 63 bytes each and 253 in all. Wildcards are refused: a
// node certificate names one node.
func checkDNSName(name string) error {
	bad := func(why string) error {
		return invalidf("invalid DNS name %q: %s", name, why)
	}
	if name == "" {
		return bad("it is empty")
	}
	if len(name) > 253 {
		return bad("longer than 253 characters")
	}
	if strings.HasPrefix(name, "*") {
		return bad("wildcards are not allowed in a node certificate; give the node's own name")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return bad("empty label (leading, trailing or double dot)")
		}
		if len(label) > 63 {
			return bad("a label is longer than 63 characters")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return bad("a label starts or ends with '-'")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return bad("use letters, digits, '-' and '.'")
			}
		}
	}
	return nil
}

func checkDays(days int) error {
	if days < 1 || days > MaxDays {
		return invalidf("invalid validity of %d days: give 1 to %d", days, MaxDays)
	}
	return nil
}

// NodeURI returns the URI SAN that names node id in its certificate.
func NodeURI(id string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: URIHost, Path: "/" + id}
}

// CreateCA makes a self-signed cluster CA valid for days from now and
// writes dir/ca.crt (0644) and dir/ca.key (0600, PKCS#8 PEM), creating dir
// (0700) if it is missing. It refuses to overwrite either file.
func CreateCA(dir string, days int, now time.Time) (certPath, keyPath string, err error) {
	if err := checkDays(days); err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if err := prepareOut(dir, certPath, keyPath); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate the CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return "", "", err
	}
	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", "", fmt.Errorf("read random bytes: %w", err)
	}
	// The random suffix tells two clusters' CAs apart in error messages and
	// in openssl output; verification does not depend on it.
	name := "Coffer cluster CA " + hex.EncodeToString(suffix[:])
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Coffer"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clocks a little behind
		NotAfter:              now.AddDate(0, 0, days),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // sign node certificates only, no intermediates
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return "", "", fmt.Errorf("create the CA certificate: %w", err)
	}
	if err := writePair(certPath, keyPath, der, key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// CreateNodeCert makes a certificate for node nodeID, signed by the CA in
// caDir (ca.crt, ca.key), valid for days from now as TLS server and client.
// Its SANs are ips, dnsNames and the URI coffer://node/<nodeID>; at least
// one IP or DNS name is required, since peers verify the address they dial
// against them. It writes outDir/<nodeID>.crt (0644) and
// outDir/<nodeID>.key (0600), creating outDir (0700) if missing, and
// refuses to overwrite either file.
func CreateNodeCert(caDir, nodeID string, ips []net.IP, dnsNames []string, outDir string, days int, now time.Time) (certPath, keyPath string, err error) {
	if !ValidNodeID(nodeID) {
		return "", "", invalidf("invalid node id %q: %s", nodeID, nodeIDRule)
	}
	if err := checkDays(days); err != nil {
		return "", "", err
	}
	if len(ips) == 0 && len(dnsNames) == 0 {
		return "", "", invalidf("node %s needs at least one IP address or DNS name: peers check the address they dial against the certificate, so a certificate without one cannot be used", nodeID)
	}
	var sanIPs []net.IP
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return "", "", invalidf("invalid IP address %v", ip)
		}
		if ip.IsUnspecified() {
			return "", "", invalidf("invalid IP address %v: a peer cannot dial the unspecified address; give the node's own address", ip)
		}
		if !containsIP(sanIPs, ip) {
			sanIPs = append(sanIPs, ip)
		}
	}
	var sanDNS []string
	for _, n := range dnsNames {
		if err := checkDNSName(n); err != nil {
			return "", "", err
		}
		n = strings.ToLower(n)
		if !contains(sanDNS, n) {
			sanDNS = append(sanDNS, n)
		}
	}

	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return "", "", err
	}
	if !now.Before(caCert.NotAfter) {
		return "", "", fmt.Errorf("the CA in %s expired at %s; create a new CA (coffer tls ca create) and new certificates for every node", caDir, caCert.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.AddDate(0, 0, days)
	if notAfter.After(caCert.NotAfter) {
		// Peers would refuse the certificate once the CA expires, whatever
		// the certificate says; a shorter --days says so up front.
		maxDays := int(caCert.NotAfter.Sub(now) / (24 * time.Hour))
		if maxDays < 1 {
			return "", "", fmt.Errorf("the CA in %s expires at %s, in less than a day; create a new CA (coffer tls ca create) and new certificates for every node",
				caDir, caCert.NotAfter.UTC().Format(time.RFC3339))
		}
		return "", "", invalidf("a certificate valid for %d days would outlive the CA in %s, which expires at %s; use at most %d days",
			days, caDir, caCert.NotAfter.UTC().Format(time.RFC3339), maxDays)
	}

	certPath = filepath.Join(outDir, nodeID+".crt")
	keyPath = filepath.Join(outDir, nodeID+".key")
	if err := prepareOut(outDir, certPath, keyPath); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate the node key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: nodeID, Organization: []string{"Coffer"}},
		// Only NodeCertBackdate back (the CA takes an hour): the cluster
		// reads NotBefore+NodeCertBackdate as the time of issue, to tell a
		// removed node's old certificates from its new ones.
		NotBefore:             now.Add(-NodeCertBackdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IPAddresses:           sanIPs,
		DNSNames:              sanDNS,
		URIs:                  []*url.URL{NodeURI(nodeID)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return "", "", fmt.Errorf("sign the node certificate: %w", err)
	}
	if err := writePair(certPath, keyPath, der, key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

func containsIP(list []net.IP, ip net.IP) bool {
	for _, x := range list {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// randomSerial returns a random positive 128-bit serial number (RFC 5280
// allows up to 20 octets; 128 bits make collisions negligible).
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate a serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// prepareOut creates dir (0700) if needed and checks that none of paths
// exists yet, so that nothing is generated for a command that would fail.
// The write itself checks again (see writeNew).
func prepareOut(dir string, paths ...string) error {
	if dir == "" {
		return invalidf("no output directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return existsError(p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, err)
		}
	}
	return nil
}

func existsError(path string) error {
	return &msgError{
		msg: path + " already exists; refusing to overwrite it: move it away first or choose another output directory",
		err: fs.ErrExist,
	}
}

// msgError is an error whose message already says everything, wrapping a
// cause for errors.Is without repeating the cause's text.
type msgError struct {
	msg string
	err error
}

func (e *msgError) Error() string { return e.msg }
func (e *msgError) Unwrap() error { return e.err }

// writePair writes the certificate DER as PEM to certPath and the key as
// PKCS#8 PEM to keyPath. The key goes first; if the certificate cannot be
// written, the key just written is removed again so that a retry starts
// clean.
func writePair(certPath, keyPath string, certDER []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode the private key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	clear(keyDER)
	defer clear(keyPEM)
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNew writes data to path with mode perm, atomically and without ever
// replacing an existing file (internal/atomicfile.WriteNew: created 0600,
// so a key is never readable by others even for a moment).
func writeNew(path string, data []byte, perm os.FileMode) error {
	err := atomicfile.WriteNew(path, data, perm)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrExist):
		return existsError(path)
	}
	return fmt.Errorf("write %s: %w", path, err)
}

// loadCA reads caDir/ca.crt and caDir/ca.key and checks that they belong
// together and form a CA.
func loadCA(caDir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(caDir, CACertFile), filepath.Join(caDir, CAKeyFile)
	chain, err := readCertChain(certPath, "CA certificate")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, &msgError{msg: err.Error() + "; give the directory made by 'coffer tls ca create'", err: err}
	}
	if err != nil {
		return nil, nil, err
	}
	ca := chain[0]
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("%s is not a CA certificate; give the directory made by 'coffer tls ca create'", certPath)
	}
	key, err := readKey(keyPath, "CA key")
	if err != nil {
		return nil, nil, err
	}
	if !publicKeysEqual(ca.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("%s and %s do not match: the key is not the CA certificate's", certPath, keyPath)
	}
	return ca, key, nil
}

// readCertChain reads the PEM certificates in path, leaf first. what names
// the file in errors.
func readCertChain(path, what string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileError(what, path, err)
	}
	var chain []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s holds an invalid certificate: %w", what, path, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s %s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", what, path)
	}
	return chain, nil
}

// readKey reads a PEM private key (PKCS#8, SEC 1 EC or PKCS#1 RSA) from
// path. The file's bytes are zeroed after parsing.
func readKey(path, what string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileError(what, path, err)
	}
	defer clear(data)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		var key any
		switch b.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue // e.g. EC PARAMETERS written by openssl
		}
		clear(b.Bytes)
		if err != nil {
			// The parser's error never quotes key bytes.
			return nil, fmt.Errorf("%s %s holds an invalid private key: %w", what, path, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s %s holds an unsupported kind of private key (%T)", what, path, key)
		}
		return s, nil
	}
	return nil, fmt.Errorf("%s %s holds no PEM private key block", what, path)
}

func fileError(what, path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &msgError{msg: fmt.Sprintf("%s %s does not exist", what, path), err: err}
	case errors.Is(err, fs.ErrPermission):
		return &msgError{msg: fmt.Sprintf("%s %s is not readable by this user", what, path), err: err}
	default:
		return fmt.Errorf("read %s %s: %w", what, path, err)
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
