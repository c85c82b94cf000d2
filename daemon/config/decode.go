package config

import (
	"fmt"
	"math/big"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
)

// The file's schema. Decoding is by hand rather than with gohcl so that each
// setting keeps its source range (for Validate's file:line) and so that type
// errors say what to write instead of cty's wording.

var rootSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "node_id"},
		{Name: "data_dir"},
		{Name: "log_level"},
		{Name: "log_format"},
		{Name: "dev"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "listener", LabelNames: []string{"type"}},
		{Type: "admin"},
		{Type: "unseal"},
		{Type: "cluster"},
		{Type: "seal", LabelNames: []string{"type"}},
		{Type: "kms_v2"},
		{Type: "credentials"},
		{Type: "audit"},
		{Type: "telemetry"},
	},
}

var listenerSchema = attrSchema("path", "mode", "group", "max_conns_per_uid", "max_conns")

var adminSchema = attrSchema("uids", "groups")

var unsealSchema = attrSchema("groups")

var clusterSchema = attrSchema("addr", "advertise_addr", "bootstrap", "tls_cert_file", "tls_key_file", "tls_ca_file")

// "pin" is in the schema only to refuse it with a message that says why.
var pkcs11Schema = attrSchema("library", "token_label", "pin_file", "pin_env", "pin_credential", "key_label", "generate_key", "pin")

var tpmSchema = attrSchema("device", "address", "pcrs")

var softSchema = attrSchema("key_file")

var kmsSchema = attrSchema("path", "mode", "group", "key")

func attrSchema(names ...string) *hcl.BodySchema {
	s := &hcl.BodySchema{}
	for _, n := range names {
		s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: n})
	}
	return s
}

// decoder collects problems as it goes; the first one in file order is
// reported.
type decoder struct {
	c     *Config
	diags hcl.Diagnostics
}

func decode(c *Config, src []byte, filename string) error {
	f, diags := hclparse.NewParser().ParseHCL(src, filename)
	if diags.HasErrors() {
		return firstError(filename, diags)
	}
	d := &decoder{c: c}
	d.root(f.Body)
	if d.diags.HasErrors() {
		return firstError(filename, d.diags)
	}
	return nil
}

// firstError turns the earliest error diagnostic into a one-line *Error.
func firstError(filename string, diags hcl.Diagnostics) error {
	var errs hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	// Content() reports unknown attributes in map order; sort for a stable
	// message.
	sort.SliceStable(errs, func(i, j int) bool {
		return line(errs[i]) < line(errs[j])
	})
	d := errs[0]
	msg := d.Summary
	if d.Detail != "" {
		msg = strings.TrimSuffix(msg, ".") + ": " + d.Detail
	}
	msg = strings.Join(strings.Fields(msg), " ") // one line
	if msg != "" {
		msg = strings.ToLower(msg[:1]) + msg[1:]
	}
	e := &Error{File: filename, Msg: msg}
	if d.Subject != nil {
		e.Line = d.Subject.Start.Line
	}
	return e
}

func line(d *hcl.Diagnostic) int {
	if d.Subject == nil {
		return 0
	}
	return d.Subject.Start.Line
}

func (d *decoder) errf(rng hcl.Range, format string, args ...any) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf(format, args...),
		Subject:  rng.Ptr(),
	})
}

func (d *decoder) root(body hcl.Body) {
	content, diags := body.Content(rootSchema)
	d.diags = append(d.diags, diags...)
	if content == nil {
		return
	}
	c := d.c
	b := &blockDecoder{d: d, attrs: content.Attributes}
	b.str("node_id", &c.NodeID)
	b.str("data_dir", &c.DataDir)
	b.str("log_level", &c.LogLevel)
	b.str("log_format", &c.LogFormat)
	b.boolean("dev", &c.Dev)

	seen := map[string]*hcl.Block{}
	for _, blk := range content.Blocks {
		if prev, ok := seen[blk.Type]; ok {
			what := blk.Type
			if blk.Type == "seal" {
				d.errf(blk.DefRange, "only one seal block is allowed, and there is already one at line %d; keep the seal of this node's device and remove the others", prev.DefRange.Start.Line)
				continue
			}
			if blk.Type == "listener" {
				what = `listener "unix"`
			}
			d.errf(blk.DefRange, "only one %s block is allowed, and there is already one at line %d; merge them", what, prev.DefRange.Start.Line)
			continue
		}
		if len(blk.Labels) != len(labelsOf(blk.Type)) {
			continue // hcl has reported the missing or extra label
		}
		seen[blk.Type] = blk
		c.pos[blk.Type] = blk.DefRange
		switch blk.Type {
		case "listener":
			d.listener(blk)
		case "admin":
			b := d.body(blk, adminSchema, "admin")
			b.uint32s("uids", &c.Admin.UIDs)
			b.strings("groups", &c.Admin.Groups)
		case "unseal":
			d.body(blk, unsealSchema, "unseal").strings("groups", &c.Unseal.Groups)
		case "cluster":
			cl := &ClusterConfig{}
			c.Cluster = cl
			b := d.body(blk, clusterSchema, "cluster")
			b.str("addr", &cl.Addr)
			b.str("advertise_addr", &cl.AdvertiseAddr)
			b.boolean("bootstrap", &cl.Bootstrap)
			b.str("tls_cert_file", &cl.TLSCertFile)
			b.str("tls_key_file", &cl.TLSKeyFile)
			b.str("tls_ca_file", &cl.TLSCAFile)
		case "seal":
			d.seal(blk)
		case "kms_v2":
			k := &KMSv2Config{}
			c.KMSv2 = k
			d.kmsV2(blk, k)
		case "credentials":
			cr := &CredentialsConfig{}
			c.Credentials = cr
			b := d.body(blk, credentialsSchema, "credentials")
			b.str("path", &cr.Path)
		case "audit":
			d.audit(blk)
		case "telemetry":
			d.telemetry(blk)
		}
	}
}

func labelsOf(blockType string) []string {
	for _, s := range rootSchema.Blocks {
		if s.Type == blockType {
			return s.LabelNames
		}
	}
	return nil
}

func (d *decoder) listener(blk *hcl.Block) {
	if typ := blk.Labels[0]; typ != "unix" {
		d.errf(blk.LabelRanges[0], "unknown listener type %q; the only listener is \"unix\" (listener \"unix\" { path = ... })", typ)
		return
	}
	l := &d.c.Listener
	b := d.body(blk, listenerSchema, "listener")
	b.str("path", &l.Path)
	b.str("group", &l.Group)
	b.integer("max_conns_per_uid", &l.MaxConnsPerUID)
	b.integer("max_conns", &l.MaxConns)
	var mode string
	if rng, ok := b.str("mode", &mode); ok {
		m, err := parseMode(mode)
		if err != nil {
			d.errf(rng, "listener mode %q is not an octal permission string like \"0660\"", mode)
			return
		}
		l.Mode = m
	}
}

func (d *decoder) kmsV2(blk *hcl.Block, k *KMSv2Config) {
	k.Mode = DefaultKMSv2Mode
	b := d.body(blk, kmsSchema, "kms_v2")
	b.str("path", &k.Path)
	b.str("group", &k.Group)
	b.str("key", &k.Key)
	var mode string
	if rng, ok := b.str("mode", &mode); ok {
		m, err := parseMode(mode)
		if err != nil {
			d.errf(rng, "kms_v2 mode %q is not an octal permission string like \"0600\"", mode)
			return
		}
		k.Mode = m
	}
}

// parseMode accepts three or four octal digits for the permission bits:
// "660", "0660", "0600".
func parseMode(s string) (os.FileMode, error) {
	if len(s) < 3 || len(s) > 4 {
		return 0, strconv.ErrSyntax
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, strconv.ErrSyntax
	}
	return os.FileMode(v), nil
}

func (d *decoder) seal(blk *hcl.Block) {
	typ := blk.Labels[0]
	s := &SealConfig{Type: typ}
	key := "seal." + typ
	switch typ {
	case SealPKCS11:
		p := &PKCS11Config{}
		s.PKCS11 = p
		b := d.body(blk, pkcs11Schema, key)
		if a, ok := b.attrs["pin"]; ok {
			d.errf(a.NameRange, "the HSM PIN is never accepted inline; use pin_file or pin_env, or pin_credential for a systemd credential")
			return
		}
		if a, ok := b.attrs["pin_file"]; ok && len(a.Expr.Variables()) > 0 {
			// The file has no variables; an operator who writes
			// "${CREDENTIALS_DIRECTORY}/hsm-pin" wants a systemd credential.
			d.errf(a.Range, "pin_file cannot use variables such as ${CREDENTIALS_DIRECTORY}; for a systemd credential write pin_credential = \"hsm-pin\" (read from $CREDENTIALS_DIRECTORY/hsm-pin), or give pin_file the full path, e.g. \"/run/credentials/cofferd.service/hsm-pin\"")
			return
		}
		b.str("library", &p.Library)
		b.str("token_label", &p.TokenLabel)
		b.str("pin_file", &p.PINFile)
		b.str("pin_env", &p.PINEnv)
		b.str("pin_credential", &p.PINCredential)
		b.str("key_label", &p.KeyLabel)
		b.boolean("generate_key", &p.GenerateKey)
	case SealTPM:
		t := &TPMConfig{}
		s.TPM = t
		b := d.body(blk, tpmSchema, key)
		b.str("device", &t.Device)
		b.str("address", &t.Address)
		b.ints("pcrs", &t.PCRs)
	case SealSoft:
		sf := &SoftSealConfig{}
		s.Soft = sf
		d.body(blk, softSchema, key).str("key_file", &sf.KeyFile)
	default:
		d.errf(blk.LabelRanges[0], "unknown seal type %q; use \"pkcs11\", \"tpm\" or \"soft\" (development only), or remove the seal block to unseal with shares only", typ)
		return
	}
	d.c.Seal = s
	d.c.pos[key] = blk.DefRange
}

// blockDecoder reads the attributes of one block. Keys in Config.pos are
// prefix + "." + attribute name.
type blockDecoder struct {
	d      *decoder
	prefix string
	attrs  hcl.Attributes
}

func (d *decoder) body(blk *hcl.Block, schema *hcl.BodySchema, prefix string) *blockDecoder {
	content, diags := blk.Body.Content(schema)
	d.diags = append(d.diags, diags...)
	b := &blockDecoder{d: d, prefix: prefix}
	if content != nil {
		b.attrs = content.Attributes
	}
	return b
}

func (b *blockDecoder) name(attr string) string {
	if b.prefix == "" {
		return attr
	}
	return b.prefix + "." + attr
}

// value evaluates attribute attr (no variables or functions are available),
// records its position and refuses null.
func (b *blockDecoder) value(attr string) (cty.Value, hcl.Range, bool) {
	a, ok := b.attrs[attr]
	if !ok {
		return cty.NilVal, hcl.Range{}, false
	}
	b.d.c.pos[b.name(attr)] = a.Range
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		b.d.diags = append(b.d.diags, diags...)
		return cty.NilVal, a.Range, false
	}
	if v.IsNull() {
		b.d.errf(a.Range, "%s is null; give it a value or remove the line for the default", b.name(attr))
		return cty.NilVal, a.Range, false
	}
	if !v.IsWhollyKnown() {
		b.d.errf(a.Range, "%s has no known value; use a literal", b.name(attr))
		return cty.NilVal, a.Range, false
	}
	return v, a.Range, true
}

func (b *blockDecoder) str(attr string, dst *string) (hcl.Range, bool) {
	v, rng, ok := b.value(attr)
	if !ok {
		return rng, false
	}
	if v.Type() != cty.String {
		b.d.errf(rng, "%s must be a string in double quotes, got %s", b.name(attr), typeName(v.Type()))
		return rng, false
	}
	*dst = v.AsString()
	return rng, true
}

func (b *blockDecoder) boolean(attr string, dst *bool) {
	v, rng, ok := b.value(attr)
	if !ok {
		return
	}
	if v.Type() != cty.Bool {
		b.d.errf(rng, "%s must be true or false (without quotes), got %s", b.name(attr), typeName(v.Type()))
		return
	}
	*dst = v.True()
}

// list returns the elements of a list or tuple value.
func (b *blockDecoder) list(attr, elem string) ([]cty.Value, hcl.Range, bool) {
	v, rng, ok := b.value(attr)
	if !ok {
		return nil, rng, false
	}
	t := v.Type()
	if !t.IsTupleType() && !t.IsListType() && !t.IsSetType() {
		b.d.errf(rng, "%s must be a list of %s like [...], got %s", b.name(attr), elem, typeName(t))
		return nil, rng, false
	}
	var out []cty.Value
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() {
			b.d.errf(rng, "%s contains null; list only %s", b.name(attr), elem)
			return nil, rng, false
		}
		out = append(out, e)
	}
	return out, rng, true
}

func (b *blockDecoder) strings(attr string, dst *[]string) {
	elems, rng, ok := b.list(attr, "strings")
	if !ok {
		return
	}
	out := make([]string, 0, len(elems))
	for _, e := range elems {
		if e.Type() != cty.String {
			b.d.errf(rng, "%s must be a list of strings in double quotes, but it contains %s", b.name(attr), typeName(e.Type()))
			return
		}
		out = append(out, e.AsString())
	}
	*dst = out
}

// integers returns the whole numbers of a list attribute within [lo, hi].
func (b *blockDecoder) integers(attr string, lo, hi int64) ([]int64, bool) {
	elems, rng, ok := b.list(attr, "whole numbers")
	if !ok {
		return nil, false
	}
	out := make([]int64, 0, len(elems))
	for _, e := range elems {
		if e.Type() != cty.Number {
			b.d.errf(rng, "%s must be a list of whole numbers, but it contains %s", b.name(attr), typeName(e.Type()))
			return nil, false
		}
		f := e.AsBigFloat()
		n, acc := f.Int64()
		if !f.IsInt() || acc != big.Exact || n < lo || n > hi {
			b.d.errf(rng, "%s contains %s; each must be a whole number from %d to %d", b.name(attr), f.Text('g', 10), lo, hi)
			return nil, false
		}
		out = append(out, n)
	}
	return out, true
}

func (b *blockDecoder) uint32s(attr string, dst *[]uint32) {
	ns, ok := b.integers(attr, 0, 1<<32-1)
	if !ok {
		return
	}
	out := make([]uint32, len(ns))
	for i, n := range ns {
		out[i] = uint32(n)
	}
	*dst = out
}

// ints reads a list of small integers; the range check of the meaning
// (PCR 0..23) is Validate's.
func (b *blockDecoder) ints(attr string, dst *[]int) {
	ns, ok := b.integers(attr, -1<<31, 1<<31-1)
	if !ok {
		return
	}
	out := make([]int, len(ns))
	for i, n := range ns {
		out[i] = int(n)
	}
	*dst = out
}

func typeName(t cty.Type) string {
	switch {
	case t == cty.String:
		return "a string"
	case t == cty.Number:
		return "a number"
	case t == cty.Bool:
		return "a bool"
	case t.IsTupleType() || t.IsListType() || t.IsSetType():
		return "a list"
	case t.IsObjectType() || t.IsMapType():
		return "an object"
	default:
		return t.FriendlyName()
	}
}
