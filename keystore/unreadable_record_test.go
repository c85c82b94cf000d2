package keystore

import (
	"errors"
	"testing"
)

// A committed key record this node cannot open must not leave the previous
// decrypted version in service.
func TestReview_UnreadableRecordDropsStaleView(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	ks.mu.RLock()
	cur := ks.entries["keys/k"]
	ks.mu.RUnlock()
	bad := Entry{Version: cur.Version + 1, Term: cur.Term, Data: make([]byte, 64)}
	if r := ks.Apply(signed(t, ks, &command{Op: opPut, Path: "keys/k", Expect: cur.Version, Entry: &bad})); r != nil {
		t.Fatalf("apply: %v", r)
	}
	if _, err := ks.Wrap("k", []Item{{Plaintext: []byte("x")}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrap with a key whose current record is unreadable: err %v, want not found", err)
	}
}
