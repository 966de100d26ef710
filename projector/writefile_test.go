package projector

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "nginx.conf")
	o := FileOptions{Mode: 0o640, UID: -1, GID: -1, Fsync: true, Backup: true}
	for i, tt := range []struct {
		data        string
		changed     bool
		backup      string // "" means no backup file
		wantContent string
	}{
		{"v1", true, "", "v1"},
		{"v1", false, "", "v1"},
		{"v2", true, "v1", "v2"},
		{"v2", false, "v1", "v2"},
		{"", true, "v2", ""},
	} {
		changed, err := WriteFile(p, []byte(tt.data), o)
		if err != nil {
			t.Fatalf("step %d: WriteFile: %v", i, err)
		}
		if changed != tt.changed {
			t.Fatalf("step %d: changed=%v, want %v", i, changed, tt.changed)
		}
		if got := readFile(t, p); got != tt.wantContent {
			t.Fatalf("step %d: content=%q, want %q", i, got, tt.wantContent)
		}
		b, err := os.ReadFile(p + "~")
		if tt.backup == "" {
			if err == nil {
				t.Fatalf("step %d: backup %q exists, want none", i, b)
			}
		} else if string(b) != tt.backup {
			t.Fatalf("step %d: backup=%q (%v), want %q", i, b, err, tt.backup)
		}
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), fs.FileMode(0o640); got != want {
		t.Fatalf("mode=%v, want %v", got, want)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("folder holds %v, want only the file and its backup", ents)
	}
}

func TestWriteFileUnchangedKeepsInode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	o := FileOptions{UID: -1, GID: -1}
	if _, err := WriteFile(p, []byte("x"), o); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(p, past, past); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(p)
	if changed, err := WriteFile(p, []byte("x"), o); err != nil || changed {
		t.Fatalf("WriteFile of identical bytes: changed=%v, %v", changed, err)
	}
	after, _ := os.Stat(p)
	if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("identical bytes were rewritten")
	}
}

func TestWriteFileRenameFallback(t *testing.T) {
	for _, tt := range []struct {
		name     string
		err      error
		fallback bool
	}{
		{"EBUSY", syscall.EBUSY, true},
		{"EXDEV", syscall.EXDEV, true},
		{"EACCES", syscall.EACCES, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "mounted")
			if err := os.WriteFile(p, []byte("old old old"), 0o644); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Stat(p)
			var logs bytes.Buffer
			o := FileOptions{UID: -1, GID: -1, Fsync: true, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Warned: &WarnOnce{}}
			rename := func(oldpath, newpath string) error {
				return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: tt.err}
			}
			for i, data := range []string{"new", "newer", "newest"} {
				changed, err := writeFile(p, []byte(data), o, rename)
				if !tt.fallback {
					if !errors.Is(err, tt.err) {
						t.Fatalf("writeFile: %v, want %v", err, tt.err)
					}
					if got, want := readFile(t, p), "old old old"; got != want {
						t.Fatalf("content=%q, want %q untouched", got, want)
					}
					break
				}
				if err != nil || !changed {
					t.Fatalf("write %d: changed=%v, %v", i, changed, err)
				}
				if got := readFile(t, p); got != data {
					t.Fatalf("write %d: content=%q, want %q", i, got, data)
				}
			}
			if tt.fallback {
				after, _ := os.Stat(p)
				if !os.SameFile(before, after) {
					t.Fatalf("the fallback replaced the file instead of writing in place")
				}
				if got, want := strings.Count(logs.String(), "level=WARN"), 1; got != want {
					t.Fatalf("%d warnings, want %d (once per path): %s", got, want, logs.String())
				}
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Fatalf("temp files left behind: %v", ents)
			}
		})
	}
}

func TestWarnOnce(t *testing.T) {
	var w WarnOnce
	for _, tt := range []struct {
		path string
		want bool
	}{{"a", true}, {"a", false}, {"b", true}, {"a", false}} {
		if got := w.First(tt.path); got != tt.want {
			t.Fatalf("First(%q)=%v, want %v", tt.path, got, tt.want)
		}
	}
	var nilW *WarnOnce
	for range 2 {
		if !nilW.First("a") {
			t.Fatalf("nil WarnOnce must report every path as first")
		}
	}
}

// TestWriteFileConcurrentReaders rewrites one file with values of varying size
// while readers read it: none sees a partial value.
func TestWriteFileConcurrentReaders(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	o := FileOptions{UID: -1, GID: -1}
	r := newRand()
	if _, err := WriteFile(p, frame(r, 1), o); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				b, err := os.ReadFile(p)
				if err == nil {
					err = checkFrame(b)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 200 {
		if _, err := WriteFile(p, frame(r, r.IntN(32<<10)), o); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("reader: %v", err)
		}
	}
}

func TestWriteFileCreatesParentFolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new", "sub", "app.conf")
	changed, err := WriteFile(path, []byte("x"), FileOptions{UID: -1, GID: -1})
	if err != nil || !changed {
		t.Fatalf("WriteFile into a missing folder: changed=%v err=%v", changed, err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "x" {
		t.Fatalf("read back %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		t.Fatalf("parent folder: %v, %v", fi, err)
	}
}
