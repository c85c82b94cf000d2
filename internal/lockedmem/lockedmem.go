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
	"unsafe"

	"golang.org/x/sys/unix"
)

// SlotSize is the granularity of slab slots: a buffer takes its size
// rounded up to a multiple of it.
const SlotSize = 32

// MaxSlot is the largest buffer a slab slot holds; larger buffers get a
// mapping of their own (rounded to pages).
const MaxSlot = 1024

const slabSize = 64 << 10

// A slab is one locked mapping cut into slots of one size. Slots are handed
// out from its free stack, else from its never-used tail; a slab whose
// slots are all free again is unmapped (but one of 32-byte slots), so
// that locked memory follows what is in use: after a bulk load rotates
// 100,000 keys twice, the slabs of their 1- and 2-version buffers would
// otherwise stay locked (and in RSS) for good.
type slab struct {
	mem   []byte
	size  int      // slot size
	next  int      // offset of the never-used tail
	free  []uint16 // offsets / SlotSize of freed slots
	used  int
	index int // position in its class's partial list, -1 if full
}

// class holds the slabs of one slot size that have a free slot.
type class struct{ partial []*slab }

var (
	mu        sync.Mutex
	classes   [MaxSlot / SlotSize]class // class c holds (c+1)*SlotSize bytes
	lockFails atomic.Int64
	inUse     atomic.Int64
	slabs     atomic.Int64 // mapped slabs, for tests
)

// Buf is a buffer in locked memory. Get one from New, or fill a zero Buf
// held by value in a larger struct with Alloc (one heap allocation fewer
// per buffer). A zero Buf is empty: Bytes is nil, Destroy a no-op. A Buf
// must be released with Destroy, which zeroes it, and must not be copied
// while it holds memory (two copies would release the slot twice).
type Buf struct {
	p    *byte // start of the buffer and of its slot; nil: empty
	n    int   // requested size
	slab *slab // nil: a mapping of its own, unmapped on Destroy
	// The memory is kept as a pointer and a length, and the whole slot (or
	// mapping) is not kept but derived (slot): 24 bytes a buffer rather
	// than 56 matters when every key holds one (issue 15, memory round 2).
	// p points outside the Go heap (a locked mapping): the collector
	// ignores it.
}

// slot is the whole slot (or mapping) b's memory is in, to zero and
// return; nil for an empty Buf.
func (b *Buf) slot() []byte {
	if b.p == nil {
		return nil
	}
	n := roundPage(b.n)
	if b.slab != nil {
		n = b.slab.size
	}
	return unsafe.Slice(b.p, n)
}

// New returns a zeroed buffer of n bytes in locked memory.
func New(n int) (*Buf, error) {
	b := new(Buf)
	if err := b.Alloc(n); err != nil {
		return nil, err
	}
	return b, nil
}

// Alloc makes b, which must be empty (zero or destroyed), a zeroed buffer
// of n bytes in locked memory.
func (b *Buf) Alloc(n int) error {
	if b.p != nil {
		return fmt.Errorf("lockedmem: Alloc on a buffer in use")
	}
	if n <= 0 {
		return fmt.Errorf("lockedmem: invalid size %d", n)
	}
	if n > MaxSlot {
		m, err := mapLocked(roundPage(n))
		if err != nil {
			return err
		}
		inUse.Add(1)
		*b = Buf{p: unsafe.SliceData(m), n: n}
		return nil
	}
	c := &classes[(n-1)/SlotSize]
	size := ((n-1)/SlotSize + 1) * SlotSize
	mu.Lock()
	defer mu.Unlock()
	if len(c.partial) == 0 {
		m, err := mapLocked(slabSize)
		if err != nil {
			return err
		}
		slabs.Add(1)
		c.add(&slab{mem: m, size: size})
	}
	sl := c.partial[len(c.partial)-1]
	var off int
	if k := len(sl.free); k > 0 {
		off = int(sl.free[k-1]) * SlotSize
		sl.free = sl.free[:k-1]
	} else {
		off = sl.next
		sl.next += size
	}
	sl.used++
	if len(sl.free) == 0 && sl.next+size > len(sl.mem) {
		c.remove(sl) // full
	}
	inUse.Add(1)
	slot := sl.mem[off : off+size : off+size]
	*b = Buf{p: unsafe.SliceData(slot), n: n, slab: sl}
	return nil
}

func (c *class) add(sl *slab) {
	sl.index = len(c.partial)
	c.partial = append(c.partial, sl)
}

func (c *class) remove(sl *slab) {
	last := c.partial[len(c.partial)-1]
	c.partial[sl.index] = last
	last.index = sl.index
	c.partial[len(c.partial)-1] = nil
	c.partial = c.partial[:len(c.partial)-1]
	sl.index = -1
}

// Copy returns a locked buffer holding a copy of src. It does not touch src;
// callers zero their own copy.
func Copy(src []byte) (*Buf, error) {
	b, err := New(len(src))
	if err != nil {
		return nil, err
	}
	copy(b.Bytes(), src)
	return b, nil
}

// Bytes returns the buffer's memory. It must not be used after Destroy.
func (b *Buf) Bytes() []byte {
	if b.p == nil {
		return nil
	}
	return unsafe.Slice(b.p, b.n)
}

// Destroy zeroes the buffer and returns its memory. Destroy on nil or twice
// is a no-op.
func (b *Buf) Destroy() {
	if b == nil || b.p == nil {
		return
	}
	slot := b.slot()
	clear(slot)
	inUse.Add(-1)
	sl := b.slab
	if sl == nil {
		_ = unix.Munmap(slot)
		b.p, b.n = nil, 0
		return
	}
	// The slot's offset in its slab (mapped memory: it never moves).
	off := int(uintptr(unsafe.Pointer(unsafe.SliceData(slot))) - uintptr(unsafe.Pointer(unsafe.SliceData(sl.mem))))
	b.p, b.n, b.slab = nil, 0, nil
	ci := sl.size/SlotSize - 1
	c := &classes[ci]
	mu.Lock()
	defer mu.Unlock()
	sl.used--
	// An empty slab is unmapped, except the last of the 32-byte class
	// (root and keyring keys, their short-lived copies): a spare per size
	// would keep up to 32 × 64 KiB locked after one key's versions went
	// through every size.
	if sl.used == 0 && (ci != 0 || len(c.partial) > 1 || sl.index < 0 && len(c.partial) > 0) {
		if sl.index >= 0 {
			c.remove(sl)
		}
		slabs.Add(-1)
		_ = unix.Munmap(sl.mem)
		return
	}
	if sl.used == 0 {
		// The class's spare: start it afresh (its slots are zeroed).
		sl.next, sl.free = 0, sl.free[:0]
	} else {
		sl.free = append(sl.free, uint16(off/SlotSize))
	}
	if sl.index < 0 {
		c.add(sl)
	}
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
