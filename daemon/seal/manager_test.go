package seal

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/keystore"
	"github.com/coffer-kms/coffer/keystore/shamir"
)

// direct applies proposals at once, as a single-node raft would: the seal
// lifecycle is tested without raft and without HTTP.
type direct struct{ ks *keystore.Keystore }

func (d *direct) Propose(_ context.Context, cmd []byte) (any, error) { return d.ks.Apply(cmd), nil }

type testManager struct {
	*Manager
	ks  *keystore.Keystore
	dir string
}

// newTestManager makes a Manager over an in-memory keystore in a fresh
// data_dir; soft: with the (development) soft seal device.
func newTestManager(t *testing.T, soft bool) *testManager {
	t.Helper()
	dir := t.TempDir()
	cfg := &config.Config{NodeID: "n1", DataDir: dir}
	if soft {
		cfg.Dev = true
		cfg.Seal = &config.SealConfig{Type: config.SealSoft, Soft: &config.SoftSealConfig{KeyFile: filepath.Join(dir, "dev-seal.key")}}
	}
	d := &direct{}
	var m *Manager
	d.ks = keystore.New(keystore.Config{Proposer: d, OnRootChange: func() { m.ResealAfterRekey() }})
	m = New(Config{Keystore: d.ks, Node: cfg})
	m.Open(context.Background())
	t.Cleanup(m.Close)
	return &testManager{Manager: m, ks: d.ks, dir: dir}
}

func (m *testManager) status() api.Status {
	st := api.Status{Initialized: m.ks.Initialized(), Sealed: m.ks.Sealed()}
	if sc := m.ks.SealConfig(); sc != nil {
		st.Threshold = sc.Threshold
	}
	m.Status(&st)
	return st
}

func (m *testManager) mustInit(t *testing.T, shares, threshold int) []string {
	t.Helper()
	resp, err := m.Init(context.Background(), shares, threshold, nil)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if got, exp := len(resp.Shares), shares; got != exp {
		t.Fatalf("Init returned %d shares, want %d", got, exp)
	}
	return resp.Shares
}

func TestManager_InitAndUnsealByShares(t *testing.T) {
	m := newTestManager(t, false)
	if st := m.status(); st.Initialized || !st.Sealed || st.SealType != "shamir" || !strings.Contains(st.SealedReason, "not initialised") {
		t.Fatalf("fresh node: %+v", st)
	}
	if _, err := m.AddShare("anything"); !errors.Is(err, keystore.ErrNotInitialized) {
		t.Fatalf("share before init: %v, want ErrNotInitialized", err)
	}
	shares := m.mustInit(t, 3, 2)
	if st := m.status(); !st.Initialized || st.Sealed {
		t.Fatalf("after init the node must be unsealed: %+v", st)
	}
	if _, err := m.Init(context.Background(), 1, 1, nil); !errors.Is(err, keystore.ErrAlreadyInitialized) {
		t.Fatalf("second init: %v, want ErrAlreadyInitialized", err)
	}
	// Unsealed: a share is a no-op.
	if p, err := m.AddShare(shares[0]); err != nil || p.Accepted {
		t.Fatalf("share on an unsealed node: %+v %v", p, err)
	}

	m.Seal(0)
	if st := m.status(); !st.Sealed || !strings.Contains(st.SealedReason, "sealed by an operator (uid 0)") {
		t.Fatalf("after Seal: %+v", st)
	}
	p, err := m.AddShare(shares[0])
	if err != nil || !p.Accepted || p.Entered != 1 || p.Threshold != 2 || p.Unsealed {
		t.Fatalf("first share: %+v %v", p, err)
	}
	// A repeat is refused and keeps the progress.
	if _, err := m.AddShare(shares[0]); !errors.Is(err, ErrInvalidShare) || !strings.Contains(err.Error(), "progress 1 of 2 kept") {
		t.Fatalf("repeated share: %v", err)
	}
	// A mistyped share is refused on entry, progress kept.
	typo := []byte(shares[1])
	typo[len(typo)-3] ^= 1
	if _, err := m.AddShare(string(typo)); !errors.Is(err, shamir.ErrInvalidShare) {
		t.Fatalf("mistyped share: %v", err)
	}
	if got := m.status().Progress; got != 1 {
		t.Fatalf("progress after refused shares = %d, want 1", got)
	}
	p, err = m.AddShare(shares[2])
	if err != nil || !p.Unsealed || p.BreakGlass {
		t.Fatalf("threshold share: %+v %v", p, err)
	}
	if st := m.status(); st.Sealed || st.Progress != 0 {
		t.Fatalf("after the threshold: %+v", st)
	}
}

// Shares of another cluster reach the threshold but do not open the
// keyring: refused, progress reset, still sealed.
func TestManager_SharesOfAnotherCluster(t *testing.T) {
	a, b := newTestManager(t, false), newTestManager(t, false)
	sa, sb := a.mustInit(t, 3, 2), b.mustInit(t, 3, 2)
	a.Seal(0)
	if _, err := a.AddShare(sb[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddShare(sb[1]); !errors.Is(err, keystore.ErrRootKeyMismatch) {
		t.Fatalf("foreign shares: %v, want ErrRootKeyMismatch", err)
	}
	if st := a.status(); !st.Sealed || st.Progress != 0 {
		t.Fatalf("after foreign shares: %+v", st)
	}
	for _, sh := range sa[1:] {
		if _, err := a.AddShare(sh); err != nil {
			t.Fatal(err)
		}
	}
	if a.status().Sealed {
		t.Fatal("the right shares did not unseal")
	}
}

func TestManager_ShareParams(t *testing.T) {
	for _, tc := range []struct {
		shares, threshold int
		recipients        []string
		want              string
	}{
		{0, 0, nil, "shares must be between 1 and 255"},
		{256, 2, nil, "shares must be between 1 and 255"},
		{3, 4, nil, "threshold must be between 1 and shares (3)"},
		{3, 1, nil, "threshold 1 with 3 shares"},
		{2, 2, []string{"age1x"}, "1 recipients for 2 shares"},
		{1, 1, []string{"not-a-recipient"}, "recipient 1:"},
	} {
		_, err := ShareParams(tc.shares, tc.threshold, tc.recipients)
		if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ShareParams(%d, %d, %v) = %v, want ErrInvalidRequest with %q", tc.shares, tc.threshold, tc.recipients, err, tc.want)
		}
	}
	m := newTestManager(t, false)
	if _, err := m.Rekey(context.Background(), nil, 1, 1, nil); !errors.Is(err, keystore.ErrNotInitialized) {
		t.Fatalf("rekey before init: %v", err)
	}
	if err := m.Reseal(context.Background()); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("reseal without a device: %v, want ErrNoDevice", err)
	}
}

// With a device: init seals the root key into the node's blob, auto-unseal
// opens it again, a missing blob says what to do, shares are the
// break-glass path and reseal enrols the device again.
func TestManager_DeviceAutoUnsealAndBreakGlass(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, true)
	shares := m.mustInit(t, 3, 2)
	if st := m.status(); st.SealType != "soft" || st.Sealed {
		t.Fatalf("after init: %+v", st)
	}
	blob := filepath.Join(m.dir, "seal-blob.json")
	if _, err := os.Stat(blob); err != nil {
		t.Fatalf("init did not write the device blob: %v", err)
	}
	m.ks.Seal() // as a restart would leave it
	m.AutoUnseal(ctx)
	if st := m.status(); st.Sealed {
		t.Fatalf("auto-unseal failed: %s", st.SealedReason)
	}

	os.Remove(blob)
	m.ks.Seal()
	m.AutoUnseal(ctx)
	st := m.status()
	if !st.Sealed || !strings.Contains(st.SealedReason, "has not sealed the root key yet") || !strings.Contains(st.SealedReason, "coffer operator reseal") {
		t.Fatalf("without a blob: %+v", st)
	}
	m.AddShare(shares[0])
	p, err := m.AddShare(shares[1])
	if err != nil || !p.Unsealed || !p.BreakGlass {
		t.Fatalf("break-glass unseal: %+v %v", p, err)
	}
	if err := m.Reseal(ctx); err != nil {
		t.Fatalf("reseal: %v", err)
	}
	m.ks.Seal()
	m.AutoUnseal(ctx)
	if st := m.status(); st.Sealed {
		t.Fatalf("auto-unseal after reseal failed: %s", st.SealedReason)
	}
}

// Rekey needs threshold current shares, retires them, and the new shares
// (and the device, resealed in the background) unseal the node.
func TestManager_Rekey(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, false)
	old := m.mustInit(t, 3, 2)
	if _, err := m.Rekey(ctx, old[:1], 2, 2, nil); !errors.Is(err, ErrInvalidShare) || !strings.Contains(err.Error(), "rekey needs 2 current shares") {
		t.Fatalf("rekey with one share: %v", err)
	}
	if _, err := m.Rekey(ctx, []string{old[0], "garbage"}, 2, 2, nil); !errors.Is(err, ErrInvalidShare) || !strings.Contains(err.Error(), "current share 2") {
		t.Fatalf("rekey with a malformed share: %v", err)
	}
	other := newTestManager(t, false).mustInit(t, 2, 2)
	if _, err := m.Rekey(ctx, other, 2, 2, nil); !errors.Is(err, keystore.ErrRootKeyMismatch) {
		t.Fatalf("rekey with another cluster's shares: %v", err)
	}
	resp, err := m.Rekey(ctx, old[1:], 2, 2, nil)
	if err != nil || len(resp.Shares) != 2 {
		t.Fatalf("rekey: %+v %v", resp, err)
	}
	m.Seal(0)
	m.AddShare(old[0])
	if _, err := m.AddShare(old[1]); !errors.Is(err, keystore.ErrRootKeyMismatch) {
		t.Fatalf("old shares after rekey: %v, want ErrRootKeyMismatch", err)
	}
	for _, sh := range resp.Shares {
		if _, err := m.AddShare(sh); err != nil {
			t.Fatal(err)
		}
	}
	if m.status().Sealed {
		t.Fatal("the new shares did not unseal")
	}
}

// The unseal nonce changes when an attempt is reset or a new one starts
// (its first share), and stays put while one attempt collects its shares.
func TestManager_UnsealNonce(t *testing.T) {
	m := newTestManager(t, false)
	shares := m.mustInit(t, 3, 3)
	m.Seal(0)
	n0 := m.status().UnsealNonce
	if n0 == "" {
		t.Fatal("no unseal nonce")
	}
	m.AddShare(shares[0])
	n1 := m.status().UnsealNonce
	if n1 == n0 {
		t.Fatal("the first share of an attempt did not change the nonce")
	}
	m.AddShare(shares[1])
	if got := m.status().UnsealNonce; got != n1 {
		t.Fatal("the second share of the same attempt changed the nonce")
	}
	m.Reset()
	n2 := m.status().UnsealNonce
	if n2 == n1 || m.status().Progress != 0 {
		t.Fatal("reset did not change the nonce or keep progress at 0")
	}
	m.AddShare(shares[2])
	if got := m.status().UnsealNonce; got == n2 {
		t.Fatal("the first share after a reset did not change the nonce")
	}
}

// After an operator's seal, the auto-unseal retry leaves the node sealed
// (until shares or a restart unseal it); a restart's AutoUnseal opens it.
func TestManager_RetryAutoUnsealRespectsOperatorSeal(t *testing.T) {
	m := newTestManager(t, true)
	m.mustInit(t, 1, 1)
	m.Seal(0)
	m.RetryAutoUnseal()
	if st := m.status(); !st.Sealed || !strings.Contains(st.SealedReason, "sealed by an operator") {
		t.Fatalf("the retry unsealed a node an operator sealed: %+v", st)
	}
	m.AutoUnseal(context.Background())
	if st := m.status(); st.Sealed {
		t.Fatalf("AutoUnseal (as at a restart) failed: %s", st.SealedReason)
	}
}
