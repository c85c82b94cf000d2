package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A forwarded write from a follower of this version is answered after the
// follower applied it, and costs the log one entry: the follower passes
// the commit index to its raft itself, so the leader appends no barrier.
// A follower that does not say it will (an older version) still gets the
// barrier.
func TestCluster_ForwardedWriteNeedsNoBarrier(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, f := c.leader(), c.followers()[0]
	before := l.n.raft.LastIndex()
	relayed := f.n.relayed.Load()
	if _, err := f.ks.CreateKey(ctx, "pushed", "", ""); err != nil {
		t.Fatal(err)
	}
	if !hasKey(f.ks, "pushed") {
		t.Fatal("the follower answered before it applied its forwarded write")
	}
	if got := f.n.raft.CommitIndex(); got < before+1 {
		t.Fatalf("follower commit index %d after its write at %d", got, before+1)
	}
	// Give a barrier, if one were appended, time to show.
	time.Sleep(100 * time.Millisecond)
	if got := l.n.raft.LastIndex(); got != before+1 {
		t.Fatalf("the leader's log grew by %d entries for one forwarded write (a barrier was appended)", got-before)
	}
	// The leader's own AppendEntries (its CommitTimeout tick) may come
	// first now and then, but not every time.
	for i := 0; i < 5 && f.n.relayed.Load() == relayed; i++ {
		if _, err := f.ks.CreateKey(ctx, fmt.Sprintf("pushed-%d", i), "", ""); err != nil {
			t.Fatal(err)
		}
	}
	if f.n.relayed.Load() == relayed {
		t.Fatal("the follower never passed the commit index of its forwarded writes to its raft")
	}

	// An older follower: the same RPC without the header.
	pv, _ := proposers.Load(f.n)
	p := pv.(*lazyProposer)
	captured := make(chan []byte, 1)
	p.capture = captured
	if _, err := f.ks.CreateKey(ctx, "old-style", "", ""); !errors.Is(err, errCaptured) {
		t.Fatalf("capturing the command: %v", err)
	}
	p.capture = nil
	cmd := <-captured
	before = l.n.raft.LastIndex()
	out, status, err := f.n.call(ctx, l.n.cfg.Net.AdvertiseAddr, "/rpc/apply", cmd)
	if err != nil || status != 200 {
		t.Fatalf("forwarding without the hint: %v %d %+v", err, status, out)
	}
	if out.Term == 0 || out.Index != before+1 {
		t.Fatalf("answer %+v: want the index %d and the term", out, before+1)
	}
	waitFor(t, "the leader appends a barrier for a follower that does not push the commit index", 5*time.Second, func() bool {
		return l.n.raft.LastIndex() >= before+2
	})
}

// relayCommit passes raft only what the leader could have sent: an entry
// this node does not hold, or a term older than this node's, is refused
// and commits nothing; the leader's own message is accepted and leaves the
// cluster as it was.
func TestCluster_RelayCommitRefusesWhatTheLeaderDidNotSay(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, f := c.leader(), c.followers()[0]
	if _, err := l.ks.CreateKey(ctx, "k1", "", ""); err != nil {
		t.Fatal(err)
	}
	index, term := l.n.raft.LastIndex(), l.n.raft.CurrentTerm()
	lid, laddr := raft.ServerID(l.id), raft.ServerAddress(l.n.cfg.Net.AdvertiseAddr)
	waitFor(t, "the follower stores the entry", 5*time.Second, func() bool { return f.n.logs.last.Load() >= index })

	if ok, err := f.n.relayCommit(lid, laddr, index, term); err != nil || !ok {
		t.Fatalf("the leader's own commit message was refused: %v %v", ok, err)
	}
	if f.n.raft.CommitIndex() < index {
		t.Fatal("accepted, but the commit index did not move")
	}

	// An index beyond this node's log.
	commit := f.n.raft.CommitIndex()
	if ok, _ := f.n.relayCommit(lid, laddr, index+100, term); ok {
		t.Fatal("a commit index for an entry the node does not hold was accepted")
	}
	if got := f.n.raft.CommitIndex(); got > f.n.raft.LastIndex() || got < commit {
		t.Fatalf("commit index %d after a refused relay (last index %d)", got, f.n.raft.LastIndex())
	}
	// The relays did not disturb the leadership.
	if c.leader() != l || f.n.raft.CurrentTerm() != term {
		t.Fatal("a relayed commit message changed the leadership or the term")
	}

	// After a change of leader, the old leader's message is out of date.
	c.stopNode(l)
	nl := c.leader()
	if _, err := nl.ks.CreateKey(ctx, "k2", "", ""); err != nil {
		t.Fatal(err)
	}
	var other *clusterNode
	for _, cn := range c.followers() {
		other = cn
	}
	if other == nil {
		t.Fatal("no follower left")
	}
	if other.n.raft.CurrentTerm() <= term {
		t.Fatalf("the term did not move with the new leader (%d)", term)
	}
	if ok, _ := other.n.relayCommit(lid, laddr, index, term); ok {
		t.Fatal("a commit message of an earlier term was accepted")
	}
	if _, id := other.n.raft.LeaderWithID(); id != raft.ServerID(nl.id) {
		t.Fatalf("a stale relayed message made %s follow %s", other.id, id)
	}
}

// The leader decodes a forwarded command once (CommandPreparer) and still
// refuses one whose MAC does not verify, appending nothing, and one that
// does not decode.
func TestCluster_ForwardedCommandCheckedOnce(t *testing.T) {
	c := makeCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, f := c.leader(), c.followers()[0]
	pv, _ := proposers.Load(f.n)
	p := pv.(*lazyProposer)
	captured := make(chan []byte, 1)
	p.capture = captured
	if _, err := f.ks.CreateKey(ctx, "forged", "", ""); !errors.Is(err, errCaptured) {
		t.Fatalf("capturing the command: %v", err)
	}
	p.capture = nil
	cmd := <-captured
	var env map[string]any
	if err := json.Unmarshal(cmd, &env); err != nil || env["mac"] == nil {
		t.Fatalf("not an authenticated envelope: %s", cmd)
	}
	mac, _ := base64.StdEncoding.DecodeString(env["mac"].(string))
	mac[0] ^= 1
	env["mac"] = mac
	forged, _ := json.Marshal(env)
	before := l.n.raft.LastIndex()
	out, status, err := f.n.call(ctx, l.n.cfg.Net.AdvertiseAddr, "/rpc/apply", forged)
	if err != nil || status != http.StatusForbidden {
		t.Fatalf("a command with a wrong MAC: %v %d %+v, want 403", err, status, out)
	}
	if _, status, _ := f.n.call(ctx, l.n.cfg.Net.AdvertiseAddr, "/rpc/apply", []byte(`{"f":2,"mac":"x"`)); status != http.StatusBadRequest {
		t.Fatalf("a command that does not decode: %d, want 400", status)
	}
	time.Sleep(50 * time.Millisecond)
	if got := l.n.raft.LastIndex(); got != before {
		t.Fatalf("refused commands grew the log by %d", got-before)
	}
	// The genuine one passes.
	if out, status, err := f.n.call(ctx, l.n.cfg.Net.AdvertiseAddr, "/rpc/apply", cmd); err != nil || status != http.StatusOK || out.Response != "" {
		t.Fatalf("the genuine command: %v %d %+v", err, status, out)
	}
}
