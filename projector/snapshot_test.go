package projector

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

func dataFolders(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), dataPrefix) {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestSnapshotLayout(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir, Snapshot: true, Fsync: true})
	d.retire = 0
	mustApply(t, d, putc("a", "1"), putc("b/c", "2"), putc("b/d/e", "3"))
	for p, want := range map[string]string{"a": "1", "b/c": "2", "b/d/e": "3"} {
		if got := readFile(t, filepath.Join(dir, p)); got != want {
			t.Fatalf("%s=%q, want %q", p, got, want)
		}
	}
	for _, top := range []string{"a", "b"} {
		target, err := os.Readlink(filepath.Join(dir, top))
		if err != nil {
			t.Fatalf("top-level %s is not a symlink: %v", top, err)
		}
		if got, want := target, dataLink+"/"+top; got != want {
			t.Fatalf("%s -> %q, want %q", top, got, want)
		}
	}
	first, err := os.Stat(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	res := mustApply(t, d, putc("b/c", "2b"), del("b/d/e"), putc("new", "4"))
	if got, want := strings.Join(res.Written, " ")+"|"+strings.Join(res.Removed, " "), "b/c new|b/d/e"; got != want {
		t.Fatalf("Written|Removed=%q, want %q", got, want)
	}
	// The unchanged file is the same inode, hard-linked into the new data folder.
	again, err := os.Stat(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(first, again) {
		t.Fatalf("unchanged file a was copied, not hard-linked")
	}
	if got := dataFolders(t, dir); len(got) != 1 {
		t.Fatalf("data folders=%v, want exactly one", got)
	}
	mustApply(t, d, del("b/c"), del("new"))
	for _, p := range []string{"b", "new"} {
		if exists(filepath.Join(dir, p)) {
			t.Fatalf("top-level link %s still exists after its files went", p)
		}
	}
	if got, want := readFile(t, filepath.Join(dir, "a")), "1"; got != want {
		t.Fatalf("a=%q, want %q", got, want)
	}
}

func TestSnapshotStaleDataFolders(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(Options{Dir: dir, Snapshot: true, UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, d, putc("a", "1"))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, dataPrefix+"1")
	if err := os.MkdirAll(filepath.Join(stale, "half"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data_1", filepath.Join(dir, tempPrefix+"x")); err != nil {
		t.Fatal(err)
	}
	MustOpen(t, Options{Dir: dir, Snapshot: true})
	if exists(stale) || exists(filepath.Join(dir, tempPrefix+"x")) {
		t.Fatalf("Open left a half-built data folder or temp link")
	}
	if got, want := readFile(t, filepath.Join(dir, "a")), "1"; got != want {
		t.Fatalf("a=%q, want %q", got, want)
	}
	if got := dataFolders(t, dir); len(got) != 1 {
		t.Fatalf("data folders=%v, want one", got)
	}
}

// TestSnapshotGenerations applies generation after generation of a set of files
// while readers read them. A reader that resolves ..data once sees every file
// of one generation; one that opens files one by one through the top-level links
// never sees a generation older than one it already saw.
func TestSnapshotGenerations(t *testing.T) {
	dir := t.TempDir()
	d := MustOpen(t, Options{Dir: dir, Snapshot: true})
	d.retire = 200 * time.Millisecond
	paths := []string{"a", "b/c", "b/d", "e/f/g"}
	gen := func(n int) []Change {
		var cs []Change
		for _, p := range paths {
			cs = append(cs, putc(p, strconv.Itoa(n)+"\n"+strings.Repeat(p, n%50)))
		}
		return cs
	}
	mustApply(t, d, gen(0)...)
	parse := func(b []byte) int {
		n, _, _ := strings.Cut(string(b), "\n")
		i, err := strconv.Atoi(n)
		if err != nil {
			return -1
		}
		return i
	}
	done := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	var pinned, linked int
	wg.Go(func() { // pinned: resolve ..data once
		for {
			select {
			case <-done:
				return
			default:
			}
			root, err := os.OpenRoot(filepath.Join(dir, dataLink))
			if err != nil {
				errs <- err
				return
			}
			want := -2
			ok := true
			for _, p := range paths {
				b, err := root.ReadFile(p)
				if errors.Is(err, fs.ErrNotExist) {
					ok = false // the folder was retired mid-read: try again
					break
				}
				if err != nil {
					errs <- err
					return
				}
				if g := parse(b); want == -2 {
					want = g
				} else if g != want {
					errs <- errors.New("pinned reader saw generations " + strconv.Itoa(want) + " and " + strconv.Itoa(g))
					return
				}
			}
			_ = root.Close()
			if ok {
				pinned++
			}
		}
	})
	wg.Go(func() { // through the links, one file after the other
		last := -1
		for {
			select {
			case <-done:
				return
			default:
			}
			for _, p := range paths {
				b, err := os.ReadFile(filepath.Join(dir, p))
				if err != nil {
					errs <- err
					return
				}
				g := parse(b)
				if g < last {
					errs <- errors.New("reader went back from generation " + strconv.Itoa(last) + " to " + strconv.Itoa(g))
					return
				}
				if want := strconv.Itoa(g) + "\n" + strings.Repeat(p, g%50); string(b) != want {
					errs <- errors.New("torn file " + p)
					return
				}
				last = g
			}
			linked++
		}
	})
	for n := 1; n <= 150; n++ {
		mustApply(t, d, gen(n)...)
	}
	close(done)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if pinned == 0 || linked == 0 {
		t.Fatalf("readers did not run: pinned=%d linked=%d", pinned, linked)
	}
	if got := dataFolders(t, dir); len(got) < 2 {
		t.Fatalf("data folders=%v right after the last swap, want the retired ones kept a while", got)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		mustApply(t, d) // every Apply removes the folders retired long enough ago
		if got := dataFolders(t, dir); len(got) != 1 {
			return fmt.Errorf("data folders=%v, want one", got)
		}
		return nil
	})
}
