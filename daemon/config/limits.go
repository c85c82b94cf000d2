package config

import (
	"net"
	"strconv"

	"github.com/hashicorp/hcl/v2"
)

// Connection caps of the listener "unix" block (docs/config.md). The
// defaults leave room for the load generators of the performance work (32
// connections from one uid) and for connection pools of many services,
// while one local user cannot hold more than a sixteenth of the node.
const (
	DefaultMaxConnsPerUID = 256
	DefaultMaxConns       = 4096
	// maxConnsLimit keeps the caps within what a process's file
	// descriptors can hold; beyond it a cap would bound nothing.
	maxConnsLimit = 1 << 20
)

// TelemetryConfig is the optional TCP listener that serves aggregate
// Prometheus metrics (no caller labels) for a scraper.
type TelemetryConfig struct {
	// PrometheusListen is host:port, e.g. "127.0.0.1:9464".
	PrometheusListen string
}

var telemetrySchema = attrSchema("prometheus_listen")

func (d *decoder) telemetry(blk *hcl.Block) {
	t := &TelemetryConfig{}
	d.c.Telemetry = t
	b := d.body(blk, telemetrySchema, "telemetry")
	b.str("prometheus_listen", &t.PrometheusListen)
}

func (c *Config) validateListenerLimits() error {
	l := c.Listener
	if l.MaxConnsPerUID < 1 || l.MaxConnsPerUID > maxConnsLimit {
		return c.errAt("listener.max_conns_per_uid", "listener max_conns_per_uid is %d; it must be from 1 to %d (default %d)", l.MaxConnsPerUID, maxConnsLimit, DefaultMaxConnsPerUID)
	}
	if l.MaxConns < 1 || l.MaxConns > maxConnsLimit {
		return c.errAt("listener.max_conns", "listener max_conns is %d; it must be from 1 to %d (default %d)", l.MaxConns, maxConnsLimit, DefaultMaxConns)
	}
	if l.MaxConnsPerUID > l.MaxConns {
		return c.errAt("listener.max_conns_per_uid", "listener max_conns_per_uid (%d) is above max_conns (%d): one uid could take every connection; lower it or raise max_conns", l.MaxConnsPerUID, l.MaxConns)
	}
	return nil
}

func (c *Config) validateTelemetry() error {
	t := c.Telemetry
	if t == nil {
		return nil
	}
	if t.PrometheusListen == "" {
		return c.errAt("telemetry", "the telemetry block needs prometheus_listen, the host:port to serve metrics on, e.g. \"127.0.0.1:9464\"; or remove the block")
	}
	host, port, err := net.SplitHostPort(t.PrometheusListen)
	if err != nil {
		return c.errAt("telemetry.prometheus_listen", "telemetry.prometheus_listen %q is not host:port (%v); write it like \"127.0.0.1:9464\"", t.PrometheusListen, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return c.errAt("telemetry.prometheus_listen", "telemetry.prometheus_listen %q has port %q; use a number from 1 to 65535", t.PrometheusListen, port)
	}
	if host == "" {
		// ":9464" listens on every interface; metrics name no caller, but
		// they still show traffic patterns: make that a visible choice.
		return c.errAt("telemetry.prometheus_listen", "telemetry.prometheus_listen %q has no host; name the address to listen on (\"127.0.0.1:9464\", or \"0.0.0.0:9464\" to expose it to the network)", t.PrometheusListen)
	}
	return nil
}
