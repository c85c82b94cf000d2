package keystore

import (
	"bytes"
	"testing"
)

func TestReview_RestoreRefusesAnotherCluster(t *testing.T) {
	a, b := newKS(t, nil), newKS(t, nil)
	mustInit(t, a)
	root, _ := b.NewRootKey()
	if err := b.Init(t.Context(), root, "other-cluster", 1, 1); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	b.Snapshot().WriteTo(&buf)
	if err := a.ValidateRestore(buf.Bytes()); err == nil {
		t.Fatal("another cluster's snapshot accepted for restore")
	}
	var own bytes.Buffer
	a.Snapshot().WriteTo(&own)
	if err := a.ValidateRestore(own.Bytes()); err != nil {
		t.Fatalf("own snapshot refused: %v", err)
	}
}
