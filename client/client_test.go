package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// fake is a stand-in for cofferd on a real unix socket (unit tests of the
// retry and error logic; the examples run against a real dev node).
type fake struct {
	socket string
	calls  atomic.Int32
	mu     sync.Mutex
	bodies [][]byte
	h      func(n int, w http.ResponseWriter, r *http.Request)
}

func newFake(t *testing.T, h func(n int, w http.ResponseWriter, r *http.Request)) *fake {
	t.Helper()
	dir, err := os.MkdirTemp("", "cfc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fake{socket: filepath.Join(dir, "s.sock"), h: h}
	l, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.bodies = append(f.bodies, b)
		f.mu.Unlock()
		w.Header().Set(api.HeaderRequestID, "req-1")
		f.h(int(f.calls.Add(1)), w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f
}

func answerErr(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: "because " + code}})
}

func answerWrap(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.WrapResult{Ciphertext: "coffer:v1:x", KeyVersion: 1})
}

var statusOf = map[Code]int{
	ErrBadRequest: 400, ErrInvalidShare: 400, ErrInvalidToken: 400, ErrDecryptFailed: 400,
	ErrPermissionDenied: 403, ErrNotFound: 404, ErrMethodNotAllowed: 405, ErrAlreadyExists: 409,
	ErrKeyPendingDeletion: 409, ErrVersionDisabled: 409, ErrPendingDeletion: 409, ErrVersionConflict: 409,
	ErrVersionDestroyed: 410, ErrTooLarge: 413, ErrTooManyRequests: 429, ErrSealed: 503, ErrNoLeader: 503,
	ErrOutcomeUnknown: 503, ErrAuditUnavailable: 503, ErrInternal: 500,
}

// TestErrors_EveryCode: each API code comes back as an *APIError that
// errors.Is matches against its sentinel and no other.
func TestErrors_EveryCode(t *testing.T) {
	if len(statusOf) != len(Codes) {
		t.Fatalf("the test knows %d codes, the package %d", len(statusOf), len(Codes))
	}
	for _, code := range Codes {
		f := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) { answerErr(w, statusOf[code], string(code)) })
		c := NewWithOptions(f.socket, Options{Retry: &NoRetry})
		_, err := c.Wrap(context.Background(), "k", []byte("x"), nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != statusOf[code] || ae.Code != string(code) || ae.RequestID != "req-1" || ae.Message != "because "+string(code) {
			t.Fatalf("%s: got %#v", code, err)
		}
		for _, other := range Codes {
			if got := errors.Is(err, other); got != (other == code) {
				t.Errorf("%s: errors.Is(err, %s) = %v", code, other, got)
			}
		}
		// Wrapped by the caller, still matched.
		if !errors.Is(errors.Join(errors.New("ctx"), err), code) {
			t.Errorf("%s: not matched through a wrap", code)
		}
		c.Close()
	}
}

// TestRetry_StopsAtDeadline: a node that stays sealed is retried with
// backoff, and the call returns ErrSealed by the policy's deadline and by
// the context's, whichever comes first, without sleeping past it.
func TestRetry_StopsAtDeadline(t *testing.T) {
	f := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) { answerErr(w, 503, "sealed") })
	for _, tt := range []struct {
		name   string
		policy RetryPolicy
		ctx    time.Duration
		limit  time.Duration
	}{
		{"policy", RetryPolicy{MaxElapsed: 600 * time.Millisecond, Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}, 0, 600 * time.Millisecond},
		{"context", DefaultRetry, 500 * time.Millisecond, 500 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := f.calls.Load()
			c := NewWithOptions(f.socket, Options{Retry: &tt.policy})
			defer c.Close()
			ctx := context.Background()
			if tt.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctx)
				defer cancel()
			}
			start := time.Now()
			_, err := c.Wrap(ctx, "k", []byte("x"), nil)
			took := time.Since(start)
			if !errors.Is(err, ErrSealed) {
				t.Fatalf("err = %v, want ErrSealed", err)
			}
			// Slack for a loaded machine; the default policy would run
			// for 30 s.
			if took > tt.limit+time.Second {
				t.Fatalf("took %v, deadline %v", took, tt.limit)
			}
			if n := f.calls.Load() - before; n < 3 {
				t.Fatalf("%d attempts, want retries", n)
			}
		})
	}
}

// TestRetry_Recovers: no_leader, audit_unavailable and sealed are retried
// with the very same body until the node answers.
func TestRetry_Recovers(t *testing.T) {
	codes := []string{"no_leader", "audit_unavailable", "sealed"}
	f := newFake(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n <= len(codes) {
			answerErr(w, 503, codes[n-1])
			return
		}
		answerWrap(w)
	})
	c := New(f.socket)
	defer c.Close()
	res, err := c.Wrap(context.Background(), "k", []byte("hello"), []byte("ctx"))
	if err != nil || res.Ciphertext != "coffer:v1:x" {
		t.Fatalf("%v %+v", err, res)
	}
	if f.calls.Load() != 4 {
		t.Fatalf("%d attempts, want 4", f.calls.Load())
	}
	for _, b := range f.bodies[1:] {
		if !bytes.Equal(b, f.bodies[0]) || len(b) == 0 {
			t.Fatalf("retried body %q differs from %q", b, f.bodies[0])
		}
	}
}

// TestRetry_Never: outcome_unknown (the write may have been applied) and
// every other code are not retried.
func TestRetry_Never(t *testing.T) {
	for _, code := range Codes {
		if retryable(string(code)) {
			continue
		}
		f := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) { answerErr(w, statusOf[code], string(code)) })
		c := New(f.socket)
		_, err := c.RotateKey(context.Background(), "k")
		if !errors.Is(err, code) || f.calls.Load() != 1 {
			t.Errorf("%s: err %v after %d attempts, want 1", code, err, f.calls.Load())
		}
		c.Close()
	}
	if retryable(string(ErrOutcomeUnknown)) {
		t.Fatal("outcome_unknown is retryable")
	}
}

// TestRetry_TooManyRequests waits for Retry-After, and gives up at once
// when Retry-After is beyond the deadline.
func TestRetry_TooManyRequests(t *testing.T) {
	var first time.Time
	var gap time.Duration
	f := newFake(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			answerErr(w, 429, "too_many_requests")
			return
		}
		gap = time.Since(first)
		answerWrap(w)
	})
	c := New(f.socket)
	defer c.Close()
	if _, err := c.Wrap(context.Background(), "k", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if gap < time.Second {
		t.Fatalf("retried after %v, Retry-After said 1s", gap)
	}

	g := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "60")
		answerErr(w, 429, "too_many_requests")
	})
	c2 := NewWithOptions(g.socket, Options{Retry: &RetryPolicy{MaxElapsed: 5 * time.Second}})
	defer c2.Close()
	start := time.Now()
	_, err := c2.Wrap(context.Background(), "k", []byte("x"), nil)
	if !errors.Is(err, ErrTooManyRequests) || time.Since(start) > time.Second || g.calls.Load() != 1 {
		t.Fatalf("err %v after %v and %d attempts; want an immediate ErrTooManyRequests", err, time.Since(start), g.calls.Load())
	}
}

// TestRetry_ConnectionRefused: a socket nobody listens on yet (cofferd
// restarting) is retried; the call succeeds once cofferd is back.
func TestRetry_ConnectionRefused(t *testing.T) {
	dir, err := os.MkdirTemp("", "cfc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the file stays: connect gives ECONNREFUSED
	c := New(sock)
	defer c.Close()
	go func() {
		time.Sleep(300 * time.Millisecond)
		os.Remove(sock)
		l, err := net.Listen("unix", sock)
		if err != nil {
			return
		}
		http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { answerWrap(w) }))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Wrap(ctx, "k", []byte("x"), nil); err != nil {
		t.Fatalf("not retried until cofferd came back: %v", err)
	}
}

// TestRetry_StreamedBodyNotRetried: a body given as an io.Reader cannot be
// sent twice, so it is not retried.
func TestRetry_StreamedBodyNotRetried(t *testing.T) {
	f := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) { answerErr(w, 503, "sealed") })
	c := New(f.socket)
	defer c.Close()
	_, err := c.Do(context.Background(), "POST", "/v1/keys/k/wrap", bytes.NewReader([]byte(`{"plaintext":"eA=="}`)), nil)
	if !errors.Is(err, ErrSealed) || f.calls.Load() != 1 {
		t.Fatalf("err %v after %d attempts", err, f.calls.Load())
	}
}

// TestSplit: batch helpers cut at api.MaxBatch items and at the body budget.
func TestSplit(t *testing.T) {
	runs := split(api.MaxBatch*2+1, func(int) int { return 10 })
	if len(runs) != 3 || runs[0] != [2]int{0, api.MaxBatch} || runs[2] != [2]int{2 * api.MaxBatch, 2*api.MaxBatch + 1} {
		t.Fatalf("by count: %v", runs)
	}
	big := api.MaxPlaintext * 4 / 3
	runs = split(200, func(int) int { return big })
	for _, r := range runs {
		if (r[1]-r[0])*(big+64) > batchBudget {
			t.Fatalf("run %v over the budget", r)
		}
	}
	if runs[len(runs)-1][1] != 200 || len(split(0, nil)) != 0 {
		t.Fatalf("by size: %v", runs)
	}
}
