package config

import (
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

// The audit block (docs/audit.md):
//
//	audit {
//	  path           = "/var/log/coffer/audit.log"
//	  fsync          = "interval"   # or "always"
//	  fsync_interval = "100ms"      # with fsync = "interval"
//	  alert "many-denied" {         # unusual-access rules, any number
//	    operations = ["unwrap"]     # default: every operation
//	    outcome    = "denied"       # ok | denied | error; default: any
//	    threshold  = 10             # more than this many per caller...
//	    window     = "1m"           # ...within this window (default 1m)
//	  }
//	}

// Audit fsync policies (AuditConfig.Fsync).
const (
	AuditFsyncInterval = audit.FsyncInterval
	AuditFsyncAlways   = audit.FsyncAlways
)

// AlertRule is one unusual-access rule: more than Threshold requests of
// Operations (every operation if empty) with Outcome ("" for any) by one
// caller within Window.
type AlertRule struct {
	Name       string
	Operations []string
	Outcome    string
	Threshold  int
	Window     time.Duration
}

// Limits of the audit settings.
const (
	minFsyncInterval  = time.Millisecond
	maxFsyncInterval  = 10 * time.Second
	minAlertWindow    = time.Second
	maxAlertWindow    = 24 * time.Hour
	defaultAlertWndow = time.Minute
)

var auditBodySchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "path"}, {Name: "fsync"}, {Name: "fsync_interval"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "alert", LabelNames: []string{"name"}}},
}

var alertSchema = attrSchema("operations", "outcome", "threshold", "window")

// audit decodes the audit block.
func (d *decoder) audit(blk *hcl.Block) {
	a := &AuditConfig{}
	d.c.Audit = a
	content, diags := blk.Body.Content(auditBodySchema)
	d.diags = append(d.diags, diags...)
	if content == nil {
		return
	}
	b := &blockDecoder{d: d, prefix: "audit", attrs: content.Attributes}
	b.str("path", &a.Path)
	b.str("fsync", &a.Fsync)
	b.duration("fsync_interval", &a.FsyncInterval)
	seen := map[string]*hcl.Block{}
	for _, ab := range content.Blocks {
		name := ab.Labels[0]
		if prev, ok := seen[name]; ok {
			d.errf(ab.DefRange, "there is already an alert %q at line %d; give each alert rule its own name", name, prev.DefRange.Start.Line)
			continue
		}
		seen[name] = ab
		key := "audit.alert." + name
		d.c.pos[key] = ab.DefRange
		r := AlertRule{Name: name, Window: defaultAlertWndow}
		ad := d.body(ab, alertSchema, key)
		ad.strings("operations", &r.Operations)
		ad.str("outcome", &r.Outcome)
		ad.integer("threshold", &r.Threshold)
		ad.duration("window", &r.Window)
		if _, ok := ad.attrs["threshold"]; !ok {
			d.errf(ab.DefRange, "alert %q needs threshold, the number of requests per caller within window above which it fires; add threshold = 10", name)
		}
		a.Alerts = append(a.Alerts, r)
	}
}

// duration reads a Go duration string ("100ms", "1m").
func (b *blockDecoder) duration(attr string, dst *time.Duration) {
	var s string
	rng, ok := b.str(attr, &s)
	if !ok {
		return
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		b.d.errf(rng, "%s %q is not a duration; write it like \"100ms\", \"30s\" or \"1m\"", b.name(attr), s)
		return
	}
	*dst = v
}

// integer reads one whole number.
func (b *blockDecoder) integer(attr string, dst *int) {
	v, rng, ok := b.value(attr)
	if !ok {
		return
	}
	if v.Type() != cty.Number {
		b.d.errf(rng, "%s must be a whole number (without quotes), got %s", b.name(attr), typeName(v.Type()))
		return
	}
	f := v.AsBigFloat()
	n, acc := f.Int64()
	if !f.IsInt() || acc != big.Exact || n < -1<<31 || n > 1<<31-1 {
		b.d.errf(rng, "%s is %s; it must be a whole number", b.name(attr), f.Text('g', 10))
		return
	}
	*dst = int(n)
}

// validateAudit checks the audit block.
func (c *Config) validateAudit() error {
	a := c.Audit
	if a == nil {
		return nil
	}
	if a.Path == "" {
		return c.errAt("audit.path", "audit needs path, the audit log file; add path = \"/var/log/coffer/audit.log\" or remove the audit block")
	}
	switch a.Fsync {
	case "", AuditFsyncInterval, AuditFsyncAlways:
	default:
		return c.errAt("audit.fsync", "audit fsync %q is not allowed; use \"interval\" (fsync every fsync_interval, the default) or \"always\" (fsync before every answer)", a.Fsync)
	}
	if _, set := c.pos["audit.fsync_interval"]; set {
		if a.Fsync == AuditFsyncAlways {
			return c.errAt("audit.fsync_interval", "audit fsync_interval applies to fsync = \"interval\" only; with fsync = \"always\" remove it")
		}
		if a.FsyncInterval < minFsyncInterval || a.FsyncInterval > maxFsyncInterval {
			return c.errAt("audit.fsync_interval", "audit fsync_interval %s is out of range; use %s to %s", a.FsyncInterval, minFsyncInterval, maxFsyncInterval)
		}
	}
	for _, r := range a.Alerts {
		key := "audit.alert." + r.Name
		if !api.ValidName(r.Name) {
			return c.errAt(key, "alert name %q is invalid; use letters, digits, '.', '_' and '-', starting with a letter or digit", r.Name)
		}
		for _, op := range r.Operations {
			if !slices.Contains(audit.RequestOperations, op) {
				return c.errAt(key+".operations", "alert %q: %q is not an operation; use some of %s", r.Name, op, strings.Join(audit.RequestOperations, ", "))
			}
		}
		switch r.Outcome {
		case "", audit.OutcomeOK, audit.OutcomeDenied, audit.OutcomeError:
		default:
			return c.errAt(key+".outcome", "alert %q: outcome %q is not ok, denied or error (leave it out to count every outcome)", r.Name, r.Outcome)
		}
		if r.Threshold < 1 {
			return c.errAt(key+".threshold", "alert %q: threshold %d must be at least 1 (the rule fires above it)", r.Name, r.Threshold)
		}
		if r.Window < minAlertWindow || r.Window > maxAlertWindow {
			return c.errAt(key+".window", "alert %q: window %s is out of range; use %s to %s", r.Name, r.Window, minAlertWindow, maxAlertWindow)
		}
	}
	return nil
}

// AuditPath is where the audit log goes: the audit block's path, or
// audit.log in data_dir when the file has no audit block.
func (c *Config) AuditPath() string {
	if c.Audit != nil && c.Audit.Path != "" {
		return c.Audit.Path
	}
	return c.DataDir + "/audit.log"
}

// String describes the rule for logs and errors.
func (r AlertRule) String() string {
	ops := "any operation"
	if len(r.Operations) > 0 {
		ops = strings.Join(r.Operations, "/")
	}
	out := "any outcome"
	if r.Outcome != "" {
		out = r.Outcome
	}
	return fmt.Sprintf("%s: more than %d %s requests (%s) per caller within %s", r.Name, r.Threshold, ops, out, r.Window)
}
