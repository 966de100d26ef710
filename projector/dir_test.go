package projector

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"time"
)

// MustOpen opens a projection in dir and closes it when the test ends.
func MustOpen(tb testing.TB, opts Options) *Dir {
	tb.Helper()
	if opts.UID == 0 && opts.GID == 0 {
		opts.UID, opts.GID = -1, -1
	}
	d, err := Open(opts)
	if err != nil {
		tb.Fatalf("Open(%s): %v", opts.Dir, err)
	}
	tb.Cleanup(func() { _ = d.Close() })
	return d
}

// mustApply applies changes and fails the test on a batch error.
func mustApply(tb testing.TB, d *Dir, changes ...Change) Result {
	tb.Helper()
	res, err := d.Apply(changes)
	if err != nil {
		tb.Fatalf("Apply: %v", err)
	}
	return res
}

func putc(p, data string) Change { return Change{Path: p, Data: []byte(data)} }
func del(p string) Change        { return Change{Path: p, Remove: true} }

func readFile(tb testing.TB, p string) string {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatalf("read: %v", err)
	}
	return string(b)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func errPaths(res Result) string {
	var s []string
	for _, e := range res.Errors {
		s = append(s, e.Path)
	}
	return strings.Join(s, " ")
}

func TestDirWriteUpdateRemove(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		t.Run("fsync="+strconv.FormatBool(fsync), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "proj") // created by Open
			d := MustOpen(t, Options{Dir: dir, Mode: 0o640, DirMode: 0o750, Fsync: fsync})
			res := mustApply(t, d, putc("a", "A"), putc("b/c", "C"), putc("d/e/f", "F"))
			if got, want := strings.Join(res.Written, " "), "a b/c d/e/f"; got != want {
				t.Fatalf("Written=%q, want %q", got, want)
			}
			if len(res.Errors) != 0 {
				t.Fatalf("Errors=%v", res.Errors)
			}
			for p, want := range map[string]string{"a": "A", "b/c": "C", "d/e/f": "F"} {
				if got := readFile(t, filepath.Join(dir, p)); got != want {
					t.Fatalf("%s=%q, want %q", p, got, want)
				}
			}
			fi, err := os.Stat(filepath.Join(dir, "b/c"))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fi.Mode().Perm(), fs.FileMode(0o640); got != want {
				t.Fatalf("file mode=%v, want %v", got, want)
			}
			fi, err = os.Stat(filepath.Join(dir, "d/e"))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fi.Mode().Perm(), fs.FileMode(0o750); got != want {
				t.Fatalf("folder mode=%v, want %v", got, want)
			}

			res = mustApply(t, d, putc("a", "A2"), del("b/c"), del("never-existed"))
			if got, want := strings.Join(res.Written, " "), "a"; got != want {
				t.Fatalf("Written=%q, want %q", got, want)
			}
			if got, want := strings.Join(res.Removed, " "), "b/c"; got != want {
				t.Fatalf("Removed=%q, want %q", got, want)
			}
			if got, want := readFile(t, filepath.Join(dir, "a")), "A2"; got != want {
				t.Fatalf("a=%q, want %q", got, want)
			}
			if exists(filepath.Join(dir, "b")) {
				t.Fatalf("folder b was created by kvsync and is empty: should be pruned")
			}
			if got, want := d.Owns("b/c"), false; got != want {
				t.Fatalf("Owns(b/c)=%v, want %v", got, want)
			}
			if h, ok := d.Hash("a"); !ok || h != sha256.Sum256([]byte("A2")) {
				t.Fatalf("Hash(a)=%x,%v, want sha256(A2)", h, ok)
			}
			// Last change of a path wins within a batch.
			mustApply(t, d, putc("z", "1"), del("z"), putc("z", "3"))
			if got, want := readFile(t, filepath.Join(dir, "z")), "3"; got != want {
				t.Fatalf("z=%q, want %q", got, want)
			}
			d.waitTrash() // old contents are unlinked in the background
			if ents, _ := os.ReadDir(dir); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), tempPrefix) }) {
				t.Fatalf("temp files left in %s: %v", dir, ents)
			}
		})
	}
}

// noTempNames fails the test if a kvsync temp name is left anywhere under dir.
func noTempNames(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), tempPrefix) {
			return fmt.Errorf("temp name left: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDirNewFilesUnnamed: new files of a batch are written as unnamed temp
// files and linked at their name (where the file system allows it), with the
// configured mode, and leave no temp name; linking never replaces a file that
// appeared meanwhile.
func TestDirNewFilesUnnamed(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		t.Run(fmt.Sprintf("fsync=%v", fsync), func(t *testing.T) {
			dir := t.TempDir()
			d := MustOpen(t, Options{Dir: dir, Fsync: fsync, Mode: 0o640})
			if d.tmpfiles == 0 {
				t.Skip("no O_TMPFILE or /proc here: the named temp path is tested elsewhere")
			}
			var batch []Change
			for i := range 50 {
				batch = append(batch, putc(fmt.Sprintf("d%d/k%d", i%3, i), fmt.Sprintf("v%d", i)))
			}
			res := mustApply(t, d, batch...)
			if len(res.Written) != 50 {
				t.Fatalf("Written = %d paths, want 50", len(res.Written))
			}
			for i := range 50 {
				p := filepath.Join(dir, fmt.Sprintf("d%d/k%d", i%3, i))
				if got := readFile(t, p); got != fmt.Sprintf("v%d", i) {
					t.Fatalf("%s = %q", p, got)
				}
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o640 || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
					t.Fatalf("%s: mode %v, %d links; want 0640 and 1", p, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Nlink)
				}
			}
			d.waitTrash()
			noTempNames(t, dir)
			// A name that exists is never replaced by a link.
			if err := os.WriteFile(filepath.Join(dir, "theirs"), []byte("operator's"), 0o644); err != nil {
				t.Fatal(err)
			}
			fd := d.newTmpfile(int(d.top.Fd()), []byte("ours"))
			if fd < 0 {
				t.Fatal("newTmpfile failed where tmpfiles are on")
			}
			defer unix.Close(fd)
			fc := d.folders()
			defer fc.close()
			if err := fc.link(fd, "theirs"); !errors.Is(err, fs.ErrExist) {
				t.Fatalf("link over an existing file: %v, want ErrExist", err)
			}
			if got := readFile(t, filepath.Join(dir, "theirs")); got != "operator's" {
				t.Fatalf("theirs = %q", got)
			}
		})
	}
}

// TestDirRemoveLastFileFsync: removing, alone, the last file of a folder
// kvsync created prunes the folder and makes that durable without trying to
// sync the folder it just removed.
func TestDirRemoveLastFileFsync(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir, Fsync: true})
	mustApply(t, d, putc("x/y/z", "1"), putc("top", "t"))
	res, err := d.Apply([]Change{del("x/y/z")})
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("Apply = %+v, %v", res, err)
	}
	if exists(filepath.Join(dir, "x")) {
		t.Fatalf("x was created by kvsync and is empty: should be pruned")
	}
}

// TestReplaceFreesOldContents: a replace keeps the old contents under a temp
// name only until the background unlink: afterwards the file has one link, no
// temp name is left in any folder, and a reader that had the old file open
// still reads the old bytes.
func TestReplaceFreesOldContents(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		t.Run(fmt.Sprintf("fsync=%v", fsync), func(t *testing.T) {
			dir := t.TempDir()
			d := MustOpen(t, Options{Dir: dir, Fsync: fsync})
			mustApply(t, d, putc("a", "A1"), putc("sub/b", "B1"))
			r, err := os.Open(filepath.Join(dir, "a"))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			for i := 2; i <= 4; i++ {
				mustApply(t, d, putc("a", fmt.Sprintf("A%d", i)), putc("sub/b", fmt.Sprintf("B%d", i)))
			}
			mustApply(t, d, putc("a", "A5")) // a single change takes the one-file path
			d.waitTrash()                    // old contents are unlinked in the background
			if got, _ := io.ReadAll(r); string(got) != "A1" {
				t.Fatalf("an open reader of the old a reads %q, want A1", got)
			}
			for p, want := range map[string]string{"a": "A5", "sub/b": "B4"} {
				if got := readFile(t, filepath.Join(dir, p)); got != want {
					t.Fatalf("%s = %q, want %q", p, got, want)
				}
				fi, err := os.Stat(filepath.Join(dir, p))
				if err != nil {
					t.Fatal(err)
				}
				if n := fi.Sys().(*syscall.Stat_t).Nlink; n != 1 {
					t.Fatalf("%s has %d links, want 1", p, n)
				}
			}
			noTempNames(t, dir)
			// A folder emptied right after a replace in it is still pruned,
			// though the old content's temp name may not be unlinked yet.
			mustApply(t, d, putc("sub/b", "B5"), putc("a", "A6"))
			mustApply(t, d, del("sub/b"))
			if exists(filepath.Join(dir, "sub")) {
				t.Fatalf("sub was created by kvsync and is empty: should be pruned")
			}
			// Close waits for the background unlinks.
			mustApply(t, d, putc("a", "A7"))
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			noTempNames(t, dir)
		})
	}
}

// TestReplacedInodeNeverReused: the inode of a replaced file is never
// given other contents. A process that resolved the old name before the
// replace (here an O_PATH descriptor, which no lease or open count sees) and
// opens it afterwards reads the old bytes, never another key's value or
// zeros, however many writes came in between, in both write paths (one
// change, a batch).
func TestReplacedInodeNeverReused(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir})
	mustApply(t, d, putc("a", "old value of a"), putc("b", "B0"))
	fd, err := unix.Open(filepath.Join(dir, "a"), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	mustApply(t, d, putc("a", "new value of a"))
	d.waitTrash()
	for i := 1; i <= 20; i++ {
		mustApply(t, d, putc("b", fmt.Sprintf("secret of b, %d", i)))
		mustApply(t, d, putc("b", fmt.Sprintf("B%d", i)), putc("c", fmt.Sprintf("C%d", i)))
	}
	d.waitTrash()
	got, err := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		t.Skipf("cannot reopen through /proc: %v", err)
	}
	if string(got) != "old value of a" {
		t.Fatalf("a late opener of the old a reads %q, want %q", got, "old value of a")
	}
}

func TestDirUnchangedNotRewritten(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir})
	mustApply(t, d, putc("a", "same"), putc("x/b", "same"))
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	before := map[string]os.FileInfo{}
	for _, p := range []string{"a", "x/b"} {
		if err := os.Chtimes(filepath.Join(dir, p), past, past); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		before[p] = fi
	}
	res := mustApply(t, d, putc("a", "same"), putc("x/b", "same"))
	if res.Changed() || len(res.Errors) != 0 {
		t.Fatalf("Apply of identical bytes=%+v, want no change", res)
	}
	res, err := d.ReconcileSeq(maps.All(map[string][]byte{"a": []byte("same"), "x/b": []byte("same")}))
	if err != nil || res.Changed() {
		t.Fatalf("Reconcile of identical bytes=%+v, %v, want no change", res, err)
	}
	for p, fi := range before {
		after, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := after.Sys().(*syscall.Stat_t).Ino, fi.Sys().(*syscall.Stat_t).Ino; got != want {
			t.Fatalf("%s inode=%d, want %d (rewritten)", p, got, want)
		}
		if got, want := after.ModTime(), fi.ModTime(); !got.Equal(want) {
			t.Fatalf("%s mtime=%v, want %v (rewritten)", p, got, want)
		}
	}
}

func TestDirForeign(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		t.Run("snapshot="+strconv.FormatBool(snapshot), func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "f"), []byte("theirs"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "sub/g"), []byte("theirs"), 0o600); err != nil {
				t.Fatal(err)
			}
			d := MustOpen(t, Options{Dir: dir, Snapshot: snapshot})
			res := mustApply(t, d, putc("f", "ours"), putc("sub/g", "ours"), putc("ok", "ours"))
			if got, want := errPaths(res), "f sub/g"; got != want {
				t.Fatalf("error paths=%q, want %q (%v)", got, want, res.Errors)
			}
			for _, e := range res.Errors {
				if !errors.Is(e, ErrForeign) {
					t.Fatalf("error %v does not wrap ErrForeign", e)
				}
			}
			if got, want := strings.Join(res.Written, " "), "ok"; got != want {
				t.Fatalf("Written=%q, want %q", got, want)
			}
			res = mustApply(t, d, del("f"), del("sub/g"))
			if got, want := errPaths(res), "f sub/g"; got != want {
				t.Fatalf("remove: error paths=%q, want %q (%v)", got, want, res.Errors)
			}
			if _, err := d.ReconcileSeq(maps.All(map[string][]byte{})); err != nil {
				t.Fatal(err)
			}
			res, err := d.ReconcileSeq(maps.All(map[string][]byte{"f": []byte("ours")}))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := errPaths(res), "f"; got != want {
				t.Fatalf("Reconcile: error paths=%q, want %q", got, want)
			}
			for _, p := range []string{"f", "sub/g"} {
				if got, want := readFile(t, filepath.Join(dir, p)), "theirs"; got != want {
					t.Fatalf("foreign %s=%q, want %q", p, got, want)
				}
			}
			if exists(filepath.Join(dir, "ok")) {
				t.Fatalf("ok was not wanted by Reconcile and should be gone")
			}
			if got, want := d.Owns("f"), false; got != want {
				t.Fatalf("Owns(f)=%v, want %v", got, want)
			}
		})
	}
}

func TestDirPrune(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "pre"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := MustOpen(t, Options{Dir: dir})
	mustApply(t, d, putc("pre/x", "1"), putc("new/y/z", "2"), putc("new/y/w", "3"), putc("new/keep", "4"))
	if err := os.WriteFile(filepath.Join(dir, "new/foreign"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mustApply(t, d, del("pre/x"), del("new/y/z"))
	if !exists(filepath.Join(dir, "new/y")) {
		t.Fatalf("new/y still holds w: must stay")
	}
	mustApply(t, d, del("new/y/w"), del("new/keep"))
	for p, want := range map[string]bool{"pre": true, "new": true, "new/y": false, "new/foreign": true} {
		if got := exists(filepath.Join(dir, p)); got != want {
			t.Fatalf("exists(%s)=%v, want %v", p, got, want)
		}
	}
	// A batch that empties a folder and writes below it again keeps it.
	mustApply(t, d, putc("q/a", "1"))
	mustApply(t, d, del("q/a"), putc("q/b", "2"))
	if got, want := readFile(t, filepath.Join(dir, "q/b")), "2"; got != want {
		t.Fatalf("q/b=%q, want %q", got, want)
	}
	// Once the foreign file goes, the folder kvsync created is pruned on the next removal.
	if err := os.Remove(filepath.Join(dir, "new/foreign")); err != nil {
		t.Fatal(err)
	}
	mustApply(t, d, putc("new/again", "1"))
	mustApply(t, d, del("new/again"))
	if exists(filepath.Join(dir, "new")) {
		t.Fatalf("new is empty and kvsync created it: should be pruned")
	}
}

func TestDirSymlinkParent(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "evil")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "real"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "inner")); err != nil {
		t.Fatal(err)
	}
	d := MustOpen(t, Options{Dir: dir})
	res := mustApply(t, d, putc("evil/x", "1"), putc("evil/deep/x", "1"), putc("inner/x", "1"), putc("fine/x", "1"))
	if got, want := errPaths(res), "evil/deep/x evil/x inner/x"; got != want {
		t.Fatalf("error paths=%q, want %q (%v)", got, want, res.Errors)
	}
	for _, e := range res.Errors {
		if !strings.Contains(e.Error(), "symlink") {
			t.Fatalf("error %q does not say why", e)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside the folder: %v", ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "real")); len(ents) != 0 {
		t.Fatalf("wrote through a symlinked parent: %v", ents)
	}
	// A folder of ours swapped for a symlink after the fact is refused too.
	if err := os.Remove(filepath.Join(dir, "fine/x")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "fine")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "fine")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "x"), []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	res = mustApply(t, d, putc("fine/x", "2"))
	if got, want := errPaths(res), "fine/x"; got != want {
		t.Fatalf("error paths=%q, want %q", got, want)
	}
	res = mustApply(t, d, del("fine/x"))
	if got, want := errPaths(res), "fine/x"; got != want {
		t.Fatalf("remove: error paths=%q, want %q", got, want)
	}
	if got, want := readFile(t, filepath.Join(outside, "x")), "outside"; got != want {
		t.Fatalf("outside file=%q, want %q", got, want)
	}
}

func TestDirFileFolderClash(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		t.Run("snapshot="+strconv.FormatBool(snapshot), func(t *testing.T) {
			dir := t.TempDir()
			d := MustOpen(t, Options{Dir: dir, Snapshot: snapshot})
			mustApply(t, d, putc("a", "file"), putc("x/y", "nested"))
			res := mustApply(t, d, putc("a/b", "1"), putc("x", "2"), putc("ok", "3"))
			if got, want := errPaths(res), "a/b x"; got != want {
				t.Fatalf("error paths=%q, want %q (%v)", got, want, res.Errors)
			}
			if got, want := strings.Join(res.Written, " "), "ok"; got != want {
				t.Fatalf("Written=%q, want %q", got, want)
			}
			for p, want := range map[string]string{"a": "file", "x/y": "nested", "ok": "3"} {
				if got := readFile(t, filepath.Join(dir, p)); got != want {
					t.Fatalf("%s=%q, want %q", p, got, want)
				}
			}
			// A key can turn from file into folder within one batch.
			res = mustApply(t, d, del("x/y"), putc("x", "now a file"))
			if len(res.Errors) != 0 {
				t.Fatalf("Errors=%v", res.Errors)
			}
			if got, want := readFile(t, filepath.Join(dir, "x")), "now a file"; got != want {
				t.Fatalf("x=%q, want %q", got, want)
			}
		})
	}
}

func TestDirInvalidPath(t *testing.T) {
	d := MustOpen(t, Options{Dir: t.TempDir()})
	res := mustApply(t, d, putc("../escape", "1"), putc("/abs", "1"), putc(".kvsync/manifest", "1"), putc("a//b", "1"), putc("", "1"), putc("good", "1"))
	if got, want := len(res.Errors), 5; got != want {
		t.Fatalf("%d errors, want %d: %v", got, want, res.Errors)
	}
	for _, e := range res.Errors {
		if !errors.Is(e, ErrInvalidKey) {
			t.Fatalf("error %v does not wrap ErrInvalidKey", e)
		}
	}
	if got, want := strings.Join(res.Written, " "), "good"; got != want {
		t.Fatalf("Written=%q, want %q", got, want)
	}
}

func TestDirReopen(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		t.Run("snapshot="+strconv.FormatBool(snapshot), func(t *testing.T) {
			dir := t.TempDir()
			d, err := Open(Options{Dir: dir, Snapshot: snapshot, UID: -1, GID: -1, Fsync: true})
			if err != nil {
				t.Fatal(err)
			}
			mustApply(t, d, putc("a", "1"), putc("b/c", "2"), putc("gone", "3"))
			mustApply(t, d, del("gone"))
			want := d.Files()
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Apply([]Change{putc("x", "1")}); err == nil {
				t.Fatalf("Apply after Close succeeded")
			}
			d = MustOpen(t, Options{Dir: dir, Snapshot: snapshot})
			got := d.Files()
			if len(got) != 2 || got["a"] != want["a"] || got["b/c"] != want["b/c"] {
				t.Fatalf("Files after reopen=%v, want %v", got, want)
			}
			res := mustApply(t, d, del("b/c"))
			if got, want := strings.Join(res.Removed, " "), "b/c"; got != want {
				t.Fatalf("Removed after reopen=%q, want %q", got, want)
			}
			if exists(filepath.Join(dir, "b")) {
				t.Fatalf("b should be pruned after reopen")
			}
			if got, want := readFile(t, filepath.Join(dir, "a")), "1"; got != want {
				t.Fatalf("a=%q, want %q", got, want)
			}
		})
	}
}

func TestDirModeSwitchRefused(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(Options{Dir: dir, UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, d, putc("a", "1"))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Dir: dir, Snapshot: true}); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Fatalf("Open in snapshot mode over a file-mode manifest: %v, want a mode error", err)
	}
}

func TestDirTempCleanup(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(Options{Dir: dir, UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, d, putc("sub/a", "1"))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{tempPrefix + "abc", "sub/" + tempPrefix + "def", ".kvsync/.manifest123"}
	for _, p := range append(leftovers, "sub/.keep-me", "foreign") {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	MustOpen(t, Options{Dir: dir})
	for _, p := range leftovers {
		if exists(filepath.Join(dir, p)) {
			t.Fatalf("leftover %s not removed by Open", p)
		}
	}
	for _, p := range []string{"sub/.keep-me", "foreign", "sub/a"} {
		if !exists(filepath.Join(dir, p)) {
			t.Fatalf("%s removed by Open", p)
		}
	}
}

func TestDirCorruptManifest(t *testing.T) {
	sum := fmt.Sprintf("%x", sha256.Sum256([]byte("x")))
	for _, tt := range []struct {
		name, journal string
		corrupt       bool
		owned         string // with corrupt=false: the paths owned after Open
	}{
		{"garbage header", "hello\n", true, ""},
		{"empty", "", true, ""},
		{"bad hash", manifestMagic + " file\n+ zz \"a\"\n", true, ""},
		{"bad quote", manifestMagic + " file\n+ " + sum + " a\n", true, ""},
		{"escaping path", manifestMagic + " file\n+ " + sum + " \"../a\"\n", true, ""},
		{"unknown op", manifestMagic + " file\n? \"a\"\n", true, ""},
		{"torn tail", manifestMagic + " file\n+ " + sum + " \"a\"\n+ " + sum[:10], false, "a"},
		{"torn header", manifestMagic[:5], false, ""},
		{"replay", manifestMagic + " file\n+ " + sum + " \"a\"\n+ " + sum + " \"b\"\n- \"a\"\n", false, "b"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, stateDir), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, stateDir, manifestName), []byte(tt.journal), 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := Open(Options{Dir: dir, UID: -1, GID: -1})
			if tt.corrupt {
				if !errors.Is(err, ErrCorruptManifest) {
					t.Fatalf("Open: %v, want ErrCorruptManifest", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer d.Close()
			if got, want := strings.Join(slices.Sorted(mapKeys(d.Files())), " "), tt.owned; got != want {
				t.Fatalf("owned=%q, want %q", got, want)
			}
		})
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestDirJournal checks that one change appends one short record instead of
// rewriting the manifest, and that the journal is compacted as it grows.
func TestDirJournal(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir})
	var batch []Change
	for i := range 1000 {
		batch = append(batch, putc("k"+strconv.Itoa(i), "v"))
	}
	mustApply(t, d, batch...)
	mpath := filepath.Join(dir, stateDir, manifestName)
	size := func() int64 {
		fi, err := os.Stat(mpath)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	mustApply(t, d, putc("k5", "changed"))
	if got, want := size()-before, int64(len(`+ `)+64+len(` "k5"`)+1); got != want {
		t.Fatalf("one change grew the manifest by %d bytes, want %d", got, want)
	}
	for i := range 3000 {
		mustApply(t, d, putc("k5", strconv.Itoa(i)))
	}
	if got, limit := size(), 3*before; got > limit {
		t.Fatalf("manifest is %d bytes after 3000 updates of one key, want at most %d (compaction)", got, limit)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = MustOpen(t, Options{Dir: dir})
	if got, want := len(d.Files()), 1000; got != want {
		t.Fatalf("%d files after reopen, want %d", got, want)
	}
	if h, _ := d.Hash("k5"); h != sha256.Sum256([]byte("2999")) {
		t.Fatalf("Hash(k5) after reopen is not the last write")
	}
}

func TestDirReconcile(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		t.Run("snapshot="+strconv.FormatBool(snapshot), func(t *testing.T) {
			dir := t.TempDir()
			d := MustOpen(t, Options{Dir: dir, Snapshot: snapshot})
			mustApply(t, d, putc("a", "orig"), putc("b", "old"), putc("s/t", "keep"))
			// A local edit of an owned file; in snapshot mode through the link.
			edit := filepath.Join(dir, "a")
			if snapshot {
				// Files in the data folder are shared by hard links: an edit
				// in place changes them, which Reconcile must notice.
				if err := os.WriteFile(edit, []byte("edited"), 0o644); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(edit, []byte("edited"), 0o644); err != nil {
				t.Fatal(err)
			}
			res, err := d.ReconcileSeq(maps.All(map[string][]byte{"a": []byte("orig"), "c": []byte("new"), "s/t": []byte("keep")}))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(res.Written, " "), "a c"; got != want {
				t.Fatalf("Written=%q, want %q", got, want)
			}
			if got, want := strings.Join(res.Removed, " "), "b"; got != want {
				t.Fatalf("Removed=%q, want %q", got, want)
			}
			for p, want := range map[string]string{"a": "orig", "c": "new", "s/t": "keep"} {
				if got := readFile(t, filepath.Join(dir, p)); got != want {
					t.Fatalf("%s=%q, want %q", p, got, want)
				}
			}
			if exists(filepath.Join(dir, "b")) {
				t.Fatalf("b still exists")
			}
			// A file of ours deleted by hand is written again.
			if err := os.Remove(filepath.Join(dir, "c")); err != nil && !snapshot {
				t.Fatal(err)
			}
			if snapshot {
				if err := os.Remove(filepath.Join(dir, dataLink, "c")); err != nil {
					t.Fatal(err)
				}
			}
			res, err = d.ReconcileSeq(maps.All(map[string][]byte{"a": []byte("orig"), "c": []byte("new"), "s/t": []byte("keep")}))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(res.Written, " "), "c"; got != want {
				t.Fatalf("Written=%q, want %q", got, want)
			}
		})
	}
}

func newRand() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

// frame makes a self-checking value: "<len> <sha256>\n" and n bytes of body.
func frame(r *rand.Rand, n int) []byte {
	body := make([]byte, n)
	for i := range body {
		body[i] = byte('a' + r.IntN(26))
	}
	return fmt.Appendf(nil, "%d %x\n%s", n, sha256.Sum256(body), body)
}

func checkFrame(b []byte) error {
	head, body, ok := bytes.Cut(b, []byte("\n"))
	if !ok {
		return fmt.Errorf("no header in %d bytes", len(b))
	}
	var n int
	var sum string
	if _, err := fmt.Sscanf(string(head), "%d %s", &n, &sum); err != nil {
		return fmt.Errorf("header %q: %v", head, err)
	}
	if len(body) != n || fmt.Sprintf("%x", sha256.Sum256(body)) != sum {
		return fmt.Errorf("torn value: header says %d bytes, body has %d", n, len(body))
	}
	return nil
}

// TestDirConcurrentReaders rewrites files with values of varying size while
// readers read them: no reader ever sees a partial value.
func TestDirConcurrentReaders(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		t.Run("snapshot="+strconv.FormatBool(snapshot), func(t *testing.T) {
			dir := t.TempDir()
			d := MustOpen(t, Options{Dir: dir, Snapshot: snapshot})
			paths := []string{"a", "b/c", "d/e/f"}
			r := rand.New(rand.NewPCG(1, 2))
			var first []Change
			for _, p := range paths {
				first = append(first, Change{Path: p, Data: frame(r, 10)})
			}
			mustApply(t, d, first...)
			done := make(chan struct{})
			errs := make(chan error, 4)
			var wg sync.WaitGroup
			var reads [4]int
			for i := range 4 {
				wg.Go(func() {
					for {
						select {
						case <-done:
							return
						default:
						}
						b, err := os.ReadFile(filepath.Join(dir, paths[reads[i]%len(paths)]))
						if err != nil {
							errs <- err
							return
						}
						if err := checkFrame(b); err != nil {
							errs <- err
							return
						}
						reads[i]++
					}
				})
			}
			for i := range 80 {
				var batch []Change
				for _, p := range paths {
					if r.IntN(2) == 0 || i%7 == 0 {
						batch = append(batch, Change{Path: p, Data: frame(r, r.IntN(32<<10))})
					}
				}
				mustApply(t, d, batch...)
			}
			close(done)
			wg.Wait()
			select {
			case err := <-errs:
				t.Fatalf("reader: %v", err)
			default:
			}
			if reads[0]+reads[1]+reads[2]+reads[3] == 0 {
				t.Fatalf("readers read nothing")
			}
		})
	}
}

func BenchmarkApplyOne(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		b.Run("fsync="+strconv.FormatBool(fsync), func(b *testing.B) {
			d := MustOpen(b, Options{Dir: b.TempDir(), Fsync: fsync})
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if _, err := d.Apply([]Change{{Path: "app/key", Data: []byte(strconv.Itoa(i))}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkApplyBatch1000(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		b.Run("fsync="+strconv.FormatBool(fsync), func(b *testing.B) {
			d := MustOpen(b, Options{Dir: b.TempDir(), Fsync: fsync})
			batch := make([]Change, 1000)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				for j := range batch {
					batch[j] = Change{Path: "k" + strconv.Itoa(j), Data: []byte(strconv.Itoa(i))}
				}
				if _, err := d.Apply(batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestDirReconcileBatches reconciles in batches of two: the removals come
// first, also of a file where a later batch needs a folder, and the result
// (Written sorted) is the same as in one batch.
func TestDirReconcileBatches(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir})
	d.batch = 2
	mustApply(t, d, putc("a", "file"), putc("b", "old"), putc("c", "same"), putc("gone1", "x"), putc("gone2", "x"))
	if err := os.WriteFile(filepath.Join(dir, "foreign"), []byte("theirs"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{
		"a/x": []byte("in a folder where a file was"), "b": []byte("new"), "c": []byte("same"),
		"d": []byte("d"), "e/f": []byte("ef"), "g": []byte("g"), "foreign": []byte("ours?"),
	}
	// In reverse order, so that a/x comes in the last batch, after a was
	// removed by the first.
	paths := slices.Sorted(maps.Keys(want))
	slices.Reverse(paths)
	res, err := d.ReconcileSeq(func(yield func(string, []byte) bool) {
		for _, p := range paths {
			if !yield(p, want[p]) {
				return
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(res.Written, " "), "a/x b d e/f g"; got != want {
		t.Errorf("Written=%q, want %q", got, want)
	}
	if got, want := strings.Join(res.Removed, " "), "a gone1 gone2"; got != want {
		t.Errorf("Removed=%q, want %q", got, want)
	}
	if len(res.Errors) != 1 || res.Errors[0].Path != "foreign" || !errors.Is(res.Errors[0], ErrForeign) {
		t.Errorf("Errors=%v, want foreign: ErrForeign", res.Errors)
	}
	for p, data := range want {
		if p == "foreign" {
			data = []byte("theirs")
		}
		if got := readFile(t, filepath.Join(dir, p)); got != string(data) {
			t.Errorf("%s=%q, want %q", p, got, data)
		}
	}
	if got, want := strings.Join(slices.Sorted(maps.Keys(d.Files())), " "), "a/x b c d e/f g"; got != want {
		t.Errorf("manifest=%q, want %q", got, want)
	}
	for _, p := range []string{"gone1", "gone2"} {
		if exists(filepath.Join(dir, p)) {
			t.Errorf("%s still exists", p)
		}
	}
}

// TestOpenFolder: a projection's sub-folder is opened without following a
// symlink anywhere on its path and without leaving the top, with openat2 and
// without it (older kernels, seccomp filters).
func TestOpenFolder(t *testing.T) {
	outside := t.TempDir()
	for _, withOpenat2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("openat2=%v", withOpenat2), func(t *testing.T) {
			if !withOpenat2 {
				saved := openat2
				openat2 = func(int, string, *unix.OpenHow) (int, error) { return -1, unix.ENOSYS }
				t.Cleanup(func() { openat2 = saved })
			}
			dir := t.TempDir()
			for _, q := range []string{"a/b", "real"} {
				if err := os.MkdirAll(filepath.Join(dir, q), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for link, target := range map[string]string{"a/up": outside, "link": "real", "a/b/loop": "../b"} {
				if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
					t.Fatal(err)
				}
			}
			top, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(top)
			fd, err := openFolder(top, "a/b")
			if err != nil {
				t.Fatalf("open a/b: %v", err)
			}
			var st, want unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Fatal(err)
			}
			_ = unix.Close(fd)
			if err := unix.Stat(filepath.Join(dir, "a/b"), &want); err != nil {
				t.Fatal(err)
			}
			if st.Ino != want.Ino || st.Dev != want.Dev {
				t.Fatalf("openFolder(a/b) opened inode %d, want %d", st.Ino, want.Ino)
			}
			for _, q := range []string{"link", "a/up", "a/b/loop", "link/x", "../" + filepath.Base(outside), "nope", "a/nope"} {
				fd, err := openFolder(top, q)
				if err == nil {
					_ = unix.Close(fd)
					t.Errorf("openFolder(%q) succeeded: it must not follow a symlink or leave the top", q)
				}
			}
			if _, err := openFolder(top, "nope"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("openFolder(nope): %v, want ErrNotExist", err)
			}
		})
	}
}
