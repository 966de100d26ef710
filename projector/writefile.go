package projector

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// tempPrefix starts the name of every temp file kvsync creates. KeyPath rejects
// any segment starting with ".kvsync", so a temp file never collides with a key,
// and Open can remove leftovers of a crash without asking whose they are.
const tempPrefix = ".kvsync-tmp-"

// Default modes, used when an Options or FileOptions mode is zero.
const (
	DefaultMode    fs.FileMode = 0o644
	DefaultDirMode fs.FileMode = 0o755
)

// FileOptions says how WriteFile writes one file.
type FileOptions struct {
	Mode     fs.FileMode // permission bits; 0 means DefaultMode
	UID, GID int         // owner; -1 leaves it as is (note: the zero value 0 means root)
	Fsync    bool        // fsync the file before the rename and the folder after it
	Backup   bool        // keep the previous content at path+"~"
	Logger   *slog.Logger
	// Warned remembers the paths that already got the in-place fallback warning,
	// so it is logged once per path; nil warns on every fallback. Share one per
	// agent.
	Warned *WarnOnce
}

// WarnOnce is a set of paths already warned about. The zero value is ready; it is
// safe for concurrent use.
type WarnOnce struct {
	mu   sync.Mutex
	seen map[string]bool
}

// First reports whether path is seen for the first time, and marks it seen.
// A nil WarnOnce reports true every time.
func (w *WarnOnce) First(path string) bool {
	if w == nil {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen[path] {
		return false
	}
	if w.seen == nil {
		w.seen = make(map[string]bool)
	}
	w.seen[path] = true
	return true
}

// WriteFile atomically replaces the file at path with data, for templates and
// dotenv files: a temp file in the same folder gets the mode and owner, is fsynced
// (with o.Fsync), and renamed over path; then the folder is fsynced. It returns
// changed=false and writes nothing when the file already holds exactly data.
// A missing parent folder is created (DefaultDirMode), as an operator expects
// of a new dest.
//
// If the rename is impossible because path is a single-file bind mount (EBUSY or
// EXDEV), it falls back to truncating and rewriting the file in place, which a
// reader can see half-done, and logs a warning (once per path with o.Warned).
// With o.Backup the previous content is kept, written the same way, at path+"~".
//
// renameio is not used here: it always fsyncs, cannot name temp files so that a
// crash's leftovers are recognisable, and hides the rename error the bind-mount
// fallback needs.
func WriteFile(path string, data []byte, o FileOptions) (changed bool, err error) {
	if err := os.MkdirAll(filepath.Dir(path), DefaultDirMode); err != nil {
		return false, fmt.Errorf("create folder of %s: %w", path, err)
	}
	return writeFile(path, data, o, os.Rename)
}

// writeFile is WriteFile with the rename injectable, so tests can make it fail as
// on a bind mount.
func writeFile(path string, data []byte, o FileOptions, rename func(oldpath, newpath string) error) (bool, error) {
	old, err := os.ReadFile(path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if exists && bytes.Equal(old, data) {
		return false, nil
	}
	if o.Backup && exists {
		bo := o
		bo.Backup = false
		if _, err := writeFile(path+"~", old, bo, rename); err != nil {
			return false, fmt.Errorf("back up %s: %w", path, err)
		}
	}
	dir := filepath.Dir(path)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := writeTemp(root, "", data, o.Mode, o.UID, o.GID, o.Fsync)
	_ = root.Close() // read-only handle; nothing to lose
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	tmpPath := filepath.Join(dir, tmp)
	if err := rename(tmpPath, path); err != nil {
		_ = os.Remove(tmpPath) // best effort: the rename error is the one that matters
		if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EXDEV) {
			return false, fmt.Errorf("rename %s: %w", path, err)
		}
		if err := writeInPlace(path, data, o); err != nil {
			return false, err
		}
		if o.Logger != nil && o.Warned.First(path) {
			o.Logger.Warn("cannot replace file by rename (single-file bind mount?); writing in place, readers may see a partial file",
				slog.String("path", path), slog.String("error", err.Error()))
		}
		return true, nil
	}
	if o.Fsync {
		if err := syncDir(dir); err != nil {
			return true, err
		}
	}
	return true, nil
}

// writeInPlace truncates and rewrites path: the fallback when it cannot be
// replaced by rename.
func writeInPlace(path string, data []byte, o FileOptions) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil && o.Fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s in place: %w", path, err)
	}
	return nil
}

// tempFS is where temp files are made: an *os.Root.
type tempFS interface {
	OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error)
	Remove(name string) error
}

// tempName returns a fresh temp file name in folder relDir ("" for the top).
func tempName(relDir string) string {
	n := tempPrefix + strconv.FormatUint(rand.Uint64(), 36)
	if relDir == "" {
		return n
	}
	return relDir + "/" + n
}

// writeTemp creates a temp file in folder relDir of fsys, writes data, sets mode
// and owner, fsyncs when sync is set, and returns its name (relative to fsys).
// On error it leaves nothing behind.
func writeTemp(fsys tempFS, relDir string, data []byte, mode fs.FileMode, uid, gid int, sync bool) (string, error) {
	if mode == 0 {
		mode = DefaultMode
	}
	for range 10 {
		name := tempName(relDir)
		f, err := fsys.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if err := fillFile(f, data, mode, uid, gid, sync); err != nil {
			_ = fsys.Remove(name) // best effort; Open removes leftovers of ours too
			return "", err
		}
		return name, nil
	}
	return "", errors.New("create temp file: too many name collisions")
}

// fillFile writes data to a fresh file, sets mode (explicitly, so the umask does
// not narrow it) and owner, fsyncs if asked, and closes it.
func fillFile(f *os.File, data []byte, mode fs.FileMode, uid, gid int, sync bool) error {
	err := fill(f, data, mode, uid, gid)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// fill writes data to a fresh file and sets mode (explicitly, so the umask
// does not narrow it) and owner.
func fill(f *os.File, data []byte, mode fs.FileMode, uid, gid int) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && (uid >= 0 || gid >= 0) {
		err = f.Chown(uid, gid)
	}
	return err
}

// syncDir fsyncs a folder, making renames and removals in it durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
