package config

import (
	"strings"
	"testing"
)

func TestParseConfig_ListenerLimitsAndTelemetry(t *testing.T) {
	c, err := ParseConfig([]byte(`node_id = "n1"
listener "unix" {
  path              = "/run/c.sock"
  max_conns_per_uid = 32
  max_conns         = 100
}
telemetry {
  prometheus_listen = "127.0.0.1:9464"
}
`), testFile)
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := c.Listener.MaxConnsPerUID, 32; got != exp {
		t.Errorf("max_conns_per_uid = %d, want %d", got, exp)
	}
	if got, exp := c.Listener.MaxConns, 100; got != exp {
		t.Errorf("max_conns = %d, want %d", got, exp)
	}
	if c.Telemetry == nil || c.Telemetry.PrometheusListen != "127.0.0.1:9464" {
		t.Errorf("telemetry = %+v", c.Telemetry)
	}

	// Defaults (docs/config.md): 256 per uid, 4096 in all, no telemetry.
	c, err = ParseConfig([]byte("node_id = \"n1\"\n"), testFile)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listener.MaxConnsPerUID != 256 || c.Listener.MaxConns != 4096 || c.Telemetry != nil {
		t.Errorf("defaults: per uid %d, total %d, telemetry %+v", c.Listener.MaxConnsPerUID, c.Listener.MaxConns, c.Telemetry)
	}
}

func TestParseConfig_ListenerLimitsAndTelemetryBad(t *testing.T) {
	for _, tt := range []struct{ name, src, want string }{
		{"zero per uid", `listener "unix" {
  max_conns_per_uid = 0
}`, "c.hcl:2: listener max_conns_per_uid is 0; it must be from 1"},
		{"negative total", `listener "unix" {
  max_conns = -1
}`, "c.hcl:2: listener max_conns is -1"},
		{"string", `listener "unix" {
  max_conns = "10"
}`, "max_conns must be a whole number"},
		{"fraction", `listener "unix" {
  max_conns = 1.5
}`, "it must be a whole number"},
		{"per uid above total", `listener "unix" {
  max_conns_per_uid = 300
  max_conns         = 200
}`, "c.hcl:2: listener max_conns_per_uid (300) is above max_conns (200)"},
		{"telemetry empty", "telemetry {\n}\n", "c.hcl:1: the telemetry block needs prometheus_listen"},
		{"telemetry no port", "telemetry {\n  prometheus_listen = \"127.0.0.1\"\n}\n", "c.hcl:2: telemetry.prometheus_listen \"127.0.0.1\" is not host:port"},
		{"telemetry bad port", "telemetry {\n  prometheus_listen = \"127.0.0.1:http\"\n}\n", "has port \"http\""},
		{"telemetry no host", "telemetry {\n  prometheus_listen = \":9464\"\n}\n", "has no host"},
		{"telemetry unknown key", "telemetry {\n  listen = \"127.0.0.1:1\"\n}\n", "listen"},
		{"two telemetry blocks", "telemetry {\n  prometheus_listen = \"127.0.0.1:1\"\n}\ntelemetry {\n  prometheus_listen = \"127.0.0.1:2\"\n}\n", "only one telemetry block"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte("node_id = \"n1\"\n"+tt.src), "c.hcl")
			if err == nil {
				t.Fatalf("ParseConfig succeeded: %+v", c)
			}
			// The line numbers above count from the block: shift by the
			// node_id line.
			want := tt.want
			for i := 9; i >= 1; i-- {
				want = strings.Replace(want, "c.hcl:"+string(rune('0'+i))+":", "c.hcl:"+string(rune('0'+i+1))+":", 1)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		})
	}
}
