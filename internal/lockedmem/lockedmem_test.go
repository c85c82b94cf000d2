package lockedmem

import (
	"bytes"
	"testing"
)

func TestNew_ZeroedAndReused(t *testing.T) {
	before := InUse()
	b, err := New(32)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(b.Bytes()); got != 32 {
		t.Fatalf("len = %d, want 32", got)
	}
	if !bytes.Equal(b.Bytes(), make([]byte, 32)) {
		t.Fatal("new buffer not zeroed")
	}
	copy(b.Bytes(), bytes.Repeat([]byte{0xAA}, 32))
	slot := b.slot()
	b.Destroy()
	if len(slot) != SlotSize || !bytes.Equal(slot, make([]byte, SlotSize)) {
		t.Fatal("Destroy did not zero the slot")
	}
	b.Destroy() // second Destroy is a no-op
	if got := InUse(); got != before {
		t.Fatalf("InUse = %d, want %d", got, before)
	}
}

func TestNew_LargeAndMany(t *testing.T) {
	big, err := New(5000)
	if err != nil {
		t.Fatal(err)
	}
	copy(big.Bytes(), bytes.Repeat([]byte{1}, 5000))
	big.Destroy()

	// More than one slab's worth of slots.
	var bufs []*Buf
	for i := 0; i < 3000; i++ {
		b, err := Copy([]byte{byte(i), byte(i >> 8)})
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, b)
	}
	for i, b := range bufs {
		if b.Bytes()[0] != byte(i) || b.Bytes()[1] != byte(i>>8) {
			t.Fatalf("buffer %d overwritten", i)
		}
	}
	for _, b := range bufs {
		b.Destroy()
	}
	if _, err := New(0); err == nil {
		t.Fatal("New(0) succeeded")
	}
}

// TestNew_SizeClasses: a buffer takes its size rounded up to SlotSize, not
// a page nor a fixed slot (locked memory counts in RSS: a key of 3
// versions holds 96 bytes); buffers of every class stay apart, and a
// freed slot is reused for its own class only.
func TestNew_SizeClasses(t *testing.T) {
	var bufs []*Buf
	for n := 1; n <= MaxSlot+1; n += 7 {
		b, err := New(n)
		if err != nil {
			t.Fatal(err)
		}
		want := (n + SlotSize - 1) / SlotSize * SlotSize
		if n > MaxSlot {
			want = roundPage(n)
		}
		if len(b.Bytes()) != n || cap(b.Bytes()) != n || len(b.slot()) != want {
			t.Fatalf("New(%d): len %d cap %d slot %d, want slot %d", n, len(b.Bytes()), cap(b.Bytes()), len(b.slot()), want)
		}
		for i := range b.Bytes() {
			b.Bytes()[i] = byte(n)
		}
		bufs = append(bufs, b)
	}
	for _, b := range bufs {
		n := len(b.Bytes())
		if !bytes.Equal(b.Bytes(), bytes.Repeat([]byte{byte(n)}, n)) {
			t.Fatalf("buffer of %d bytes overwritten by another", n)
		}
	}
	b96, _ := New(96)
	slot := &b96.slot()[0]
	b96.Destroy()
	b64, _ := New(64)
	if &b64.slot()[0] == slot {
		t.Fatal("a 96-byte slot was handed out for 64 bytes")
	}
	again, _ := New(90)
	if &again.slot()[0] != slot {
		t.Fatal("a freed 96-byte slot was not reused for its class")
	}
	for _, b := range append(bufs, b64, again) {
		b.Destroy()
	}
}

// TestSlabs_ReleasedWhenEmpty: a slab whose slots are all free again is
// unmapped (no spare kept but for 32-byte slots), so locked memory follows what is in
// use after a bulk load moved keys from one size to the next; slots freed
// in any order are reused and never handed out twice.
func TestSlabs_ReleasedWhenEmpty(t *testing.T) {
	base := slabs.Load()
	const n = 5000 // more than two slabs of 64-byte slots
	var bufs []*Buf
	seen := map[*byte]bool{}
	for i := 0; i < n; i++ {
		b, err := New(64)
		if err != nil {
			t.Fatal(err)
		}
		if seen[&b.slot()[0]] {
			t.Fatal("a slot handed out twice")
		}
		seen[&b.slot()[0]] = true
		b.Bytes()[0], b.Bytes()[63] = byte(i), byte(i>>8)
		bufs = append(bufs, b)
	}
	if got := slabs.Load() - base; got < 4 {
		t.Fatalf("%d slabs for %d slots of 64 bytes", got, n)
	}
	// Free every other one, then allocate as many again: the freed slots
	// are reused (no new slab), and no live buffer is touched.
	mapped := slabs.Load()
	for i := 0; i < n; i += 2 {
		bufs[i].Destroy()
	}
	for i := 0; i < n; i += 2 {
		b, err := New(64)
		if err != nil {
			t.Fatal(err)
		}
		bufs[i] = b
		b.Bytes()[0], b.Bytes()[63] = byte(i), byte(i>>8)
	}
	if slabs.Load() != mapped {
		t.Fatalf("slabs %d -> %d although freed slots were free", mapped, slabs.Load())
	}
	for i, b := range bufs {
		if b.Bytes()[0] != byte(i) || b.Bytes()[63] != byte(i>>8) {
			t.Fatalf("buffer %d overwritten", i)
		}
	}
	for _, b := range bufs {
		b.Destroy()
	}
	if got := slabs.Load() - base; got > 0 {
		t.Fatalf("%d slabs of 64-byte slots still mapped with nothing in use", got)
	}
}

// A Buf held by value: empty when zero, filled by Alloc, refused a second
// Alloc while in use (it would leak the first slot), zeroed and empty
// again after Destroy, and then reusable.
func TestAlloc_InPlace(t *testing.T) {
	var held struct {
		name string
		b    Buf
	}
	if held.b.Bytes() != nil {
		t.Fatal("zero Buf not empty")
	}
	held.b.Destroy() // no-op on a zero Buf
	before := InUse()
	for _, n := range []int{96, MaxSlot + 1} {
		if err := held.b.Alloc(n); err != nil {
			t.Fatal(err)
		}
		if len(held.b.Bytes()) != n || InUse() != before+1 {
			t.Fatalf("Alloc(%d): %d bytes, %d in use", n, len(held.b.Bytes()), InUse()-before)
		}
		copy(held.b.Bytes(), "secret material")
		if err := held.b.Alloc(n); err == nil {
			t.Fatalf("Alloc(%d) on a buffer in use accepted", n)
		}
		slot, sl := held.b.slot(), held.b.slab
		var keep *Buf // another slot of the slab keeps it mapped, to look at the freed one
		if n <= MaxSlot {
			var err error
			if keep, err = New(n); err != nil || keep.slab != sl {
				t.Fatalf("second buffer: %v, same slab %v", err, keep != nil && keep.slab == sl)
			}
		}
		held.b.Destroy()
		if held.b.Bytes() != nil || InUse() != before+b2i(keep != nil) {
			t.Fatalf("Destroy left %d bytes, %d in use", len(held.b.Bytes()), InUse()-before)
		}
		if keep != nil {
			for i, c := range slot {
				if c != 0 {
					t.Fatalf("byte %d not zeroed", i)
				}
			}
			keep.Destroy()
		}
	}
	if err := held.b.Alloc(0); err == nil {
		t.Fatal("Alloc(0) accepted")
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
