package daemon

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/auth"
)

// Audit coalescing (docs/api.md, "Audit log entries"): denied or malformed
// requests (a 4xx answer) from one caller beyond coalesceAfter in one
// second do not get an entry each. They are counted, and once the second
// is over one entry records them all: detail.count, the first and last
// request ids, the operations and error codes seen. Without it, one local
// user sending denied requests on a keep-alive connection writes about
// 440 bytes of audit per request (6.5 GB an hour), and a full audit disk
// makes the node refuse every caller.
//
// What stays as it was: successful requests and 5xx errors are one entry
// each, written before the answer; the first coalesceAfter failures of a
// caller in a second are too, so an occasional mistake is recorded in
// full. The unusual-access rules and the metrics still see every request.
// The chain (audit verify) is unaffected: a coalesced entry is an ordinary
// entry. A coalesced request's answer leaves before its entry is written
// (it did nothing); if the log fails by then, the entry is lost with the
// rest of what the failure refuses, and the failure itself is logged.
//
// The cost is on failing requests only: a map lookup under a mutex.

// coalesceAfter is how many failing requests per caller per second get
// their own entry.
const coalesceAfter = 10

// maxCoalesceDetail bounds the distinct operations and error codes a
// coalesced entry lists.
const maxCoalesceDetail = 8

type coalesceKey struct {
	uid  int64  // -1: unidentified
	unit string // system units only
}

type coalesceBucket struct {
	sec         int64 // unix second this bucket counts
	n           int   // failing requests in sec
	suppressed  int   // of which coalesced
	first, last string
	caller      *audit.Caller
	ops, codes  []string
	allDenied   bool
	allOK       bool // only empty lists (reqAudit.coalesce)
}

type coalescer struct {
	mu      sync.Mutex
	buckets map[coalesceKey]*coalesceBucket
	now     func() time.Time
}

func newCoalescer(now func() time.Time) *coalescer {
	return &coalescer{buckets: map[coalesceKey]*coalesceBucket{}, now: now}
}

// suppress counts a failing request and reports whether it is coalesced
// (true: write no entry of its own). done are entries of earlier seconds
// that are now complete and must be written.
func (c *coalescer) suppress(caller *auth.Caller, id, op, outcome, code string) (coalesced bool, done []*audit.Entry) {
	k := coalesceKey{uid: -1}
	if caller != nil {
		k = coalesceKey{uid: int64(caller.UID), unit: accountableUnit(caller)}
	}
	sec := c.now().Unix()
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.buckets[k]
	if b != nil && b.sec != sec {
		if e := b.entry(); e != nil {
			done = append(done, e)
		}
		b = nil
	}
	if b == nil {
		b = &coalesceBucket{sec: sec, allDenied: true, allOK: true}
		c.buckets[k] = b
	}
	b.n++
	if b.n <= coalesceAfter {
		return false, done
	}
	if b.suppressed == 0 {
		b.first = id
	}
	b.suppressed++
	b.last = id
	b.caller = auditCaller(caller)
	b.allDenied = b.allDenied && outcome == audit.OutcomeDenied
	b.allOK = b.allOK && outcome == audit.OutcomeOK
	if !slices.Contains(b.ops, op) && len(b.ops) < maxCoalesceDetail {
		b.ops = append(b.ops, op)
	}
	if code != "" && !slices.Contains(b.codes, code) && len(b.codes) < maxCoalesceDetail {
		b.codes = append(b.codes, code)
	}
	return true, done
}

// flush returns the entries of the seconds that are over (all of them if
// all is set) and forgets their buckets, which keeps the map as small as
// the set of callers failing right now.
func (c *coalescer) flush(all bool) []*audit.Entry {
	sec := c.now().Unix()
	var out []*audit.Entry
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, b := range c.buckets {
		if b.sec < sec || all {
			if e := b.entry(); e != nil {
				out = append(out, e)
			}
			delete(c.buckets, k)
		}
	}
	return out
}

// entry is the bucket's coalesced entry, or nil if nothing was coalesced.
func (b *coalesceBucket) entry() *audit.Entry {
	if b.suppressed == 0 {
		return nil
	}
	outcome := audit.OutcomeError
	switch {
	case b.allDenied:
		outcome = audit.OutcomeDenied
	case b.allOK:
		outcome = audit.OutcomeOK
	}
	op := b.ops[0]
	d := map[string]string{
		"count":            strconv.Itoa(b.suppressed),
		"first_request_id": b.first,
		"last_request_id":  b.last,
		"second":           time.Unix(b.sec, 0).UTC().Format(time.RFC3339),
	}
	if len(b.ops) > 1 {
		op = "unknown"
		d["operations"] = strings.Join(b.ops, ",")
	}
	e := &audit.Entry{
		Type: audit.TypeRequest, RequestID: b.first, Operation: op, Caller: b.caller,
		Outcome: outcome, Detail: d,
	}
	if len(b.codes) == 1 {
		e.ErrorCode = b.codes[0]
	} else if len(b.codes) > 1 {
		e.ErrorCode = "various"
		d["error_codes"] = strings.Join(b.codes, ",")
	}
	return e
}

// writeCoalesced appends completed coalesced entries and logs one warning
// line for each (instead of one per request).
func (a *auditor) writeCoalesced(es []*audit.Entry) {
	for _, e := range es {
		uid := int64(-1)
		if e.Caller != nil {
			uid = int64(e.Caller.UID)
		}
		a.log.Warn("requests refused (coalesced)", "uid", uid, "operation", e.Operation, "outcome", e.Outcome,
			"count", e.Detail["count"], "first-request-id", e.Detail["first_request_id"], "last-request-id", e.Detail["last_request_id"])
		if err := a.w.Append(e); err != nil {
			a.log.Error("cannot record coalesced requests in the audit log", "count", e.Detail["count"], "error", err)
		}
	}
}

// flushCoalesced writes the coalesced entries of the seconds that are over
// (run every second, and with all at shutdown).
func (a *auditor) flushCoalesced(all bool) {
	a.writeCoalesced(a.coal.flush(all))
}

// warnOncePerSecond reports whether a rate-limited warning may be logged
// now: at most one a second.
func (a *auditor) warnOncePerSecond() bool {
	now := time.Now().Unix()
	last := a.lastWarn.Load()
	return last != now && a.lastWarn.CompareAndSwap(last, now)
}
