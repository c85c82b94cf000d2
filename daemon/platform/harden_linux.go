package platform

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// HardenProcess stops the process's memory, which holds the root key while
// unsealed, from leaving it through a core dump or a same-uid debugger:
//
//   - prctl(PR_SET_DUMPABLE, 0): no core dump, and /proc/PID/mem, ptrace
//     attach and friends are refused to processes of the same uid that lack
//     CAP_SYS_PTRACE.
//   - setrlimit(RLIMIT_CORE, 0): no core file even if something later turns
//     dumpable back on (it is reset by execve of a setuid binary, for one).
//
// Call it first thing in main, before any secret is in memory. Both settings
// are process-wide and inherited by children.
func HardenProcess() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): %w", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("cannot disable core dumps (setrlimit RLIMIT_CORE): %w", err)
	}
	return nil
}
