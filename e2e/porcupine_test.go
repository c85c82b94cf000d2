package e2e

// The sequential specification of Coffer's key metadata for the
// linearizability check of cluster_faults_test.go, and the recorder of a
// concurrent history: porcupine (github.com/anishathalye/porcupine) then
// searches for an order of the recorded operations that this model accepts
// and that respects real time.

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Operations on one key name.
const (
	linCreate = "create" // POST /v1/keys
	linRotate = "rotate" // POST /v1/keys/{name}/rotate
	linRead   = "read"   // GET /v1/keys/{name} → latest_version
)

// Outcomes the model distinguishes.
const (
	linOK       = iota // 2xx with the key's latest_version
	linExists          // 409 already_exists (create)
	linNotFound        // 404 not_found (rotate, read)
	linUnknown         // no answer, or one that does not say whether the write took effect
)

type linInput struct {
	Op  string
	Key string
}

type linOutput struct {
	Kind    int
	Version int // latest_version with linOK
}

// keyModel is a map from key name to latest version, partitioned by name:
// each partition's state is one int, the key's latest version (0: no such
// key). Partitioning keeps the search small: porcupine checks each key's
// history on its own.
//
// A rotation's answer is the key as the node reads it right after its own
// write is applied there (keystore.update ends with GetKey), which may
// already include later rotations through other nodes. So the model
// requires a rotation's answer to be at least the version it created, not
// exactly that version; reads must match exactly.
var keyModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(linInput).Key
			by[k] = append(by[k], op)
		}
		names := make([]string, 0, len(by))
		for k := range by {
			names = append(names, k)
		}
		sort.Strings(names)
		out := make([][]porcupine.Operation, 0, len(names))
		for _, k := range names {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return 0 },
	Step: func(state, input, output any) (bool, any) {
		v, in, out := state.(int), input.(linInput), output.(linOutput)
		switch in.Op {
		case linCreate:
			switch out.Kind {
			case linOK:
				return v == 0, 1
			case linExists:
				return v > 0, v
			case linUnknown:
				// Took effect at this point, or never (then porcupine
				// places it after everything, where it changes nothing
				// that was observed).
				if v == 0 {
					return true, 1
				}
				return true, v
			}
		case linRotate:
			switch out.Kind {
			case linOK:
				return v > 0 && out.Version >= v+1, v + 1
			case linNotFound:
				return v == 0, v
			case linUnknown:
				if v > 0 {
					return true, v + 1
				}
				return true, v
			}
		case linRead:
			switch out.Kind {
			case linOK:
				return v > 0 && out.Version == v, v
			case linNotFound:
				return v == 0, v
			}
		}
		return false, v
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		var res string
		switch out.Kind {
		case linOK:
			res = fmt.Sprintf("v%d", out.Version)
		case linExists:
			res = "already_exists"
		case linNotFound:
			res = "not_found"
		default:
			res = "unknown"
		}
		return fmt.Sprintf("%s(%s) → %s", in.Op, in.Key, res)
	},
	DescribeState: func(state any) string {
		if v := state.(int); v > 0 {
			return fmt.Sprintf("v%d", v)
		}
		return "absent"
	},
}

// linHistory records operations from many goroutines. Times are
// nanoseconds on the monotonic clock since the recorder was made.
type linHistory struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// counts of outcomes, for the test log
	outcomes map[string]int
}

func newLinHistory() *linHistory {
	return &linHistory{start: time.Now(), outcomes: map[string]int{}}
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

// add records one operation. An operation with an unknown outcome returns
// "at infinity": porcupine may then place it anywhere after its call,
// including after every other operation (as if it never took effect), which
// is how porcupine's author suggests modelling timeouts
// (anishathalye/porcupine#8). node (the node that answered) is kept as the
// operation's metadata for failure messages.
func (h *linHistory) add(client int, in linInput, call int64, out linOutput, ret int64, what, node string) {
	if out.Kind == linUnknown {
		ret = math.MaxInt64
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret, Metadata: node})
	h.outcomes[in.Op+" "+what]++
}

// drop counts an operation that is left out of the history because it
// certainly had no effect and observed nothing (refused before it reached
// the daemon, or by a sealed node).
func (h *linHistory) drop(in linInput, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.outcomes[in.Op+" dropped: "+why]++
}

func (h *linHistory) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

func (h *linHistory) operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]porcupine.Operation(nil), h.ops...)
}

func (h *linHistory) summary() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := make([]string, 0, len(h.outcomes))
	for k := range h.outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-40s %d\n", k, h.outcomes[k])
	}
	return b.String()
}

// TestE2E_Cluster_KeyModel checks the model itself on small histories, so
// that a pass of the linearizability check means something: it accepts a
// concurrent history with an unknown outcome and rejects each anomaly the
// cluster tests look for.
func TestE2E_Cluster_KeyModel(t *testing.T) {
	op := func(client int, call, ret int64, o string, out linOutput) porcupine.Operation {
		if out.Kind == linUnknown {
			ret = math.MaxInt64
		}
		return porcupine.Operation{ClientId: client, Input: linInput{Op: o, Key: "k"}, Call: call, Output: out, Return: ret}
	}
	ok := func(v int) linOutput { return linOutput{Kind: linOK, Version: v} }
	unknown := linOutput{Kind: linUnknown}
	for _, c := range []struct {
		name    string
		history []porcupine.Operation
		want    bool
	}{
		{"concurrent rotations, answers after later ones", []porcupine.Operation{
			op(0, 0, 10, linCreate, ok(1)),
			op(1, 20, 40, linRotate, ok(3)), // read its key after op 2's rotation
			op(2, 25, 35, linRotate, ok(3)),
			op(0, 50, 60, linRead, ok(3)),
		}, true},
		{"unknown rotation that took effect", []porcupine.Operation{
			op(0, 0, 10, linCreate, ok(1)),
			op(1, 20, 0, linRotate, unknown),
			op(0, 50, 60, linRead, ok(2)),
		}, true},
		{"unknown rotation that did not", []porcupine.Operation{
			op(0, 0, 10, linCreate, ok(1)),
			op(1, 20, 0, linRotate, unknown),
			op(0, 50, 60, linRead, ok(1)),
		}, true},
		{"stale read after an acknowledged rotation", []porcupine.Operation{
			op(0, 0, 10, linCreate, ok(1)),
			op(1, 20, 30, linRotate, ok(2)),
			op(0, 40, 50, linRead, ok(1)),
		}, false},
		{"rotation answering a version from before itself", []porcupine.Operation{
			op(0, 0, 10, linCreate, ok(1)),
			op(1, 20, 30, linRotate, ok(1)),
		}, false},
		{"not_found after an acknowledged create", []porcupine.Operation{
			op(0, 0, 10, linCreate, ok(1)),
			op(1, 20, 30, linRotate, linOutput{Kind: linNotFound}),
		}, false},
		{"one rotation applied twice", []porcupine.Operation{
			op(0, 0, 10, linCreate, ok(1)),
			op(1, 20, 30, linRotate, ok(2)),
			op(0, 40, 50, linRead, ok(3)),
		}, false},
		{"own create answered already_exists", []porcupine.Operation{
			op(0, 0, 10, linCreate, linOutput{Kind: linExists}),
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(keyModel, c.history); got != c.want {
				t.Errorf("linearizable = %v, want %v", got, c.want)
			}
		})
	}
}
