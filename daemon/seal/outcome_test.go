package seal

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/keystore"
)

// unknownOutcome is a proposer whose next write reports that its outcome is
// unknown (leadership lost with the entry in flight), after applying it
// (apply: it committed) or not (it did not).
type unknownOutcome struct {
	*direct
	armed, apply bool
}

func (u *unknownOutcome) Propose(ctx context.Context, cmd []byte) (any, error) {
	if !u.armed {
		return u.direct.Propose(ctx, cmd)
	}
	u.armed = false
	if u.apply {
		u.ks.Apply(cmd)
	}
	return nil, cluster.ErrOutcomeUnknown
}

// TestManager_OutcomeUnknownKeepsShares: an init or rekey whose write
// reports an unknown outcome but committed must answer its shares — they
// are the only way back in (after a rekey the old ones no longer work) —
// and one that did not commit answers the error.
func TestManager_OutcomeUnknownKeepsShares(t *testing.T) {
	defer func(d time.Duration) { outcomeWait = d }(outcomeWait)
	outcomeWait = 300 * time.Millisecond
	ctx := context.Background()
	for _, apply := range []bool{true, false} {
		u := &unknownOutcome{direct: &direct{}}
		var m *Manager
		u.ks = keystore.New(keystore.Config{Proposer: u, OnRootChange: func() { m.ResealAfterRekey() }})
		m = New(Config{Keystore: u.ks, Node: &config.Config{NodeID: "n1", DataDir: t.TempDir()}})
		m.Open(ctx)
		t.Cleanup(m.Close)

		u.armed, u.apply = true, apply
		resp, err := m.Init(ctx, 2, 2, nil)
		if apply && (err != nil || len(resp.Shares) != 2 || u.ks.Sealed()) {
			t.Fatalf("init committed under an unknown outcome: %d shares, %v, sealed %v; want the shares and an unsealed node", len(resp.Shares), err, u.ks.Sealed())
		}
		if !apply {
			if !errors.Is(err, cluster.ErrOutcomeUnknown) || len(resp.Shares) != 0 {
				t.Fatalf("init not committed: %d shares, %v; want the error", len(resp.Shares), err)
			}
			continue
		}
		u.armed, u.apply = true, true
		rk, err := m.Rekey(ctx, resp.Shares, 2, 2, nil)
		if err != nil || len(rk.Shares) != 2 {
			t.Fatalf("rekey committed under an unknown outcome: %d shares, %v; want the new shares", len(rk.Shares), err)
		}
		m.Seal(0)
		for _, sh := range rk.Shares {
			if _, err := m.AddShare(sh); err != nil {
				t.Fatal(err)
			}
		}
		if u.ks.Sealed() {
			t.Fatal("the answered shares did not unseal")
		}
		u.armed, u.apply = true, false
		if _, err := m.Rekey(ctx, rk.Shares, 2, 2, nil); !errors.Is(err, cluster.ErrOutcomeUnknown) {
			t.Fatalf("rekey not committed: %v, want the error", err)
		}
	}
}
