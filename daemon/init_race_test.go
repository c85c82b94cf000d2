package daemon

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
)

// Concurrent inits on a node with a device: exactly one wins, and the node
// must still auto-unseal after a restart (its seal blob must be the
// winner's).
func TestReview_ConcurrentInitKeepsBlob(t *testing.T) {
	for round := 0; round < 5; round++ {
		dir := t.TempDir()
		soft := func(c *config.Config) {
			c.Dev = true
			c.Seal = &config.SealConfig{Type: "soft", Soft: &config.SoftSealConfig{KeyFile: filepath.Join(dir, "dev-seal.key")}}
		}
		n := startNode(t, dir, soft)
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := 0
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, _ := n.do("POST", "/v1/sys/init", api.InitRequest{Shares: 1, Threshold: 1}, nil)
				mu.Lock()
				if st == 200 {
					ok++
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		if ok != 1 {
			t.Fatalf("round %d: %d inits succeeded", round, ok)
		}
		n.stop()
		n2 := startNode(t, dir, soft)
		var st api.Status
		n2.must("GET", "/v1/sys/status", nil, &st, 200)
		n2.stop()
		if st.Sealed {
			t.Fatalf("round %d: after concurrent inits the node no longer auto-unseals: %s", round, st.SealedReason)
		}
	}
}
