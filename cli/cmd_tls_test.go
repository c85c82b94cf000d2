package cli

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster/tlsutil"
)

// TestTLS_ThreeNodeCluster runs the help's example: one CA, three node
// certificates, and checks the output in both formats and that the files
// make working TLS configs. No request reaches the daemon.
func TestTLS_ThreeNodeCluster(t *testing.T) {
	for _, format := range []string{"table", "json"} {
		t.Run(format, func(t *testing.T) {
			f := newFake(t)
			dir := filepath.Join(t.TempDir(), "tls")
			tlsRun := func(args ...string) result {
				t.Helper()
				r := run(t, f, "", append(args, "--format", format)...)
				if r.code != 0 {
					t.Fatalf("%v: exit %d, stderr %s", args, r.code, r.stderr)
				}
				return r
			}
			checkOut := func(r result, cert, key string) {
				t.Helper()
				if format == "json" {
					oneJSONDocument(t, r.stdout)
					want := mustJSON(t, map[string]string{"cert": cert, "key": key})
					if !jsonEqual(t, r.stdout, want) {
						t.Fatalf("json output %s, want %s", r.stdout, want)
					}
					return
				}
				want := "Certificate   " + cert + "\nPrivate key   " + key + "\n"
				if r.stdout != want {
					t.Fatalf("output %q, want %q", r.stdout, want)
				}
			}

			r := tlsRun("tls", "ca", "create", "--out", dir)
			checkOut(r, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
			if format == "table" && !strings.Contains(r.stderr, "secret") {
				t.Errorf("no advice to keep the CA key secret: %q", r.stderr)
			}
			for i, ip := range []string{"10.0.0.1", "10.0.0.2", "127.0.0.1"} {
				node := "node" + string(rune('1'+i))
				r := tlsRun("tls", "cert", "create", "--ca", dir, "--node", node, "--ip", ip, "--dns", node+".example.internal", "--dns", "localhost", "--out", dir, "--days", "30")
				checkOut(r, filepath.Join(dir, node+".crt"), filepath.Join(dir, node+".key"))
			}
			checkFileMode(t, filepath.Join(dir, "ca.key"), 0o600)
			checkFileMode(t, filepath.Join(dir, "node3.key"), 0o600)
			checkFileMode(t, filepath.Join(dir, "node3.crt"), 0o644)

			c := readCert(t, filepath.Join(dir, "node3.crt"))
			if got := strings.Join(c.DNSNames, ","); got != "node3.example.internal,localhost" {
				t.Errorf("DNS names %s", got)
			}
			if len(c.IPAddresses) != 1 || c.IPAddresses[0].String() != "127.0.0.1" || len(c.URIs) != 1 || c.URIs[0].String() != "coffer://node/node3" {
				t.Errorf("IPs %v, URIs %v", c.IPAddresses, c.URIs)
			}
			if d := c.NotAfter.Sub(c.NotBefore).Hours() / 24; d < 30 || d > 31 {
				t.Errorf("--days 30 gave %.1f days", d)
			}
			// The files are what cofferd's cluster block needs.
			if _, err := tlsutil.ServerConfig(filepath.Join(dir, "node3.crt"), filepath.Join(dir, "node3.key"), filepath.Join(dir, "ca.crt")); err != nil {
				t.Fatal(err)
			}
			if n := len(f.requests()); n != 0 {
				t.Fatalf("%d requests reached the daemon", n)
			}
		})
	}
}

func TestTLS_Defaults(t *testing.T) {
	f := newFake(t)
	dir := t.TempDir()
	if r := run(t, f, "", "tls", "ca", "create", "--out", dir); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if r := run(t, f, "", "tls", "cert", "create", "--ca", dir, "--node", "n1", "--dns", "n1", "--out", dir); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	tests := []struct {
		file string
		days float64
	}{
		{"ca.crt", 3650}, {"n1.crt", 365},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c := readCert(t, filepath.Join(dir, tt.file))
			// NotBefore is an hour back, for clock skew.
			if d := c.NotAfter.Sub(c.NotBefore).Hours() / 24; d < tt.days || d > tt.days+1 {
				t.Fatalf("valid for %.2f days, want %v", d, tt.days)
			}
		})
	}
}

func TestTLS_ExitCodes(t *testing.T) {
	ca := t.TempDir()
	if _, _, err := tlsutil.CreateCA(ca, 30, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tlsutil.CreateNodeCert(ca, "taken", nil, []string{"taken"}, ca, 10, time.Now()); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cert := func(extra ...string) []string {
		return append([]string{"tls", "cert", "create", "--ca", ca, "--out", out}, extra...)
	}
	tests := []struct {
		name string
		args []string
		want int
		msg  string
	}{
		{"ca: missing --out", []string{"tls", "ca", "create"}, ExitUsage, "missing --out DIR"},
		{"ca: zero days", []string{"tls", "ca", "create", "--out", out, "--days", "0"}, ExitUsage, "invalid --days 0"},
		{"ca: days not a number", []string{"tls", "ca", "create", "--out", out, "--days", "ten"}, ExitUsage, `invalid value "ten" for flag -days`},
		{"ca: argument", []string{"tls", "ca", "create", "--out", out, "extra"}, ExitUsage, `unexpected argument "extra"`},
		{"ca: exists", []string{"tls", "ca", "create", "--out", ca}, ExitError, "ca.crt already exists; refusing to overwrite it"},
		{"ca: out is a file", []string{"tls", "ca", "create", "--out", filepath.Join(ca, "ca.crt")}, ExitError, "create directory"},
		{"cert: missing --ca", []string{"tls", "cert", "create", "--node", "n1", "--ip", "10.0.0.1", "--out", out}, ExitUsage, "missing --ca DIR"},
		{"cert: missing --node", cert("--ip", "10.0.0.1"), ExitUsage, "missing --node ID"},
		{"cert: missing --out", []string{"tls", "cert", "create", "--ca", ca, "--node", "n1", "--ip", "10.0.0.1"}, ExitUsage, "missing --out DIR"},
		{"cert: bad node", cert("--node", "node/1", "--ip", "10.0.0.1"), ExitUsage, `invalid --node "node/1"`},
		{"cert: bad ip", cert("--node", "n1", "--ip", "10.0.0.300"), ExitUsage, `invalid --ip "10.0.0.300"`},
		{"cert: comma-separated ips", cert("--node", "n1", "--ip", "10.0.0.1,10.0.0.2"), ExitUsage, "one IPv4 or IPv6 address per --ip"},
		{"cert: no ip or dns", cert("--node", "n1"), ExitUsage, "give at least one --ip or --dns"},
		{"cert: bad dns", cert("--node", "n1", "--dns", "bad_name"), ExitUsage, `invalid DNS name "bad_name"`},
		{"cert: wildcard dns", cert("--node", "n1", "--dns", "*.example.com"), ExitUsage, "wildcards are not allowed"},
		{"cert: too many days", cert("--node", "n1", "--ip", "10.0.0.1", "--days", "99999"), ExitUsage, "invalid --days 99999"},
		{"cert: outlives the CA", cert("--node", "n1", "--ip", "10.0.0.1"), ExitUsage, "would outlive the CA"},
		{"cert: no CA there", []string{"tls", "cert", "create", "--ca", out, "--node", "n1", "--ip", "10.0.0.1", "--out", out, "--days", "1"}, ExitError, "ca.crt does not exist; give the directory made by 'coffer tls ca create'"},
		{"cert: exists", []string{"tls", "cert", "create", "--ca", ca, "--node", "taken", "--ip", "10.0.0.1", "--out", ca, "--days", "1"}, ExitError, "taken.crt already exists"},
		{"tls alone", []string{"tls"}, ExitUsage, "missing command (one of: ca, cert)"},
		{"cert help", cert("--help"), ExitOK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			r := run(t, f, "", tt.args...)
			if r.code != tt.want {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, tt.want, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.msg) {
				t.Fatalf("stderr %q lacks %q", r.stderr, tt.msg)
			}
			if tt.want != ExitOK && r.stdout != "" {
				t.Fatalf("stdout %q on failure", r.stdout)
			}
			if n := len(f.requests()); n != 0 {
				t.Fatalf("%d requests reached the daemon", n)
			}
		})
	}
	// Nothing was written by the failed runs.
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Fatalf("failed runs left %d files in the output directory", len(ents))
	}
}

func TestTLS_Help(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"tls", "--help"}, []string{"coffer tls ca create --out tls/", "--node node3 --ip 10.0.0.3"}},
		{[]string{"tls", "ca", "create", "--help"}, []string{"coffer tls ca create --out DIR [--days 3650]", "--out DIR", "--days DAYS", "(default: 3650)", "keep it\n"}},
		{[]string{"tls", "cert", "create", "--help"}, []string{
			"coffer tls cert create --ca DIR --node ID [--ip IP]... [--dns NAME]... --out DIR [--days 365]",
			"coffer tls ca create --out tls/\n   coffer tls cert create --ca tls/ --node node1 --ip 10.0.0.1 --out tls/\n",
			"--ip IP", "--dns NAME", "(default: 365)",
		}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := runArgs(t, "", append([]string{"coffer"}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			for _, s := range tt.want {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("help lacks %q:\n%s", s, r.stdout)
				}
			}
		})
	}
}

func checkFileMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
