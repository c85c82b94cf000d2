package config

import (
	"fmt"
	"go/ast"
	"go/types"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/tools/go/packages"
)

// keySample says how to set one key for TestKeys_NoneIgnored: in a block
// whose required settings are base (HCL attribute lines), to value; drop
// removes base settings that conflict with the key; root adds root lines.
type keySample struct {
	block   string // block header ("" for a root key), e.g. `seal "tpm"`
	base    map[string]string
	value   string
	drop    []string
	root    string
	refused bool // the loader refuses the key whatever its value
}

var (
	clusterBase = map[string]string{"addr": `"10.0.0.1:8201"`, "tls_cert_file": `"/c.crt"`, "tls_key_file": `"/c.key"`, "tls_ca_file": `"/ca.crt"`}
	pkcs11Base  = map[string]string{"library": `"/l.so"`, "token_label": `"t"`, "pin_file": `"/pin"`, "key_label": `"k"`}
	kmsBase     = map[string]string{"path": `"/run/k.sock"`, "key": `"k"`}
	auditBase   = map[string]string{"path": `"/var/log/a.log"`}
)

// keySamples has an entry for every key of Keys(); a key added to a schema
// without one fails the test, so that whoever adds it says how it is set
// and the test then checks that the daemon reads it.
var keySamples = map[string]keySample{
	"node_id":    {value: `"n2"`},
	"data_dir":   {value: `"/srv/coffer"`},
	"log_level":  {value: `"debug"`},
	"log_format": {value: `"json"`},
	"dev":        {value: `true`},

	"listener.path":  {block: `listener "unix"`, value: `"/run/x.sock"`},
	"listener.mode":  {block: `listener "unix"`, value: `"0600"`},
	"listener.group": {block: `listener "unix"`, value: `"coffer"`},

	"listener.max_conns_per_uid": {block: `listener "unix"`, value: `10`},
	"listener.max_conns":         {block: `listener "unix"`, value: `1000`},

	"unseal.groups": {block: "unseal", value: `["root"]`},

	"telemetry.prometheus_listen": {block: "telemetry", base: map[string]string{"prometheus_listen": `"127.0.0.1:9464"`}, value: `"127.0.0.1:9999"`},

	"credentials.path": {block: "credentials", base: map[string]string{"path": `"/run/a.sock"`}, value: `"/run/c.sock"`},

	"admin.uids":   {block: "admin", value: `[1000]`},
	"admin.groups": {block: "admin", value: `["wheel"]`},

	"cluster.addr":           {block: "cluster", base: clusterBase, value: `"10.0.0.2:8201"`},
	"cluster.advertise_addr": {block: "cluster", base: clusterBase, value: `"10.0.0.9:8201"`},
	"cluster.bootstrap":      {block: "cluster", base: clusterBase, value: `true`},
	"cluster.tls_cert_file":  {block: "cluster", base: clusterBase, value: `"/o.crt"`},
	"cluster.tls_key_file":   {block: "cluster", base: clusterBase, value: `"/o.key"`},
	"cluster.tls_ca_file":    {block: "cluster", base: clusterBase, value: `"/o-ca.crt"`},

	"seal.pkcs11.library":        {block: `seal "pkcs11"`, base: pkcs11Base, value: `"/m.so"`},
	"seal.pkcs11.token_label":    {block: `seal "pkcs11"`, base: pkcs11Base, value: `"u"`},
	"seal.pkcs11.pin_file":       {block: `seal "pkcs11"`, base: pkcs11Base, value: `"/other-pin"`},
	"seal.pkcs11.pin_env":        {block: `seal "pkcs11"`, base: pkcs11Base, value: `"PIN"`, drop: []string{"pin_file"}},
	"seal.pkcs11.pin_credential": {block: `seal "pkcs11"`, base: pkcs11Base, value: `"hsm-pin"`, drop: []string{"pin_file"}},
	"seal.pkcs11.key_label":      {block: `seal "pkcs11"`, base: pkcs11Base, value: `"l"`},
	"seal.pkcs11.generate_key":   {block: `seal "pkcs11"`, base: pkcs11Base, value: `true`},
	"seal.pkcs11.pin":            {block: `seal "pkcs11"`, base: pkcs11Base, value: `"1234"`, refused: true},

	"seal.tpm.device":  {block: `seal "tpm"`, base: map[string]string{"address": `"127.0.0.1:2321"`}, value: `"/dev/tpmrm0"`, drop: []string{"address"}},
	"seal.tpm.address": {block: `seal "tpm"`, base: map[string]string{"address": `"127.0.0.1:2321"`}, value: `"unix:/t.sock"`},
	"seal.tpm.pcrs":    {block: `seal "tpm"`, base: map[string]string{"address": `"127.0.0.1:2321"`}, value: `[7]`},

	"seal.soft.key_file": {block: `seal "soft"`, base: map[string]string{"key_file": `"/a.key"`}, value: `"/b.key"`, root: "dev = true\n"},

	"kms_v2.path":  {block: "kms_v2", base: kmsBase, value: `"/run/other.sock"`},
	"kms_v2.mode":  {block: "kms_v2", base: kmsBase, value: `"0660"`},
	"kms_v2.group": {block: "kms_v2", base: kmsBase, value: `"kube"`},
	"kms_v2.key":   {block: "kms_v2", base: kmsBase, value: `"k8s"`},

	"audit.path":           {block: "audit", base: auditBase, value: `"/var/log/b.log"`},
	"audit.fsync":          {block: "audit", base: auditBase, value: `"always"`},
	"audit.fsync_interval": {block: "audit", base: auditBase, value: `"1s"`},

	"audit.alert.operations": {block: "alert", value: `["unwrap"]`},
	"audit.alert.outcome":    {block: "alert", value: `"denied"`},
	"audit.alert.threshold":  {block: "alert", value: `7`},
	"audit.alert.window":     {block: "alert", value: `"5m"`},
}

// configRead lists Config fields that are read only inside this package,
// with why that is an effect: they decide what Validate accepts or fill in
// another field.
var configRead = map[string]string{
	"Config.Dev":       "allows seal \"soft\" (Validate refuses it otherwise)",
	"AuditConfig.Path": "read through Config.AuditPath (daemon/audit_hook.go opens the log there)",
}

func sampleConfig(key string, s keySample, set bool) string {
	attr := key[strings.LastIndexByte(key, '.')+1:]
	var b strings.Builder
	if !(set && key == "node_id") {
		b.WriteString("node_id = \"n1\"\n")
	}
	b.WriteString(s.root)
	if s.block == "" {
		if set {
			fmt.Fprintf(&b, "%s = %s\n", attr, s.value)
		}
		return b.String()
	}
	attrs := map[string]string{}
	for k, v := range s.base {
		attrs[k] = v
	}
	if set {
		for _, d := range s.drop {
			delete(attrs, d)
		}
		attrs[attr] = s.value
	}
	names := make([]string, 0, len(attrs))
	for k := range attrs {
		names = append(names, k)
	}
	sort.Strings(names)
	body := ""
	for _, k := range names {
		body += fmt.Sprintf("  %s = %s\n", k, attrs[k])
	}
	if s.block == "alert" {
		// A rule needs threshold; window has a default.
		if _, ok := attrs["threshold"]; !ok {
			body += "  threshold = 3\n"
		}
		fmt.Fprintf(&b, "audit {\n  path = \"/var/log/a.log\"\n  alert \"r\" {\n%s  }\n}\n", body)
		return b.String()
	}
	fmt.Fprintf(&b, "%s {\n%s}\n", s.block, body)
	return b.String()
}

// changedFields returns "Type.Field" for every leaf field that differs
// between a and b.
func changedFields(a, b reflect.Value, owner string, out *[]string) {
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, owner)
			}
			return
		}
		changedFields(a.Elem(), b.Elem(), owner, out)
	case reflect.Struct:
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() || (t.Name() == "Config" && f.Name == "File") {
				continue
			}
			changedFields(a.Field(i), b.Field(i), t.Name()+"."+f.Name, out)
		}
	case reflect.Slice:
		if a.Len() != b.Len() || a.Len() == 0 || a.Type().Elem().Kind() != reflect.Struct {
			if !reflect.DeepEqual(a.Interface(), b.Interface()) {
				*out = append(*out, owner)
			}
			return
		}
		for i := 0; i < a.Len(); i++ {
			changedFields(a.Index(i), b.Index(i), owner, out)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, owner)
		}
	}
}

// TestKeys_NoneIgnored walks every setting the loader accepts (Keys) and
// shows that it is either refused or changes the parsed Config, and that
// every Config field it changes is read by the code that runs the daemon
// (a non-test package other than this one), or, for the few in configRead,
// by this package's own checks. A kms_v2 block that was parsed and then
// ignored by everything else (issue 13) fails here.
func TestKeys_NoneIgnored(t *testing.T) {
	read := fieldsReadOutside(t)
	for _, key := range Keys() {
		t.Run(key, func(t *testing.T) {
			s, ok := keySamples[key]
			if !ok {
				t.Fatalf("no keySamples entry for %q: add one saying how to set it, so this test can check that the daemon uses it", key)
			}
			with, err := ParseConfig([]byte(sampleConfig(key, s, true)), "/etc/coffer/c.hcl")
			if s.refused {
				if err == nil {
					t.Fatalf("%s is documented as refused but the loader accepted it", key)
				}
				return
			}
			if err != nil {
				t.Fatalf("with %s: %v\n%s", key, err, sampleConfig(key, s, true))
			}
			without, err := ParseConfig([]byte(sampleConfig(key, s, false)), "/etc/coffer/c.hcl")
			if err != nil {
				t.Fatalf("without %s: %v", key, err)
			}
			var changed []string
			changedFields(reflect.ValueOf(without), reflect.ValueOf(with), "Config", &changed)
			if len(changed) == 0 {
				t.Fatalf("setting %s changes nothing in the Config: the loader ignores it", key)
			}
			for _, f := range changed {
				if !read[f] && configRead[f] == "" {
					t.Errorf("setting %s changes %s, which no daemon code reads: it would be silently ignored", key, f)
				}
			}
		})
	}
}

// fieldsReadOutside returns the config fields ("Type.Field") that non-test
// code of the module outside this package selects.
func fieldsReadOutside(t *testing.T) map[string]bool {
	t.Helper()
	if testing.Short() {
		t.Skip("type-checks the module")
	}
	const self = "github.com/coffer-kms/coffer/daemon/config"
	pkgs, err := packages.Load(&packages.Config{
		Mode: packages.NeedName | packages.NeedTypes | packages.NeedTypesInfo | packages.NeedSyntax,
		Dir:  "../..",
	}, "./...")
	if err != nil {
		t.Fatal(err)
	}
	read := map[string]bool{}
	for _, p := range pkgs {
		if len(p.Errors) > 0 {
			t.Fatalf("loading %s: %v", p.PkgPath, p.Errors)
		}
		if p.PkgPath == self || strings.HasSuffix(p.PkgPath, ".test") {
			continue
		}
		for _, f := range p.Syntax {
			ast.Inspect(f, func(n ast.Node) bool {
				se, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				sel := p.TypesInfo.Selections[se]
				if sel == nil || sel.Kind() != types.FieldVal {
					return true
				}
				// The field's owner: the receiver, or for a promoted
				// field the embedded struct that declares it.
				recv := deref(sel.Recv())
				idx := sel.Index()
				for _, i := range idx[:len(idx)-1] {
					st, ok := recv.Underlying().(*types.Struct)
					if !ok {
						return true
					}
					recv = deref(st.Field(i).Type())
				}
				named, ok := recv.(*types.Named)
				if !ok || named.Obj().Pkg() == nil || named.Obj().Pkg().Path() != self {
					return true
				}
				read[named.Obj().Name()+"."+sel.Obj().Name()] = true
				return true
			})
		}
	}
	if !read["Config.DataDir"] {
		t.Fatalf("found no reads of Config.DataDir: the walk is broken (%d packages)", len(pkgs))
	}
	return read
}

func deref(t types.Type) types.Type {
	if p, ok := t.(*types.Pointer); ok {
		return p.Elem()
	}
	return t
}

func TestKeys_Sorted(t *testing.T) {
	k := Keys()
	if !slices.IsSorted(k) || len(k) < 30 {
		t.Fatalf("Keys() = %v", k)
	}
}
