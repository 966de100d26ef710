package projector

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// exchangeModes runs a test with renameat2 as the kernel has it, and with
// RENAME_EXCHANGE refused as on file systems without it (EINVAL), which
// forces the link-and-rename fallback.
func exchangeModes(t *testing.T, fn func(t *testing.T, exchange bool)) {
	for _, exchange := range []bool{true, false} {
		t.Run(fmt.Sprintf("exchange=%v", exchange), func(t *testing.T) {
			if !exchange {
				saved := renameat2
				renameat2 = func(olddirfd int, oldpath string, newdirfd int, newpath string, flags uint) error {
					if flags&unix.RENAME_EXCHANGE != 0 {
						return unix.EINVAL
					}
					return saved(olddirfd, oldpath, newdirfd, newpath, flags)
				}
				t.Cleanup(func() { renameat2 = saved })
			}
			fn(t, exchange)
		})
	}
}

// plant sets the test hook that runs between Apply's checks and the swap (or
// removal) of the owned file p: edit runs there once.
func plant(t *testing.T, p string, edit func()) {
	t.Helper()
	done := false
	testHookReplace = func(q string) {
		if q == p && !done {
			done = true
			edit()
		}
	}
	t.Cleanup(func() { testHookReplace = nil })
}

// conflictCopies returns the contents of the conflict copies of rel.
func conflictCopies(t *testing.T, dir, rel string) []string { return copies(t, dir, "conflicts", rel) }

// copies returns the contents of the copies of rel in a folder (conflicts,
// displaced) of the state folder.
func copies(t *testing.T, dir, kind, rel string) []string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(dir, ".kvsync", kind, filepath.FromSlash(rel)) + ".*")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range matches {
		out = append(out, readFile(t, m))
	}
	slices.Sort(out)
	return out
}

func replaceByRename(t *testing.T, p, data string) {
	t.Helper()
	tmp := p + "~"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

// TestKeepEditsPlanted: a local edit saved after Apply checked a file and
// before it replaced or removed it (planted there by a hook, so every run
// takes that interleaving) is held and reported, never deleted; with the
// exchange and with the link-and-rename fallback. KeepHeld then makes it a
// conflict copy. Without KeepEdits (as before it existed) the edit is gone.
func TestKeepEditsPlanted(t *testing.T) {
	exchangeModes(t, func(t *testing.T, exchange bool) {
		for _, tc := range []struct {
			name   string
			remove bool                         // the batch removes the file (else writes "remote")
			edit   func(t *testing.T, p string) // the local save
		}{
			{"rename-replace", false, func(t *testing.T, p string) { replaceByRename(t, p, "local edit") }},
			{"in place", false, func(t *testing.T, p string) {
				if err := os.WriteFile(p, []byte("local edit"), 0); err != nil {
					t.Fatal(err)
				}
			}},
			{"rename-replace, removal", true, func(t *testing.T, p string) { replaceByRename(t, p, "local edit") }},
			{"in place, removal", true, func(t *testing.T, p string) {
				if err := os.WriteFile(p, []byte("local edit"), 0); err != nil {
					t.Fatal(err)
				}
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dir := t.TempDir()
				d := MustOpen(t, Options{Dir: dir, KeepEdits: true, Fsync: true})
				mustApply(t, d, putc("sub/a.conf", "v1"))
				p := filepath.Join(dir, "sub", "a.conf")
				plant(t, "sub/a.conf", func() { tc.edit(t, p) })
				ch := putc("sub/a.conf", "remote")
				if tc.remove {
					ch = del("sub/a.conf")
				}
				res := mustApply(t, d, ch)
				if len(res.Errors) > 0 {
					t.Fatalf("errors: %v", errPaths(res))
				}
				if tc.remove {
					if exists(p) {
						t.Fatalf("%s not removed", p)
					}
				} else if got := readFile(t, p); got != "remote" {
					t.Fatalf("file holds %q, want the remote value", got)
				}
				if len(res.Displaced) != 1 {
					t.Fatalf("displaced: %+v, want the local edit", res.Displaced)
				}
				dp := res.Displaced[0]
				if dp.Path != "sub/a.conf" || string(dp.Data) != "local edit" || dp.Err != nil {
					t.Fatalf("displaced = {%q %q %v}, want the local edit", dp.Path, dp.Data, dp.Err)
				}
				if got := readFile(t, dp.Held); got != "local edit" {
					t.Fatalf("held file %s holds %q", dp.Held, got)
				}
				if b, err := d.ReadHeld(dp.Held); err != nil || string(b) != "local edit" {
					t.Fatalf("ReadHeld = %q, %v", b, err)
				}
				if got := conflictCopies(t, dir, "sub/a.conf"); len(got) != 0 {
					t.Fatalf("conflict copies %q before KeepHeld", got)
				}
				name, err := d.KeepHeld(dp.Held)
				if err != nil {
					t.Fatal(err)
				}
				if got := readFile(t, name); got != "local edit" || exists(dp.Held) {
					t.Fatalf("conflict copy %s holds %q; held file still there: %v", name, got, exists(dp.Held))
				}
				d.waitTrash()
				noTempNames(t, dir)
			})
		}
	})
}

// TestKeepEditsWithoutItLost documents what KeepEdits prevents: the same
// planted edit, without it, is replaced and gone.
func TestKeepEditsWithoutItLost(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir})
	mustApply(t, d, putc("a.conf", "v1"))
	p := filepath.Join(dir, "a.conf")
	plant(t, "a.conf", func() { replaceByRename(t, p, "local edit") })
	res := mustApply(t, d, putc("a.conf", "remote"))
	if got := readFile(t, p); got != "remote" || len(res.Displaced) != 0 {
		t.Fatalf("file %q, displaced %+v", got, res.Displaced)
	}
	if got := conflictCopies(t, dir, "a.conf"); len(got) != 0 {
		t.Fatalf("conflict copies %q without KeepEdits", got)
	}
}

// TestKeepEditsUnchanged: a displaced file that holds what kvsync wrote, or
// exactly what it writes now, is deleted, not held.
func TestKeepEditsUnchanged(t *testing.T) {
	exchangeModes(t, func(t *testing.T, exchange bool) {
		dir := t.TempDir()
		d := MustOpen(t, Options{Dir: dir, KeepEdits: true})
		mustApply(t, d, putc("a.conf", "v1"), putc("b.conf", "v1"))
		res := mustApply(t, d, putc("a.conf", "v2"))
		plant(t, "b.conf", func() { replaceByRename(t, filepath.Join(dir, "b.conf"), "v2") })
		res2 := mustApply(t, d, putc("b.conf", "v2"))
		if len(res.Displaced)+len(res2.Displaced) != 0 {
			t.Fatalf("displaced: %+v %+v", res.Displaced, res2.Displaced)
		}
		if got := copies(t, dir, "displaced", "b.conf"); len(got) != 0 {
			t.Fatalf("held %q", got)
		}
		d.waitTrash()
		noTempNames(t, dir)
	})
}

// TestKeepEditsLateWriter: a program that truncated the file before the swap
// and writes after it writes into the held file (the same inode); DropHeld
// with the bytes read at the swap keeps it, as a conflict copy.
func TestKeepEditsLateWriter(t *testing.T) {
	exchangeModes(t, func(t *testing.T, exchange bool) {
		dir := t.TempDir()
		d := MustOpen(t, Options{Dir: dir, KeepEdits: true})
		mustApply(t, d, putc("a.conf", "v1"))
		var f *os.File
		plant(t, "a.conf", func() {
			var err error
			if f, err = os.OpenFile(filepath.Join(dir, "a.conf"), os.O_WRONLY|os.O_TRUNC, 0); err != nil {
				t.Fatal(err)
			}
		})
		res := mustApply(t, d, putc("a.conf", "remote"))
		if _, err := f.WriteString("written late"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if len(res.Displaced) != 1 || len(res.Displaced[0].Data) != 0 {
			t.Fatalf("displaced: %+v, want the truncated file", res.Displaced)
		}
		held := res.Displaced[0].Held
		if b, err := d.ReadHeld(held); err != nil || string(b) != "written late" {
			t.Fatalf("held file holds %q (%v), want the late write", b, err)
		}
		kept, err := d.DropHeld(held, sha256.Sum256(nil))
		if err != nil || kept == "" || readFile(t, kept) != "written late" {
			t.Fatalf("DropHeld = %q, %v; want the late write kept", kept, err)
		}
		if got := readFile(t, filepath.Join(dir, "a.conf")); got != "remote" {
			t.Fatalf("file holds %q", got)
		}
	})
}

// TestKeepEditsFolderAppears: a folder made at the path during the write is
// left there; the write fails for that path alone and leaves no temp name.
func TestKeepEditsFolderAppears(t *testing.T) {
	exchangeModes(t, func(t *testing.T, exchange bool) {
		for _, keep := range []bool{true, false} {
			t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
				dir := t.TempDir()
				d := MustOpen(t, Options{Dir: dir, KeepEdits: keep})
				mustApply(t, d, putc("a.conf", "v1"))
				p := filepath.Join(dir, "a.conf")
				plant(t, "a.conf", func() {
					if err := os.Remove(p); err != nil {
						t.Fatal(err)
					}
					if err := os.MkdirAll(filepath.Join(p, "inner"), 0o755); err != nil {
						t.Fatal(err)
					}
				})
				res := mustApply(t, d, putc("a.conf", "remote"))
				if len(res.Errors) != 1 || !errors.Is(res.Errors[0].Err, unix.EISDIR) {
					t.Fatalf("errors %v, want a.conf: is a directory", errPaths(res))
				}
				if fi, err := os.Stat(filepath.Join(p, "inner")); err != nil || !fi.IsDir() {
					t.Fatalf("the folder is not back at a.conf: %v", err)
				}
				d.waitTrash()
				noTempNames(t, dir)
			})
		}
	})
}

// TestKeepEditsFileVanishes: an owned file removed locally before the write
// is simply written again; one that reappears is not overwritten unseen.
func TestKeepEditsFileVanishes(t *testing.T) {
	exchangeModes(t, func(t *testing.T, exchange bool) {
		dir := t.TempDir()
		d := MustOpen(t, Options{Dir: dir, KeepEdits: true})
		mustApply(t, d, putc("a.conf", "v1"))
		p := filepath.Join(dir, "a.conf")
		plant(t, "a.conf", func() {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		})
		res := mustApply(t, d, putc("a.conf", "remote"))
		if got := readFile(t, p); got != "remote" || len(res.Errors)+len(res.Displaced) != 0 {
			t.Fatalf("file %q, result %+v", got, res)
		}
		d.waitTrash() // replaced contents are freed off the writer's path
		noTempNames(t, dir)
	})
}

// TestPlaceNeverReplaces: a new file is never renamed over a file that
// appeared at its path during the write (a single write uses a named temp
// file and a rename).
func TestPlaceNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir})
	fc := d.folders()
	defer fc.close()
	fd, err := fc.get("")
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := writeTemp(fd, []byte("kvsync"), 0o644, -1, -1, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "new.conf"), []byte("local"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fc.place(tmp, "new.conf"); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("place over a file that appeared: %v, want ErrExist", err)
	}
	if got := readFile(t, filepath.Join(dir, "new.conf")); got != "local" {
		t.Fatalf("new.conf holds %q", got)
	}
	d.waitTrash() // replaced contents are freed off the writer's path
	noTempNames(t, dir)
}

// TestDirLocalFileAPI covers what push-back uses instead of touching the
// folder itself: ReadFile and Lstat (no symlink followed), Adopt, Discard,
// SaveConflict and DropConflict.
func TestDirLocalFileAPI(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := MustOpen(t, Options{Dir: dir})
	mustApply(t, d, putc("sub/a", "kvsync"))
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub", filepath.Join(dir, "sublink")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "local"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}

	// ReadFile, Lstat
	if b, err := d.ReadFile("sub/a"); err != nil || string(b) != "kvsync" {
		t.Fatalf("ReadFile(sub/a) = %q, %v", b, err)
	}
	for _, p := range []string{"link", "sublink/a", "sub", "missing", "../x", ".kvsync/manifest"} {
		if b, err := d.ReadFile(p); err == nil {
			t.Errorf("ReadFile(%q) = %q, want an error", p, b)
		}
	}
	if fi, err := d.Lstat("link"); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("Lstat(link) = %v, %v; want a symlink", fi, err)
	}
	if fi, err := d.Lstat("sub"); err != nil || !fi.IsDir() {
		t.Errorf("Lstat(sub) = %v, %v; want a folder", fi, err)
	}
	if fi, err := d.Lstat("local"); err != nil || !fi.Mode().IsRegular() || fi.Size() != 4 || fi.Mode().Perm() != 0o600 {
		t.Errorf("Lstat(local) = %v, %v", fi, err)
	}
	if _, err := d.Lstat("sublink/a"); err == nil {
		t.Errorf("Lstat(sublink/a) followed the symlinked folder")
	}
	if _, err := d.Lstat("missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Lstat(missing): %v, want ErrNotExist", err)
	}

	// Adopt: only a foreign regular file holding exactly data.
	for _, tc := range []struct {
		p, data string
		want    bool
	}{{"local", "other", false}, {"link", "secret", false}, {"missing", "x", false}, {"local", "mine", true}} {
		if got, err := d.Adopt(tc.p, []byte(tc.data)); err != nil || got != tc.want {
			t.Errorf("Adopt(%q, %q) = %v, %v; want %v", tc.p, tc.data, got, err, tc.want)
		}
	}
	if h, ok := d.Hash("local"); !ok || h != sha256.Sum256([]byte("mine")) {
		t.Fatalf("local not owned after Adopt")
	}
	if res := mustApply(t, d, putc("local", "remote")); len(res.Errors) > 0 {
		t.Fatalf("write the adopted file: %v", errPaths(res))
	}

	// Discard: only a foreign file that still holds the given bytes.
	if err := os.WriteFile(filepath.Join(dir, "gone"), []byte("lost the conflict"), 0o644); err != nil {
		t.Fatal(err)
	}
	if saved, err := d.Discard("gone", sha256.Sum256([]byte("something else"))); err != nil || saved != "" {
		t.Fatalf("Discard of changed bytes = %q, %v", saved, err)
	}
	if got := readFile(t, filepath.Join(dir, "gone")); got != "lost the conflict" {
		t.Fatalf("a file holding other bytes was not put back: %q", got)
	}
	if _, err := d.Discard("local", [32]byte{}); err == nil {
		t.Fatalf("Discard of an owned file succeeded")
	}
	if saved, err := d.Discard("gone", sha256.Sum256([]byte("lost the conflict"))); err != nil || saved != "" || exists(filepath.Join(dir, "gone")) {
		t.Fatalf("Discard = %q, %v; file still there: %v", saved, err, exists(filepath.Join(dir, "gone")))
	}

	// SaveConflict
	name, err := d.SaveConflict("sub/a", []byte("edit"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, filepath.Join(dir, ".kvsync", "conflicts", "sub", "a.")) || readFile(t, name) != "edit" {
		t.Fatalf("conflict copy %s", name)
	}
	// Held files: only names in the held folder are taken.
	for _, bad := range []string{name, filepath.Join(dir, "sub", "a"), filepath.Join(dir, ".kvsync", "displaced", "..", "manifest")} {
		if _, err := d.ReadHeld(bad); err == nil {
			t.Errorf("ReadHeld(%s) succeeded", bad)
		}
		if _, err := d.DropHeld(bad, sha256.Sum256([]byte("edit"))); err == nil {
			t.Errorf("DropHeld(%s) succeeded", bad)
		}
		if _, err := d.KeepHeld(bad); err == nil {
			t.Errorf("KeepHeld(%s) succeeded", bad)
		}
	}
	if got := readFile(t, name); got != "edit" || readFile(t, filepath.Join(dir, "sub", "a")) != "kvsync" {
		t.Fatalf("a refused held-file call changed a file")
	}
	d.waitTrash() // replaced contents are freed off the writer's path
	noTempNames(t, dir)

	// Adopt of an owned file: an edit pushed and coming back becomes
	// kvsync's version without a rewrite.
	if err := os.WriteFile(filepath.Join(dir, "sub", "a"), []byte("pushed edit"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.Adopt("sub/a", []byte("pushed edit")); err != nil || !ok {
		t.Fatalf("Adopt of an owned file = %v, %v", ok, err)
	}
	if h, _ := d.Hash("sub/a"); h != sha256.Sum256([]byte("pushed edit")) {
		t.Fatalf("manifest not updated by Adopt")
	}
}

// TestHeldAfterCrash: a displaced edit still held when kvsync stops (the
// caller never settled it) is a conflict copy after the next Open.
func TestHeldAfterCrash(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(Options{Dir: dir, KeepEdits: true, UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, d, putc("sub/a.conf", "v1"))
	plant(t, "sub/a.conf", func() { replaceByRename(t, filepath.Join(dir, "sub", "a.conf"), "local edit") })
	res := mustApply(t, d, putc("sub/a.conf", "remote"))
	if len(res.Displaced) != 1 {
		t.Fatalf("displaced %+v", res.Displaced)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	MustOpen(t, Options{Dir: dir, KeepEdits: true})
	if got := conflictCopies(t, dir, "sub/a.conf"); !slices.Equal(got, []string{"local edit"}) {
		t.Fatalf("conflict copies after reopen: %q", got)
	}
	if got := copies(t, dir, "displaced", "sub/a.conf"); len(got) != 0 {
		t.Fatalf("still held after reopen: %q", got)
	}
}

func TestReserved(t *testing.T) {
	for rel, want := range map[string]bool{
		"a.conf": false, "sub/a": false, "a..b": false, ".hidden": false,
		".kvsync/manifest": true, "sub/.kvsync-tmp-x": true, "..data/a": true, "..data_1/x": true, ".kvsync": true,
	} {
		if got := Reserved(rel); got != want {
			t.Errorf("Reserved(%q) = %v, want %v", rel, got, want)
		}
	}
}

// TestKeepEditsReconcile: a complete update that repairs a locally edited
// file, or removes one the bucket no longer has, holds and reports the edit.
func TestKeepEditsReconcile(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir, KeepEdits: true})
	mustApply(t, d, putc("kept.conf", "v1"), putc("gone.conf", "v1"), putc("same.conf", "v1"))
	for _, p := range []string{"kept.conf", "gone.conf"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("edited "+p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := d.ReconcileSeq(maps.All(map[string][]byte{"kept.conf": []byte("v1"), "same.conf": []byte("v1")}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, dp := range res.Displaced {
		got = append(got, dp.Path+"="+readFile(t, dp.Held))
	}
	slices.Sort(got)
	if want := []string{"gone.conf=edited gone.conf", "kept.conf=edited kept.conf"}; !slices.Equal(got, want) {
		t.Fatalf("displaced %q, want %q", got, want)
	}
	if got := readFile(t, filepath.Join(dir, "kept.conf")); got != "v1" || exists(filepath.Join(dir, "gone.conf")) {
		t.Fatalf("kept.conf %q, gone.conf there: %v", got, exists(filepath.Join(dir, "gone.conf")))
	}
}

// TestKeepEditsWriteAfterCompare: a program that opened the file before the
// swap (without truncating it) and writes only after the batch compared the
// swapped-out file writes into kvsync's old content; within the trash's grace
// period that write is still seen, and kept as a conflict copy.
func TestKeepEditsWriteAfterCompare(t *testing.T) {
	exchangeModes(t, func(t *testing.T, exchange bool) {
		dir := t.TempDir()
		d := MustOpen(t, Options{Dir: dir, KeepEdits: true})
		mustApply(t, d, putc("a.conf", "v1"))
		var f *os.File
		plant(t, "a.conf", func() {
			var err error
			if f, err = os.OpenFile(filepath.Join(dir, "a.conf"), os.O_WRONLY, 0); err != nil {
				t.Fatal(err)
			}
		})
		res := mustApply(t, d, putc("a.conf", "remote"))
		if len(res.Displaced) != 0 {
			t.Fatalf("displaced %+v: the file held kvsync's bytes when compared", res.Displaced)
		}
		if _, err := f.WriteString("XY"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		d.waitTrash()
		if got := conflictCopies(t, dir, "a.conf"); !slices.Equal(got, []string{"XY"}) {
			t.Fatalf("conflict copies %q, want the late write", got)
		}
		d.waitTrash() // replaced contents are freed off the writer's path
		noTempNames(t, dir)
	})
}
