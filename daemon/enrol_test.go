package daemon

import (
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
)

// TestServer_EnrolTokens: the token endpoints on a real node: bad input is
// a 400 that changes nothing, a token is shown once and listed without
// itself, revoke removes an unused one, and a sealed node refuses.
func TestServer_EnrolTokens(t *testing.T) {
	n := startNode(t, t.TempDir(), nil)
	if st, code := n.do("POST", "/v1/sys/enrol/tokens", api.EnrolTokenRequest{NodeID: "node4"}, nil); st != 503 || code != api.CodeSealed {
		t.Fatalf("before init: %d %s", st, code)
	}
	n.init(1, 1)
	for _, bad := range []api.EnrolTokenRequest{{NodeID: "node4", TTL: "30s"}, {NodeID: "node4", TTL: "25h"}, {NodeID: "node4", TTL: "soon"}, {NodeID: "no/pe"}, {}} {
		if st, code := n.do("POST", "/v1/sys/enrol/tokens", bad, nil); st != 400 || code != api.CodeBadRequest {
			t.Errorf("%+v: %d %s", bad, st, code)
		}
	}
	var list api.EnrolTokenList
	n.must("GET", "/v1/sys/enrol/tokens", nil, &list, 200)
	if len(list.Tokens) != 0 {
		t.Fatalf("bad requests left tokens: %+v", list)
	}
	var tok api.EnrolTokenResponse
	n.must("POST", "/v1/sys/enrol/tokens", api.EnrolTokenRequest{NodeID: "node4", TTL: "10m"}, &tok, 200)
	if !strings.HasPrefix(tok.Token, "coffer-enrol-") || tok.NodeID != "node4" {
		t.Fatalf("token: node %q", tok.NodeID)
	}
	n.must("GET", "/v1/sys/enrol/tokens", nil, &list, 200)
	if len(list.Tokens) != 1 || list.Tokens[0].NodeID != "node4" || list.Tokens[0].UsedAt != nil || !strings.Contains(tok.Token, list.Tokens[0].ID) {
		t.Fatalf("list: %+v", list)
	}
	if st, code := n.do("DELETE", "/v1/sys/enrol/tokens/ffffffffffffffff", nil, nil); st != 404 || code != api.CodeNotFound {
		t.Errorf("revoke unknown: %d %s", st, code)
	}
	n.must("DELETE", "/v1/sys/enrol/tokens/"+list.Tokens[0].ID, nil, nil, 204)
	n.must("GET", "/v1/sys/enrol/tokens", nil, &list, 200)
	if len(list.Tokens) != 0 {
		t.Fatalf("after revoke: %+v", list)
	}
	if strings.Contains(n.logs.String(), strings.TrimPrefix(tok.Token, "coffer-enrol-")) {
		t.Error("the token is in the daemon's log")
	}
	n.must("POST", "/v1/sys/seal", nil, nil, 204)
	if st, code := n.do("POST", "/v1/sys/enrol/tokens", api.EnrolTokenRequest{NodeID: "node4"}, nil); st != 503 || code != api.CodeSealed {
		t.Errorf("sealed: %d %s", st, code)
	}
}
