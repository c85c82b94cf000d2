package auth

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestNameCache_SlowNameService: a user database that hangs (a slow LDAP)
// delays identification by at most the lookup timeout, answers "" (no
// name: name-based grants do not match) meanwhile, runs one lookup per id
// however many connections ask, and its late answer is cached.
func TestNameCache_SlowNameService(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	nc := newNameCache()
	nc.lookupTimeout = 100 * time.Millisecond
	nc.lookupGroup = func(gid uint32) (string, error) {
		calls.Add(1)
		<-release
		return "ldap-group", nil
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := nc.groupName(5000); got != "" {
				t.Errorf("groupName during the hang = %q, want \"\"", got)
			}
		}()
	}
	wg.Wait()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("20 lookups against a hanging name service took %v, want about the 100ms timeout", d)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d lookups of one gid ran, want 1", n)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for nc.groupName(5000) != "ldap-group" {
		if time.Now().After(deadline) {
			t.Fatal("the late answer was never cached")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d lookups after the answer, want it cached (1)", n)
	}
}
