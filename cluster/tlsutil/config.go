package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// curvePreferences is the one key exchange a cluster connection may use:
// the post-quantum hybrid X25519MLKEM768. Both ends are Coffer, so there is
// no classical-only peer to stay compatible with, and offering X25519 or
// P-256 as well would let an active attacker who can break them (later, with
// a quantum computer, on recorded traffic) pick the weaker one. A peer that
// offers no hybrid share fails the handshake. (GODEBUG=tlsmlkem=0 removes
// the hybrid and therefore breaks cluster connections: do not set it.)
var curvePreferences = []tls.CurveID{tls.X25519MLKEM768}

// ServerConfig returns the tls.Config of the accepting end of a
// node-to-node connection: TLS 1.3 only, the node certificate and key from
// certFile and keyFile (reloaded when the files change), and peers required
// to present a certificate signed by the CA in caFile. It fails, with a
// message naming the config keys, when a file is missing or unreadable,
// the certificate and key do not match, or the certificate is not signed
// by the CA, is expired, or is not valid for TLS server authentication.
func ServerConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	r, err := newReloader(certFile, keyFile, caFile, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	cfg := r.baseConfig()
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get() }
	return cfg, nil
}

// ClientConfig returns the tls.Config of the dialing end: TLS 1.3 only, the
// node certificate and key presented to the peer (reloaded when the files
// change) and the peer verified against the CA in caFile. ServerName is
// left empty: tls.Dial and tls.Dialer fill it in from the dialed address,
// which the peer's certificate must name (an IP or DNS SAN). Errors are
// those of [ServerConfig], for TLS client authentication.
func ClientConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	r, err := newReloader(certFile, keyFile, caFile, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	cfg := r.baseConfig()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.get() }
	return cfg, nil
}

// baseConfig holds what both ends share. Each end gets the CA pool both as
// roots and as client CAs, so that a config also works if a caller uses it
// for the other role.
func (r *reloader) baseConfig() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		MaxVersion:       tls.VersionTLS13,
		CurvePreferences: append([]tls.CurveID(nil), curvePreferences...),
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        r.pool,
		RootCAs:          r.pool,
	}
}

// PeerNodeID returns the node id in the verified peer certificate of a
// completed handshake: the id of its coffer://node/<ID> URI SAN. It fails
// when the peer's certificate was not verified (a config that skipped
// verification), carries no such URI, or carries two different ids.
func PeerNodeID(cs tls.ConnectionState) (string, error) {
	if !cs.HandshakeComplete {
		return "", errors.New("the TLS handshake has not completed")
	}
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", errors.New("the peer's certificate was not verified against the cluster CA; use tlsutil.ServerConfig and tlsutil.ClientConfig")
	}
	leaf := cs.VerifiedChains[0][0]
	var id string
	for _, u := range leaf.URIs {
		if u.Scheme != URIScheme || u.Host != URIHost {
			continue
		}
		got, ok := strings.CutPrefix(u.Path, "/")
		if !ok || !ValidNodeID(got) || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return "", fmt.Errorf("the peer's certificate (CN %q) has a malformed node URI %q", leaf.Subject.CommonName, u.String())
		}
		if id != "" && id != got {
			return "", fmt.Errorf("the peer's certificate (CN %q) names two nodes, %s and %s", leaf.Subject.CommonName, id, got)
		}
		id = got
	}
	if id == "" {
		return "", fmt.Errorf("the peer's certificate (CN %q) has no %s://%s/<ID> URI; make node certificates with 'coffer tls cert create'",
			leaf.Subject.CommonName, URIScheme, URIHost)
	}
	return id, nil
}

// reloader serves the node certificate, reading the files again only when
// they changed since the last successful load.
type reloader struct {
	certFile, keyFile, caFile string
	pool                      *x509.CertPool
	usage                     x509.ExtKeyUsage

	mu       sync.Mutex
	cert     *tls.Certificate
	certStat os.FileInfo
	keyStat  os.FileInfo
}

func newReloader(certFile, keyFile, caFile string, usage x509.ExtKeyUsage) (*reloader, error) {
	for _, f := range []struct{ key, val string }{{"tls_cert_file", certFile}, {"tls_key_file", keyFile}, {"tls_ca_file", caFile}} {
		if f.val == "" {
			return nil, fmt.Errorf("%s is not set; node-to-node traffic is always mutual TLS", f.key)
		}
	}
	cas, err := readCertChain(caFile, "tls_ca_file")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	r := &reloader{certFile: certFile, keyFile: keyFile, caFile: caFile, pool: pool, usage: usage}
	// Load once now so that a broken setup fails at start, not at the
	// first handshake.
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return r, nil
}

// get returns the current certificate. A load that fails is not cached:
// the handshake fails with the reason (the cluster transport logs it) and
// the next handshake tries again, so a rotation caught half-way (new
// certificate, old key) heals by itself once both files are in place.
// Serving the previous certificate instead would hide a broken rotation
// until that certificate expires.
func (r *reloader) get() (*tls.Certificate, error) {
	// Stat before reading: if a file changes after the stat, the next call
	// sees a newer stat and loads again.
	cs, err := os.Stat(r.certFile)
	if err != nil {
		return nil, fileError("tls_cert_file", r.certFile, err)
	}
	ks, err := os.Stat(r.keyFile)
	if err != nil {
		return nil, fileError("tls_key_file", r.keyFile, err)
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert == nil || !sameFile(r.certStat, cs) || !sameFile(r.keyStat, ks) {
		c, err := r.load(now)
		if err != nil {
			return nil, err
		}
		r.cert, r.certStat, r.keyStat = c, cs, ks
	}
	if !now.Before(r.cert.Leaf.NotAfter) {
		return nil, expiredError(r.certFile, r.cert.Leaf)
	}
	return r.cert, nil
}

// sameFile reports whether b is a as last loaded: the same file (inode), size
// and modification time. Replacing a file by rename changes the inode;
// rewriting it in place changes the mtime.
func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// load reads and checks the certificate and key.
func (r *reloader) load(now time.Time) (*tls.Certificate, error) {
	chain, err := readCertChain(r.certFile, "tls_cert_file")
	if err != nil {
		return nil, err
	}
	key, err := readKey(r.keyFile, "tls_key_file")
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, fmt.Errorf("tls_cert_file %s and tls_key_file %s do not match: the key is not the certificate's; give the .key file made together with the .crt file",
			r.certFile, r.keyFile)
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("tls_cert_file %s is not valid before %s; check this machine's clock", r.certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(leaf.NotAfter) {
		return nil, expiredError(r.certFile, leaf)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: r.pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{r.usage}})
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case err == nil:
	case errors.As(err, &unknown):
		return nil, fmt.Errorf("tls_cert_file: %s is not signed by the CA in %s; make the node certificate with 'coffer tls cert create' from the CA whose ca.crt is tls_ca_file",
			r.certFile, r.caFile)
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		role := "server"
		if r.usage == x509.ExtKeyUsageClientAuth {
			role = "client"
		}
		return nil, fmt.Errorf("tls_cert_file %s is not valid for TLS %s authentication; node certificates need both (make them with 'coffer tls cert create')", r.certFile, role)
	default:
		return nil, fmt.Errorf("tls_cert_file %s does not verify against the CA in %s: %w", r.certFile, r.caFile, err)
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	return &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}, nil
}

func expiredError(path string, leaf *x509.Certificate) error {
	return fmt.Errorf("tls_cert_file %s expired at %s; make a new one with 'coffer tls cert create' and replace the certificate and key files (no restart needed)",
		path, leaf.NotAfter.UTC().Format(time.RFC3339))
}
