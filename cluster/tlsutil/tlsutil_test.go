package tlsutil

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var localhost = []net.IP{net.ParseIP("127.0.0.1")}

// pki is a CA and node certificates in one directory.
type pki struct {
	t   *testing.T
	dir string
}

func newPKI(t *testing.T, now time.Time) *pki {
	t.Helper()
	p := &pki{t: t, dir: filepath.Join(t.TempDir(), "tls")}
	if _, _, err := CreateCA(p.dir, DefaultCADays, now); err != nil {
		t.Fatal(err)
	}
	return p
}

// node makes a certificate for id valid on 127.0.0.1 in the PKI directory.
func (p *pki) node(id string, now time.Time, days int) (cert, key string) {
	p.t.Helper()
	cert, key, err := CreateNodeCert(p.dir, id, localhost, []string{"localhost"}, p.dir, days, now)
	if err != nil {
		p.t.Fatal(err)
	}
	return cert, key
}

func (p *pki) ca() string { return filepath.Join(p.dir, CACertFile) }

func (p *pki) pool() *x509.CertPool {
	p.t.Helper()
	chain, err := readCertChain(p.ca(), "ca")
	if err != nil {
		p.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(chain[0])
	return pool
}

func mustServer(t *testing.T, cert, key, ca string) *tls.Config {
	t.Helper()
	cfg, err := ServerConfig(cert, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mustClient(t *testing.T, cert, key, ca string) *tls.Config {
	t.Helper()
	cfg, err := ClientConfig(cert, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// conn is the outcome of one connection attempt.
type conn struct {
	srv, cli       tls.ConnectionState
	srvErr, cliErr error
}

// connect runs one TLS connection over TCP on 127.0.0.1. After the
// handshake the server sends one byte and the client reads it: in TLS 1.3
// the client's handshake completes before the server has checked the
// client's certificate, so only that read reveals a refusal by the server.
func connect(t *testing.T, srvCfg, cliCfg *tls.Config) conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type srvResult struct {
		st  tls.ConnectionState
		err error
	}
	done := make(chan srvResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- srvResult{err: err}
			return
		}
		defer c.Close()
		tc := tls.Server(c, srvCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			done <- srvResult{err: err}
			return
		}
		_, err = tc.Write([]byte{1})
		done <- srvResult{st: tc.ConnectionState(), err: err}
	}()
	var out conn
	d := &tls.Dialer{Config: cliCfg}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		tc := c.(*tls.Conn)
		out.cli = tc.ConnectionState()
		tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err = io.ReadFull(tc, b[:]); err == nil && b[0] != 1 {
			t.Fatalf("read %d, want 1", b[0])
		}
		tc.Close()
	}
	out.cliErr = err
	r := <-done
	out.srv, out.srvErr = r.st, r.err
	return out
}

func TestConnect_MutualTLS13(t *testing.T) {
	p := newPKI(t, time.Now())
	c1, k1 := p.node("node1", time.Now(), DefaultCertDays)
	c2, k2 := p.node("node2", time.Now(), DefaultCertDays)
	r := connect(t, mustServer(t, c1, k1, p.ca()), mustClient(t, c2, k2, p.ca()))
	if r.srvErr != nil || r.cliErr != nil {
		t.Fatalf("server: %v, client: %v", r.srvErr, r.cliErr)
	}
	for name, st := range map[string]tls.ConnectionState{"server": r.srv, "client": r.cli} {
		if st.Version != tls.VersionTLS13 {
			t.Errorf("%s: version %x, want TLS 1.3", name, st.Version)
		}
		if st.CurveID != tls.X25519MLKEM768 {
			t.Errorf("%s: key exchange %v, want X25519MLKEM768", name, st.CurveID)
		}
	}
	tests := []struct {
		side string
		st   tls.ConnectionState
		want string
	}{
		{"server sees client", r.srv, "node2"},
		{"client sees server", r.cli, "node1"},
	}
	for _, tt := range tests {
		t.Run(tt.side, func(t *testing.T) {
			id, err := PeerNodeID(tt.st)
			if err != nil || id != tt.want {
				t.Fatalf("PeerNodeID = %q, %v; want %q", id, err, tt.want)
			}
		})
	}
}

func TestConnect_Refused(t *testing.T) {
	now := time.Now()
	// The CA was made ten days ago, so that it can have issued a
	// certificate that has expired since.
	p := newPKI(t, now.AddDate(0, 0, -10))
	c1, k1 := p.node("node1", now, DefaultCertDays)
	c2, k2 := p.node("node2", now, DefaultCertDays)
	other := newPKI(t, now)
	oc, ok := other.node("node2", now, DefaultCertDays)
	// An expired certificate, signed by the right CA: made ten days ago,
	// valid for one.
	ec, ek := p.node("node3", now.AddDate(0, 0, -10), 1)
	expired, err := tls.LoadX509KeyPair(ec, ek)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name          string
		srv, cli      func(t *testing.T) *tls.Config
		refusedBy     string // "server" or "client"
		wantErrSubstr string
	}{
		{
			name: "client certificate from another CA",
			srv:  func(t *testing.T) *tls.Config { return mustServer(t, c1, k1, p.ca()) },
			cli: func(t *testing.T) *tls.Config {
				cfg := mustClient(t, oc, ok, other.ca())
				cfg.RootCAs = p.pool() // trusts the server, presents a foreign certificate
				return cfg
			},
			refusedBy: "server", wantErrSubstr: "unknown authority",
		},
		{
			name: "server certificate from another CA",
			srv: func(t *testing.T) *tls.Config {
				cfg := mustServer(t, oc, ok, other.ca())
				cfg.ClientCAs = p.pool()
				return cfg
			},
			cli:       func(t *testing.T) *tls.Config { return mustClient(t, c2, k2, p.ca()) },
			refusedBy: "client", wantErrSubstr: "unknown authority",
		},
		{
			name: "expired client certificate",
			srv:  func(t *testing.T) *tls.Config { return mustServer(t, c1, k1, p.ca()) },
			cli: func(t *testing.T) *tls.Config {
				return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: p.pool(), Certificates: []tls.Certificate{expired}}
			},
			refusedBy: "server", wantErrSubstr: "expired",
		},
		{
			name: "expired server certificate",
			srv: func(t *testing.T) *tls.Config {
				return &tls.Config{MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool(), Certificates: []tls.Certificate{expired}}
			},
			cli:       func(t *testing.T) *tls.Config { return mustClient(t, c2, k2, p.ca()) },
			refusedBy: "client", wantErrSubstr: "expired",
		},
		{
			name: "client without certificate",
			srv:  func(t *testing.T) *tls.Config { return mustServer(t, c1, k1, p.ca()) },
			cli: func(t *testing.T) *tls.Config {
				return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: p.pool()}
			},
			refusedBy: "server", wantErrSubstr: "certificate",
		},
		{
			name: "TLS 1.2 client",
			srv:  func(t *testing.T) *tls.Config { return mustServer(t, c1, k1, p.ca()) },
			cli: func(t *testing.T) *tls.Config {
				cfg := mustClient(t, c2, k2, p.ca())
				cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
				return cfg
			},
			refusedBy: "server", wantErrSubstr: "version",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := connect(t, tt.srv(t), tt.cli(t))
			if r.srvErr == nil || r.cliErr == nil {
				t.Fatalf("connection not refused: server %v, client %v", r.srvErr, r.cliErr)
			}
			refuser := r.srvErr
			if tt.refusedBy == "client" {
				refuser = r.cliErr
			}
			if !strings.Contains(refuser.Error(), tt.wantErrSubstr) {
				t.Fatalf("%s error %q lacks %q", tt.refusedBy, refuser, tt.wantErrSubstr)
			}
		})
	}
}

func TestConfig_LoadErrors(t *testing.T) {
	now := time.Now()
	p := newPKI(t, now)
	c1, k1 := p.node("node1", now, DefaultCertDays)
	_, k2 := p.node("node2", now, DefaultCertDays)
	other := newPKI(t, now)
	oc, ok := other.node("node1", now, DefaultCertDays)
	old := newPKI(t, now.AddDate(0, 0, -10))
	ec, ek := old.node("node3", now.AddDate(0, 0, -10), 1)
	missing := filepath.Join(t.TempDir(), "nope.crt")
	garbage := filepath.Join(t.TempDir(), "garbage.crt")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name          string
		cert, key, ca string
		want          string
	}{
		{"mismatched key", c1, k2, p.ca(), "tls_cert_file " + c1 + " and tls_key_file " + k2 + " do not match"},
		{"other CA", oc, ok, p.ca(), oc + " is not signed by the CA in " + p.ca()},
		{"expired", ec, ek, old.ca(), "tls_cert_file " + ec + " expired at"},
		{"missing cert", missing, k1, p.ca(), "tls_cert_file " + missing + " does not exist"},
		{"missing key", c1, missing, p.ca(), "tls_key_file " + missing + " does not exist"},
		{"missing ca", c1, k1, missing, "tls_ca_file " + missing + " does not exist"},
		{"garbage ca", c1, k1, garbage, "holds no PEM certificate"},
		{"garbage key", c1, garbage, p.ca(), "holds no PEM private key"},
		{"cert as key", c1, c1, p.ca(), "holds no PEM private key"},
		{"unset", "", k1, p.ca(), "tls_cert_file is not set"},
	}
	for _, tt := range tests {
		for _, side := range []string{"server", "client"} {
			t.Run(tt.name+"/"+side, func(t *testing.T) {
				var err error
				if side == "server" {
					_, err = ServerConfig(tt.cert, tt.key, tt.ca)
				} else {
					_, err = ClientConfig(tt.cert, tt.key, tt.ca)
				}
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("got %v, want an error containing %q", err, tt.want)
				}
				if strings.Contains(err.Error(), "PRIVATE KEY-----\n") {
					t.Fatal("error quotes key material")
				}
			})
		}
	}
}

func TestConfig_HotReload(t *testing.T) {
	now := time.Now()
	p := newPKI(t, now)
	c1, k1 := p.node("node1", now, DefaultCertDays)
	c2, k2 := p.node("node2", now, DefaultCertDays)
	srv := mustServer(t, c1, k1, p.ca())

	serial := func(t *testing.T) string {
		t.Helper()
		r := connect(t, srv, mustClient(t, c2, k2, p.ca()))
		if r.srvErr != nil || r.cliErr != nil {
			t.Fatalf("server: %v, client: %v", r.srvErr, r.cliErr)
		}
		return r.cli.PeerCertificates[0].SerialNumber.String()
	}
	// fresh makes a new node1 certificate in a directory of its own.
	fresh := func(t *testing.T) (cert, key string) {
		t.Helper()
		out := t.TempDir()
		cert, key, err := CreateNodeCert(p.dir, "node1", localhost, nil, out, DefaultCertDays, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	first := serial(t)
	if again := serial(t); again != first {
		t.Fatalf("certificate changed without a file change: %s → %s", first, again)
	}

	t.Run("replaced by rename", func(t *testing.T) {
		before := serial(t)
		nc, nk := fresh(t)
		if err := os.Rename(nk, k1); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(nc, c1); err != nil {
			t.Fatal(err)
		}
		if after := serial(t); after == before {
			t.Fatal("the server still presents the old certificate")
		}
	})

	t.Run("rewritten in place, cert before key", func(t *testing.T) {
		before := serial(t)
		nc, nk := fresh(t)
		// A later mtime than the current files, whatever the filesystem's
		// timestamp granularity.
		later := time.Now().Add(time.Minute)
		copyFile(t, nc, c1, later)
		// Half-way: new certificate, old key. The handshake fails with the
		// reason and nothing stale is cached.
		r := connect(t, srv, mustClient(t, c2, k2, p.ca()))
		if r.srvErr == nil || !strings.Contains(r.srvErr.Error(), "do not match") {
			t.Fatalf("half-rotated files: server error %v, want a mismatch", r.srvErr)
		}
		copyFile(t, nk, k1, later)
		if after := serial(t); after == before {
			t.Fatal("the server still presents the old certificate")
		}
	})

	t.Run("client side", func(t *testing.T) {
		cli := mustClient(t, c2, k2, p.ca())
		clientSerial := func() string {
			r := connect(t, srv, cli)
			if r.srvErr != nil || r.cliErr != nil {
				t.Fatalf("server: %v, client: %v", r.srvErr, r.cliErr)
			}
			return r.srv.PeerCertificates[0].SerialNumber.String()
		}
		before := clientSerial()
		out := t.TempDir()
		nc, nk, err := CreateNodeCert(p.dir, "node2", localhost, nil, out, DefaultCertDays, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(nk, k2); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(nc, c2); err != nil {
			t.Fatal(err)
		}
		if after := clientSerial(); after == before {
			t.Fatal("the client still presents the old certificate")
		}
	})
}

func copyFile(t *testing.T, src, dst string, mtime time.Time) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(dst, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestCreateCA(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	dir := filepath.Join(t.TempDir(), "new", "tls")
	certPath, keyPath, err := CreateCA(dir, 30, now)
	if err != nil {
		t.Fatal(err)
	}
	if certPath != filepath.Join(dir, "ca.crt") || keyPath != filepath.Join(dir, "ca.key") {
		t.Fatalf("paths %s, %s", certPath, keyPath)
	}
	checkMode(t, dir, 0o700|fs.ModeDir)
	checkMode(t, certPath, 0o644)
	checkMode(t, keyPath, 0o600)
	checkNoTempFiles(t, dir)

	chain, err := readCertChain(certPath, "ca")
	if err != nil {
		t.Fatal(err)
	}
	ca := chain[0]
	checks := []struct {
		name string
		ok   bool
	}{
		{"CommonName prefix", strings.HasPrefix(ca.Subject.CommonName, "Coffer cluster CA ") && len(ca.Subject.CommonName) > len("Coffer cluster CA ")},
		{"IsCA", ca.IsCA && ca.BasicConstraintsValid},
		{"MaxPathLen 0", ca.MaxPathLen == 0 && ca.MaxPathLenZero},
		{"KeyUsage", ca.KeyUsage == x509.KeyUsageCertSign|x509.KeyUsageCRLSign},
		{"serial", ca.SerialNumber.Sign() > 0 && ca.SerialNumber.BitLen() <= 128},
		{"NotBefore", ca.NotBefore.Equal(now.Add(-time.Hour))},
		{"NotAfter", ca.NotAfter.Equal(now.AddDate(0, 0, 30))},
		{"ECDSA P-256", ca.PublicKeyAlgorithm == x509.ECDSA},
		{"self-signed", ca.CheckSignatureFrom(ca) == nil},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("CA certificate: %s wrong", c.name)
		}
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(keyPEM, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Error("CA key is not PKCS#8 PEM")
	}
	if _, _, err := loadCA(dir); err != nil {
		t.Fatal(err)
	}

	// Two CAs get different names, so errors can tell them apart.
	otherCert, _, err := CreateCA(filepath.Join(t.TempDir(), "b"), 30, now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := readCertChain(otherCert, "ca")
	if err != nil {
		t.Fatal(err)
	}
	if other[0].Subject.CommonName == ca.Subject.CommonName {
		t.Error("two CAs share a name")
	}
}

func TestCreateCA_RefusesOverwrite(t *testing.T) {
	tests := []struct {
		name     string
		existing string
	}{
		{"both exist", ""},
		{"only the key exists", "ca.key"},
		{"only the certificate exists", "ca.crt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.existing == "" {
				if _, _, err := CreateCA(dir, 30, time.Now()); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(filepath.Join(dir, tt.existing), []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			_, _, err := CreateCA(dir, 30, time.Now())
			if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "refusing to overwrite") {
				t.Fatalf("got %v, want a refusal to overwrite", err)
			}
			if after := snapshot(t, dir); after != before {
				t.Fatalf("directory changed:\n%s\n→\n%s", before, after)
			}
		})
	}
}

func TestWriteNew_RefusesExisting(t *testing.T) {
	// The check in writeNew itself, for a file that appears after the
	// up-front check.
	path := filepath.Join(t.TempDir(), "x.key")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeNew(path, []byte("new"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("got %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Fatalf("file overwritten: %q", b)
	}
	checkNoTempFiles(t, filepath.Dir(path))
}

func TestCreateNodeCert(t *testing.T) {
	now := time.Now()
	p := newPKI(t, now)
	out := filepath.Join(t.TempDir(), "out")
	ips := []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("fd00::1"), net.ParseIP("10.0.0.1")}
	certPath, keyPath, err := CreateNodeCert(p.dir, "node-1.a_b", ips, []string{"Node1.Example.internal", "node1"}, out, 90, now)
	if err != nil {
		t.Fatal(err)
	}
	if certPath != filepath.Join(out, "node-1.a_b.crt") || keyPath != filepath.Join(out, "node-1.a_b.key") {
		t.Fatalf("paths %s, %s", certPath, keyPath)
	}
	checkMode(t, out, 0o700|fs.ModeDir)
	checkMode(t, certPath, 0o644)
	checkMode(t, keyPath, 0o600)
	chain, err := readCertChain(certPath, "cert")
	if err != nil {
		t.Fatal(err)
	}
	c := chain[0]
	if _, err := c.Verify(x509.VerifyOptions{Roots: p.pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("does not verify: %v", err)
	}
	var gotIPs []string
	for _, ip := range c.IPAddresses {
		gotIPs = append(gotIPs, ip.String())
	}
	var gotURIs []string
	for _, u := range c.URIs {
		gotURIs = append(gotURIs, u.String())
	}
	checks := []struct {
		name, got, want string
	}{
		{"CommonName", c.Subject.CommonName, "node-1.a_b"},
		{"IPs (deduplicated)", strings.Join(gotIPs, ","), "10.0.0.1,fd00::1"},
		{"DNS names", strings.Join(c.DNSNames, ","), "node1.example.internal,node1"},
		{"URI", strings.Join(gotURIs, ","), "coffer://node/node-1.a_b"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
	if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature || len(c.ExtKeyUsage) != 2 {
		t.Errorf("usage: IsCA %v, KeyUsage %v, ExtKeyUsage %v", c.IsCA, c.KeyUsage, c.ExtKeyUsage)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 || !c.NotBefore.Equal(now.Add(-time.Minute).Truncate(time.Second)) {
		t.Errorf("serial %v, NotBefore %v", c.SerialNumber, c.NotBefore)
	}
	if !c.NotAfter.Equal(now.AddDate(0, 0, 90).Truncate(time.Second)) {
		t.Errorf("NotAfter %v", c.NotAfter)
	}
	// The key file pairs with the certificate.
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Fatal(err)
	}

	// Node certificates may go into the CA directory itself.
	if _, _, err := CreateNodeCert(p.dir, "node2", nil, []string{"node2"}, p.dir, 90, now); err != nil {
		t.Fatal(err)
	}
}

func TestCreateNodeCert_Errors(t *testing.T) {
	now := time.Now()
	p := newPKI(t, now)
	if _, _, err := CreateNodeCert(p.dir, "taken", localhost, nil, p.dir, 90, now); err != nil {
		t.Fatal(err)
	}
	nodeDir := t.TempDir() // holds a node certificate, not a CA
	if _, _, err := CreateNodeCert(p.dir, "ca", localhost, nil, nodeDir, 90, now); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(t.TempDir(), "short")
	if _, _, err := CreateCA(short, 10, now); err != nil {
		t.Fatal(err)
	}
	wrongKey := t.TempDir()
	copyFile(t, filepath.Join(p.dir, "ca.crt"), filepath.Join(wrongKey, "ca.crt"), now)
	copyFile(t, filepath.Join(short, "ca.key"), filepath.Join(wrongKey, "ca.key"), now)

	tests := []struct {
		name    string
		caDir   string
		node    string
		ips     []net.IP
		dns     []string
		days    int
		invalid bool // wraps ErrInvalidArgument
		want    string
	}{
		{name: "bad node id", caDir: p.dir, node: "bad/id", ips: localhost, days: 90, invalid: true, want: `invalid node id "bad/id"`},
		{name: "node id with leading dot", caDir: p.dir, node: ".n", ips: localhost, days: 90, invalid: true, want: "invalid node id"},
		{name: "node id too long", caDir: p.dir, node: strings.Repeat("n", 65), ips: localhost, days: 90, invalid: true, want: "invalid node id"},
		{name: "no SAN", caDir: p.dir, node: "n1", days: 90, invalid: true, want: "needs at least one IP address or DNS name"},
		{name: "wildcard", caDir: p.dir, node: "n1", dns: []string{"*.example.com"}, days: 90, invalid: true, want: "wildcards are not allowed"},
		{name: "bad DNS", caDir: p.dir, node: "n1", dns: []string{"node_1.example"}, days: 90, invalid: true, want: `invalid DNS name "node_1.example"`},
		{name: "empty DNS label", caDir: p.dir, node: "n1", dns: []string{"a..b"}, days: 90, invalid: true, want: "empty label"},
		{name: "unspecified IP", caDir: p.dir, node: "n1", ips: []net.IP{net.IPv4zero}, days: 90, invalid: true, want: "unspecified address"},
		{name: "zero days", caDir: p.dir, node: "n1", ips: localhost, days: 0, invalid: true, want: "give 1 to 36500"},
		{name: "outlives CA", caDir: short, node: "n1", ips: localhost, days: 90, invalid: true, want: "would outlive the CA"},
		{name: "no CA", caDir: t.TempDir(), node: "n1", ips: localhost, days: 90, want: "ca.crt does not exist"},
		{name: "not a CA", caDir: nodeDir, node: "n1", ips: localhost, days: 90, want: "is not a CA certificate"},
		{name: "CA key mismatch", caDir: wrongKey, node: "n1", ips: localhost, days: 90, want: "do not match"},
		{name: "exists", caDir: p.dir, node: "taken", ips: localhost, days: 90, want: "refusing to overwrite"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := p.dir
			before := snapshot(t, out)
			_, _, err := CreateNodeCert(tt.caDir, tt.node, tt.ips, tt.dns, out, tt.days, now)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if errors.Is(err, ErrInvalidArgument) != tt.invalid {
				t.Fatalf("errors.Is(ErrInvalidArgument) = %v, want %v", !tt.invalid, tt.invalid)
			}
			if after := snapshot(t, out); after != before {
				t.Fatalf("output directory changed:\n%s\n→\n%s", before, after)
			}
		})
	}
}

func TestPeerNodeID_Errors(t *testing.T) {
	now := time.Now()
	p := newPKI(t, now)
	c1, _ := p.node("node1", now, DefaultCertDays)
	chain, err := readCertChain(c1, "c")
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	noURI := *leaf
	noURI.URIs = nil
	tests := []struct {
		name string
		cs   tls.ConnectionState
		want string
	}{
		{"incomplete", tls.ConnectionState{}, "not completed"},
		{"unverified", tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}}, "not verified"},
		{"no URI", tls.ConnectionState{HandshakeComplete: true, VerifiedChains: [][]*x509.Certificate{{&noURI}}}, "has no coffer://node/<ID> URI"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := PeerNodeID(tt.cs); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestValidNodeID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"node1", true}, {"N", true}, {"a.b_c-d", true}, {strings.Repeat("a", 64), true},
		{"", false}, {strings.Repeat("a", 65), false}, {"-a", false}, {"_a", false}, {"a/b", false}, {"a b", false}, {"é", false},
	}
	for _, tt := range tests {
		if got := ValidNodeID(tt.id); got != tt.want {
			t.Errorf("ValidNodeID(%q) = %v", tt.id, got)
		}
	}
}

func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode() & (fs.ModePerm | fs.ModeDir); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

func checkNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

// snapshot describes a directory's files and contents, to show that a
// failed call changed nothing.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %x\n", e.Name(), sha256.Sum256(data))
	}
	return b.String()
}

// TestConnect_ClassicalOnlyRefused: a peer with a valid certificate that
// offers only classical key exchanges (X25519, P-256) is refused: cluster
// connections are X25519MLKEM768 only (issue 9). Both directions.
func TestConnect_ClassicalOnlyRefused(t *testing.T) {
	p := newPKI(t, time.Now())
	c1, k1 := p.node("node1", time.Now(), DefaultCertDays)
	c2, k2 := p.node("node2", time.Now(), DefaultCertDays)
	for _, curves := range [][]tls.CurveID{{tls.X25519}, {tls.CurveP256}, {tls.X25519, tls.CurveP256, tls.CurveP384}} {
		cli := mustClient(t, c2, k2, p.ca())
		cli.CurvePreferences = curves
		if r := connect(t, mustServer(t, c1, k1, p.ca()), cli); r.srvErr == nil || r.cliErr == nil {
			t.Errorf("classical-only client %v: server %v, client %v (want both refused)", curves, r.srvErr, r.cliErr)
		}
		srv := mustServer(t, c1, k1, p.ca())
		srv.CurvePreferences = curves
		if r := connect(t, srv, mustClient(t, c2, k2, p.ca())); r.srvErr == nil || r.cliErr == nil {
			t.Errorf("classical-only server %v: server %v, client %v (want both refused)", curves, r.srvErr, r.cliErr)
		}
	}
}
