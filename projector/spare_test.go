package projector

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// spareDirOf is the spare folder of the projection folder dir.
func spareDirOf(dir string) string { return filepath.Join(dir, stateDir, spareDir) }

func ino(tb testing.TB, p string) uint64 {
	tb.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// spareInos lists the inodes parked in the spare folder of dir.
func spareInos(tb testing.TB, dir string) map[uint64]bool {
	tb.Helper()
	ents, err := os.ReadDir(spareDirOf(dir))
	if err != nil {
		tb.Fatal(err)
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		out[ino(tb, filepath.Join(spareDirOf(dir), e.Name()))] = true
	}
	return out
}

// openSpareDir opens a Dir and skips the test where spares are not kept.
func openSpareDir(t *testing.T, opts Options) *Dir {
	t.Helper()
	d := MustOpen(t, opts)
	if d.spare == nil {
		t.Skip("the file system of the temp folder does not keep spares (leases not local)")
	}
	return d
}

func TestSpareReused(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		t.Run(fmt.Sprintf("fsync=%v", fsync), func(t *testing.T) {
			dir := t.TempDir()
			d := openSpareDir(t, Options{Dir: dir, Fsync: fsync})
			mustApply(t, d, putc("a", "first value, a bit longer"), putc("sub/b", "B1"))
			first := ino(t, filepath.Join(dir, "a"))
			mustApply(t, d, putc("a", "second"))
			d.waitTrash()
			if !spareInos(t, dir)[first] {
				t.Fatalf("the replaced inode %d is not parked as a spare (spares %v)", first, spareInos(t, dir))
			}
			// Parked contents are zeroed: no old value lingers on disk.
			ents, _ := os.ReadDir(spareDirOf(dir))
			for _, e := range ents {
				b, err := os.ReadFile(filepath.Join(spareDirOf(dir), e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if len(b) == 0 || !bytes.Equal(b, make([]byte, len(b))) {
					t.Fatalf("spare %s holds %q, want zeros of the old length", e.Name(), b)
				}
			}
			mustApply(t, d, putc("a", "third"))
			if got := ino(t, filepath.Join(dir, "a")); got != first {
				t.Fatalf("a is inode %d after the third write, want the spare %d", got, first)
			}
			if got := readFile(t, filepath.Join(dir, "a")); got != "third" {
				t.Fatalf("a = %q, want third (length set, not the longer old length)", got)
			}
			// A batch reuses spares too, across folders.
			mustApply(t, d, putc("a", "fourth"), putc("sub/b", "B2"))
			d.waitTrash()
			mustApply(t, d, putc("a", "fifth"), putc("sub/b", "B3"))
			for p, want := range map[string]string{"a": "fifth", "sub/b": "B3"} {
				if got := readFile(t, filepath.Join(dir, p)); got != want {
					t.Fatalf("%s = %q, want %q", p, got, want)
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if n := len(spareInos(t, dir)); n != 0 {
				t.Fatalf("%d spares left after Close, want none", n)
			}
		})
	}
}

// An inode somebody holds open is never reused: the reader keeps reading the
// old bytes, whether it opened the file before the replace or opened the
// parked spare afterwards.
func TestSpareNotReusedWhileOpen(t *testing.T) {
	dir := t.TempDir()
	d := openSpareDir(t, Options{Dir: dir})
	mustApply(t, d, putc("a", "A1"))
	r, err := os.Open(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	held := ino(t, filepath.Join(dir, "a"))
	for i := 2; i <= 6; i++ {
		mustApply(t, d, putc("a", fmt.Sprintf("A%d", i)))
		d.waitTrash()
		if got := ino(t, filepath.Join(dir, "a")); got == held {
			t.Fatalf("write %d reused inode %d, held open by a reader", i, held)
		}
	}
	if spareInos(t, dir)[held] {
		t.Fatalf("inode %d, held open by a reader, was parked", held)
	}
	if got, _ := io.ReadAll(r); string(got) != "A1" {
		t.Fatalf("the reader reads %q, want A1", got)
	}

	// A reader of a parked spare: the spare is not filled, it is dropped.
	spares := spareInos(t, dir)
	if len(spares) == 0 {
		t.Fatal("no spare parked after five replaces")
	}
	ents, _ := os.ReadDir(spareDirOf(dir))
	var readers []*os.File
	for _, e := range ents {
		f, err := os.Open(filepath.Join(spareDirOf(dir), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, f)
		defer f.Close()
	}
	mustApply(t, d, putc("a", "A7"))
	if got := ino(t, filepath.Join(dir, "a")); spares[got] {
		t.Fatalf("a took spare inode %d though a reader holds it open", got)
	}
	for _, f := range readers {
		b, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Fatalf("a reader of a spare sees %q: the spare was written while open", b)
		}
	}
	if got := readFile(t, filepath.Join(dir, "a")); got != "A7" {
		t.Fatalf("a = %q, want A7", got)
	}
}

// A file with a second link (a hard link made outside kvsync) is never
// reused or zeroed: the other name keeps the old bytes.
func TestSpareNotReusedWithLink(t *testing.T) {
	dir := t.TempDir()
	d := openSpareDir(t, Options{Dir: dir})
	mustApply(t, d, putc("a", "A1"))
	other := filepath.Join(filepath.Dir(dir), filepath.Base(dir)+"-link")
	if err := os.Link(filepath.Join(dir, "a"), other); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(other)
	linked := ino(t, other)
	for i := 2; i <= 5; i++ {
		mustApply(t, d, putc("a", fmt.Sprintf("A%d", i)))
		d.waitTrash()
	}
	if got := ino(t, filepath.Join(dir, "a")); got == linked {
		t.Fatalf("a reused inode %d, which has another link", linked)
	}
	if got := readFile(t, other); got != "A1" {
		t.Fatalf("the other link reads %q, want A1", got)
	}
}

// A spare takes the Dir's mode even when the old file's mode was changed by
// hand, and a spare a crash left behind is removed at Open.
func TestSpareModeAndLeftovers(t *testing.T) {
	dir := t.TempDir()
	d := openSpareDir(t, Options{Dir: dir, Mode: 0o640})
	mustApply(t, d, putc("a", "A1"))
	if err := os.Chmod(filepath.Join(dir, "a"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustApply(t, d, putc("a", "A2"))
	d.waitTrash()
	mustApply(t, d, putc("a", "A3"))
	fi, err := os.Stat(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("a has mode %v, want 0640", fi.Mode().Perm())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(spareDirOf(dir), "zz"), []byte("left by a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	d = openSpareDir(t, Options{Dir: dir, Mode: 0o640})
	defer d.Close()
	if n := len(spareInos(t, dir)); n != 0 {
		t.Fatalf("%d spares after Open, want the leftover removed", n)
	}
	if got := readFile(t, filepath.Join(dir, "a")); got != "A3" {
		t.Fatalf("a = %q, want A3", got)
	}
}

// Snapshot mode keeps no spares.
func TestSpareNotInSnapshot(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir, Snapshot: true})
	defer d.Close()
	if d.spare != nil {
		t.Fatal("snapshot mode keeps spares")
	}
	mustApply(t, d, putc("a", "A1"))
	mustApply(t, d, putc("a", "A2"))
	if _, err := os.Stat(spareDirOf(dir)); !os.IsNotExist(err) {
		t.Fatalf("snapshot mode made a spare folder (%v)", err)
	}
}
