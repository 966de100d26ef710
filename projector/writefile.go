package projector

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
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
	s, err := stage(path, data, o, rename)
	if err != nil || s == nil {
		return false, err
	}
	return true, s.Commit()
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

// tempName returns a fresh temp file name in folder relDir ("" for the top).
func tempName(relDir string) string {
	n := tempPrefix + strconv.FormatUint(rand.Uint64(), 36)
	if relDir == "" {
		return n
	}
	return relDir + "/" + n
}

// writeTemp creates a temp file in the open folder dirfd, writes data, sets
// mode and owner, fsyncs when sync is set, and returns its name. On error it
// leaves nothing behind. It works on the bare descriptor (no *os.File, which
// would cost an fcntl and a refused epoll registration per file).
func writeTemp(dirfd int, data []byte, mode fs.FileMode, uid, gid int, sync bool) (string, error) {
	for range 10 {
		name := tempName("")
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return "", &fs.PathError{Op: "openat", Path: name, Err: err}
		}
		err = fill(fd, name, data, mode, uid, gid)
		if err == nil && sync {
			err = fsync(fd, name)
		}
		if cerr := unix.Close(fd); err == nil && cerr != nil {
			err = &fs.PathError{Op: "close", Path: name, Err: cerr}
		}
		if err != nil {
			_ = unix.Unlinkat(dirfd, name, 0) // best effort; Open removes leftovers of ours too
			return "", err
		}
		return name, nil
	}
	return "", errors.New("create temp file: too many name collisions")
}

// fill writes data to the fresh file fd (called name in errors) and sets
// mode (explicitly, so the umask does not narrow it; 0 means DefaultMode) and
// owner.
func fill(fd int, name string, data []byte, mode fs.FileMode, uid, gid int) error {
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return &fs.PathError{Op: "write", Path: name, Err: err}
		case n == 0:
			return &fs.PathError{Op: "write", Path: name, Err: io.ErrShortWrite}
		}
		data = data[n:]
	}
	if mode == 0 {
		mode = DefaultMode
	}
	if err := unix.Fchmod(fd, unixMode(mode)); err != nil {
		return &fs.PathError{Op: "chmod", Path: name, Err: err}
	}
	if uid >= 0 || gid >= 0 {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return &fs.PathError{Op: "chown", Path: name, Err: err}
		}
	}
	return nil
}

// unixMode is mode as chmod(2) takes it, as os.Chmod converts it.
func unixMode(mode fs.FileMode) uint32 {
	m := uint32(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		m |= unix.S_ISUID
	}
	if mode&fs.ModeSetgid != 0 {
		m |= unix.S_ISGID
	}
	if mode&fs.ModeSticky != 0 {
		m |= unix.S_ISVTX
	}
	return m
}

func fsync(fd int, name string) error {
	for {
		err := unix.Fsync(fd)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "sync", Path: name, Err: err}
		}
		return nil
	}
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
