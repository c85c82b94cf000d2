package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore/shamir"
)

// fakeSeal simulates cofferd's unseal state machine: shares named "bad…"
// fail their checksum; threshold good shares unseal.
type fakeSeal struct {
	mu          sync.Mutex
	initialized bool
	sealed      bool
	threshold   int
	progress    int
	shares      []string // every share received, in order
	// nonce is the unseal nonce ("" : an old cofferd that sends none);
	// othersResetAt simulates another client's reset just before the
	// share with this (1-based) number arrives.
	nonce         string
	othersResetAt int
}

func (s *fakeSeal) status() api.Status {
	return api.Status{Initialized: s.initialized, Sealed: s.sealed, SealType: "shamir", Threshold: s.threshold, Shares: 5, Progress: s.progress, UnsealNonce: s.nonce}
}

// newNonce changes the nonce as cofferd does on a reset or a first share.
func (s *fakeSeal) newNonce() {
	if s.nonce != "" {
		s.nonce += "'"
	}
}

func installSeal(f *fakeDaemon, s *fakeSeal) {
	f.handle("GET", "/v1/sys/status", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		writeJSON(w, 200, s.status())
	})
	f.handle("POST", "/v1/sys/unseal", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		var req api.UnsealRequest
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, 400, apiErr(api.CodeBadRequest, err.Error()))
			return
		}
		if s.othersResetAt > 0 && len(s.shares)+1 == s.othersResetAt && !req.Reset {
			s.progress = 0
			s.newNonce()
		}
		switch {
		case req.Reset:
			s.progress = 0
			s.newNonce()
		case !s.sealed:
		case strings.HasPrefix(req.Share, "bad"):
			s.shares = append(s.shares, req.Share)
			writeJSON(w, 400, apiErr(api.CodeInvalidShare, "the share's checksum does not match: it was mistyped"))
			return
		default:
			s.shares = append(s.shares, req.Share)
			if s.progress == 0 {
				s.newNonce()
			}
			s.progress++
			if s.progress == s.threshold {
				s.sealed, s.progress = false, 0
			}
		}
		writeJSON(w, 200, s.status())
	})
}

func TestUnseal_StdinLines(t *testing.T) {
	tests := []struct {
		name       string
		stdin      string
		threshold  int
		wantCode   int
		wantShares []string
		wantOut    string
		wantErr    string
		sealed     bool
	}{
		{name: "stops when unsealed", stdin: "s1\n\n  s2  \ns3\ns4-ignored\n", threshold: 3, wantShares: []string{"s1", "s2", "s3"},
			wantOut: "Unseal progress: 1/3\nUnseal progress: 2/3\nUnsealed.\n"},
		{name: "crlf and no final newline", stdin: "s1\r\ns2", threshold: 2, wantShares: []string{"s1", "s2"},
			wantOut: "Unseal progress: 1/2\nUnsealed.\n"},
		{name: "fewer than threshold", stdin: "s1\n", threshold: 3, wantShares: []string{"s1"}, wantOut: "Unseal progress: 1/3\n", sealed: true},
		{name: "stops at first error", stdin: "s1\nbad2\ns3\n", threshold: 3, wantCode: ExitError, wantShares: []string{"s1", "bad2"},
			wantOut: "Unseal progress: 1/3\n", sealed: true,
			wantErr: "coffer: share 2 was not accepted; cofferd keeps the shares accepted before it (unseal progress now 1/3)"},
		{name: "no share", stdin: "\n \n", threshold: 3, wantCode: ExitUsage, sealed: true, wantErr: "no share given"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			s := &fakeSeal{initialized: true, sealed: true, threshold: tt.threshold}
			installSeal(f, s)
			r := run(t, f, tt.stdin, "operator", "unseal")
			if r.code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %s", r.code, tt.wantCode, r.stderr)
			}
			if got := strings.Join(s.shares, ","); got != strings.Join(tt.wantShares, ",") {
				t.Fatalf("shares submitted %q, want %q", got, tt.wantShares)
			}
			if r.stdout != tt.wantOut {
				t.Fatalf("stdout %q, want %q", r.stdout, tt.wantOut)
			}
			if !strings.Contains(r.stderr, tt.wantErr) {
				t.Fatalf("stderr %q lacks %q", r.stderr, tt.wantErr)
			}
			if s.sealed != tt.sealed {
				t.Fatalf("sealed = %v, want %v", s.sealed, tt.sealed)
			}
			// Shares must never be echoed to the terminal or in errors.
			for _, sh := range tt.wantShares {
				if strings.Contains(r.stderr, sh) && sh != "s1" { // "s1" also occurs in words
					t.Fatalf("stderr shows share %q: %s", sh, r.stderr)
				}
			}
		})
	}
}

func TestUnseal_JSONPrintsFinalStatus(t *testing.T) {
	f := newFake(t)
	s := &fakeSeal{initialized: true, sealed: true, threshold: 2}
	installSeal(f, s)
	r := run(t, f, "s1\ns2\n", "operator", "unseal", "--format", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	oneJSONDocument(t, r.stdout)
	var st api.Status
	json.Unmarshal([]byte(r.stdout), &st)
	if st.Sealed {
		t.Fatalf("final status sealed: %s", r.stdout)
	}
	if !strings.Contains(r.stderr, "Unseal progress: 1/2") {
		t.Fatalf("progress not on stderr: %q", r.stderr)
	}
}

func TestUnseal_ShareNeverAFlag(t *testing.T) {
	const secret = "coffer-share-1-topsecretvalue"
	for _, flag := range []string{"--share", "--share=" + secret, "-share", "--key"} {
		t.Run(flag, func(t *testing.T) {
			f := newFake(t)
			installSeal(f, &fakeSeal{initialized: true, sealed: true, threshold: 3})
			args := []string{"operator", "unseal", flag}
			if !strings.Contains(flag, "=") {
				args = append(args, secret)
			}
			r := run(t, f, "", args...)
			if r.code != ExitUsage {
				t.Fatalf("exit %d, want 2", r.code)
			}
			if strings.Contains(r.stderr+r.stdout, "topsecret") {
				t.Fatalf("the share is echoed: %s", r.stderr)
			}
			if len(f.requests()) != 0 {
				t.Fatal("a request was sent")
			}
		})
	}
}

func TestUnseal_Argument(t *testing.T) {
	f := newFake(t)
	s := &fakeSeal{initialized: true, sealed: true, threshold: 2}
	installSeal(f, s)
	r := run(t, f, "ignored\n", "operator", "unseal", "s1")
	if r.code != 0 || r.stdout != "Unseal progress: 1/2\n" {
		t.Fatalf("exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "visible in ps and in shell history") {
		t.Fatalf("no warning: %q", r.stderr)
	}
	if strings.Join(s.shares, ",") != "s1" {
		t.Fatalf("shares %q", s.shares)
	}
	// "-" means stdin, with no warning.
	r = run(t, f, "s2\n", "operator", "unseal", "-")
	if r.code != 0 || r.stdout != "Unsealed.\n" || r.stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestUnseal_StateChecks(t *testing.T) {
	tests := []struct {
		name     string
		seal     *fakeSeal
		args     []string
		stdin    string
		wantCode int
		wantOut  string
		wantErr  string
		wantReqs []string
	}{
		{name: "already unsealed", seal: &fakeSeal{initialized: true, sealed: false, threshold: 3}, stdin: "s1\n",
			wantOut: "Unsealed.\n", wantReqs: []string{"GET /v1/sys/status"}},
		{name: "not initialised", seal: &fakeSeal{initialized: false, sealed: true}, stdin: "s1\n", wantCode: ExitError,
			wantErr: "not initialised: run 'coffer operator init' first", wantReqs: []string{"GET /v1/sys/status"}},
		{name: "reset only", seal: &fakeSeal{initialized: true, sealed: true, threshold: 3, progress: 2}, args: []string{"--reset"},
			wantOut: "Unseal progress: 0/3\n", wantReqs: []string{"POST /v1/sys/unseal"}},
		{name: "reset then shares", seal: &fakeSeal{initialized: true, sealed: true, threshold: 2, progress: 1}, args: []string{"--reset", "-"}, stdin: "s1\ns2\n",
			wantOut: "Unseal progress reset.\nUnseal progress: 1/2\nUnsealed.\n", wantReqs: []string{"POST /v1/sys/unseal", "GET /v1/sys/status", "POST /v1/sys/unseal", "POST /v1/sys/unseal"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			installSeal(f, tt.seal)
			r := run(t, f, tt.stdin, append([]string{"operator", "unseal"}, tt.args...)...)
			if r.code != tt.wantCode || r.stdout != tt.wantOut || !strings.Contains(r.stderr, tt.wantErr) {
				t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
			}
			var got []string
			for _, q := range f.requests() {
				got = append(got, q.Method+" "+q.Path)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantReqs, ",") {
				t.Fatalf("requests %q, want %q", got, tt.wantReqs)
			}
		})
	}
}

func TestUnseal_Identity(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := shamir.Split(bytes.Repeat([]byte{7}, 32), 2, 2, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	share1, share2 := shamir.Encode(raw[0]), shamir.Encode(raw[1])
	rcpt, err := shamir.ParseRecipient(id.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}
	armored, err := shamir.EncryptShare(share1, rcpt)
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(t.TempDir(), "key.txt")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("armored and plain on stdin", func(t *testing.T) {
		f := newFake(t)
		s := &fakeSeal{initialized: true, sealed: true, threshold: 2}
		installSeal(f, s)
		r := run(t, f, armored+"\n"+share2+"\n", "operator", "unseal", "--identity", idFile)
		if r.code != 0 || r.stdout != "Unseal progress: 1/2\nUnsealed.\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if strings.Join(s.shares, ",") != share1+","+share2 {
			t.Fatalf("shares %q", s.shares)
		}
	})
	t.Run("wrong identity", func(t *testing.T) {
		other, _ := age.GenerateX25519Identity()
		otherFile := filepath.Join(t.TempDir(), "other.txt")
		os.WriteFile(otherFile, []byte(other.String()+"\n"), 0o600)
		f := newFake(t)
		s := &fakeSeal{initialized: true, sealed: true, threshold: 2}
		installSeal(f, s)
		r := run(t, f, armored, "operator", "unseal", "--identity", otherFile)
		if r.code != ExitError || !strings.Contains(r.stderr, "no matching age identity") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "AGE-SECRET-KEY") || len(s.shares) != 0 {
			t.Fatalf("leaked key or submitted shares: %q %q", r.stderr, s.shares)
		}
	})
	t.Run("missing identity file", func(t *testing.T) {
		f := newFake(t)
		installSeal(f, &fakeSeal{initialized: true, sealed: true, threshold: 2})
		r := run(t, f, armored, "operator", "unseal", "--identity", filepath.Join(t.TempDir(), "nope"))
		if r.code != ExitError || !strings.Contains(r.stderr, "read the --identity file") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
}

func TestUnsealBody(t *testing.T) {
	for _, share := range []string{"coffer-share-1-abc", `q"uo\te`, "ctl\x01\n", "ünï"} {
		var req api.UnsealRequest
		if err := json.Unmarshal(api.UnsealBody([]byte(share)), &req); err != nil || req.Share != share {
			t.Fatalf("%q: got %q, %v", share, req.Share, err)
		}
	}
}

func TestLineReader(t *testing.T) {
	long := strings.Repeat("a", 3000)
	lr := &lineReader{r: strings.NewReader("one\n\n two \r\n" + long + "\nlast")}
	var got []string
	for {
		l, err := lr.nextShare()
		if err != nil {
			break
		}
		got = append(got, string(l))
	}
	if want := []string{"one", "two", long, "last"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q", got)
	}
	lr.wipe()
	if bytes.ContainsAny(lr.buf, "aotl") {
		t.Fatal("buffer not wiped")
	}
	lr = &lineReader{r: strings.NewReader(strings.Repeat("x", maxShareLine+1))}
	if _, err := lr.nextShare(); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("over-long line: %v", err)
	}
}

// The CLI warns when the unseal attempt its earlier shares belong to was
// reset by someone else before its next share (the status's unseal_nonce
// changed), and not otherwise.
func TestUnseal_WarnsWhenAnotherClientReset(t *testing.T) {
	const warning = "the unseal progress was reset since your previous share"
	for _, tc := range []struct {
		name          string
		nonce         string
		othersResetAt int
		wantWarning   bool
	}{
		{"reset by another client", "n1", 2, true},
		{"no reset", "n1", 0, false},
		{"reset before the first share", "n1", 1, false},
		{"old cofferd without a nonce", "", 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t)
			s := &fakeSeal{initialized: true, sealed: true, threshold: 3, nonce: tc.nonce, othersResetAt: tc.othersResetAt}
			installSeal(f, s)
			r := run(t, f, "s1\ns2\n", "operator", "unseal")
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			if got := strings.Contains(r.stderr, warning); got != tc.wantWarning {
				t.Fatalf("warning shown = %v, want %v; stderr %q", got, tc.wantWarning, r.stderr)
			}
			if tc.wantWarning && !strings.Contains(r.stderr, "unseal progress now 1/3") {
				t.Fatalf("the warning does not give the progress: %q", r.stderr)
			}
		})
	}
}
