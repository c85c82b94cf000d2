package keystore

import (
	"bytes"
	"errors"
	"testing"
)

// TestSnapshotAuth: a snapshot is restored only with the keyring's MAC: an
// unsealed node refuses one without it or tampered with (state unchanged);
// a sealed node takes one from elsewhere only with a MAC and verifies it at
// unseal, refusing to unseal on a forgery; its own sealed-taken snapshot
// restores at start.
func TestSnapshotAuth(t *testing.T) {
	a, b, root := twoNodes(t)
	mustCreate(t, a, "k", "")
	var good bytes.Buffer
	if err := a.SnapshotTo()(&good); err != nil {
		t.Fatal(err)
	}
	var plain bytes.Buffer
	a.Snapshot().WriteTo(&plain) // no MAC
	tampered := bytes.Replace(good.Bytes(), []byte(`"keys/k"`), []byte(`"keys/x"`), 1)
	if bytes.Equal(tampered, good.Bytes()) {
		t.Fatal("fixture")
	}
	for name, data := range map[string][]byte{"no mac": plain.Bytes(), "tampered": tampered} {
		if err := a.RestoreRemote(bytes.NewReader(data)); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("unsealed, %s: %v", name, err)
		}
		if err := a.Restore(bytes.NewReader(data)); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("unsealed local, %s: %v", name, err)
		}
		if _, err := prepareRestore(a, data); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("admin restore, %s: %v", name, err)
		}
	}
	if _, ok := a.Snapshot().Entries["keys/k"]; !ok || a.Sealed() {
		t.Fatal("a refused snapshot changed the state")
	}
	if err := a.RestoreRemote(bytes.NewReader(good.Bytes())); err != nil {
		t.Fatalf("genuine snapshot: %v", err)
	}
	// Sealed replica: no MAC from elsewhere is refused; a genuine one is
	// verified at unseal.
	if err := b.RestoreRemote(bytes.NewReader(plain.Bytes())); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("sealed, remote without mac: %v", err)
	}
	if err := b.RestoreRemote(bytes.NewReader(good.Bytes())); err != nil {
		t.Fatal(err)
	}
	// A snapshot taken while sealed carries the proof; it restores locally.
	var sealedSnap bytes.Buffer
	if err := b.SnapshotTo()(&sealedSnap); err != nil {
		t.Fatal(err)
	}
	c := New(Config{Proposer: proposerFunc(func([]byte) any { return nil })})
	if err := c.Restore(bytes.NewReader(sealedSnap.Bytes())); err != nil {
		t.Fatalf("own sealed snapshot at start: %v", err)
	}
	if err := c.Unseal(root); err != nil {
		t.Fatalf("unseal after restoring a sealed-taken snapshot: %v", err)
	}
	if err := b.Unseal(root); err != nil {
		t.Fatalf("unseal after a genuine remote snapshot: %v", err)
	}
	// A forged one restored while sealed (its MAC wrong: the sealed node
	// cannot tell yet) blocks the unseal.
	b.Seal()
	if err := b.RestoreRemote(bytes.NewReader(tampered)); err != nil {
		t.Fatal(err)
	}
	if err := b.Unseal(root); !errors.Is(err, ErrUnauthenticated) || !b.Sealed() {
		t.Fatalf("unseal after a forged snapshot: %v", err)
	}
}
