package config

import (
	"errors"
	"github.com/coffer-kms/coffer/api"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// specExample is the full example of the shared spec's CONFIG.md with only the pkcs11
// seal block kept.
const specExample = `node_id    = "node1"              # default: the hostname
data_dir   = "/var/lib/coffer"    # raft log, snapshots, node-local sealed root key
log_level  = "info"               # trace | debug | info | warn | error
log_format = "text"               # text | json
dev        = false                # allows the soft device; never in production

listener "unix" {
  path  = "/run/coffer/coffer.sock"
  max_conns_per_uid = 256         # 429 too_many_requests beyond; admins exempt
  max_conns         = 4096
  mode  = "0660"
  group = "coffer"                # group that may connect (policies still apply);
                                  # default: the daemon's own group. A stale socket
                                  # file (nothing listening) is replaced at start.
}

admin {                           # who may administer, besides uid 0
  uids   = []
  groups = ["coffer-admin"]
}

unseal {                          # who may submit unseal shares, besides admins
  groups = ["coffer-unseal"]
}

# Omit the cluster block for a single node. Then raft still runs, with one voter.
cluster {
  addr           = "10.0.0.1:8201"  # raft + node-to-node RPC, mutual TLS
  advertise_addr = ""               # default: addr
  bootstrap      = false            # true on one node to found the cluster; ignored
                                    # once the node has raft state (safe to leave set)
  tls_cert_file  = "tls/node.crt"
  tls_key_file   = "tls/node.key"
  tls_ca_file    = "tls/ca.crt"
}

# At most one seal block. None: Shamir only (unseal by shares at every start).
seal "pkcs11" {
  library      = "/usr/lib/softhsm/libsofthsm2.so"
  token_label  = "coffer"
  pin_file     = "/etc/coffer/hsm.pin"   # or: pin_env = "COFFER_HSM_PIN"
  key_label    = "coffer-seal"
  generate_key = true                    # create the device key if the token lacks it
}

kms_v2 {                           # optional Kubernetes KMS v2 plugin socket
  path  = "/run/coffer/kms-v2.sock"
  mode  = "0600"                   # who may connect (policies still apply)
  group = ""
  key   = "kubernetes"             # created at first use if missing
}

audit {
  path = "/var/log/coffer/audit.log"
}

telemetry {                       # optional: aggregate Prometheus metrics on TCP
  prometheus_listen = "127.0.0.1:9464"   # no caller labels, no secrets
}
`

const testFile = "/etc/coffer/cofferd.hcl"

func TestParseConfig_SpecExample(t *testing.T) {
	c, err := ParseConfig([]byte(specExample), testFile)
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	exp := &Config{
		NodeID:    "node1",
		DataDir:   "/var/lib/coffer",
		LogLevel:  "info",
		LogFormat: "text",
		Listener:  ListenerConfig{Path: "/run/coffer/coffer.sock", Mode: 0o660, Group: "coffer", MaxConnsPerUID: 256, MaxConns: 4096},
		Admin:     AdminConfig{UIDs: []uint32{}, Groups: []string{"coffer-admin"}},
		Unseal:    UnsealConfig{Groups: []string{"coffer-unseal"}},
		Cluster: &ClusterConfig{
			Addr:          "10.0.0.1:8201",
			AdvertiseAddr: "10.0.0.1:8201",
			TLSCertFile:   "/etc/coffer/tls/node.crt",
			TLSKeyFile:    "/etc/coffer/tls/node.key",
			TLSCAFile:     "/etc/coffer/tls/ca.crt",
		},
		Seal: &SealConfig{Type: "pkcs11", PKCS11: &PKCS11Config{
			Library:     "/usr/lib/softhsm/libsofthsm2.so",
			TokenLabel:  "coffer",
			PINFile:     "/etc/coffer/hsm.pin",
			KeyLabel:    "coffer-seal",
			GenerateKey: true,
		}},
		KMSv2:     &KMSv2Config{Path: "/run/coffer/kms-v2.sock", Mode: 0o600, Key: "kubernetes"},
		Audit:     &AuditConfig{Path: "/var/log/coffer/audit.log"},
		Telemetry: &TelemetryConfig{PrometheusListen: "127.0.0.1:9464"},
		File:      testFile,
	}
	c.pos = nil
	if !reflect.DeepEqual(c, exp) {
		t.Fatalf("ParseConfig(spec example) =\n%+v\nwant\n%+v", c, exp)
	}
}

func TestParseConfig_Defaults(t *testing.T) {
	host, _ := os.Hostname()
	c, err := ParseConfig(nil, testFile)
	if err != nil {
		if !api.ValidNodeID(host) {
			t.Skipf("this host's name %q is not a valid node id", host)
		}
		t.Fatalf("ParseConfig(empty): %v", err)
	}
	if got, exp := c.NodeID, host; got != exp {
		t.Errorf("node_id = %q, want the hostname %q", got, exp)
	}
	if got, exp := c.DataDir, "/var/lib/coffer"; got != exp {
		t.Errorf("data_dir = %q, want %q", got, exp)
	}
	if c.LogLevel != "info" || c.LogFormat != "text" || c.Dev {
		t.Errorf("log = %s/%s dev=%v, want info/text dev=false", c.LogLevel, c.LogFormat, c.Dev)
	}
	if got, exp := c.Listener, (ListenerConfig{Path: "/run/coffer/coffer.sock", Mode: 0o660, MaxConnsPerUID: 256, MaxConns: 4096}); !reflect.DeepEqual(got, exp) {
		t.Errorf("listener = %+v, want %+v", got, exp)
	}
	if c.Cluster != nil || c.Seal != nil || c.KMSv2 != nil || c.Audit != nil || len(c.Admin.UIDs) != 0 || len(c.Admin.Groups) != 0 {
		t.Errorf("optional blocks set in an empty config: %+v", c)
	}
	if err := DefaultConfig().Validate(); err != nil && api.ValidNodeID(host) {
		t.Errorf("DefaultConfig().Validate() = %v", err)
	}
}

func TestParseConfig_Good(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "relative paths against the file's directory",
			src: `node_id = "n1"
data_dir = "data"
dev = true
listener "unix" { path = "run/c.sock" }
seal "soft" { key_file = "keys/../dev-seal.key" }
kms_v2 {
  path = "kms.sock"
  key = "k8s"
}
audit { path = "log/audit.log" }`,
			check: func(t *testing.T, c *Config) {
				for _, p := range []struct{ got, exp string }{
					{c.DataDir, "/etc/coffer/data"},
					{c.Listener.Path, "/etc/coffer/run/c.sock"},
					{c.Seal.Soft.KeyFile, "/etc/coffer/dev-seal.key"},
					{c.KMSv2.Path, "/etc/coffer/kms.sock"},
					{c.Audit.Path, "/etc/coffer/log/audit.log"},
				} {
					if p.got != p.exp {
						t.Errorf("path = %q, want %q", p.got, p.exp)
					}
				}
			},
		},
		{
			name: "pkcs11 pin_env, bare library name kept",
			src: `node_id = "n1"
seal "pkcs11" {
  library = "libsofthsm2.so"
  token_label = "t"
  key_label = "k"
  pin_env = "PIN"
}`,
			check: func(t *testing.T, c *Config) {
				p := c.Seal.PKCS11
				if p.Library != "libsofthsm2.so" || p.PINEnv != "PIN" || p.PINFile != "" || p.GenerateKey {
					t.Errorf("pkcs11 = %+v", p)
				}
			},
		},
		{
			name: "pkcs11 relative pin_file",
			src: `node_id = "n1"
seal "pkcs11" {
  library = "/l.so"
  token_label = "t"
  key_label = "k"
  pin_file = "hsm.pin"
}`,
			check: func(t *testing.T, c *Config) {
				if got, exp := c.Seal.PKCS11.PINFile, "/etc/coffer/hsm.pin"; got != exp {
					t.Errorf("pin_file = %q, want %q", got, exp)
				}
			},
		},
		{
			name: "pkcs11 pin_credential",
			src: `node_id = "n1"
seal "pkcs11" {
  library = "/l.so"
  token_label = "t"
  key_label = "k"
  pin_credential = "hsm-pin"
}`,
			check: func(t *testing.T, c *Config) {
				p := c.Seal.PKCS11
				if got, exp := p.PINCredential, "hsm-pin"; got != exp || p.PINFile != "" || p.PINEnv != "" {
					t.Errorf("pkcs11 = %+v, want pin_credential %q only", p, exp)
				}
			},
		},
		{
			name: "tpm device with pcrs",
			src: `node_id = "n1"
seal "tpm" {
  device = "/dev/tpmrm0"
  pcrs = [0, 7, 23]
}`,
			check: func(t *testing.T, c *Config) {
				if got, exp := c.Seal.TPM, (&TPMConfig{Device: "/dev/tpmrm0", PCRs: []int{0, 7, 23}}); !reflect.DeepEqual(got, exp) {
					t.Errorf("tpm = %+v, want %+v", got, exp)
				}
			},
		},
		{
			name: "tpm simulator address",
			src: `node_id = "n1"
seal "tpm" { address = "unix:/run/swtpm.sock" }`,
			check: func(t *testing.T, c *Config) {
				if got, exp := c.Seal.TPM.Address, "unix:/run/swtpm.sock"; got != exp {
					t.Errorf("address = %q, want %q", got, exp)
				}
			},
		},
		{
			name: "admin uids, mode without leading zero, log options",
			src: `node_id = "node-1.example_x"
log_level = "debug"
log_format = "json"
admin { uids = [1000, 4294967295] }
listener "unix" { mode = "600" }`,
			check: func(t *testing.T, c *Config) {
				if got, exp := c.Admin.UIDs, []uint32{1000, 4294967295}; !reflect.DeepEqual(got, exp) {
					t.Errorf("uids = %v, want %v", got, exp)
				}
				if got, exp := c.Listener.Mode, os.FileMode(0o600); got != exp {
					t.Errorf("mode = %04o, want %04o", got, exp)
				}
				if got, exp := c.Listener.Path, DefaultSocketPath; got != exp {
					t.Errorf("listener path = %q, want the default %q", got, exp)
				}
				if c.LogLevel != "debug" || c.LogFormat != "json" {
					t.Errorf("log = %s/%s", c.LogLevel, c.LogFormat)
				}
			},
		},
		{
			name: "cluster with advertise_addr and bootstrap",
			src: `node_id = "n1"
cluster {
  addr = "0.0.0.0:8201"
  advertise_addr = "10.0.0.1:8201"
  bootstrap = true
  tls_cert_file = "/c"
  tls_key_file = "/k"
  tls_ca_file = "/ca"
}`,
			check: func(t *testing.T, c *Config) {
				if c.Cluster.AdvertiseAddr != "10.0.0.1:8201" || !c.Cluster.Bootstrap {
					t.Errorf("cluster = %+v", c.Cluster)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.src), testFile)
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			tt.check(t, c)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate after ParseConfig: %v", err)
			}
		})
	}
}

func TestParseConfig_Bad(t *testing.T) {
	const f = "c.hcl"
	tests := []struct {
		name string
		src  string
		// want is the exact start of the error ("c.hcl:LINE: ..."); it must
		// also contain every string in has.
		want string
		has  []string
	}{
		{
			name: "syntax error",
			src:  "node_id = \"n1\"\nlistener \"unix\" {\n",
			want: "c.hcl:2: unclosed configuration block",
		},
		{
			name: "unknown attribute",
			src:  "node_id = \"n1\"\n\nnode_name = \"x\"\n",
			want: `c.hcl:3: unsupported argument: An argument named "node_name" is not expected here.`,
		},
		{
			name: "unknown attribute in a block",
			src:  "node_id = \"n1\"\nlistener \"unix\" {\n  path = \"/x.sock\"\n  owner = \"me\"\n}\n",
			want: `c.hcl:4: unsupported argument: An argument named "owner" is not expected here.`,
		},
		{
			name: "unknown block",
			src:  "node_id = \"n1\"\nstatsd {\n}\n",
			want: `c.hcl:2: unsupported block type: Blocks of type "statsd" are not expected here.`,
		},
		{
			name: "misspelt attribute gets a suggestion",
			src:  "node_id = \"n1\"\nlog_levl = \"info\"\n",
			has:  []string{`c.hcl:2: `, `"log_levl"`, `Did you mean "log_level"?`},
		},
		{
			name: "earliest of several errors",
			src:  "node_id = \"n1\"\nb = 1\na = 1\nc = 1\n",
			want: `c.hcl:2: unsupported argument: An argument named "b"`,
		},
		{
			name: "string where bool wanted",
			src:  "node_id = \"n1\"\ndev = \"yes\"\n",
			want: "c.hcl:2: dev must be true or false (without quotes), got a string",
		},
		{
			name: "number where string wanted",
			src:  "node_id = 7\n",
			want: "c.hcl:1: node_id must be a string in double quotes, got a number",
		},
		{
			name: "uids not a list",
			src:  "node_id = \"n1\"\nadmin {\n  uids = 1000\n}\n",
			want: "c.hcl:3: admin.uids must be a list of whole numbers like [...], got a number",
		},
		{
			name: "negative uid",
			src:  "node_id = \"n1\"\nadmin {\n  uids = [-1]\n}\n",
			want: "c.hcl:3: admin.uids contains -1; each must be a whole number from 0 to 4294967295",
		},
		{
			name: "fractional uid",
			src:  "node_id = \"n1\"\nadmin {\n  uids = [1.5]\n}\n",
			want: "c.hcl:3: admin.uids contains 1.5",
		},
		{
			name: "groups with a number",
			src:  "node_id = \"n1\"\nadmin {\n  groups = [\"a\", 2]\n}\n",
			want: "c.hcl:3: admin.groups must be a list of strings in double quotes, but it contains a number",
		},
		{
			name: "unseal groups not a list",
			src:  "node_id = \"n1\"\nunseal {\n  groups = \"ops\"\n}\n",
			want: "c.hcl:3: unseal.groups must be a list of strings like [...], got a string",
		},
		{
			name: "unseal unknown attribute",
			src:  "node_id = \"n1\"\nunseal {\n  uids = [1]\n}\n",
			want: "c.hcl:3:",
		},
		{
			name: "two unseal blocks",
			src:  "node_id = \"n1\"\nunseal {\n}\nunseal {\n}\n",
			want: "c.hcl:4: only one unseal block is allowed, and there is already one at line 2",
		},
		{
			name: "null value",
			src:  "node_id = \"n1\"\ndata_dir = null\n",
			want: "c.hcl:2: data_dir is null",
		},
		{
			name: "variable reference",
			src:  "node_id = \"n1\"\ndata_dir = var.x\n",
			want: "c.hcl:2: variables not allowed",
		},
		{
			name: "two seal blocks",
			src:  "node_id = \"n1\"\ndev = true\nseal \"soft\" {\n  key_file = \"k\"\n}\nseal \"tpm\" {\n  device = \"/dev/tpmrm0\"\n}\n",
			want: "c.hcl:6: only one seal block is allowed, and there is already one at line 3",
		},
		{
			name: "two listener blocks",
			src:  "node_id = \"n1\"\nlistener \"unix\" {}\nlistener \"unix\" {}\n",
			want: `c.hcl:3: only one listener "unix" block is allowed, and there is already one at line 2`,
		},
		{
			name: "two audit blocks",
			src:  "node_id = \"n1\"\naudit {\n path = \"/a\"\n}\naudit {\n path = \"/b\"\n}\n",
			want: "c.hcl:5: only one audit block is allowed",
		},
		{
			name: "seal without a type label",
			src:  "node_id = \"n1\"\nseal {\n}\n",
			want: "c.hcl:2: missing type for seal",
		},
		{
			name: "unknown seal type",
			src:  "node_id = \"n1\"\nseal \"awskms\" {\n}\n",
			want: `c.hcl:2: unknown seal type "awskms"; use "pkcs11", "tpm" or "soft" (development only), or remove the seal block to unseal with shares only`,
		},
		{
			name: "unknown listener type",
			src:  "node_id = \"n1\"\nlistener \"tcp\" {\n}\n",
			want: `c.hcl:2: unknown listener type "tcp"; the only listener is "unix"`,
		},
		{
			name: "soft seal without dev",
			src:  "node_id = \"n1\"\n\nseal \"soft\" {\n  key_file = \"k\"\n}\n",
			want: `c.hcl:3: the soft seal is for development only; set dev = true or use seal "pkcs11"/"tpm"`,
		},
		{
			name: "soft seal with dev = false",
			src:  "node_id = \"n1\"\ndev = false\nseal \"soft\" {\n  key_file = \"k\"\n}\n",
			want: `c.hcl:3: the soft seal is for development only`,
		},
		{
			name: "soft seal without key_file",
			src:  "node_id = \"n1\"\ndev = true\nseal \"soft\" {\n}\n",
			want: `c.hcl:3: soft seal: no key file given; set key_file in the seal "soft" block, e.g. key_file = "dev-seal.key"`,
		},
		{
			name: "bad log_level",
			src:  "node_id = \"n1\"\nlog_level = \"verbose\"\n",
			want: `c.hcl:2: log_level "verbose" is not allowed; use one of trace, debug, info, warn, error`,
		},
		{
			name: "bad log_format",
			src:  "node_id = \"n1\"\n\nlog_format = \"xml\"\n",
			want: `c.hcl:3: log_format "xml" is not allowed; use one of text, json`,
		},
		{
			name: "mode not octal",
			src:  "node_id = \"n1\"\nlistener \"unix\" {\n  mode = \"0869\"\n}\n",
			want: `c.hcl:3: listener mode "0869" is not an octal permission string like "0660"`,
		},
		{
			name: "mode symbolic",
			src:  "node_id = \"n1\"\nlistener \"unix\" {\n  mode = \"rw-rw----\"\n}\n",
			want: `c.hcl:3: listener mode "rw-rw----" is not an octal permission string like "0660"`,
		},
		{
			name: "mode with setuid bit",
			src:  "node_id = \"n1\"\nlistener \"unix\" {\n  mode = \"4660\"\n}\n",
			want: `c.hcl:3: listener mode "4660" is not an octal permission string`,
		},
		{
			name: "mode as a number",
			src:  "node_id = \"n1\"\nlistener \"unix\" {\n  mode = 0660\n}\n",
			want: `c.hcl:3: listener.mode must be a string in double quotes, got a number`,
		},
		{
			name: "socket path too long",
			src:  "node_id = \"n1\"\nlistener \"unix\" {\n  path = \"/" + strings.Repeat("a", 110) + "\"\n}\n",
			want: `c.hcl:3: listener path is 111 bytes; a unix socket path must be at most 107`,
		},
		{
			name: "pkcs11 missing library",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  token_label = \"t\"\n  key_label = \"k\"\n  pin_env = \"P\"\n}\n",
			want: `c.hcl:2: pkcs11 seal: no PKCS#11 library given: set library in the seal "pkcs11" block to the PKCS#11 module, e.g. library = "/usr/lib/softhsm/libsofthsm2.so"`,
		},
		{
			name: "pkcs11 missing token_label",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  key_label = \"k\"\n  pin_env = \"P\"\n}\n",
			want: `c.hcl:2: pkcs11 seal: no token label given: set token_label in the seal "pkcs11" block, e.g. token_label = "coffer"`,
		},
		{
			name: "pkcs11 empty key_label",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"\"\n  pin_env = \"P\"\n}\n",
			want: `c.hcl:5: pkcs11 seal: no key label given: set key_label in the seal "pkcs11" block, e.g. key_label = "coffer-seal"`,
		},
		{
			name: "pkcs11 both pin_file and pin_env",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n  pin_file = \"/p\"\n  pin_env = \"P\"\n}\n",
			want: `c.hcl:7: seal "pkcs11" has both pin_file and pin_env; keep one`,
		},
		{
			name: "pkcs11 neither pin_file nor pin_env",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n}\n",
			want: `c.hcl:2: seal "pkcs11" needs the token PIN from pin_file or pin_env`,
		},
		{
			name: "pkcs11 pin_credential and pin_file",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n  pin_credential = \"hsm-pin\"\n  pin_file = \"/p\"\n}\n",
			want: `c.hcl:7: seal "pkcs11" has both pin_file and pin_credential; keep one`,
		},
		{
			name: "pkcs11 pin_env and pin_credential",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n  pin_env = \"P\"\n  pin_credential = \"hsm-pin\"\n}\n",
			want: `c.hcl:7: seal "pkcs11" has both pin_env and pin_credential; keep one`,
		},
		{
			name: "pkcs11 pin_credential with a slash",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n  pin_credential = \"../hsm.pin\"\n}\n",
			want: `c.hcl:6: pin_credential "../hsm.pin" is not a systemd credential name`,
		},
		{
			name: "pkcs11 pin_credential dot-dot",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n  pin_credential = \"..\"\n}\n",
			want: `c.hcl:6: pin_credential ".." is not a systemd credential name`,
		},
		{
			name: "pkcs11 pin_file with ${CREDENTIALS_DIRECTORY}",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n  pin_file = \"${CREDENTIALS_DIRECTORY}/hsm-pin\"\n}\n",
			want: `c.hcl:6: pin_file cannot use variables such as ${CREDENTIALS_DIRECTORY}; for a systemd credential write pin_credential = "hsm-pin"`,
		},
		{
			name: "pkcs11 inline pin refused",
			src:  "node_id = \"n1\"\nseal \"pkcs11\" {\n  library = \"/l.so\"\n  token_label = \"t\"\n  key_label = \"k\"\n  pin = \"1234\"\n}\n",
			want: `c.hcl:6: the HSM PIN is never accepted inline; use pin_file or pin_env`,
		},
		{
			name: "tpm both device and address",
			src:  "node_id = \"n1\"\nseal \"tpm\" {\n  device = \"/dev/tpmrm0\"\n  address = \"127.0.0.1:2321\"\n}\n",
			want: `c.hcl:4: tpm seal: both device and address are set; set device for a TPM (/dev/tpmrm0) or address for a simulator, not both`,
		},
		{
			name: "tpm neither device nor address",
			src:  "node_id = \"n1\"\nseal \"tpm\" {\n  pcrs = [7]\n}\n",
			want: `c.hcl:2: tpm seal: neither device nor address is set; set device = "/dev/tpmrm0" (or address for a simulator, "127.0.0.1:2321" or "unix:/path") in the seal "tpm" block`,
		},
		{
			name: "tpm pcr out of range",
			src:  "node_id = \"n1\"\nseal \"tpm\" {\n  device = \"/dev/tpmrm0\"\n  pcrs = [7, 24]\n}\n",
			want: `c.hcl:4: tpm seal: pcrs: PCR 24 is out of range (0-23); list SHA-256 PCR indexes between 0 and 23, each once`,
		},
		{
			name: "tpm negative pcr",
			src:  "node_id = \"n1\"\nseal \"tpm\" {\n  device = \"/dev/tpmrm0\"\n  pcrs = [-1]\n}\n",
			want: `c.hcl:4: tpm seal: pcrs: PCR -1 is out of range (0-23); list SHA-256 PCR indexes between 0 and 23, each once`,
		},
		{
			name: "tpm duplicate pcr",
			src:  "node_id = \"n1\"\nseal \"tpm\" {\n  device = \"/dev/tpmrm0\"\n  pcrs = [7, 0, 7]\n}\n",
			want: `c.hcl:4: tpm seal: pcrs: PCR 7 is listed twice; list SHA-256 PCR indexes between 0 and 23, each once`,
		},
		{
			// The device's own Validate runs at load: a simulator address
			// with a bad port is reported at its line, not at first use.
			name: "tpm address with a bad port",
			src:  "node_id = \"n1\"\nseal \"tpm\" {\n  address = \"127.0.0.1:99999\"\n}\n",
			want: `c.hcl:3: tpm seal: address "127.0.0.1:99999" has an invalid port`,
		},
		{
			name: "cluster without addr",
			src:  "node_id = \"n1\"\ncluster {\n  tls_cert_file = \"c\"\n}\n",
			want: `c.hcl:2: cluster needs addr`,
		},
		{
			name: "cluster addr without port",
			src:  "node_id = \"n1\"\ncluster {\n  addr = \"10.0.0.1\"\n}\n",
			want: `c.hcl:3: cluster.addr "10.0.0.1" is not host:port`,
		},
		{
			name: "cluster unspecified advertise address",
			src:  "node_id = \"n1\"\ncluster {\n  addr = \"0.0.0.0:8201\"\n  tls_cert_file = \"c\"\n  tls_key_file = \"k\"\n  tls_ca_file = \"ca\"\n}\n",
			want: `c.hcl:3: the cluster advertise address "0.0.0.0:8201" is not reachable by other nodes; set cluster.advertise_addr`,
		},
		{
			name: "cluster without TLS files",
			src:  "node_id = \"n1\"\ncluster {\n  addr = \"10.0.0.1:8201\"\n  tls_cert_file = \"c\"\n  tls_key_file = \"k\"\n}\n",
			want: `c.hcl:2: cluster needs tls_ca_file: node-to-node traffic is always mutual TLS`,
		},
		{
			name: "node_id with a slash",
			src:  "\nnode_id = \"a/b\"\n",
			want: `c.hcl:2: node_id "a/b" is invalid`,
		},
		{
			name: "node_id starting with a dot",
			src:  "node_id = \".n\"\n",
			want: `c.hcl:1: node_id ".n" is invalid`,
		},
		{
			name: "node_id too long",
			src:  "node_id = \"" + strings.Repeat("n", 65) + "\"\n",
			want: `c.hcl:1: node_id "nnnn`,
		},
		{
			name: "empty data_dir",
			src:  "node_id = \"n1\"\ndata_dir = \"\"\n",
			want: `c.hcl:2: data_dir is empty`,
		},
		{
			name: "kms_v2 without path",
			src:  "node_id = \"n1\"\nkms_v2 {\n  key = \"k\"\n}\n",
			want: `c.hcl:2: kms_v2 needs path`,
		},
		{
			name: "kms_v2 without key",
			src:  "node_id = \"n1\"\nkms_v2 {\n  path = \"/k.sock\"\n}\n",
			want: `c.hcl:2: kms_v2 needs key`,
		},
		{
			name: "kms_v2 bad key name",
			src:  "node_id = \"n1\"\nkms_v2 {\n  path = \"/k.sock\"\n  key = \"a b\"\n}\n",
			want: `c.hcl:4: kms_v2.key "a b" is not a valid key name`,
		},
		{
			name: "kms_v2 on the API socket",
			src:  "node_id = \"n1\"\nkms_v2 {\n  path = \"/run/coffer/coffer.sock\"\n  key = \"k\"\n}\n",
			want: `c.hcl:3: kms_v2.path is the API socket`,
		},
		{
			name: "kms_v2 bad mode",
			src:  "node_id = \"n1\"\nkms_v2 {\n  path = \"/k.sock\"\n  mode = \"rw\"\n  key = \"k\"\n}\n",
			want: `c.hcl:4: kms_v2 mode "rw" is not an octal permission string`,
		},
		{
			name: "audit without path",
			src:  "node_id = \"n1\"\naudit {\n}\n",
			want: `c.hcl:2: audit needs path`,
		},
		{
			name: "empty admin group",
			src:  "node_id = \"n1\"\nadmin {\n  groups = [\"\"]\n}\n",
			want: `c.hcl:3: admin.groups contains an empty group name`,
		},
		{
			name: "empty unseal group",
			src:  "node_id = \"n1\"\nunseal {\n  groups = [\"ops\", \"\"]\n}\n",
			want: `c.hcl:3: unseal.groups contains an empty group name`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.src), f)
			if err == nil {
				t.Fatalf("ParseConfig succeeded: %+v", c)
			}
			if c != nil {
				t.Error("ParseConfig returned a config alongside an error")
			}
			msg := err.Error()
			t.Log(msg)
			if tt.want != "" && !strings.HasPrefix(msg, tt.want) {
				t.Errorf("error =\n  %s\nwant it to start with\n  %s", msg, tt.want)
			}
			for _, h := range tt.has {
				if !strings.Contains(msg, h) {
					t.Errorf("error = %q, want it to contain %q", msg, h)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.File != f || ce.Line == 0 {
				t.Errorf("error is not a located *Error: %#v", err)
			}
		})
	}
}

func TestParseConfig_PINNeverInError(t *testing.T) {
	src := "node_id = \"n1\"\nseal \"pkcs11\" {\n  pin = \"s3cr3t-pin\"\n}\n"
	_, err := ParseConfig([]byte(src), "c.hcl")
	if err == nil || strings.Contains(err.Error(), "s3cr3t-pin") {
		t.Fatalf("error = %v; want a refusal that does not echo the PIN", err)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cofferd.hcl")
	src := "node_id = \"n1\"\ndata_dir = \"state\"\nlistener \"unix\" {\n  path = \"c.sock\"\n}\n"
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := c.File, path; got != exp {
		t.Errorf("File = %q, want %q", got, exp)
	}
	if got, exp := c.DataDir, filepath.Join(dir, "state"); got != exp {
		t.Errorf("data_dir = %q, want %q", got, exp)
	}
	if got, exp := c.Listener.Path, filepath.Join(dir, "c.sock"); got != exp {
		t.Errorf("listener path = %q, want %q", got, exp)
	}

	if _, err := LoadConfig(filepath.Join(dir, "missing.hcl")); err == nil || !strings.Contains(err.Error(), "missing.hcl") {
		t.Errorf("LoadConfig(missing) = %v, want an error naming the file", err)
	}

	bad := filepath.Join(dir, "bad.hcl")
	if err := os.WriteFile(bad, []byte("node_id = \"n1\"\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(bad); err == nil || !strings.HasPrefix(err.Error(), bad+":2: ") {
		t.Errorf("LoadConfig(bad) = %v, want it to start with %s:2: ", err, bad)
	}
}

func TestValidate_AfterEdit(t *testing.T) {
	c, err := ParseConfig([]byte("node_id = \"n1\"\nlog_level = \"info\"\n"), "c.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c.LogLevel = "loud"
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "c.hcl:2: log_level \"loud\"") {
		t.Errorf("Validate = %v, want it located at the log_level line", err)
	}
	d := DefaultConfig()
	d.NodeID = "n1"
	d.Seal = &SealConfig{Type: "soft", Soft: &SoftSealConfig{KeyFile: "/k"}}
	if err := d.Validate(); err == nil || !strings.HasPrefix(err.Error(), "config: the soft seal is for development only") {
		t.Errorf("Validate(built-in soft) = %v", err)
	}
	d.Seal = &SealConfig{Type: "pkcs11"}
	if err := d.Validate(); err == nil {
		t.Error("Validate accepted a pkcs11 seal without its settings")
	}
}

// FuzzParseConfig checks that no input panics, that an error comes alone,
// on one line, located in the file, and that an accepted config validates.
// Seeds: testdata/fuzz/FuzzParseConfig.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(specExample))
	f.Fuzz(func(t *testing.T, src []byte) {
		c, err := ParseConfig(src, "fuzz.hcl")
		if err != nil {
			if c != nil {
				t.Fatal("config returned alongside an error")
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error spans lines: %q", msg)
			}
			if !strings.HasPrefix(msg, "fuzz.hcl") {
				t.Fatalf("error does not name the file: %q", msg)
			}
			return
		}
		if c == nil {
			t.Fatal("nil config without an error")
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config fails Validate: %v", err)
		}
	})
}
