package projector

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestStageCommitDiscard(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "app.conf")
	o := FileOptions{Mode: 0o640, UID: -1, GID: -1, Fsync: true, Backup: true}

	s, err := Stage(path, []byte("one"), o)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := filepath.Dir(s.Path()), filepath.Dir(path); got != want {
		t.Errorf("staged in %s, want the dest's folder %s", got, want)
	}
	if old, existed := s.Previous(); existed || old != nil {
		t.Errorf("Previous() = %q, %v for a new file", old, existed)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("dest exists before Commit: %v", err)
	}
	if got := readString(t, s.Path()); got != "one" {
		t.Errorf("staged file holds %q", got)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, path); got != "one" {
		t.Errorf("dest holds %q after Commit", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("dest mode %v (%v), want 0640", fi.Mode(), err)
	}
	if err := s.Commit(); err == nil {
		t.Error("a second Commit did not fail")
	}

	// Unchanged: nothing staged.
	if s, err := Stage(path, []byte("one"), o); err != nil || s != nil {
		t.Errorf("Stage of the same bytes = %v, %v; want nil, nil", s, err)
	}

	// Discard leaves the dest and no temp file.
	s, err = Stage(path, []byte("two"), o)
	if err != nil {
		t.Fatal(err)
	}
	if old, existed := s.Previous(); !existed || string(old) != "one" {
		t.Errorf("Previous() = %q, %v; want \"one\", true", old, existed)
	}
	if err := s.Discard(); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, path); got != "one" {
		t.Errorf("dest holds %q after Discard", got)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), tempPrefix+"*")); len(m) != 0 {
		t.Errorf("temp files left: %v", m)
	}

	// Commit with Backup keeps the previous bytes at path~.
	s, err = Stage(path, []byte("three"), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, path+"~"); got != "one" {
		t.Errorf("backup holds %q, want \"one\"", got)
	}

	if err := RemoveFile(path, true); err != nil {
		t.Fatal(err)
	}
	if err := RemoveFile(path, true); err != nil {
		t.Errorf("RemoveFile of a missing file: %v", err)
	}
}

func TestStageTree(t *testing.T) {
	files := map[string][]byte{"a.conf": []byte("a"), "sites/b.conf": []byte("b")}
	tree, err := StageTree(maps.All(files))
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range files {
		if got := readString(t, tree.File(rel)); got != string(want) {
			t.Errorf("%s holds %q, want %q", rel, got, want)
		}
		if rel2, _ := filepath.Rel(tree.Path(), tree.File(rel)); filepath.ToSlash(rel2) != rel {
			t.Errorf("File(%q) = %s is not under Path() %s", rel, tree.File(rel), tree.Path())
		}
	}
	if err := tree.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tree.Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("staged folder left: %v", err)
	}
}

func TestNotes(t *testing.T) {
	dir := t.TempDir()
	if n, err := ReadNotes(dir); err != nil || len(n) != 0 {
		t.Fatalf("ReadNotes of a fresh folder = %v, %v", n, err)
	}
	want := map[string]string{"a": "rolled back: action failed at revision 3"}
	if err := WriteNotes(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadNotes(dir)
	if err != nil || !maps.Equal(got, want) {
		t.Errorf("ReadNotes = %v, %v; want %v", got, err, want)
	}
	if err := WriteNotes(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateDir, notesName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty notes left a file: %v", err)
	}
}
