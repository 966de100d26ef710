package projector

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Staged is a new version of a file, written to a temp file in the file's
// own folder but not yet live: a check can test it at Path, then Commit puts
// it in place with one rename (readers see the old or the new file, never a
// mix) or Discard drops it. A Staged is used by one goroutine.
type Staged struct {
	path    string // the live file
	tmp     string // the staged temp file, "" once committed or discarded
	old     []byte // what path held when staged
	existed bool   // whether path existed when staged
	data    []byte
	o       FileOptions
	rename  func(oldpath, newpath string) error
}

// Stage writes data to a temp file next to path, with the mode and owner of
// o, fsynced with o.Fsync, and returns it staged. It returns nil and no error
// when path already holds exactly data: there is nothing to check or commit.
// A missing parent folder is created (DefaultDirMode).
func Stage(path string, data []byte, o FileOptions) (*Staged, error) {
	if err := os.MkdirAll(filepath.Dir(path), DefaultDirMode); err != nil {
		return nil, fmt.Errorf("create folder of %s: %w", path, err)
	}
	return stage(path, data, o, os.Rename)
}

func stage(path string, data []byte, o FileOptions, rename func(oldpath, newpath string) error) (*Staged, error) {
	old, err := os.ReadFile(path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if exists && bytes.Equal(old, data) {
		return nil, nil
	}
	dir := filepath.Dir(path)
	dirfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, &fs.PathError{Op: "open", Path: dir, Err: err})
	}
	tmp, err := writeTemp(dirfd, data, o.Mode, o.UID, o.GID, o.Fsync)
	_ = unix.Close(dirfd) // read-only descriptor; nothing to lose
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &Staged{path: path, tmp: filepath.Join(dir, tmp), old: old, existed: exists, data: data, o: o, rename: rename}, nil
}

// Path is the staged temp file: the new bytes, in the live file's folder.
func (s *Staged) Path() string { return s.tmp }

// Previous returns what the live file held when it was staged, and whether
// it existed: what a rollback puts back.
func (s *Staged) Previous() (data []byte, existed bool) { return s.old, s.existed }

// Discard removes the staged file; the live file stays as it was.
func (s *Staged) Discard() error {
	if s.tmp == "" {
		return nil
	}
	err := os.Remove(s.tmp)
	s.tmp = ""
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("discard staged %s: %w", s.path, err)
	}
	return nil
}

// Commit renames the staged file over the live one and fsyncs the folder
// (with o.Fsync). With o.Backup the previous content is kept at path+"~"
// first. If the rename is impossible because the live file is a single-file
// bind mount (EBUSY or EXDEV), it rewrites the file in place instead, which
// a reader can see half-done, and warns (once per path with o.Warned).
func (s *Staged) Commit() error {
	if s.tmp == "" {
		return fmt.Errorf("commit %s: nothing staged", s.path)
	}
	tmp := s.tmp
	s.tmp = ""
	if s.o.Backup && s.existed {
		bo := s.o
		bo.Backup = false
		if _, err := writeFile(s.path+"~", s.old, bo, s.rename); err != nil {
			_ = os.Remove(tmp) // best effort: the backup error is the one that matters
			return fmt.Errorf("back up %s: %w", s.path, err)
		}
	}
	if err := s.rename(tmp, s.path); err != nil {
		_ = os.Remove(tmp) // best effort: the rename error is the one that matters
		if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EXDEV) {
			return fmt.Errorf("rename %s: %w", s.path, err)
		}
		if err := writeInPlace(s.path, s.data, s.o); err != nil {
			return err
		}
		if s.o.Logger != nil && s.o.Warned.First(s.path) {
			s.o.Logger.Warn("cannot replace file by rename (single-file bind mount?); writing in place, readers may see a partial file",
				slog.String("path", s.path), slog.String("err", err.Error()))
		}
		return nil
	}
	if s.o.Fsync {
		return syncDir(filepath.Dir(s.path))
	}
	return nil
}

// RemoveFile removes the file at path, for a rollback of a file that did not
// exist before, and fsyncs its folder (with fsync). A missing file is not an
// error.
func RemoveFile(path string, fsync bool) error {
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if fsync {
		return syncDir(filepath.Dir(path))
	}
	return nil
}

// StagedTree is a private folder holding copies of the files of a batch, for
// a check to test before the batch is applied to a projection folder (which
// writes them again, atomically, itself).
type StagedTree struct {
	dir string
}

// StageTree writes files (relative slash-separated path -> bytes, as KeyPath
// makes them) under a fresh private folder in the system temp folder, so a
// check sees each file with its own name. Discard removes it.
func StageTree(files iter.Seq2[string, []byte]) (*StagedTree, error) {
	dir, err := os.MkdirTemp("", "kvsync-check-")
	if err != nil {
		return nil, fmt.Errorf("stage files: %w", err)
	}
	t := &StagedTree{dir: dir}
	for rel, data := range files {
		p := t.File(rel)
		err := os.MkdirAll(filepath.Dir(p), 0o700)
		if err == nil {
			err = os.WriteFile(p, data, 0o600)
		}
		if err != nil {
			_ = t.Discard() // the write error is the one that matters
			return nil, fmt.Errorf("stage %s: %w", rel, err)
		}
	}
	return t, nil
}

// Path is the staged folder.
func (t *StagedTree) Path() string { return t.dir }

// File is the staged copy of the file at the relative path rel.
func (t *StagedTree) File(rel string) string { return filepath.Join(t.dir, filepath.FromSlash(rel)) }

// Discard removes the staged folder.
func (t *StagedTree) Discard() error {
	if err := os.RemoveAll(t.dir); err != nil {
		return fmt.Errorf("discard staged files: %w", err)
	}
	return nil
}
