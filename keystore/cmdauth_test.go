package keystore

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// signed encodes c authenticated by ks's keyring, as a proposal would be.
func signed(t testing.TB, ks *Keystore, c *command) []byte {
	t.Helper()
	b, err := ks.authenticate(encodeCommand(c))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// twoNodes returns an unsealed keystore and a second replica that applies
// the same log while sealed.
func twoNodes(t *testing.T) (unsealed, sealed *Keystore, root []byte) {
	t.Helper()
	a := newKS(t, nil)
	b := New(Config{Proposer: proposerFunc(func([]byte) any { return nil })})
	a.cfg.Proposer = proposerFunc(func(cmd []byte) any { r := a.Apply(cmd); b.Apply(cmd); return r })
	root = mustInit(t, a)
	return a, b, root
}

type proposerFunc func([]byte) any

func (f proposerFunc) Propose(_ context.Context, cmd []byte) (any, error) { return f(cmd), nil }

// TestCommandAuth: a command without a valid MAC (made without the root
// key: by a member certificate alone, from another cluster, or altered) is
// refused by an unsealed node and changes nothing; a sealed replica that
// applied it refuses to unseal; genuine commands applied while sealed are
// verified at unseal.
func TestCommandAuth(t *testing.T) {
	a, b, root := twoNodes(t)
	ctx := context.Background()
	mustCreate(t, a, "victim", "")
	cur := a.Snapshot().Entries["keys/victim"]
	del := encodeCommand(&command{Op: opDelete, Path: "keys/victim", Expect: cur.Version})
	other, _, _ := twoNodes(t) // another cluster's keyring
	good := signed(t, a, &command{Op: opDelete, Path: "keys/victim", Expect: cur.Version})
	tampered := bytes.Replace(good, []byte("victim"), []byte("victin"), 1)
	for name, cmd := range map[string][]byte{
		"no mac":          del,
		"another cluster": signed(t, other, &command{Op: opDelete, Path: "keys/victim", Expect: cur.Version}),
		"tampered":        tampered,
		"zero mac":        sealEnvelope(make([]byte, 32), "x", del),
	} {
		if r := a.Apply(cmd); r == nil || !errors.Is(r.(error), ErrUnauthenticated) {
			t.Errorf("%s: %v", name, r)
		}
		if err := a.VerifyCommand(cmd); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: leader check %v", name, err)
		}
	}
	if _, ok := a.Snapshot().Entries["keys/victim"]; !ok {
		t.Fatal("a forged delete changed the state")
	}
	if err := a.VerifyCommand(good); err != nil {
		t.Fatalf("genuine command: %v", err)
	}
	// The sealed replica applied the genuine create; it verifies at unseal.
	if err := b.Unseal(root); err != nil {
		t.Fatalf("unseal after genuine commands: %v", err)
	}
	b.Seal()
	// A sealed replica fed a forged command (by a hostile leader) refuses
	// to unseal.
	if r := b.Apply(del); r != nil {
		t.Fatalf("sealed apply: %v", r)
	}
	if err := b.Unseal(root); !errors.Is(err, ErrUnauthenticated) || !b.Sealed() {
		t.Fatalf("unseal after a forged command: %v", err)
	}
	// A sealed node cannot make commands.
	if err := b.RevokeNode(ctx, "n9"); !errors.Is(err, ErrSealed) || !strings.Contains(err.Error(), "unsealed") {
		t.Fatalf("proposal on a sealed node: %v", err)
	}
	if err := b.VerifyCommand(good); !errors.Is(err, ErrSealed) {
		t.Fatalf("sealed leader check: %v", err)
	}
}

// BenchmarkApplyAuthenticated: the cost of a policy put through Apply with
// its MAC checked (the per-write overhead of command authentication is
// one HKDF and one HMAC over the command).
func BenchmarkApplyAuthenticated(b *testing.B) {
	ks := newKS(b, nil)
	mustInit(b, ks)
	mustCreate(b, ks, "k", "")
	cur := ks.Snapshot().Entries["keys/k"]
	cmd := signed(b, ks, &command{Op: opPut, Path: "keys/k", Expect: cur.Version + 1000, Entry: &Entry{Version: cur.Version + 1001, Term: 1, Data: make([]byte, 600)}})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ks.Apply(cmd) // refused by its compare-and-set after the MAC check
	}
}

// BenchmarkVerifyCommand: the leader's check of a forwarded command.
func BenchmarkVerifyCommand(b *testing.B) {
	ks := newKS(b, nil)
	mustInit(b, ks)
	cmd := signed(b, ks, &command{Op: opPut, Path: "keys/k", Expect: 0, Entry: &Entry{Version: 1, Term: 1, Data: make([]byte, 600)}})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ks.VerifyCommand(cmd); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeOnly: decoding the same command without any MAC work, to
// compare with BenchmarkVerifyCommand.
func BenchmarkDecodeOnly(b *testing.B) {
	ks := newKS(b, nil)
	mustInit(b, ks)
	cmd := signed(b, ks, &command{Op: opPut, Path: "keys/k", Expect: 0, Entry: &Entry{Version: 1, Term: 1, Data: make([]byte, 600)}})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inner, _, err := splitEnvelope(cmd)
		if err == nil {
			_, err = DecodeCommand(inner)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
