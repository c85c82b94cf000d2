package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/coffer-kms/coffer/api"
)

// TestNoRollback: with every command authentic, an attacker who kept old
// log entries can still not roll state back: a deleted record cannot be
// put back, an old put or delete replayed is refused, a policy deleted and
// re-created does not accept its old versions, and after a snapshot
// restore (the one, admin-only way back) no earlier command applies.
func TestNoRollback(t *testing.T) {
	var log [][]byte
	ks := newKS(t, nil)
	inner := ks.cfg.Proposer
	ks.cfg.Proposer = proposerFunc2(func(ctx context.Context, b []byte) (any, error) {
		log = append(log, b)
		return inner.Propose(ctx, b)
	})
	mustInit(t, ks)
	ctx := context.Background()
	wide := []byte(`{"subjects":{"uids":[1]},"keys":["*"],"operations":["unwrap"]}`)
	narrow := []byte(`{"subjects":{"uids":[1]},"keys":["app"],"operations":["unwrap"]}`)
	putPolicy := func(b []byte) {
		t.Helper()
		var p api.Policy
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		if err := ks.PutPolicy(ctx, "p", p); err != nil {
			t.Fatal(err)
		}
	}
	putPolicy(wide)
	wideCmd := log[len(log)-1]
	mustCreate(t, ks, "k", "")
	createK := log[len(log)-1]
	var sb bytes.Buffer
	if err := ks.SnapshotTo()(&sb); err != nil {
		t.Fatal(err)
	}
	putPolicy(narrow)
	narrowCmd := log[len(log)-1]
	if err := ks.DeletePolicy(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	deleteCmd := log[len(log)-1]
	// Replays after the delete: the old wide version, the narrow one, the
	// delete itself.
	for name, cmd := range map[string][]byte{"wide": wideCmd, "narrow": narrowCmd, "delete": deleteCmd} {
		if r := ks.Apply(cmd); r == nil || !errors.Is(r.(error), ErrConflict) {
			t.Errorf("replay of %s after the delete: %v", name, r)
		}
	}
	if _, err := ks.GetPolicy("p"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the deleted policy came back: %v", err)
	}
	// Re-created under the same name: the counter goes on.
	putPolicy(narrow)
	if r := ks.Apply(wideCmd); r == nil {
		t.Fatal("an old version replaced the re-created policy")
	}
	if v := ks.Snapshot().Entries["policies/p"].Version; v != 4 {
		t.Errorf("record counter after re-create: %d, want 4 (1 wide, 2 narrow, 3 delete, 4 again)", v)
	}
	// A key: delete (scheduled deletion is the API; the record delete is
	// what purge commits) and put the old record back.
	cur := ks.Snapshot().Entries["keys/k"]
	if r := ks.Apply(signed(t, ks, &command{Op: opDelete, Path: "keys/k", Expect: cur.Version})); r != nil {
		t.Fatal(r)
	}
	if r := ks.Apply(createK); r == nil {
		t.Fatal("the deleted key's old record was put back")
	}
	// Restore: back to the snapshot (wide policy, key present), and no
	// command from before the restore applies.
	data, err := prepareRestore(ks, sb.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Restore(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.GetPolicy("p"); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if r := ks.Apply(narrowCmd); r == nil || !errors.Is(r.(error), ErrConflict) {
		t.Errorf("replay of a pre-restore command after the restore: %v", r)
	}
	// New writes work after the restore.
	putPolicy(narrow)
	mustCreate(t, ks, "k2", "")
}

type proposerFunc2 func(context.Context, []byte) (any, error)

func (f proposerFunc2) Propose(ctx context.Context, b []byte) (any, error) { return f(ctx, b) }

// prepareRestore is PrepareRestoreStream on bytes: the snapshot to hand
// raft (data itself when it is restored as it came).
func prepareRestore(ks *Keystore, data []byte) ([]byte, error) {
	var out bytes.Buffer
	same, err := ks.PrepareRestoreStream(bytes.NewReader(data), &out)
	if err != nil {
		return nil, err
	}
	if same {
		return data, nil
	}
	return out.Bytes(), nil
}
