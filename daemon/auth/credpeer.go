package auth

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/coffer-kms/coffer/api"
)

// The credential socket (docs/api.md, "Credential socket"): systemd's
// LoadCredential=ID:/path/to/socket connects from a socket it has bound to
// the abstract address "@<random hex>/unit/<unit>/<ID>" (systemd's
// load_credential(), core/execute.c in 252) and reads to EOF. The address
// is chosen by whoever connects, so the unit in it is believed only when
// the kernel confirms it: the peer is uid 0 (SO_PEERCRED) and the peer
// process is in that unit's cgroup.

// CredentialRequest is what the peer's abstract address asks for.
type CredentialRequest struct {
	Unit string // "billing.service"
	ID   string // the credential ID, which is the secret's name
}

// ParseCredentialAddress parses the abstract address systemd binds before
// it connects. It is strict: "@", 1 to 16 lowercase hex digits (systemd
// prints a random uint64 with PRIx64), "/unit/", a system unit name,
// "/", and an ID that is a valid secret name. Anything else is an error.
func ParseCredentialAddress(addr string) (CredentialRequest, error) {
	rest, ok := strings.CutPrefix(addr, "@")
	if !ok {
		return CredentialRequest{}, errors.New("the peer's address is not an abstract socket address")
	}
	random, rest, ok := strings.Cut(rest, "/unit/")
	if !ok || len(random) == 0 || len(random) > 16 || strings.Trim(random, "0123456789abcdef") != "" {
		return CredentialRequest{}, errors.New("the peer's address is not @<hex>/unit/<unit>/<id>")
	}
	unit, id, ok := strings.Cut(rest, "/")
	if !ok {
		return CredentialRequest{}, errors.New("the peer's address names no credential ID")
	}
	if err := checkUnitName(unit); err != nil {
		return CredentialRequest{}, fmt.Errorf("the peer's address names no valid unit: %v", err)
	}
	if !api.ValidName(id) {
		return CredentialRequest{}, fmt.Errorf("the credential ID %q is not a valid secret name", truncateID(id))
	}
	return CredentialRequest{Unit: unit, ID: id}, nil
}

func truncateID(s string) string {
	s = strconv.Quote(s)
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// CredentialPeer is the kernel's view of a credential socket peer.
type CredentialPeer struct {
	UID, GID uint32
	PID      int32
	// Address is the peer's own socket address as getpeername gives it
	// ("@…" for an abstract one, "" when it bound none).
	Address string
	// Unit is the unit of the peer's cgroup, read through a pidfd that
	// was still alive after the read; "" if it has none or cannot be told.
	Unit     string
	UserUnit bool
	// Comm is the peer's command name (/proc/PID/comm), for the audit
	// log: under systemd 252 it is the unit's forked child, not PID 1.
	Comm string
}

// peerAddress returns the peer's unix socket address exactly as the kernel
// has it: an abstract one as "@" and its bytes (a NUL among them is kept,
// so that the parser refuses it rather than reading up to it), a path as
// is, "" when the peer bound none.
func peerAddress(fd int) (string, error) {
	var rsa unix.RawSockaddrUnix
	l := uint32(unsafe.Sizeof(rsa))
	_, _, errno := unix.Syscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)))
	if errno != 0 {
		return "", errno
	}
	off := uint32(unsafe.Offsetof(rsa.Path))
	if l <= off || rsa.Family != unix.AF_UNIX {
		return "", nil
	}
	n := min(int(l-off), len(rsa.Path))
	b := make([]byte, n)
	for i := 0; i < n; i++ {
		b[i] = byte(rsa.Path[i])
	}
	if b[0] == 0 {
		return "@" + string(b[1:]), nil
	}
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i] // a path ends at its NUL
	}
	return string(b), nil
}

// procRootForCred is where /proc is (tests point it elsewhere).
var procRootForCred = procRoot

// credPeerPIDFD says whether to ask for SO_PEERPIDFD; tests turn it off to
// run the pidfd_open fallback of kernels before 6.5 on a newer kernel.
var credPeerPIDFD = true

// IdentifyCredentialPeer reads the peer's credentials, address and cgroup
// on an accepted connection of the credential socket.
//
// The cgroup is read through a pidfd: SO_PEERPIDFD where the kernel has it
// (6.5+), which names the very process that connected. Before 6.5 the
// pidfd is opened with pidfd_open on SO_PEERCRED's pid right after accept;
// the remaining race is that the connecting process exits and its pid is
// reused by a process of another unit between connect and pidfd_open. The
// peer must be uid 0 (checked by the caller) for its cgroup to count at
// all, and a pidfd that polls exited after the read discards what was read.
func IdentifyCredentialPeer(c net.Conn) (*CredentialPeer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("credential peer needs a unix socket connection, got %T", c)
	}
	var (
		addr    string
		addrErr error
	)
	pc, err := readPeerCred(uc, credPeerPIDFD, func(fd int) { addr, addrErr = peerAddress(fd) })
	if err != nil {
		return nil, fmt.Errorf("cannot read the peer's credentials (SO_PEERCRED): %w", err)
	}
	cred, pidfd, gone := pc.cred, pc.pidfd, pc.gone
	p := &CredentialPeer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
	if addrErr == nil {
		p.Address = addr
	}
	if cred.Pid <= 0 || gone {
		// Another pid namespace, or already exited: no cgroup to trust.
		return p, nil
	}
	if pidfd < 0 {
		fd, err := unix.PidfdOpen(int(cred.Pid), 0)
		if err != nil {
			// Exited already (ESRCH) or no pidfd support: nothing to trust.
			return p, nil
		}
		pidfd = fd
	}
	defer unix.Close(pidfd)
	dir := procRootForCred + "/" + strconv.Itoa(int(cred.Pid))
	data, err := os.ReadFile(dir + "/cgroup")
	comm, _ := os.ReadFile(dir + "/comm")
	if err != nil || pidfdExited(pidfd) {
		return p, nil
	}
	p.Unit, p.UserUnit = UnitFromCgroup(data)
	p.Comm = strings.TrimSpace(string(comm))
	return p, nil
}

// AllowedUnit reports whether some policy grants op on key to the system
// unit by its units subject alone. The credential socket uses it: the
// peer there is systemd (uid 0) acting for the unit, so uids, gids, users
// and groups must not count.
func (ps *PolicySet) AllowedUnit(unit, op, key string) bool {
	if ps == nil || unit == "" {
		return false
	}
	i := opIndex(op)
	if i < 0 {
		return false
	}
	return anyMatches(ps.byOp[i].units[unit], key)
}
