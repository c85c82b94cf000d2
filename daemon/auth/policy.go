package auth

import (
	"errors"
	"fmt"
	"os/user"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/config"
)

// MaxKeyPattern is the longest key pattern a policy may hold.
const MaxKeyPattern = 256

// unitSuffixes are systemd's unit types (systemd.unit(5)).
var unitSuffixes = []string{
	".service", ".socket", ".device", ".mount", ".automount", ".swap",
	".target", ".path", ".timer", ".slice", ".scope",
}

// ValidatePolicy checks a policy before it is stored. name is the policy's
// name (from the request path); p.Name may be empty or must equal it. Errors
// name the offending field and value and say what is allowed; they are meant
// for a 400 bad_request.
func ValidatePolicy(name string, p *api.Policy) error {
	if !api.ValidName(name) {
		return fmt.Errorf("policy name %q is invalid; use 1 to 128 letters, digits, '.', '_' and '-', starting with a letter or digit", name)
	}
	if p == nil {
		return errors.New("policy is empty; give subjects, keys and operations")
	}
	if p.Name != "" && p.Name != name {
		return fmt.Errorf("policy body names %q but the path names %q; omit name in the body or make them equal", p.Name, name)
	}
	s := p.Subjects
	if len(s.UIDs)+len(s.GIDs)+len(s.Users)+len(s.Groups)+len(s.Units) == 0 {
		return errors.New("policy has no subjects; list at least one of subjects.uids, gids, users, groups or units")
	}
	for _, u := range s.Users {
		if err := checkAccountName("subjects.users", u); err != nil {
			return err
		}
	}
	for _, g := range s.Groups {
		if err := checkAccountName("subjects.groups", g); err != nil {
			return err
		}
	}
	for _, u := range s.Units {
		if err := checkUnitName(u); err != nil {
			return err
		}
	}
	if len(p.Keys) == 0 && len(p.Secrets) == 0 {
		return errors.New("policy has no keys; list key names or glob patterns such as \"billing-*\" (or secret names in secrets)")
	}
	if err := checkPatterns("keys", "key", p.Keys); err != nil {
		return err
	}
	if err := checkPatterns("secrets", "secret", p.Secrets); err != nil {
		return err
	}
	if len(p.Operations) == 0 {
		return fmt.Errorf("policy has no operations; list some of %s", strings.Join(api.Operations, ", "))
	}
	for _, op := range p.Operations {
		i := opIndex(op)
		if i < 0 {
			return fmt.Errorf("operations contains %q; allowed are %s", op, strings.Join(api.Operations, ", "))
		}
		// An operation without patterns of its kind would grant nothing:
		// say so rather than store a policy that silently does not work.
		if isSecretOp(i) && len(p.Secrets) == 0 {
			return fmt.Errorf("operations contains %q but the policy has no secrets; list secret names or patterns in secrets", op)
		}
		if !isSecretOp(i) && len(p.Keys) == 0 {
			return fmt.Errorf("operations contains %q but the policy has no keys; list key names or patterns in keys", op)
		}
	}
	return nil
}

func checkPatterns(field, what string, pats []string) error {
	for _, k := range pats {
		if k == "" {
			return fmt.Errorf("%s contains an empty pattern; use a %s name or a glob such as \"billing-*\"", field, what)
		}
		if len(k) > MaxKeyPattern {
			return fmt.Errorf("%s pattern %.32q… is %d characters; the limit is %d", field, k, len(k), MaxKeyPattern)
		}
		if _, err := path.Match(k, ""); err != nil {
			return fmt.Errorf("%s pattern %q is not a valid glob (Go path.Match: *, ?, [a-z], \\ escapes)", field, k)
		}
	}
	return nil
}

func checkAccountName(field, n string) error {
	if n == "" {
		return fmt.Errorf("%s contains an empty name", field)
	}
	if len(n) > 256 || strings.ContainsAny(n, ":/\x00\n") {
		return fmt.Errorf("%s contains %q, which is not a user or group name", field, n)
	}
	return nil
}

func checkUnitName(u string) error {
	base := ""
	for _, s := range unitSuffixes {
		if strings.HasSuffix(u, s) {
			base = strings.TrimSuffix(u, s)
			break
		}
	}
	if base == "" || len(u) > 255 {
		return fmt.Errorf("subjects.units contains %q; a unit is a systemd unit name such as \"billing.service\" (suffix one of %s)", u, strings.Join(unitSuffixes, " "))
	}
	for i := 0; i < len(base); i++ {
		c := base[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == ':' || c == '-' || c == '_' || c == '.' || c == '@' || c == '\\':
		default:
			return fmt.Errorf("subjects.units contains %q, which has %q; systemd unit names use letters, digits and : - _ . @ \\", u, string(c))
		}
	}
	return nil
}

// opIndex returns the bit of op in an operation mask, or -1: its index in
// api.Operations, the one list of policy operations.
func opIndex(op string) int { return slices.Index(api.Operations, op) }

// numOps is len(api.Operations), as a constant for the arrays below
// (TestOpIndex_MatchesOperations checks it).
const numOps = 12

// isSecretOp reports whether operation bit i is a secret operation, which
// matches the policy's secrets patterns instead of its keys.
func isSecretOp(i int) bool { return slices.Contains(api.SecretOperations, api.Operations[i]) }

// PolicySet is a compiled, immutable set of policies. It is safe for
// concurrent use; build a new one when the policies change.
//
// It is indexed by operation and then by subject, so that Allowed looks
// only at the policies that name one of the caller's identities, whatever
// the number of policies.
type PolicySet struct {
	byOp [numOps]subjectIndex
}

type subjectIndex struct {
	uids   map[uint32][]*keyMatcher
	gids   map[uint32][]*keyMatcher
	users  map[string][]*keyMatcher
	groups map[string][]*keyMatcher
	units  map[string][]*keyMatcher
}

// keyMatcher holds one policy's key patterns: exact names in a set, the
// globs in a list.
type keyMatcher struct {
	exact map[string]struct{}
	globs []string
}

func newKeyMatcher(patterns []string) *keyMatcher {
	km := &keyMatcher{exact: make(map[string]struct{})}
	for _, k := range patterns {
		if !strings.ContainsAny(k, `*?[\`) {
			km.exact[k] = struct{}{}
		} else if _, err := path.Match(k, ""); err == nil {
			km.globs = append(km.globs, k)
		}
	}
	return km
}

func add[K comparable](m *map[K][]*keyMatcher, k K, km *keyMatcher) {
	if *m == nil {
		*m = make(map[K][]*keyMatcher)
	}
	(*m)[k] = append((*m)[k], km)
}

// NewPolicySet compiles policies. Invalid key patterns (which ValidatePolicy
// refuses) match nothing; operations it does not know grant nothing.
func NewPolicySet(policies map[string]api.Policy) *PolicySet {
	ps := &PolicySet{}
	for _, p := range policies {
		keys, secrets := newKeyMatcher(p.Keys), newKeyMatcher(p.Secrets)
		var seen [numOps]bool
		for _, op := range p.Operations {
			i := opIndex(op)
			if i < 0 || seen[i] {
				continue
			}
			seen[i] = true
			km := keys
			if isSecretOp(i) {
				km = secrets
			}
			idx := &ps.byOp[i]
			for _, u := range p.Subjects.UIDs {
				add(&idx.uids, u, km)
			}
			for _, g := range p.Subjects.GIDs {
				add(&idx.gids, g, km)
			}
			for _, u := range p.Subjects.Users {
				add(&idx.users, u, km)
			}
			for _, g := range p.Subjects.Groups {
				add(&idx.groups, g, km)
			}
			for _, u := range p.Subjects.Units {
				add(&idx.units, u, km)
			}
		}
	}
	return ps
}

// Allowed reports whether some policy grants op on key (a secret name for
// the secret_* operations, matched against the policy's secrets) to the caller: one of
// its subjects matches the caller (uid, any gid of c.Groups, user name, any
// group name, or systemd unit), one of its key patterns matches key, and it
// lists op. A unit of a per-user service manager (c.UserUnit) never matches
// a unit subject, since its name is the user's choice. Allowed does not
// allocate.
func (ps *PolicySet) Allowed(c *Caller, op, key string) bool {
	if ps == nil || c == nil {
		return false
	}
	i := opIndex(op)
	if i < 0 {
		return false
	}
	idx := &ps.byOp[i]
	if anyMatches(idx.uids[c.UID], key) {
		return true
	}
	if idx.gids != nil {
		for _, g := range c.Groups {
			if anyMatches(idx.gids[g], key) {
				return true
			}
		}
	}
	if c.User != "" && anyMatches(idx.users[c.User], key) {
		return true
	}
	if idx.groups != nil {
		for _, g := range c.GroupNames {
			if anyMatches(idx.groups[g], key) {
				return true
			}
		}
	}
	if c.Unit != "" && !c.UserUnit && anyMatches(idx.units[c.Unit], key) {
		return true
	}
	return false
}

func anyMatches(kms []*keyMatcher, key string) bool {
	for _, km := range kms {
		if _, ok := km.exact[key]; ok {
			return true
		}
		for _, g := range km.globs {
			if ok, _ := path.Match(g, key); ok {
				return true
			}
		}
	}
	return false
}

// Admins are the callers that may administer: uid 0 and the configured admin
// uids and groups.
type Admins struct {
	UIDs       map[uint32]bool
	GIDs       map[uint32]bool
	GroupNames map[string]bool
}

// NewAdmins resolves the configured admin groups to gids. A group that does
// not exist on this host is an error naming it: an admin list that silently
// lost a group would lock its members out without a word.
func NewAdmins(cfg config.AdminConfig) (*Admins, error) {
	a := &Admins{
		UIDs:       make(map[uint32]bool, len(cfg.UIDs)),
		GIDs:       make(map[uint32]bool, len(cfg.Groups)),
		GroupNames: make(map[string]bool, len(cfg.Groups)),
	}
	for _, u := range cfg.UIDs {
		a.UIDs[u] = true
	}
	if err := a.addGroups(cfg.Groups, "admin"); err != nil {
		return nil, err
	}
	return a, nil
}

// NewUnsealers is NewAdmins for the config's unseal block: its members may
// submit unseal shares (admins may too; the caller checks both).
func NewUnsealers(cfg config.UnsealConfig) (*Admins, error) {
	a := &Admins{GIDs: make(map[uint32]bool, len(cfg.Groups)), GroupNames: make(map[string]bool, len(cfg.Groups))}
	if err := a.addGroups(cfg.Groups, "unseal"); err != nil {
		return nil, err
	}
	return a, nil
}

// addGroups resolves groups (from the block named what) to gids.
func (a *Admins) addGroups(groups []string, what string) error {
	for _, name := range groups {
		g, err := user.LookupGroup(name)
		if err != nil {
			var unknown user.UnknownGroupError
			if errors.As(err, &unknown) {
				return fmt.Errorf("%s group %q does not exist on this host; create it or remove it from %s.groups", what, name, what)
			}
			return fmt.Errorf("cannot look up %s group %q: %w", what, name, err)
		}
		gid, err := strconv.ParseUint(g.Gid, 10, 32)
		if err != nil {
			return fmt.Errorf("%s group %q has a non-numeric gid %q", what, name, g.Gid)
		}
		a.GIDs[uint32(gid)] = true
		a.GroupNames[name] = true
	}
	return nil
}

// IsAdmin reports whether c may administer: uid 0, a listed uid, or a member
// (primary or supplementary) of a listed group.
func (a *Admins) IsAdmin(c *Caller) bool { return a.Includes(c) }

// Includes reports whether c is uid 0, a listed uid, or a member (primary
// or supplementary) of a listed group: for a set from NewUnsealers, whether
// c may submit unseal shares.
func (a *Admins) Includes(c *Caller) bool {
	if c == nil {
		return false
	}
	if c.UID == 0 {
		return true
	}
	if a == nil {
		return false
	}
	if a.UIDs[c.UID] {
		return true
	}
	for _, g := range c.Groups {
		if a.GIDs[g] {
			return true
		}
	}
	for _, n := range c.GroupNames {
		if a.GroupNames[n] {
			return true
		}
	}
	return false
}
