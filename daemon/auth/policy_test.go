package auth

import (
	"os"
	"os/user"
	"strconv"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
)

func validPolicy() *api.Policy {
	return &api.Policy{
		Subjects:   api.Subjects{Users: []string{"billing"}},
		Keys:       []string{"billing-*"},
		Operations: []string{"wrap", "unwrap"},
	}
}

func TestValidatePolicy(t *testing.T) {
	tests := []struct {
		name   string
		pname  string
		edit   func(p *api.Policy)
		errHas string // "" = valid
	}{
		{name: "valid", pname: "billing"},
		{name: "valid with matching body name", pname: "billing", edit: func(p *api.Policy) { p.Name = "billing" }},
		{name: "valid, every subject kind", pname: "p", edit: func(p *api.Policy) {
			p.Subjects = api.Subjects{UIDs: []uint32{0}, GIDs: []uint32{5}, Users: []string{"u"}, Groups: []string{"g"}, Units: []string{"billing.service", "x.scope", "y.socket", `a\x2db@c.timer`}}
		}},
		{name: "valid, every operation", pname: "p", edit: func(p *api.Policy) {
			p.Operations = append([]string(nil), api.Operations...)
			p.Secrets = []string{"billing-*"}
		}},
		{name: "valid, secrets only", pname: "p", edit: func(p *api.Policy) {
			p.Keys, p.Secrets, p.Operations = nil, []string{"db-password", "billing-*"}, []string{"secret_read"}
		}},
		{name: "secret op without secrets", pname: "p", edit: func(p *api.Policy) { p.Operations = []string{"secret_read"} }, errHas: `operations contains "secret_read" but the policy has no secrets`},
		{name: "key op without keys", pname: "p", edit: func(p *api.Policy) { p.Keys, p.Secrets = nil, []string{"s"} }, errHas: `operations contains "wrap" but the policy has no keys`},
		{name: "bad secret glob", pname: "p", edit: func(p *api.Policy) { p.Secrets = []string{"db-[a"} }, errHas: `secrets pattern "db-[a" is not a valid glob`},
		{name: "valid, globs", pname: "p", edit: func(p *api.Policy) { p.Keys = []string{"*", "a?c", "[a-c]*", `x\*`, strings.Repeat("k", 256)} }},
		{name: "bad name", pname: "-x", errHas: `policy name "-x" is invalid`},
		{name: "empty name", pname: "", errHas: `policy name "" is invalid`},
		{name: "body name differs", pname: "a", edit: func(p *api.Policy) { p.Name = "b" }, errHas: `policy body names "b" but the path names "a"`},
		{name: "no subjects", pname: "p", edit: func(p *api.Policy) { p.Subjects = api.Subjects{} }, errHas: "policy has no subjects"},
		{name: "no keys", pname: "p", edit: func(p *api.Policy) { p.Keys = nil }, errHas: "policy has no keys"},
		{name: "empty key", pname: "p", edit: func(p *api.Policy) { p.Keys = []string{""} }, errHas: "keys contains an empty pattern"},
		{name: "bad glob", pname: "p", edit: func(p *api.Policy) { p.Keys = []string{"billing-[a"} }, errHas: `keys pattern "billing-[a" is not a valid glob`},
		{name: "trailing backslash", pname: "p", edit: func(p *api.Policy) { p.Keys = []string{`a\`} }, errHas: `keys pattern "a\\" is not a valid glob`},
		{name: "long key pattern", pname: "p", edit: func(p *api.Policy) { p.Keys = []string{strings.Repeat("k", 257)} }, errHas: "is 257 characters; the limit is 256"},
		{name: "no operations", pname: "p", edit: func(p *api.Policy) { p.Operations = nil }, errHas: "policy has no operations; list some of wrap, unwrap,"},
		{name: "unknown operation", pname: "p", edit: func(p *api.Policy) { p.Operations = []string{"wrap", "encrypt"} }, errHas: `operations contains "encrypt"; allowed are wrap, unwrap, rewrap, datakey, read, create, rotate, update, delete, secret_read, secret_write, secret_delete`},
		{name: "unit without suffix", pname: "p", edit: func(p *api.Policy) { p.Subjects.Units = []string{"billing"} }, errHas: `subjects.units contains "billing"; a unit is a systemd unit name`},
		{name: "unit bare suffix", pname: "p", edit: func(p *api.Policy) { p.Subjects.Units = []string{".service"} }, errHas: `subjects.units contains ".service"`},
		{name: "unit bad character", pname: "p", edit: func(p *api.Policy) { p.Subjects.Units = []string{"a b.service"} }, errHas: `subjects.units contains "a b.service", which has " "`},
		{name: "empty user", pname: "p", edit: func(p *api.Policy) { p.Subjects.Users = []string{""} }, errHas: "subjects.users contains an empty name"},
		{name: "bad group", pname: "p", edit: func(p *api.Policy) { p.Subjects.Groups = []string{"a:b"} }, errHas: `subjects.groups contains "a:b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := validPolicy()
			if tt.edit != nil {
				tt.edit(p)
			}
			err := ValidatePolicy(tt.pname, p)
			if tt.errHas == "" {
				if err != nil {
					t.Fatalf("ValidatePolicy: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidatePolicy succeeded, want an error containing %q", tt.errHas)
			}
			if !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("error = %q, want it to contain %q", err, tt.errHas)
			}
		})
	}
	if err := ValidatePolicy("p", nil); err == nil {
		t.Error("ValidatePolicy(nil) succeeded")
	}
}

func TestPolicySet_Allowed(t *testing.T) {
	ps := NewPolicySet(map[string]api.Policy{
		"by-uid":   {Subjects: api.Subjects{UIDs: []uint32{1001}}, Keys: []string{"uid-key"}, Operations: []string{"wrap"}},
		"by-gid":   {Subjects: api.Subjects{GIDs: []uint32{2002}}, Keys: []string{"gid-key"}, Operations: []string{"wrap"}},
		"by-user":  {Subjects: api.Subjects{Users: []string{"alice"}}, Keys: []string{"user-key"}, Operations: []string{"wrap"}},
		"by-group": {Subjects: api.Subjects{Groups: []string{"ops"}}, Keys: []string{"group-key"}, Operations: []string{"wrap"}},
		"by-unit":  {Subjects: api.Subjects{Units: []string{"billing.service"}}, Keys: []string{"billing-*"}, Operations: []string{"wrap", "unwrap", "datakey"}},
		"multi":    {Subjects: api.Subjects{UIDs: []uint32{3003}, Users: []string{"bob"}}, Keys: []string{"a?c", "[x-z]1", "exact"}, Operations: []string{"read", "delete"}},
		"bad-glob": {Subjects: api.Subjects{UIDs: []uint32{4004}}, Keys: []string{"bad-[", "ok"}, Operations: []string{"wrap", "bogus-op"}},
	})
	nobody := &Caller{UID: 9999, GID: 9999, Groups: []uint32{9999}}
	tests := []struct {
		name   string
		caller *Caller
		op     string
		key    string
		exp    bool
	}{
		{name: "uid match", caller: &Caller{UID: 1001, GID: 1, Groups: []uint32{1}}, op: "wrap", key: "uid-key", exp: true},
		{name: "uid match, other key", caller: &Caller{UID: 1001}, op: "wrap", key: "gid-key"},
		{name: "uid match, op not granted", caller: &Caller{UID: 1001}, op: "unwrap", key: "uid-key"},
		{name: "primary gid match", caller: &Caller{UID: 5, GID: 2002, Groups: []uint32{2002}}, op: "wrap", key: "gid-key", exp: true},
		{name: "supplementary gid match", caller: &Caller{UID: 5, GID: 1, Groups: []uint32{1, 7, 2002}}, op: "wrap", key: "gid-key", exp: true},
		{name: "gid field alone does not count", caller: &Caller{UID: 5, GID: 2002}, op: "wrap", key: "gid-key"},
		{name: "user match", caller: &Caller{UID: 5, User: "alice"}, op: "wrap", key: "user-key", exp: true},
		{name: "user mismatch", caller: &Caller{UID: 5, User: "mallory"}, op: "wrap", key: "user-key"},
		{name: "group name match", caller: &Caller{UID: 5, GroupNames: []string{"users", "ops"}}, op: "wrap", key: "group-key", exp: true},
		{name: "unit match with glob", caller: &Caller{UID: 5, Unit: "billing.service"}, op: "unwrap", key: "billing-db", exp: true},
		{name: "unit match, datakey", caller: &Caller{UID: 5, Unit: "billing.service"}, op: "datakey", key: "billing-", exp: true},
		{name: "unit, glob does not match", caller: &Caller{UID: 5, Unit: "billing.service"}, op: "wrap", key: "payroll-db"},
		{name: "unit, glob prefix only", caller: &Caller{UID: 5, Unit: "billing.service"}, op: "wrap", key: "xbilling-db"},
		{name: "unit, op not granted", caller: &Caller{UID: 5, Unit: "billing.service"}, op: "rotate", key: "billing-db"},
		{name: "user unit of the same name does not match", caller: &Caller{UID: 1000, Unit: "billing.service", UserUnit: true}, op: "wrap", key: "billing-db"},
		{name: "other unit", caller: &Caller{UID: 5, Unit: "payroll.service"}, op: "wrap", key: "billing-db"},
		{name: "? glob", caller: &Caller{UID: 3003}, op: "read", key: "abc", exp: true},
		{name: "? glob needs one char", caller: &Caller{UID: 3003}, op: "read", key: "ac"},
		{name: "class glob", caller: &Caller{UID: 5, User: "bob"}, op: "delete", key: "y1", exp: true},
		{name: "class glob miss", caller: &Caller{UID: 5, User: "bob"}, op: "delete", key: "a1"},
		{name: "exact", caller: &Caller{UID: 3003}, op: "read", key: "exact", exp: true},
		{name: "bad glob matches nothing, sibling still works", caller: &Caller{UID: 4004}, op: "wrap", key: "ok", exp: true},
		{name: "bad glob matches nothing", caller: &Caller{UID: 4004}, op: "wrap", key: "bad-["},
		{name: "unknown op", caller: &Caller{UID: 4004}, op: "bogus-op", key: "ok"},
		{name: "empty op", caller: &Caller{UID: 1001}, op: "", key: "uid-key"},
		{name: "nobody", caller: nobody, op: "wrap", key: "uid-key"},
		{name: "root is not special here", caller: &Caller{UID: 0}, op: "wrap", key: "uid-key"},
		{name: "nil caller", caller: nil, op: "wrap", key: "uid-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ps.Allowed(tt.caller, tt.op, tt.key); got != tt.exp {
				t.Errorf("Allowed(%+v, %q, %q) = %v, want %v", tt.caller, tt.op, tt.key, got, tt.exp)
			}
		})
	}

	empty := NewPolicySet(nil)
	for _, op := range api.Operations {
		if empty.Allowed(&Caller{UID: 0}, op, "k") {
			t.Errorf("empty set allows %s", op)
		}
	}
	var nilSet *PolicySet
	if nilSet.Allowed(&Caller{UID: 1001}, "wrap", "uid-key") {
		t.Error("nil set allows")
	}
}

func TestPolicySet_Immutable(t *testing.T) {
	pols := map[string]api.Policy{
		"p": {Subjects: api.Subjects{UIDs: []uint32{1}}, Keys: []string{"k"}, Operations: []string{"wrap"}},
	}
	ps := NewPolicySet(pols)
	p := pols["p"]
	p.Subjects.UIDs[0] = 2
	p.Keys[0] = "other"
	delete(pols, "p")
	if !ps.Allowed(&Caller{UID: 1}, "wrap", "k") {
		t.Error("changing the input map changed the set")
	}
}

func TestPolicySet_AllowedDoesNotAllocate(t *testing.T) {
	ps, c := benchSet()
	allocs := testing.AllocsPerRun(100, func() {
		ps.Allowed(c, "wrap", "billing-db")
		ps.Allowed(c, "unwrap", "nope")
	})
	if allocs != 0 {
		t.Errorf("Allowed allocates %.1f times per call, want 0", allocs)
	}
}

func benchSet() (*PolicySet, *Caller) {
	pols := map[string]api.Policy{}
	for i := range 50 {
		n := strconv.Itoa(i)
		pols["p"+n] = api.Policy{
			Subjects:   api.Subjects{UIDs: []uint32{uint32(10000 + i)}, Groups: []string{"g" + n}, Units: []string{"svc" + n + ".service"}},
			Keys:       []string{"app" + n + "-*", "exact" + n},
			Operations: []string{"wrap", "unwrap"},
		}
	}
	pols["billing"] = api.Policy{
		Subjects:   api.Subjects{Units: []string{"billing.service"}},
		Keys:       []string{"billing-*"},
		Operations: []string{"wrap", "unwrap", "datakey"},
	}
	c := &Caller{UID: 1001, GID: 1001, Groups: []uint32{1001, 27, 100}, User: "billing", GroupNames: []string{"billing", "sudo", "users"}, Unit: "billing.service"}
	return NewPolicySet(pols), c
}

func BenchmarkPolicySet_Allowed(b *testing.B) {
	ps, c := benchSet()
	b.ReportAllocs()
	for b.Loop() {
		if !ps.Allowed(c, "wrap", "billing-db") {
			b.Fatal("denied")
		}
	}
}

func BenchmarkPolicySet_Denied(b *testing.B) {
	ps, c := benchSet()
	b.ReportAllocs()
	for b.Loop() {
		if ps.Allowed(c, "wrap", "payroll-db") {
			b.Fatal("allowed")
		}
	}
}

func TestAdmins(t *testing.T) {
	own, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Skipf("own group has no name: %v", err)
	}
	ownGID, _ := strconv.ParseUint(own.Gid, 10, 32)

	a, err := NewAdmins(config.AdminConfig{UIDs: []uint32{1500}, Groups: []string{own.Name}})
	if err != nil {
		t.Fatalf("NewAdmins: %v", err)
	}
	if !a.GIDs[uint32(ownGID)] || !a.GroupNames[own.Name] {
		t.Fatalf("NewAdmins did not resolve %q to gid %d: %+v", own.Name, ownGID, a)
	}
	none, err := NewAdmins(config.AdminConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		admins *Admins
		caller *Caller
		exp    bool
	}{
		{name: "root", admins: none, caller: &Caller{UID: 0, GID: 0}, exp: true},
		{name: "root with nil admins", admins: nil, caller: &Caller{UID: 0}, exp: true},
		{name: "listed uid", admins: a, caller: &Caller{UID: 1500, GID: 1500, Groups: []uint32{1500}}, exp: true},
		{name: "unlisted uid", admins: a, caller: &Caller{UID: 1501, GID: 1501, Groups: []uint32{1501}}},
		{name: "primary group", admins: a, caller: &Caller{UID: 1501, GID: uint32(ownGID), Groups: []uint32{uint32(ownGID)}}, exp: true},
		{name: "supplementary group", admins: a, caller: &Caller{UID: 1501, GID: 1501, Groups: []uint32{1501, uint32(ownGID)}}, exp: true},
		{name: "group name", admins: a, caller: &Caller{UID: 1501, GroupNames: []string{own.Name}}, exp: true},
		{name: "no config: only root", admins: none, caller: &Caller{UID: 1500, Groups: []uint32{uint32(ownGID)}}},
		{name: "nil caller", admins: a, caller: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.admins.IsAdmin(tt.caller); got != tt.exp {
				t.Errorf("IsAdmin(%+v) = %v, want %v", tt.caller, got, tt.exp)
			}
		})
	}
}

func TestNewAdmins_UnknownGroup(t *testing.T) {
	_, err := NewAdmins(config.AdminConfig{Groups: []string{"coffer-no-such-group-xyz"}})
	if err == nil {
		t.Fatal("NewAdmins accepted an unknown group")
	}
	if exp := `admin group "coffer-no-such-group-xyz" does not exist on this host; create it or remove it from admin.groups`; err.Error() != exp {
		t.Fatalf("error = %q, want %q", err, exp)
	}
}

// Secret operations match the policy's secrets patterns only, and key
// operations its keys patterns only: a grant on keys "db-*" is no grant on
// the secret "db-password", and the other way round.
func TestPolicySet_SecretsApart(t *testing.T) {
	ps := NewPolicySet(map[string]api.Policy{
		"keys": {Subjects: api.Subjects{UIDs: []uint32{1001}}, Keys: []string{"db-*"}, Operations: []string{"read", "secret_read"}},
		"secrets": {Subjects: api.Subjects{Units: []string{"billing.service"}}, Secrets: []string{"db-password"},
			Operations: []string{"secret_read", "wrap"}},
	})
	c := &Caller{UID: 1001}
	if !ps.Allowed(c, api.OpRead, "db-x") || ps.Allowed(c, api.OpSecretRead, "db-x") {
		t.Error("keys patterns must grant key operations only")
	}
	u := &Caller{UID: 65534, Unit: "billing.service"}
	if !ps.Allowed(u, api.OpSecretRead, "db-password") {
		t.Error("unit not granted secret_read on db-password")
	}
	if ps.Allowed(u, api.OpWrap, "db-password") || ps.Allowed(u, api.OpSecretWrite, "db-password") || ps.Allowed(u, api.OpSecretRead, "db-passwordx") {
		t.Error("grant beyond the policy")
	}
	if ps.Allowed(&Caller{UID: 65534, Unit: "billing.service", UserUnit: true}, api.OpSecretRead, "db-password") {
		t.Error("a user unit must not match a unit subject")
	}
}
