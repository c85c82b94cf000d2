package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"syscall"
	"time"
)

// RetryPolicy says how long a call keeps retrying answers that mean the
// request did nothing (sealed, audit_unavailable, no_leader,
// too_many_requests, a refused connection). A call also stops at its
// context's deadline; it never sleeps past either: when the next attempt
// would come too late, it returns the last error at once.
type RetryPolicy struct {
	// MaxElapsed bounds how long a call keeps starting new attempts:
	// no attempt starts, and no backoff sleeps, past it. An attempt in
	// flight is bounded only by the context (give calls a deadline).
	// 0 disables retries.
	MaxElapsed time.Duration
	// Initial is the first backoff (default 50ms); each retry doubles it up
	// to Max (default 2s), with jitter so that many clients do not retry
	// in step.
	Initial, Max time.Duration
}

// DefaultRetry is the policy of New: up to 30 seconds, enough to ride out a
// leader election, an unseal after a restart or a full audit disk being
// freed.
var DefaultRetry = RetryPolicy{MaxElapsed: 30 * time.Second, Initial: 50 * time.Millisecond, Max: 2 * time.Second}

// NoRetry fails at the first error (the coffer CLI uses it: an operator
// wants to see that a node is sealed, not wait).
var NoRetry = RetryPolicy{}

// retrier tracks one call's retries.
type retrier struct {
	p        RetryPolicy
	deadline time.Time
	attempt  int
}

func (c *Client) newRetrier(ctx context.Context) *retrier {
	r := &retrier{p: c.retry}
	if r.p.MaxElapsed > 0 {
		r.deadline = time.Now().Add(r.p.MaxElapsed)
	}
	if dl, ok := ctx.Deadline(); ok && (r.deadline.IsZero() || dl.Before(r.deadline)) {
		r.deadline = dl
	}
	return r
}

// next decides whether to retry after err (resp is the answer, if any) and
// sleeps until then. It returns false when the call must return err.
func (r *retrier) next(ctx context.Context, err error, resp *http.Response, replayable bool) bool {
	if r.p.MaxElapsed <= 0 || !replayable || !retryableErr(err) {
		return false
	}
	wait := r.backoff()
	if errors.Is(err, ErrTooManyRequests) && resp != nil {
		if ra, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			wait = max(ra, wait)
		}
	}
	if time.Now().Add(wait).After(r.deadline) {
		return false
	}
	r.attempt++
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (r *retrier) backoff() time.Duration {
	initial, ceiling := r.p.Initial, r.p.Max
	if initial <= 0 {
		initial = 50 * time.Millisecond
	}
	if ceiling <= 0 {
		ceiling = 2 * time.Second
	}
	d := initial << min(r.attempt, 20)
	if d > ceiling || d <= 0 {
		d = ceiling
	}
	// Jitter in [d/2, d].
	return d/2 + rand.N(d/2+1)
}

// retryableErr: cofferd said the request did nothing, or the connection
// was refused before anything was sent (cofferd restarting).
func retryableErr(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return retryable(ae.Code)
	}
	var ce *ConnError
	return errors.As(err, &ce) && ce.notSent()
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}

// notSent reports whether the request certainly never reached cofferd: the
// connection was refused.
func (e *ConnError) notSent() bool { return errors.Is(e.Err, syscall.ECONNREFUSED) }
