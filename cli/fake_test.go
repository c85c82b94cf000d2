package cli

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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

func TestMain(m *testing.M) {
	// A developer's own settings must not leak into the tests.
	os.Unsetenv(EnvSocket)
	os.Unsetenv(EnvFormat)
	os.Exit(m.Run())
}

// fakeDaemon is an in-test stand-in for cofferd: an HTTP server on a unix
// socket that records every request and answers from canned routes.
type fakeDaemon struct {
	t      *testing.T
	socket string

	mu     sync.Mutex
	reqs   []fakeReq
	routes map[string]http.HandlerFunc
}

type fakeReq struct {
	Method, Path, Query string
	Body                []byte
}

const fakeRequestID = "req-42"

// socketDir returns a directory for a unix socket: t.TempDir(), unless its
// path is too long for sun_path (108 bytes), as with long subtest names.
func socketDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir) < 90 {
		return dir
	}
	dir, err := os.MkdirTemp("", "cf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newFake(t *testing.T) *fakeDaemon {
	t.Helper()
	f := &fakeDaemon{t: t, socket: filepath.Join(socketDir(t), "c.sock"), routes: map[string]http.HandlerFunc{}}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(f.serve), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return f
}

func (f *fakeDaemon) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, fakeReq{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Body: body})
	h := f.routes[r.Method+" "+r.URL.Path]
	f.mu.Unlock()
	w.Header().Set(api.HeaderRequestID, fakeRequestID)
	if h == nil {
		writeJSON(w, http.StatusNotFound, apiErr(api.CodeNotFound, "no route "+r.Method+" "+r.URL.Path))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	h(w, r)
}

// on answers METHOD PATH with a fixed status and body.
func (f *fakeDaemon) on(method, path string, status int, body string) {
	f.handle(method, path, func(w http.ResponseWriter, _ *http.Request) {
		if body == "" {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	})
}

func (f *fakeDaemon) handle(method, path string, h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[method+" "+path] = h
}

func (f *fakeDaemon) requests() []fakeReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeReq(nil), f.reqs...)
}

// only returns the single request the command made.
func (f *fakeDaemon) only() fakeReq {
	f.t.Helper()
	reqs := f.requests()
	if len(reqs) != 1 {
		f.t.Fatalf("got %d requests, want 1: %+v", len(reqs), reqs)
	}
	return reqs[0]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func apiErr(code, msg string) api.ErrorBody {
	return api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// result is one Main run.
type result struct {
	code           int
	stdout, stderr string
}

// run runs coffer against f with the socket given as a global flag first.
func run(t *testing.T, f *fakeDaemon, stdin string, args ...string) result {
	t.Helper()
	return runArgs(t, stdin, append([]string{"coffer", "--socket", f.socket}, args...)...)
}

func runArgs(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := Main(ctx, args, strings.NewReader(stdin), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// jsonEqual reports whether two JSON documents are equal as values.
func jsonEqual(t *testing.T, got, want string) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expected JSON: %v\n%s", err, want)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	return bytes.Equal(gb, wb)
}

// oneJSONDocument checks that s holds exactly one JSON document.
func oneJSONDocument(t *testing.T, s string) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, s)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("stdout holds more than one JSON document:\n%s", s)
	}
}
