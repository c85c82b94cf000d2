// Package auth decides who is calling cofferd and what they may do.
//
// Identity comes from the kernel, never from the request: the peer's uid, gid
// and pid from SO_PEERCRED on the unix socket, its supplementary groups and
// systemd unit from /proc. Authorization is a [PolicySet] (the replicated
// policies) plus [Admins] (root and the configured admin uids and groups).
// Everything not granted is denied.
package auth

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Caller is the identity of the process on the other end of a connection.
// UID, GID and PID are the kernel's credentials at connect time. The other
// fields are best effort: empty when /proc or the user database cannot tell.
type Caller struct {
	UID, GID uint32
	PID      int32
	// Groups is the primary gid followed by the supplementary gids.
	Groups []uint32
	// User is the name of UID, or "" if it has none.
	User string
	// GroupNames are the names of Groups that have one.
	GroupNames []string
	// Unit is the caller's systemd unit ("billing.service"), or "".
	Unit string
	// UserUnit is true when Unit runs under a per-user service manager
	// (user@UID.service). Such a unit's name is chosen by that user, not by
	// the system administrator, so policies do not grant by it.
	UserUnit bool
}

// String describes the caller for logs.
func (c *Caller) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "uid=%d", c.UID)
	if c.User != "" {
		fmt.Fprintf(&b, "(%s)", c.User)
	}
	fmt.Fprintf(&b, " gid=%d pid=%d", c.GID, c.PID)
	if c.Unit != "" {
		if c.UserUnit {
			fmt.Fprintf(&b, " user-unit=%s", c.Unit)
		} else {
			fmt.Fprintf(&b, " unit=%s", c.Unit)
		}
	}
	return b.String()
}

// soPeerPIDFD is SO_PEERPIDFD (Linux ≥ 6.5): a pidfd for the peer process,
// which, unlike a pid, cannot come to name another process.
const soPeerPIDFD = unix.SO_PEERPIDFD

const procRoot = "/proc"

// CallerFromConn identifies the peer of a unix socket connection. It fails
// only when the kernel credentials themselves cannot be read (not a unix
// socket, or the socket is closed); missing /proc entries or user names just
// leave the corresponding fields empty.
func CallerFromConn(c net.Conn) (*Caller, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("caller identity needs a unix socket connection, got %T", c)
	}
	pc, err := readPeerCred(uc, true, nil)
	if err != nil {
		return nil, fmt.Errorf("cannot read the caller's credentials (SO_PEERCRED): %w", err)
	}
	cred, pidfd, peerGone := pc.cred, pc.pidfd, pc.gone

	caller := &Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
	var (
		supp []uint32
		unit string
		user bool
	)
	// PID 0: the peer is in a pid namespace we cannot see; /proc/0 is not it.
	if cred.Pid > 0 && !peerGone {
		supp, unit, user = readProc(procRoot, int(cred.Pid))
		if pidfd >= 0 && pidfdExited(pidfd) {
			// The peer exited (before or while we read /proc), so its pid
			// may already name another process: what we read may not be
			// the peer's.
			supp, unit, user = nil, "", false
		}
	}
	if pidfd >= 0 {
		unix.Close(pidfd)
	}
	caller.Groups = mergeGroups(cred.Gid, supp)
	caller.Unit, caller.UserUnit = unit, user
	caller.User = names.userName(cred.Uid)
	for i, g := range caller.Groups {
		if i == maxGroupNames {
			// A process in thousands of groups must not turn every
			// connection into thousands of user-database lookups.
			break
		}
		if n := names.groupName(g); n != "" {
			caller.GroupNames = append(caller.GroupNames, n)
		}
	}
	return caller, nil
}

// pidfdExited reports whether the process of a pidfd has terminated: a
// pidfd polls readable once it has. Unlike sending it signal 0, this needs
// no permission over the process, and cofferd (under systemd: the user
// coffer) has none over callers that run as other users.
func pidfdExited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		// An error means we cannot tell: assume it exited, so that what was
		// read from /proc is not trusted.
		return err != nil || n > 0
	}
}

// readProc reads the supplementary groups and the systemd unit of pid.
// Unreadable files give empty results.
func readProc(root string, pid int) (groups []uint32, unit string, userUnit bool) {
	dir := root + "/" + strconv.Itoa(pid)
	if data, err := os.ReadFile(dir + "/status"); err == nil {
		groups = parseStatusGroups(data)
	}
	if data, err := os.ReadFile(dir + "/cgroup"); err == nil {
		unit, userUnit = UnitFromCgroup(data)
	}
	return groups, unit, userUnit
}

// mergeGroups returns primary followed by the sorted supplementary gids,
// without duplicates.
func mergeGroups(primary uint32, supp []uint32) []uint32 {
	out := make([]uint32, 0, 1+len(supp))
	out = append(out, primary)
	rest := slices.Clone(supp)
	slices.Sort(rest)
	for i, g := range rest {
		if g != primary && (i == 0 || g != rest[i-1]) {
			out = append(out, g)
		}
	}
	return out
}

// parseStatusGroups parses the "Groups:" line of /proc/PID/status.
func parseStatusGroups(status []byte) []uint32 {
	for line := range bytes.SplitSeq(status, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		var gids []uint32
		for f := range bytes.FieldsSeq(rest) {
			g, err := strconv.ParseUint(string(f), 10, 32)
			if err != nil {
				return nil
			}
			gids = append(gids, uint32(g))
		}
		return gids
	}
	return nil
}

// UnitFromCgroup returns the systemd unit named by the contents of a
// /proc/PID/cgroup file, and whether it is a unit of a per-user manager.
//
// The cgroup v2 line ("0::/system.slice/billing.service") is used when
// present, else the v1 "name=systemd" line. In the path, slices
// (*.slice) are skipped and the first .service or .scope component is the
// unit, so that a process in a sub-cgroup of a unit
// ("/system.slice/foo.service/sub") belongs to that unit. A unit that a
// service creates below itself (with Delegate=) cannot pose as another unit.
// The exception is the per-user manager user@UID.service, whose own units are
// what a process there is: "/user.slice/user-1000.slice/user@1000.service/
// app.slice/x.service" gives x.service, marked as a user unit.
func UnitFromCgroup(data []byte) (unit string, userUnit bool) {
	var v1 []byte
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		// hierarchy-ID:controller-list:path; the path may contain ':'.
		id, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		ctrl, path, ok := bytes.Cut(rest, []byte(":"))
		if !ok {
			continue
		}
		if string(id) == "0" && len(ctrl) == 0 {
			return unitFromPath(string(path))
		}
		if string(ctrl) == "name=systemd" {
			v1 = path
		}
	}
	if v1 != nil {
		return unitFromPath(string(v1))
	}
	return "", false
}

func unitFromPath(path string) (string, bool) {
	parts := strings.Split(path, "/")
	unit, i := firstUnit(parts)
	if unit == "" {
		return "", false
	}
	if strings.HasPrefix(unit, "user@") && isUnit(unit, ".service") {
		if sub, _ := firstUnit(parts[i+1:]); sub != "" {
			return sub, true
		}
	}
	return unit, false
}

// firstUnit returns the first path component that is a .service or .scope
// unit, skipping slices, and its index. Any other component before it means
// the path is not a systemd-managed one.
func firstUnit(parts []string) (string, int) {
	for i, p := range parts {
		switch {
		case p == "" || strings.HasSuffix(p, ".slice"):
			continue
		case isUnit(p, ".service") || isUnit(p, ".scope"):
			return p, i
		default:
			return "", -1
		}
	}
	return "", -1
}

func isUnit(p, suffix string) bool {
	return len(p) > len(suffix) && strings.HasSuffix(p, suffix)
}

// nameCache maps uids and gids to names. Names rarely change but can
// appear (a user created after the daemon started), so entries expire; the
// size bound keeps a caller that cycles through uids from growing it.
type nameCache struct {
	mu     sync.Mutex
	users  map[uint32]cacheEntry
	groups map[uint32]cacheEntry

	lookupUser  func(uid uint32) (string, error)
	lookupGroup func(gid uint32) (string, error)
	now         func() time.Time
	// inflight are the lookups running (under mu); lookupTimeout, if set,
	// replaces the package's lookupTimeout (tests).
	inflight      map[inflightKey]chan struct{}
	lookupTimeout time.Duration
}

type cacheEntry struct {
	name    string
	expires time.Time
}

const (
	// maxGroupNames bounds the group names resolved per caller; gids beyond
	// it still count through Groups.
	maxGroupNames   = 256
	maxCacheEntries = 1024
	cacheTTL        = 5 * time.Minute
	// Misses expire sooner so that a new user is seen quickly.
	cacheMissTTL = 30 * time.Second
	// lookupTimeout bounds how long identifying a caller waits for the
	// user database.
	lookupTimeout = time.Second
)

var names = newNameCache()

func newNameCache() *nameCache {
	return &nameCache{
		users:  make(map[uint32]cacheEntry),
		groups: make(map[uint32]cacheEntry),
		lookupUser: func(uid uint32) (string, error) {
			u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
			if err != nil {
				return "", err
			}
			return u.Username, nil
		},
		lookupGroup: func(gid uint32) (string, error) {
			g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10))
			if err != nil {
				return "", err
			}
			return g.Name, nil
		},
		now: time.Now,
	}
}

func (nc *nameCache) userName(uid uint32) string {
	return nc.get(true, nc.users, nc.lookupUser, uid)
}

func (nc *nameCache) groupName(gid uint32) string {
	return nc.get(false, nc.groups, nc.lookupGroup, gid)
}

func (nc *nameCache) get(users bool, m map[uint32]cacheEntry, lookup func(uint32) (string, error), id uint32) string {
	now := nc.now()
	nc.mu.Lock()
	e, ok := m[id]
	if ok && now.Before(e.expires) {
		nc.mu.Unlock()
		return e.name
	}
	// One lookup per name at a time, in its own goroutine: NSS may be slow
	// (LDAP), and a caller waits for it at most lookupTimeout. Without the
	// name, policies that grant by user or group name do not match (fail
	// closed); the lookup goes on and fills the cache for the next
	// connection.
	k := inflightKey{users: users, id: id}
	ch, running := nc.inflight[k]
	if !running {
		if nc.inflight == nil {
			nc.inflight = map[inflightKey]chan struct{}{}
		}
		ch = make(chan struct{})
		nc.inflight[k] = ch
		go nc.resolve(m, lookup, id, k, ch)
	}
	nc.mu.Unlock()
	timer := time.NewTimer(nc.timeout())
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		return ""
	}
	nc.mu.Lock()
	defer nc.mu.Unlock()
	return m[id].name
}

// resolve looks a name up and caches the answer (a miss briefly).
func (nc *nameCache) resolve(m map[uint32]cacheEntry, lookup func(uint32) (string, error), id uint32, k inflightKey, done chan struct{}) {
	name, err := lookup(id)
	ttl := cacheTTL
	if err != nil {
		// Unknown id or a failing user database: remember briefly.
		name, ttl = "", cacheMissTTL
	}
	now := nc.now()
	nc.mu.Lock()
	if len(m) >= maxCacheEntries {
		// Drop expired entries; if all are fresh, drop everything. Either
		// keeps the work per miss bounded and the map small.
		for k, v := range m {
			if !now.Before(v.expires) {
				delete(m, k)
			}
		}
		if len(m) >= maxCacheEntries {
			clear(m)
		}
	}
	m[id] = cacheEntry{name: name, expires: now.Add(ttl)}
	delete(nc.inflight, k)
	nc.mu.Unlock()
	close(done)
}

type inflightKey struct {
	users bool
	id    uint32
}

func (nc *nameCache) timeout() time.Duration {
	if nc.lookupTimeout > 0 {
		return nc.lookupTimeout
	}
	return lookupTimeout
}

// PeerUID reads a unix-socket peer's uid with one SO_PEERCRED getsockopt:
// all that connection caps need at accept, before the full identity.
func PeerUID(uc *net.UnixConn) (uint32, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		cred    *unix.Ucred
		credErr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return cred.Uid, nil
}

// peerCred is what the kernel says about a unix-socket peer.
type peerCred struct {
	cred *unix.Ucred
	// pidfd is the peer's SO_PEERPIDFD, or -1 (kernel before 6.5, or not
	// asked); the caller closes it.
	pidfd int
	// gone: the kernel knows SO_PEERPIDFD but has no process for the peer
	// (it exited and was reaped): its pid may name another process now.
	gone bool
}

// readPeerCred reads SO_PEERCRED and, with usePIDFD, SO_PEERPIDFD in one
// Control call on the socket; extra, if set, runs in the same call with the
// socket's fd (after the credentials were read).
func readPeerCred(uc *net.UnixConn, usePIDFD bool, extra func(fd int)) (peerCred, error) {
	pc := peerCred{pidfd: -1}
	raw, err := uc.SyscallConn()
	if err != nil {
		return pc, err
	}
	var credErr error
	err = raw.Control(func(fd uintptr) {
		pc.cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr != nil {
			return
		}
		if extra != nil {
			extra(int(fd))
		}
		if !usePIDFD {
			return
		}
		pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, soPeerPIDFD)
		switch {
		case err == nil:
			pc.pidfd = pfd
		case errors.Is(err, unix.ENOPROTOOPT):
			// Kernel before 6.5: the caller falls back to the pid.
		default:
			pc.gone = true
		}
	})
	if err == nil {
		err = credErr
	}
	if err != nil {
		if pc.pidfd >= 0 {
			unix.Close(pc.pidfd)
		}
		return peerCred{pidfd: -1}, err
	}
	return pc, nil
}
