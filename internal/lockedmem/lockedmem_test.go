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
	slot := b.slot
	b.Destroy()
	if !bytes.Equal(slot, make([]byte, SlotSize)) {
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
