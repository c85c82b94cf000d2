// Package lockedmem hands out small buffers for key material from memory
// that is locked into RAM (mlock: never written to swap) and excluded from
// core dumps (MADV_DONTDUMP).
//
// Only these pages are locked, never the whole process (no mlockall): the raft
// store mmaps its database file and locking that would pin the whole file.
// Buffers up to MaxSlot bytes come from 64 KiB slabs cut into slots of a
// multiple of 32 bytes (one slab per slot size), so a key's material of
// 1 to 32 versions of 32 bytes takes just its size: 100,000 keys of 3
// versions cost about 9.6 MB of locked memory rather than a page each
// (locked pages count in the process's RSS).
//
// Locking can fail (RLIMIT_MEMLOCK too small and no CAP_IPC_LOCK). Then the
// memory is still excluded from core dumps and zeroed on release, and
// Locked reports false so the daemon can say so at start; it does not refuse
// to run, because a dev machine with a small limit should still work.
package lockedmem

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// SlotSize is the granularity of slab slots: a buffer takes its size
// rounded up to a multiple of it.
const SlotSize = 32

// MaxSlot is the largest buffer a slab slot holds; larger buffers get a
// mapping of their own (rounded to pages).
const MaxSlot = 1024

const slabSize = 64 << 10

var (
	mu        sync.Mutex
	free      [MaxSlot / SlotSize][][]byte // free slots by class: class c holds (c+1)*SlotSize bytes
	lockFails atomic.Int64
	inUse     atomic.Int64
)

// Buf is a buffer in locked memory. Its zero value is unusable; get one from
// New. A Buf must be released with Destroy, which zeroes it.
type Buf struct {
	b       []byte // len = requested size
	slot    []byte // the whole slot (or mapping) to zero and return
	private bool   // a mapping of its own, unmapped on Destroy
}

// New returns a zeroed buffer of n bytes in locked memory.
func New(n int) (*Buf, error) {
	if n <= 0 {
		return nil, fmt.Errorf("lockedmem: invalid size %d", n)
	}
	if n > MaxSlot {
		m, err := mapLocked(roundPage(n))
		if err != nil {
			return nil, err
		}
		inUse.Add(1)
		return &Buf{b: m[:n:n], slot: m, private: true}, nil
	}
	c := (n - 1) / SlotSize
	size := (c + 1) * SlotSize
	mu.Lock()
	defer mu.Unlock()
	if len(free[c]) == 0 {
		m, err := mapLocked(slabSize)
		if err != nil {
			return nil, err
		}
		for off := 0; off+size <= len(m); off += size {
			free[c] = append(free[c], m[off:off+size:off+size])
		}
	}
	fc := free[c]
	s := fc[len(fc)-1]
	fc[len(fc)-1] = nil
	free[c] = fc[:len(fc)-1]
	inUse.Add(1)
	return &Buf{b: s[:n:n], slot: s}, nil
}

// Copy returns a locked buffer holding a copy of src. It does not touch src;
// callers zero their own copy.
func Copy(src []byte) (*Buf, error) {
	b, err := New(len(src))
	if err != nil {
		return nil, err
	}
	copy(b.b, src)
	return b, nil
}

// Bytes returns the buffer's memory. It must not be used after Destroy.
func (b *Buf) Bytes() []byte { return b.b }

// Destroy zeroes the buffer and returns its memory. Destroy on nil or twice
// is a no-op.
func (b *Buf) Destroy() {
	if b == nil || b.slot == nil {
		return
	}
	clear(b.slot)
	inUse.Add(-1)
	if b.private {
		_ = unix.Munmap(b.slot)
	} else {
		c := len(b.slot)/SlotSize - 1
		mu.Lock()
		free[c] = append(free[c], b.slot)
		mu.Unlock()
	}
	b.b, b.slot = nil, nil
}

// Locked reports whether every mapping made so far could be mlock'ed.
func Locked() bool { return lockFails.Load() == 0 }

// InUse is the number of live buffers (for tests and metrics).
func InUse() int64 { return inUse.Load() }

func roundPage(n int) int {
	p := unix.Getpagesize()
	return (n + p - 1) / p * p
}

func mapLocked(size int) ([]byte, error) {
	m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("lockedmem: mmap %d bytes: %w", size, err)
	}
	// Best effort on both: see the package comment.
	_ = unix.Madvise(m, unix.MADV_DONTDUMP)
	if err := unix.Mlock(m); err != nil {
		lockFails.Add(1)
	}
	return m, nil
}
