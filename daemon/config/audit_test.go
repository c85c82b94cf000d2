package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseConfig_Audit(t *testing.T) {
	c, err := ParseConfig([]byte(`node_id = "n1"
data_dir = "/var/lib/coffer"
audit {
  path           = "audit/audit.log"
  fsync          = "interval"
  fsync_interval = "250ms"
  alert "many-denied" {
    outcome   = "denied"
    threshold = 5
  }
  alert "bulk-unwrap" {
    operations = ["unwrap", "rewrap"]
    threshold  = 1000
    window     = "10m"
  }
}`), testFile)
	if err != nil {
		t.Fatal(err)
	}
	exp := &AuditConfig{
		Path: "/etc/coffer/audit/audit.log", Fsync: "interval", FsyncInterval: 250 * time.Millisecond,
		Alerts: []AlertRule{
			{Name: "many-denied", Outcome: "denied", Threshold: 5, Window: time.Minute},
			{Name: "bulk-unwrap", Operations: []string{"unwrap", "rewrap"}, Threshold: 1000, Window: 10 * time.Minute},
		},
	}
	if !reflect.DeepEqual(c.Audit, exp) {
		t.Fatalf("audit = %+v\nwant    %+v", c.Audit, exp)
	}
	if got, exp := c.AuditPath(), "/etc/coffer/audit/audit.log"; got != exp {
		t.Errorf("AuditPath = %q, want %q", got, exp)
	}
	if got := exp.Alerts[1].String(); !strings.Contains(got, "more than 1000 unwrap/rewrap requests") {
		t.Errorf("rule string %q", got)
	}

	// No audit block: the log goes to data_dir.
	c, err = ParseConfig([]byte("node_id = \"n1\"\ndata_dir = \"/d\"\n"), testFile)
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := c.AuditPath(), "/d/audit.log"; got != exp || c.Audit != nil {
		t.Errorf("AuditPath = %q (audit %+v), want %q", got, c.Audit, exp)
	}
	// fsync = "always" alone.
	if _, err := ParseConfig([]byte("node_id = \"n1\"\naudit {\n path = \"/a\"\n fsync = \"always\"\n}\n"), "c.hcl"); err != nil {
		t.Fatal(err)
	}
}

func TestParseConfig_AuditBad(t *testing.T) {
	for _, c := range []struct{ name, src, want string }{
		{"unknown attribute", "audit {\n path = \"/a\"\n rotate = true\n}\n", `c.hcl:3: unsupported argument`},
		{"bad fsync", "audit {\n path = \"/a\"\n fsync = \"never\"\n}\n", `c.hcl:3: audit fsync "never" is not allowed; use "interval"`},
		{"fsync_interval not a duration", "audit {\n path = \"/a\"\n fsync_interval = \"fast\"\n}\n", `c.hcl:3: audit.fsync_interval "fast" is not a duration`},
		{"fsync_interval a number", "audit {\n path = \"/a\"\n fsync_interval = 100\n}\n", `c.hcl:3: audit.fsync_interval must be a string`},
		{"fsync_interval too long", "audit {\n path = \"/a\"\n fsync_interval = \"1m\"\n}\n", `c.hcl:3: audit fsync_interval 1m0s is out of range`},
		{"fsync_interval with always", "audit {\n path = \"/a\"\n fsync = \"always\"\n fsync_interval = \"1s\"\n}\n", `c.hcl:4: audit fsync_interval applies to fsync = "interval" only`},
		{"alert without name", "audit {\n path = \"/a\"\n alert {\n threshold = 1\n }\n}\n", `c.hcl:3: missing name for alert`},
		{"alert without threshold", "audit {\n path = \"/a\"\n alert \"x\" {\n outcome = \"denied\"\n }\n}\n", `c.hcl:3: alert "x" needs threshold`},
		{"alert threshold zero", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = 0\n }\n}\n", `c.hcl:4: alert "x": threshold 0 must be at least 1`},
		{"alert threshold fraction", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = 1.5\n }\n}\n", `c.hcl:4: audit.alert.x.threshold is 1.5; it must be a whole number`},
		{"alert threshold string", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = \"5\"\n }\n}\n", `c.hcl:4: audit.alert.x.threshold must be a whole number (without quotes), got a string`},
		{"alert unknown operation", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = 1\n operations = [\"unwarp\"]\n }\n}\n", `c.hcl:5: alert "x": "unwarp" is not an operation`},
		{"alert bad outcome", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = 1\n outcome = \"failed\"\n }\n}\n", `c.hcl:5: alert "x": outcome "failed" is not ok, denied or error`},
		{"alert window too short", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = 1\n window = \"10ms\"\n }\n}\n", `c.hcl:5: alert "x": window 10ms is out of range`},
		{"alert bad name", "audit {\n path = \"/a\"\n alert \"-x\" {\n threshold = 1\n }\n}\n", `c.hcl:3: alert name "-x" is invalid`},
		{"alert unknown attribute", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = 1\n rate = 2\n }\n}\n", `c.hcl:5: unsupported argument`},
		{"two alerts with one name", "audit {\n path = \"/a\"\n alert \"x\" {\n threshold = 1\n }\n alert \"x\" {\n threshold = 2\n }\n}\n", `c.hcl:6: there is already an alert "x" at line 3`},
	} {
		t.Run(c.name, func(t *testing.T) {
			// node_id last, so that the line numbers are those of src.
			_, err := ParseConfig([]byte(c.src+"node_id = \"n1\"\n"), "c.hcl")
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(c.want)) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is more than one line: %q", err)
			}
		})
	}
}
