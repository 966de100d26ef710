package agent

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/kvsync/kvsync/agent/watch"
	"github.com/kvsync/kvsync/internal/kvkey"
)

func TestLiteralPrefix(t *testing.T) {
	for _, tt := range []struct{ filter, want string }{
		{">", ""}, {"*", ""}, {"app.>", "app."}, {"app.*.x", "app."}, {"a.b.>", "a.b."},
		{"*.x", ""}, {"a/b.>", "a/b."}, {"plain", "plain"},
	} {
		if got := literalPrefix(tt.filter); got != tt.want {
			t.Errorf("literalPrefix(%q)=%q, want %q", tt.filter, got, tt.want)
		}
	}
}

// TestStateListMatchesScan checks the sorted view against a plain scan, also
// after updates, inserts and deletes.
func TestStateListMatchesScan(t *testing.T) {
	st := newState(nil)
	b := st.bucket("b")
	b.synced = true
	keys := []string{"app", "app.a", "app.b.c", "app.b.d", "apple", "b", "b.app.x", "x.y", "app/x", "app.z"}
	for i, k := range keys {
		b.apply(&watch.Entry{Bucket: "b", Key: k, Value: []byte(fmt.Sprint(i)), Revision: uint64(i + 1)})
	}
	filters := []string{">", "*", "app.>", "app.*", "app.b.>", "app.*.c", "*.y", "b.>", "app", "nope.>"}
	check := func(when string) {
		for _, f := range filters {
			var want []string
			for _, k := range b.view() {
				if kvkey.Match(f, k.Key) {
					want = append(want, k.Key+"="+string(k.Value))
				}
			}
			var got, gotKeys []string
			for _, e := range st.List("b", f) {
				got = append(got, e.Key+"="+string(e.Value))
				gotKeys = append(gotKeys, e.Key)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: List(%q)=%v, want %v", when, f, got, want)
			}
			if !slices.IsSorted(gotKeys) {
				t.Errorf("%s: List(%q) not sorted: %v", when, f, got)
			}
		}
	}
	check("initial")
	b.apply(&watch.Entry{Bucket: "b", Key: "app.a", Value: []byte("updated"), Revision: 100})
	if e := st.List("b", "app.>")[0]; string(e.Value) != "updated" {
		t.Fatalf("update not in the view: %q", e.Value)
	}
	check("after update")
	b.apply(&watch.Entry{Bucket: "b", Key: "app.aa", Value: []byte("new"), Revision: 101})
	b.apply(&watch.Entry{Bucket: "b", Key: "app.b.c", Op: OpDelete, Revision: 102})
	check("after insert and delete")
	if got := len(st.List("b", "app.>")); got != 4 { // app.a app.aa app.b.d app.z
		t.Fatalf("app.> has %d entries, want 4", got)
	}
}

// TestStateEntry checks that Get and List give templates the whole entry,
// bucket and operation included, though the state does not store them.
func TestStateEntry(t *testing.T) {
	st := newState(nil)
	b := st.bucket("b")
	b.synced = true
	b.apply(&watch.Entry{Bucket: "b", Key: "app.a", Value: []byte("v"), Revision: 7})
	e, ok := st.Get("b", "app.a")
	if !ok {
		t.Fatal("Get: not found")
	}
	if got, want := fmt.Sprintf("%s %s %s %d %s", e.Bucket, e.Key, e.Value, e.Revision, e.Op), "b app.a v 7 PUT"; got != want {
		t.Errorf("Get=%q, want %q", got, want)
	}
	for _, f := range []string{"app.a", "app.>"} {
		l := st.List("b", f)
		if len(l) != 1 || !reflect.DeepEqual(l[0], e) {
			t.Errorf("List(%q)=%v, want [%v]", f, l, e)
		}
	}
}
