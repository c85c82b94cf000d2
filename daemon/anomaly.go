package daemon

import (
	"strconv"
	"sync"
	"time"

	"github.com/coffer-kms/coffer/daemon/config"
)

// Unusual-access rules: "more than Threshold requests of these operations
// with this outcome by one caller within Window". A rule that fires writes an
// unusual-access event into the audit log, counts
// coffer_unusual_access_total{rule} and logs a warning, at most once per
// caller per rule per window, so an operator can alert on any of the three.
//
// A caller is its uid and systemd unit (as recorded in the audit log). The
// rate is a sliding-window estimate over two fixed windows (the previous
// window's count weighted by how much of it still overlaps, plus the
// current one), which costs two integers per caller and rule and never
// under-counts a burst straddling a window boundary by more than half.

// defaultAlertRules apply when the config defines none: a caller refused
// more than 10 times in a minute is probing.
var defaultAlertRules = []config.AlertRule{{Name: "denied-requests", Outcome: "denied", Threshold: 10, Window: time.Minute}}

// maxTrackedCallers bounds the anomaly tracker's memory. Entries idle for two
// windows are dropped first; past the bound, new callers are not tracked
// until old ones expire.
const maxTrackedCallers = 10000

type anomaly struct {
	rules []compiledRule
	now   func() time.Time

	mu        sync.Mutex
	counts    map[anomalyKey]*windowCount
	lastSweep time.Time
}

type compiledRule struct {
	config.AlertRule
	ops map[string]bool // nil: every operation
}

type anomalyKey struct {
	rule int
	uid  int64 // -1: unidentified peer
	unit string
}

type windowCount struct {
	start     time.Time // start of the current window
	cur, prev int
	alerted   time.Time
}

// alert is a rule that fired.
type alert struct {
	rule      string
	count     int
	threshold int
	window    time.Duration
}

func newAnomaly(rules []config.AlertRule, now func() time.Time) *anomaly {
	if rules == nil {
		rules = defaultAlertRules
	}
	a := &anomaly{now: now, counts: map[anomalyKey]*windowCount{}}
	for _, r := range rules {
		cr := compiledRule{AlertRule: r}
		if len(r.Operations) > 0 {
			cr.ops = map[string]bool{}
			for _, op := range r.Operations {
				cr.ops[op] = true
			}
		}
		a.rules = append(a.rules, cr)
	}
	return a
}

// observe counts one request and returns the rules it made fire; unit is
// the caller's accountableUnit.
func (a *anomaly) observe(uid int64, unit, op, outcome string) []alert {
	var out []alert
	for i := range a.rules {
		r := &a.rules[i]
		if (r.Outcome != "" && r.Outcome != outcome) || (r.ops != nil && !r.ops[op]) {
			continue
		}
		if al, ok := a.count(i, r, uid, unit); ok {
			out = append(out, al)
		}
	}
	return out
}

func (a *anomaly) count(i int, r *compiledRule, uid int64, unit string) (alert, bool) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	k := anomalyKey{rule: i, uid: uid, unit: unit}
	c := a.counts[k]
	if c == nil {
		if len(a.counts) >= maxTrackedCallers {
			a.sweepLocked(now)
			if len(a.counts) >= maxTrackedCallers {
				return alert{}, false
			}
		}
		c = &windowCount{start: now}
		a.counts[k] = c
	}
	if el := now.Sub(c.start); el >= r.Window {
		if el >= 2*r.Window {
			c.prev = 0
		} else {
			c.prev = c.cur
		}
		c.cur = 0
		c.start = c.start.Add(el / r.Window * r.Window)
	}
	c.cur++
	overlap := 1 - float64(now.Sub(c.start))/float64(r.Window)
	est := int(float64(c.prev)*overlap) + c.cur
	if est <= r.Threshold || (!c.alerted.IsZero() && now.Sub(c.alerted) < r.Window) {
		return alert{}, false
	}
	c.alerted = now
	if now.Sub(a.lastSweep) > time.Minute {
		a.sweepLocked(now)
	}
	return alert{rule: r.Name, count: est, threshold: r.Threshold, window: r.Window}, true
}

// sweepLocked drops callers idle for two of their rule's windows.
func (a *anomaly) sweepLocked(now time.Time) {
	a.lastSweep = now
	for k, c := range a.counts {
		if now.Sub(c.start) >= 2*a.rules[k.rule].Window {
			delete(a.counts, k)
		}
	}
}

// detail is the alert's audit event detail.
func (al alert) detail(op, outcome string) map[string]string {
	return map[string]string{
		"rule": al.rule, "count": strconv.Itoa(al.count), "threshold": strconv.Itoa(al.threshold),
		"window": al.window.String(), "last_operation": op, "last_outcome": outcome,
	}
}
