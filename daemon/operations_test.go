package daemon

import (
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

// allRoutes is routeTable keyed "METHOD /path".
func allRoutes() map[string]route {
	out := map[string]route{}
	for ep, rt := range routeTable() {
		out[ep.method+" "+ep.path] = rt
	}
	return out
}

// TestRoutes_OperationsAgree: the route table, the policy operations
// (api.Operations) and the audit operations (audit.RequestOperations) are
// one set of names. Every route names its audit operation, which is a
// request operation; every request operation is a route's, or "unknown",
// or one of the operations of the node's other sockets
// (audit.NoRouteOperations); every policy operation governs a route and is
// audited under its own name.
func TestRoutes_OperationsAgree(t *testing.T) {
	routes := allRoutes()
	routeOps := map[string]bool{}
	policyOps := map[string]bool{}
	for ep, rt := range routes {
		if rt.audit == "" {
			t.Errorf("%s has no audit operation", ep)
			continue
		}
		routeOps[rt.audit] = true
		if !slices.Contains(audit.RequestOperations, rt.audit) {
			t.Errorf("%s: audit operation %q is not in audit.RequestOperations", ep, rt.audit)
		}
		if rt.op != "" {
			policyOps[rt.op] = true
			if !slices.Contains(api.Operations, rt.op) {
				t.Errorf("%s: policy operation %q is not in api.Operations", ep, rt.op)
			}
		}
		if rt.access == accessKey && rt.op == "" {
			t.Errorf("%s is policy-checked but names no policy operation", ep)
		}
		// operationFor finds the route's operation from method and path.
		method, path, _ := strings.Cut(ep, " ")
		if got := operationFor(method, fill(path)); got != rt.audit {
			t.Errorf("operationFor(%s) = %q, want the route's %q", ep, got, rt.audit)
		}
	}
	for _, op := range audit.RequestOperations {
		switch {
		case op == "unknown":
		case slices.Contains(audit.NoRouteOperations, op):
			if routeOps[op] {
				t.Errorf("%q is in audit.NoRouteOperations but a route carries it", op)
			}
		case !routeOps[op]:
			t.Errorf("audit request operation %q belongs to no route: add the route, or list it in audit.NoRouteOperations", op)
		}
	}
	for _, op := range audit.NoRouteOperations {
		if routeOps[op] {
			t.Errorf("reserved no-route operation %q is carried by a route", op)
		}
	}
	for _, op := range api.Operations {
		if !policyOps[op] {
			t.Errorf("policy operation %q governs no route", op)
		}
		if !routeOps[op] {
			t.Errorf("policy operation %q is not audited under its own name by any route", op)
		}
	}
	// Event names are their own list; an event may share a request's name
	// (init, rotate) but must not be empty.
	for _, op := range audit.EventOperations {
		if op == "" {
			t.Error("empty event operation")
		}
	}
	if testing.Verbose() {
		var eps []string
		for ep := range routes {
			eps = append(eps, ep)
		}
		sort.Strings(eps)
		for _, ep := range eps {
			t.Logf("%-40s %s", ep, routes[ep].audit)
		}
	}
}

// fill puts example values into a path pattern.
func fill(path string) string {
	out := []byte{}
	for i := 0; i < len(path); i++ {
		if path[i] == '{' {
			for i < len(path) && path[i] != '}' {
				i++
			}
			out = append(out, "x1"...)
			continue
		}
		out = append(out, path[i])
	}
	return string(out)
}

// TestRoutes_TableListsEveryRouteMap: routeTable (routes.go) flattens the
// route maps by hand; a route map added to the package without a line in
// routeTable would escape the operation and documentation checks. Every
// package-level variable of type map[string]route or
// map[string]map[string]route must be named in routeTable.
func TestRoutes_TableListsEveryRouteMap(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("routes.go")
	if err != nil {
		t.Fatal(err)
	}
	table := string(src[strings.Index(string(src), "func routeTable()"):])
	found := 0
	for _, p := range pkgs {
		for _, f := range p.Files {
			for _, d := range f.Decls {
				gd, ok := d.(*ast.GenDecl)
				if !ok || gd.Tok != token.VAR {
					continue
				}
				for _, spec := range gd.Specs {
					vs := spec.(*ast.ValueSpec)
					for i, name := range vs.Names {
						if i >= len(vs.Values) {
							continue
						}
						cl, ok := vs.Values[i].(*ast.CompositeLit)
						if !ok {
							continue
						}
						typ := types.ExprString(cl.Type)
						if typ != "map[string]route" && typ != "map[string]map[string]route" {
							continue
						}
						found++
						if !strings.Contains(table, name.Name) {
							t.Errorf("route map %s is not listed in routeTable (routes.go)", name.Name)
						}
					}
				}
			}
		}
	}
	if found < 7 {
		t.Fatalf("found only %d route maps: has the route table's shape changed?", found)
	}
}
