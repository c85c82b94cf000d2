package keystore

import (
	"reflect"
	"testing"
)

// TestSnapshotEncode_CoversEveryField: the snapshot's MAC is over the
// digest of what encodeBody writes (snapenc.go), which lists Snapshot's
// fields by hand (snapHead, snapTail, appendEntry). A field added to
// Snapshot or Entry but not there would be restored without being
// authenticated: anyone who can hand a node a snapshot (a member over
// InstallSnapshot, a restore) could set it under a valid MAC. So every
// field must be listed, with its type and JSON tag.
func TestSnapshotEncode_CoversEveryField(t *testing.T) {
	listed := map[string]reflect.StructField{}
	for _, typ := range []reflect.Type{reflect.TypeFor[snapHead](), reflect.TypeFor[snapTail]()} {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			listed[f.Name] = f
		}
	}
	st := reflect.TypeFor[Snapshot]()
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		switch f.Name {
		case "Entries", "MAC": // written by encodeBody and writeJSON themselves
			continue
		}
		l, ok := listed[f.Name]
		if !ok {
			t.Errorf("Snapshot.%s is not in snapHead or snapTail: it would not be encoded nor covered by the MAC", f.Name)
			continue
		}
		if l.Type != f.Type || l.Tag.Get("json") != f.Tag.Get("json") {
			t.Errorf("Snapshot.%s: %v %q, encoded as %v %q", f.Name, f.Type, f.Tag.Get("json"), l.Type, l.Tag.Get("json"))
		}
		delete(listed, f.Name)
	}
	for name := range listed {
		t.Errorf("snapHead/snapTail field %s is not a Snapshot field", name)
	}
	// appendEntry writes v, t and d.
	et := reflect.TypeFor[Entry]()
	var tags []string
	for i := 0; i < et.NumField(); i++ {
		tags = append(tags, et.Field(i).Tag.Get("json"))
	}
	if !reflect.DeepEqual(tags, []string{"v", "t", "d"}) {
		t.Errorf("Entry's fields are %q; appendEntry writes v, t, d only", tags)
	}
}
