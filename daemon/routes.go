package daemon

import "sort"

// Route describes one endpoint of the route table, for the reference docs'
// test and for tools: its method, its path pattern ({name}, {id} for the
// path parameters) and its audit operation.
type Route struct {
	Method, Path, Operation string
}

// Routes lists every endpoint of the route table, sorted by path and
// method.
func Routes() []Route {
	var out []Route
	for ep, rt := range routeTable() {
		out = append(out, Route{Method: ep.method, Path: ep.path, Operation: rt.audit})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Method < out[j].Method
	})
	return out
}

type endpoint struct{ method, path string }

// routeTable flattens the route maps (http.go, handlers_raft.go, handlers_enrol.go, handlers_secrets.go) into one
// map by method and path pattern.
func routeTable() map[endpoint]route {
	out := map[endpoint]route{}
	add := func(path string, m map[string]route) {
		for method, rt := range m {
			out[endpoint{method, path}] = rt
		}
	}
	for name, m := range sysRoutes {
		add("/v1/sys/"+name, m)
	}
	for name, m := range raftRoutes {
		add("/v1/sys/raft/"+name, m)
	}
	add("/v1/sys/raft/peers/{id}", raftPeerRoutes)
	add("/v1/sys/enrol", enrolRoutes)
	add("/v1/sys/enrol/tokens", enrolTokensRoutes)
	add("/v1/sys/enrol/tokens/{id}", enrolTokenRoutes)
	add("/v1/keys", keysRoutes)
	add("/v1/keys/{name}", keyRoutes)
	for action, m := range keyActionRoutes {
		add("/v1/keys/{name}/"+action, m)
	}
	add("/v1/secrets", secretsRoutes)
	add("/v1/secrets/{name}", secretRoutes)
	for action, m := range secretActionRoutes {
		add("/v1/secrets/{name}/"+action, m)
	}
	add("/v1/policies", policiesRoutes)
	add("/v1/policies/{name}", policyRoutes)
	return out
}
