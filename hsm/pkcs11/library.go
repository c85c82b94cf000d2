package pkcs11

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	p11 "github.com/miekg/pkcs11"
)

// library is one PKCS#11 module loaded into this process, shared by every
// Device that names the same file. PKCS#11 allows one C_Initialize per
// application and module, and its login state is per application and token,
// so both belong here rather than to a Device.
type library struct {
	name string // as configured, for messages
	ctx  *p11.Ctx

	// mu is held shared around every sequence of PKCS#11 calls and
	// exclusively while the module is initialised or finalised, so that no
	// call ever runs against a finalised module, and no session handle from
	// before a re-initialisation (which handles may alias after it) is used
	// after it.
	mu sync.RWMutex
	// gen counts initialisations. A Device remembers the generation its
	// sessions and handles belong to and forgets them, without closing
	// them, when it changes. Guarded by mu.
	gen uint64
	// initialized is true between C_Initialize and C_Finalize. Guarded by mu.
	initialized bool
	// ownsInit is false when C_Initialize found the module already
	// initialised by other code in this process: then the last Close must not
	// finalise it under that code's feet. Guarded by mu.
	ownsInit bool

	// Guarded by registry.mu:
	refs       int            // open Devices
	tokenUsers map[string]int // open Devices per token label (for logout)
}

// registry holds every module this process has loaded, keyed by resolved
// path (or bare name, which dlopen resolves through the library search
// path), so that two spellings of one file share one C_Initialize.
//
// Lock order: Device.opMu, then registry.mu, then library.mu, then
// Device.mu.
var registry = struct {
	mu   sync.Mutex
	libs map[string]*library
}{libs: map[string]*library{}}

// acquireLibrary loads (once per process) and initialises (when no Device
// has it open) the module name, and counts one more Device using
// tokenLabel on it.
func acquireLibrary(name, tokenLabel string) (*library, error) {
	key, err := resolveLibrary(name)
	if err != nil {
		return nil, err
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	lib := registry.libs[key]
	if lib == nil {
		ctx := p11.New(key)
		if ctx == nil {
			// miekg/pkcs11 reports neither dlerror nor which step failed:
			// dlopen (not a shared object, wrong architecture, a missing
			// dependency) or dlsym of C_GetFunctionList.
			if !strings.ContainsRune(name, '/') {
				return nil, unavailable(nil, "cannot load the PKCS#11 library %s: not found in the library search path, or not a PKCS#11 module: check seal \"pkcs11\" library (an absolute path is best)", name)
			}
			return nil, unavailable(nil, "cannot load the PKCS#11 library %s: not a PKCS#11 module (dlopen failed, or it has no C_GetFunctionList; ldd shows missing dependencies): check seal \"pkcs11\" library", name)
		}
		// The module stays loaded for the life of the process: unloading a
		// module that links a crypto library (SoftHSM links OpenSSL) and
		// loading it again is a known source of crashes, and C_Finalize
		// already releases everything a token needs released.
		lib = &library{name: name, ctx: ctx, tokenUsers: map[string]int{}}
		registry.libs[key] = lib
	}
	lib.mu.Lock()
	if !lib.initialized {
		err = lib.initLocked()
	}
	lib.mu.Unlock()
	if err != nil {
		return nil, err
	}
	lib.refs++
	lib.tokenUsers[tokenLabel]++
	return lib, nil
}

// resolveLibrary returns the registry key for a configured module name and
// checks that a path names an existing regular file, which dlopen's own
// failure would not tell apart from a broken module.
func resolveLibrary(name string) (string, error) {
	if name == "" {
		return "", unavailable(nil, "no PKCS#11 library given: set library in the seal \"pkcs11\" block (for SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)")
	}
	if !strings.ContainsRune(name, '/') {
		// A bare name is found by dlopen through the library search path.
		return name, nil
	}
	abs, err := filepath.Abs(name)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", unavailable(nil, "cannot load the PKCS#11 library %s: file not found: check seal \"pkcs11\" library", name)
		}
		return "", unavailable(nil, "cannot load the PKCS#11 library %s: %v: check seal \"pkcs11\" library", name, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", unavailable(nil, "cannot load the PKCS#11 library %s: %v: check seal \"pkcs11\" library", name, err)
	}
	if !st.Mode().IsRegular() {
		return "", unavailable(nil, "cannot load the PKCS#11 library %s: not a regular file: check seal \"pkcs11\" library", name)
	}
	return abs, nil
}

// initLocked calls C_Initialize. The caller holds lib.mu exclusively.
func (lib *library) initLocked() error {
	err := lib.ctx.Initialize()
	lib.ownsInit = true
	if isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		// Other code in this process (another PKCS#11 user of the same
		// module) initialised it: share it, and leave finalising to them.
		lib.ownsInit, err = false, nil
	}
	if err != nil {
		return unavailable(err, "cannot initialise the PKCS#11 library %s: check the module's own configuration (for SoftHSM2: SOFTHSM2_CONF must name a readable softhsm2.conf whose tokendir exists)", lib.name)
	}
	lib.initialized = true
	lib.gen++
	return nil
}

// finalizeLocked calls C_Finalize, which closes every session of every
// Device on this module and logs out of every token. The caller holds
// lib.mu exclusively.
func (lib *library) finalizeLocked() error {
	if !lib.initialized {
		return nil
	}
	lib.initialized = false
	// Bump the generation now too: every handle is dead from here on.
	lib.gen++
	err := lib.ctx.Finalize()
	if err != nil && !isCode(err, p11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		return unavailable(err, "C_Finalize of %s failed", lib.name)
	}
	return nil
}

// reinitLocked finalises and initialises the module again, so that it
// rescans its slots (SoftHSM reads its token directory only at
// C_Initialize). The caller holds lib.mu exclusively.
func (lib *library) reinitLocked() error {
	ferr := lib.finalizeLocked()
	if err := lib.initLocked(); err != nil {
		return errors.Join(err, ferr)
	}
	return nil
}

// releaseTokenLocked counts one Device less on tokenLabel and reports
// whether it was the last one. The caller holds registry.mu.
func (lib *library) releaseTokenLocked(tokenLabel string) (last bool) {
	lib.tokenUsers[tokenLabel]--
	if lib.tokenUsers[tokenLabel] > 0 {
		return false
	}
	delete(lib.tokenUsers, tokenLabel)
	return true
}

// releaseLocked counts one Device less on the module and finalises it when
// none is left. The caller holds registry.mu.
func (lib *library) releaseLocked() error {
	lib.refs--
	if lib.refs > 0 {
		return nil
	}
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if !lib.ownsInit {
		// Not ours to finalise; just stop using it.
		lib.initialized = false
		lib.gen++
		return nil
	}
	return lib.finalizeLocked()
}
