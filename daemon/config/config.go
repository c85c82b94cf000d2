// Package config reads cofferd's HCL configuration file (docs/config.md).
//
// Parsing is strict: an unknown attribute or block, a value of the wrong type,
// or a setting that cannot work is an error, and every error is one line of
// the form "FILE:LINE: what is wrong (and what to do)". Relative paths in the
// file are relative to the file's directory and come out absolute.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/hsm/pkcs11"
	"github.com/coffer-kms/coffer/hsm/soft"
	"github.com/coffer-kms/coffer/hsm/tpm"
)

// Defaults (docs/config.md).
const (
	DefaultDataDir    = "/var/lib/coffer"
	DefaultSocketPath = "/run/coffer/coffer.sock"
	DefaultSocketMode = os.FileMode(0o660)
	DefaultLogLevel   = "info"
	DefaultLogFormat  = "text"
	// DefaultKMSv2Mode keeps the KMS v2 socket to the daemon's user and
	// root (the kube-apiserver runs as root).
	DefaultKMSv2Mode = os.FileMode(0o600)
)

// Seal device types.
const (
	SealPKCS11 = "pkcs11"
	SealTPM    = "tpm"
	SealSoft   = "soft"
)

// LogLevels and LogFormats are the allowed values of log_level and
// log_format.
var (
	LogLevels  = []string{"trace", "debug", "info", "warn", "error"}
	LogFormats = []string{"text", "json"}
)

// maxSocketPath is the longest unix socket path Linux accepts
// (sizeof(sun_path) - 1 for the terminating NUL).
const maxSocketPath = 107

// Config is cofferd's configuration.
type Config struct {
	NodeID    string
	DataDir   string
	LogLevel  string
	LogFormat string
	// Dev allows the soft seal device. Never in production.
	Dev bool

	Listener ListenerConfig
	Admin    AdminConfig
	// Unseal lists who may submit unseal shares (and reset the progress)
	// besides the admins.
	Unseal UnsealConfig
	// Cluster is nil for a single node.
	Cluster *ClusterConfig
	// Seal is nil when the node unseals with Shamir shares only.
	Seal *SealConfig
	// KMSv2 is nil when the Kubernetes KMS v2 plugin socket is off.
	KMSv2 *KMSv2Config
	// Credentials is nil when the systemd LoadCredential= socket is off.
	Credentials *CredentialsConfig
	// Audit is nil when the file has no audit block; the daemon then picks
	// its default location.
	Audit *AuditConfig
	// Telemetry is nil when no Prometheus TCP listener is configured.
	Telemetry *TelemetryConfig

	// File is the config file this came from ("" for the built-in
	// defaults).
	File string

	// pos remembers where each setting was in the file, keyed by its
	// dotted name ("listener.mode", "seal.pkcs11.library"), so that Validate
	// can point at the line.
	pos map[string]hcl.Range
}

// ListenerConfig is the API's unix socket.
type ListenerConfig struct {
	Path string
	Mode os.FileMode
	// Group owns the socket; "" keeps the daemon's own group.
	Group string
	// MaxConnsPerUID and MaxConns cap the open connections of one
	// non-admin uid and of everyone (limits.go).
	MaxConnsPerUID int
	MaxConns       int
}

// AdminConfig lists who may administer besides uid 0.
type AdminConfig struct {
	UIDs   []uint32
	Groups []string
}

// UnsealConfig lists the groups whose members may submit unseal shares and
// reset the unseal progress, besides the admins.
type UnsealConfig struct {
	Groups []string
}

// ClusterConfig is the raft and node-to-node RPC endpoint.
type ClusterConfig struct {
	Addr          string
	AdvertiseAddr string
	Bootstrap     bool
	TLSCertFile   string
	TLSKeyFile    string
	TLSCAFile     string
}

// SealConfig is the node's seal device. Type says which of PKCS11, TPM and
// Soft is set.
type SealConfig struct {
	Type   string
	PKCS11 *PKCS11Config
	TPM    *TPMConfig
	Soft   *SoftSealConfig
}

// PKCS11Config is a PKCS#11 token. The PIN comes from exactly one of
// PINFile, PINEnv and PINCredential, never from the config file itself.
type PKCS11Config struct {
	Library    string
	TokenLabel string
	PINFile    string
	PINEnv     string
	// PINCredential names a systemd credential (LoadCredential= or
	// LoadCredentialEncrypted= in the unit): the PIN is read from
	// $CREDENTIALS_DIRECTORY/PINCredential when the device is opened. It
	// exists so that the config need not spell out the unit's credentials
	// directory (/run/credentials/UNIT/), which changes with the unit name.
	PINCredential string
	KeyLabel      string
	GenerateKey   bool
}

// TPMConfig is a TPM 2.0: a character device or a simulator address.
type TPMConfig struct {
	Device  string
	Address string
	PCRs    []int
}

// SoftSealConfig is the development seal device.
type SoftSealConfig struct {
	KeyFile string
}

// KMSv2Config is the Kubernetes KMS v2 plugin socket.
type KMSv2Config struct {
	Path string
	Mode os.FileMode
	// Group owns the socket; "" keeps the daemon's own group.
	Group string
	// Key is the Coffer key that wraps the API server's DEKs; created at
	// first use if missing.
	Key string
}

// AuditConfig is the audit log (decoded and checked in audit.go).
type AuditConfig struct {
	Path string
	// Fsync is AuditFsyncInterval or AuditFsyncAlways; "" is the default
	// (interval).
	Fsync string
	// FsyncInterval is how often fsync "interval" syncs; 0 is the default
	// (100ms).
	FsyncInterval time.Duration
	// Alerts are the unusual-access rules; nil applies the daemon's default
	// rule (more than 10 denied requests per caller per minute).
	Alerts []AlertRule
}

// Error is a configuration error, located in the file where possible.
type Error struct {
	File string
	Line int // 0 when the error has no single line
	Msg  string
}

func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	default:
		return "config: " + e.Msg
	}
}

// DefaultConfig returns the configuration of docs/config.md's defaults:
// node_id the hostname, data_dir /var/lib/coffer, log level info in text,
// the socket /run/coffer/coffer.sock with mode 0660 and the daemon's own
// group, only uid 0 administers, single node, Shamir-only unseal.
func DefaultConfig() *Config {
	host, _ := os.Hostname() // "" fails Validate with a hint to set node_id
	return &Config{
		NodeID:    host,
		DataDir:   DefaultDataDir,
		LogLevel:  DefaultLogLevel,
		LogFormat: DefaultLogFormat,
		Listener: ListenerConfig{
			Path:           DefaultSocketPath,
			Mode:           DefaultSocketMode,
			MaxConnsPerUID: DefaultMaxConnsPerUID,
			MaxConns:       DefaultMaxConns,
		},
	}
}

// LoadConfig reads and parses the config file at path.
func LoadConfig(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config file: %w", err)
	}
	return ParseConfig(src, path)
}

// ParseConfig parses src, the contents of the file filename, fills in the
// defaults, makes relative paths absolute against the file's directory (the
// working directory when filename is "") and validates the result. The error
// is a single line, an *Error.
func ParseConfig(src []byte, filename string) (*Config, error) {
	c := DefaultConfig()
	c.File = filename
	c.pos = make(map[string]hcl.Range)
	if err := decode(c, src, filename); err != nil {
		return nil, err
	}
	if c.Cluster != nil && c.Cluster.AdvertiseAddr == "" {
		c.Cluster.AdvertiseAddr = c.Cluster.Addr
	}
	base, err := filepath.Abs(filepath.Dir(filename))
	if err != nil {
		return nil, &Error{File: filename, Msg: fmt.Sprintf("cannot resolve relative paths: %v", err)}
	}
	c.resolvePaths(base)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) resolvePaths(base string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	abs(&c.DataDir)
	abs(&c.Listener.Path)
	if cl := c.Cluster; cl != nil {
		abs(&cl.TLSCertFile)
		abs(&cl.TLSKeyFile)
		abs(&cl.TLSCAFile)
	}
	if s := c.Seal; s != nil {
		if s.PKCS11 != nil {
			// Library is left alone: a bare name ("libsofthsm2.so") is
			// for the dynamic loader's search path.
			abs(&s.PKCS11.PINFile)
		}
		if s.Soft != nil {
			abs(&s.Soft.KeyFile)
		}
	}
	if c.KMSv2 != nil {
		abs(&c.KMSv2.Path)
	}
	if c.Credentials != nil {
		abs(&c.Credentials.Path)
	}
	if c.Audit != nil {
		abs(&c.Audit.Path)
	}
}

// credentialNameRe is what pin_credential accepts: a file name in
// $CREDENTIALS_DIRECTORY, stricter than systemd's own rule (any valid file
// name) so that it can never climb out of that directory or need quoting.
var credentialNameRe = regexp.MustCompile(`^[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,254}$`)

// errAt returns an error located at the setting key (dotted name), or at the
// closest enclosing block the file has a position for.
func (c *Config) errAt(key, format string, args ...any) error {
	e := &Error{File: c.File, Msg: fmt.Sprintf(format, args...)}
	for k := key; k != ""; {
		if r, ok := c.pos[k]; ok {
			e.Line = r.Start.Line
			break
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return e
}

// Validate checks that the configuration can work. It is called by
// ParseConfig; call it again after changing a Config in code.
func (c *Config) Validate() error {
	if c.NodeID == "" {
		return c.errAt("node_id", "node_id is empty and the hostname is unavailable; set node_id")
	}
	if !api.ValidNodeID(c.NodeID) {
		if _, set := c.pos["node_id"]; !set {
			return c.errAt("node_id", "node_id defaults to the hostname %q, which is not a valid node id; set node_id (letters, digits, '.', '_', '-', up to 64, starting with a letter or digit)", c.NodeID)
		}
		return c.errAt("node_id", "node_id %q is invalid; use letters, digits, '.', '_' and '-', up to 64 characters, starting with a letter or digit", c.NodeID)
	}
	if c.DataDir == "" {
		return c.errAt("data_dir", "data_dir is empty; set it to the directory for raft state and the sealed root key")
	}
	if !slices.Contains(LogLevels, c.LogLevel) {
		return c.errAt("log_level", "log_level %q is not allowed; use one of %s", c.LogLevel, strings.Join(LogLevels, ", "))
	}
	if !slices.Contains(LogFormats, c.LogFormat) {
		return c.errAt("log_format", "log_format %q is not allowed; use one of %s", c.LogFormat, strings.Join(LogFormats, ", "))
	}
	if err := c.validateListener(); err != nil {
		return err
	}
	for _, g := range c.Admin.Groups {
		if g == "" {
			return c.errAt("admin.groups", "admin.groups contains an empty group name; remove it")
		}
	}
	for _, g := range c.Unseal.Groups {
		if g == "" {
			return c.errAt("unseal.groups", "unseal.groups contains an empty group name; remove it")
		}
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if err := c.validateSeal(); err != nil {
		return err
	}
	if k := c.KMSv2; k != nil {
		if k.Path == "" {
			return c.errAt("kms_v2.path", "kms_v2 needs path, the unix socket for the kube-apiserver; add path = \"/run/coffer/kms-v2.sock\"")
		}
		if len(k.Path) > maxSocketPath {
			return c.errAt("kms_v2.path", "kms_v2.path is %d bytes; a unix socket path must be at most %d, choose a shorter one", len(k.Path), maxSocketPath)
		}
		if k.Path == c.Listener.Path {
			return c.errAt("kms_v2.path", "kms_v2.path is the API socket %s; give the KMS plugin its own socket path", k.Path)
		}
		if k.Mode&^os.ModePerm != 0 {
			return c.errAt("kms_v2.mode", "kms_v2 mode %#o has bits beyond the permission bits; use an octal string like \"0600\"", uint32(k.Mode))
		}
		if k.Key == "" {
			return c.errAt("kms_v2.key", "kms_v2 needs key, the name of the Coffer key that encrypts Kubernetes secrets; add key = \"kubernetes\"")
		}
		if !api.ValidName(k.Key) {
			return c.errAt("kms_v2.key", "kms_v2.key %q is not a valid key name; use letters, digits, '.', '_' and '-', starting with a letter or digit", k.Key)
		}
	}
	if err := c.validateTelemetry(); err != nil {
		return err
	}
	if err := c.validateCredentials(); err != nil {
		return err
	}
	return c.validateAudit()
}

func (c *Config) validateListener() error {
	l := c.Listener
	if l.Path == "" {
		return c.errAt("listener.path", "listener path is empty; set path in the listener \"unix\" block")
	}
	if len(l.Path) > maxSocketPath {
		return c.errAt("listener.path", "listener path is %d bytes; a unix socket path must be at most %d, choose a shorter one", len(l.Path), maxSocketPath)
	}
	if l.Mode&^os.ModePerm != 0 {
		return c.errAt("listener.mode", "listener mode %#o has bits beyond the permission bits; use an octal string like \"0660\"", uint32(l.Mode))
	}
	return c.validateListenerLimits()
}

func (c *Config) validateCluster() error {
	cl := c.Cluster
	if cl == nil {
		return nil
	}
	if cl.Addr == "" {
		return c.errAt("cluster.addr", "cluster needs addr, the host:port for raft and node-to-node RPC; add addr = \"10.0.0.1:8201\" or remove the cluster block for a single node")
	}
	if err := checkHostPort(cl.Addr); err != nil {
		return c.errAt("cluster.addr", "cluster.addr %q is not host:port (%v)", cl.Addr, err)
	}
	adv := cl.AdvertiseAddr
	if adv == "" {
		adv = cl.Addr
	}
	advKey := "cluster.advertise_addr"
	if _, set := c.pos[advKey]; !set {
		advKey = "cluster.addr"
	}
	if err := checkHostPort(adv); err != nil {
		return c.errAt(advKey, "cluster.advertise_addr %q is not host:port (%v)", adv, err)
	}
	if host, _, _ := net.SplitHostPort(adv); host == "" || isUnspecified(host) {
		return c.errAt(advKey, "the cluster advertise address %q is not reachable by other nodes; set cluster.advertise_addr to an address of this node that they can reach", adv)
	}
	for _, f := range []struct{ key, val string }{
		{"tls_cert_file", cl.TLSCertFile},
		{"tls_key_file", cl.TLSKeyFile},
		{"tls_ca_file", cl.TLSCAFile},
	} {
		if f.val == "" {
			return c.errAt("cluster."+f.key, "cluster needs %s: node-to-node traffic is always mutual TLS; set tls_cert_file, tls_key_file and tls_ca_file", f.key)
		}
	}
	return nil
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if port == "" {
		return errors.New("missing port")
	}
	return nil
}

func isUnspecified(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// deviceErr reports a device's own Validate error at the line of the
// setting it names (the seal block's line when it names none).
func (c *Config) deviceErr(block string, err error) error {
	var se *hsm.SettingError
	if errors.As(err, &se) && se.Setting != "" {
		block += "." + se.Setting // errAt falls back to the block's line
	}
	return c.errAt(block, "%s", err.Error())
}

func (c *Config) validateSeal() error {
	s := c.Seal
	if s == nil {
		return nil
	}
	key := "seal." + s.Type
	switch s.Type {
	case SealPKCS11:
		p := s.PKCS11
		if p == nil || s.TPM != nil || s.Soft != nil {
			return c.errAt("seal", "seal type %q needs exactly its own settings (PKCS11)", s.Type)
		}
		if err := (pkcs11.Config{Library: p.Library, TokenLabel: p.TokenLabel, KeyLabel: p.KeyLabel, GenerateKey: p.GenerateKey}).Validate(); err != nil {
			return c.deviceErr(key, err)
		}
		var pinSources []string
		for _, f := range []struct{ name, val string }{
			{"pin_file", p.PINFile}, {"pin_env", p.PINEnv}, {"pin_credential", p.PINCredential},
		} {
			if f.val != "" {
				pinSources = append(pinSources, f.name)
			}
		}
		switch {
		case len(pinSources) > 1:
			// Point at the later of the first two, the one most likely added
			// by mistake.
			k := key + "." + pinSources[1]
			if c.pos[key+"."+pinSources[0]].Start.Line > c.pos[k].Start.Line {
				k = key + "." + pinSources[0]
			}
			return c.errAt(k, "seal \"pkcs11\" has both %s and %s; keep one", pinSources[0], pinSources[1])
		case len(pinSources) == 0:
			return c.errAt(key, "seal \"pkcs11\" needs the token PIN from pin_file or pin_env, or from a systemd credential with pin_credential (the PIN is never accepted inline); add pin_file = \"/etc/coffer/hsm.pin\", pin_env = \"COFFER_HSM_PIN\" or pin_credential = \"hsm-pin\"")
		}
		if n := p.PINCredential; n != "" && !credentialNameRe.MatchString(n) {
			return c.errAt(key+".pin_credential", "pin_credential %q is not a systemd credential name; use the ID of the unit's LoadCredential= or LoadCredentialEncrypted= line, e.g. \"hsm-pin\" (letters, digits, '.', '_', '-', '@', no '/')", n)
		}
	case SealTPM:
		t := s.TPM
		if t == nil || s.PKCS11 != nil || s.Soft != nil {
			return c.errAt("seal", "seal type %q needs exactly its own settings (TPM)", s.Type)
		}
		if err := (tpm.Config{Device: t.Device, Address: t.Address, PCRs: t.PCRs}).Validate(); err != nil {
			return c.deviceErr(key, err)
		}
	case SealSoft:
		if s.Soft == nil || s.PKCS11 != nil || s.TPM != nil {
			return c.errAt("seal", "seal type %q needs exactly its own settings (Soft)", s.Type)
		}
		if !c.Dev {
			return c.errAt("seal", "the soft seal is for development only; set dev = true or use seal \"pkcs11\"/\"tpm\"")
		}
		if err := soft.Validate(s.Soft.KeyFile); err != nil {
			return c.deviceErr(key, err)
		}
	default:
		return c.errAt("seal", "unknown seal type %q; use \"pkcs11\", \"tpm\" or \"soft\" (development only), or remove the seal block to unseal with shares only", s.Type)
	}
	return nil
}
