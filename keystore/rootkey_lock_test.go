package keystore

import (
	"context"
	"testing"
	"time"
)

// A slow RootKey callback (a device seal during reseal or after a rekey)
// must not stall wrap on this node while a committed command waits to apply.
func TestReview_SlowRootKeyDoesNotStallCrypto(t *testing.T) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	mustCreate(t, ks, "k", "")
	inFn := make(chan struct{})
	release := make(chan struct{})
	go ks.RootKey(func([]byte) error { close(inFn); <-release; return nil })
	<-inFn
	go ks.CreateKey(context.Background(), "k2", "", "") // Apply needs the write lock
	time.Sleep(50 * time.Millisecond)
	done := make(chan struct{})
	go func() { wrap1(t, ks, "k", []byte("x"), nil); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		close(release)
		t.Fatal("wrap blocked behind a RootKey callback (device I/O) and a pending Apply")
	}
	close(release)
}
