package projector

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Local edits: what a Dir does for a caller that lets people edit the files
// it projects (push-back), so that the caller writes nothing into the folder
// itself.
//
// With Options.KeepEdits, every owned file that Apply replaces or removes is
// first moved out of the way as a whole — renameat2(RENAME_EXCHANGE) swaps the
// new file in and leaves the old one under a temp name; a removal renames the
// file to a temp name — and only then compared with what kvsync last wrote
// there. Whatever a local save put at the path before that swap is therefore
// in the file the comparison sees: no interleaving of a local save (a write
// in place, or a new file renamed over the old) with kvsync's replace loses
// it. A file that holds what kvsync wrote (or exactly the new content) is
// unlinked; any other is moved, as it is (the same inode), to
// .kvsync/displaced/ and reported in Result.Displaced. The caller then drops
// it (DropHeld) once its bytes are safe elsewhere, or turns it into a
// conflict copy in .kvsync/conflicts/ (KeepHeld); Open turns any left by a
// crash into conflict copies.
//
// A program that truncated the file before the swap and writes after it
// writes into the held file, which keeps that write: DropHeld keeps a held
// file whose content changed. A program whose write (or truncation, even one
// by an open(2) that found the file before the swap) lands after a
// comparison that found kvsync's own bytes writes into kvsync's old content:
// that is compared once more trashGrace after the batch, before it is
// unlinked, and kept as a conflict copy if it changed. A write later than
// that goes to a file that is no longer at the path, as it would with any
// program that replaces files by rename. A removal compares once.
//
// Where the file system has no RENAME_EXCHANGE (EINVAL: NFS, many FUSE file
// systems, vfat, ...), the old file gets a second name (linkat) just before
// the new one is renamed over it, and that second name is compared instead:
// a save landing between those two system calls (microseconds; no fsync
// between them) is lost. Where hard links are refused too, the file is read
// just before the rename, and the window is that read and the rename.
//
// A crash between the swap and the comparison leaves the displaced file
// under a temp name, which the next Open removes.

// Displaced is a file kvsync replaced or removed that did not hold what kvsync
// last wrote there: a local edit that landed while kvsync wrote the path.
type Displaced struct {
	Path string // relative path of the projected file
	Data []byte // what the displaced file held when kvsync compared it
	// Held is the absolute path under <dir>/.kvsync/displaced where the
	// displaced file itself is kept until the caller passes it to DropHeld
	// or KeepHeld; "" when it could not be kept (Err says why: Data is then
	// all there is).
	Held string
	Err  error
}

// Folders of the state folder for local edits.
const (
	conflictsDir = "conflicts" // conflict copies, for people to look at
	heldDir      = "displaced" // displaced local edits the caller has not settled yet
)

// Reserved reports whether the relative, slash-separated path rel is one a
// projection folder keeps for kvsync's own use (its state folder, temp files,
// snapshot data): a segment starts with ".kvsync" or "..". No key maps to such
// a path.
func Reserved(rel string) bool {
	for seg := range strings.SplitSeq(rel, "/") {
		if strings.HasPrefix(seg, reservedKvsync) || strings.HasPrefix(seg, reservedDots) {
			return true
		}
	}
	return false
}

// renameat2 is unix.Renameat2; tests take RENAME_EXCHANGE away from it.
var renameat2 = unix.Renameat2

// testHookReplace, when set, runs just before Apply swaps out or removes an
// owned file (before the exchange, the link of the fallback, or the rename
// aside of a removal): tests plant local edits there.
var testHookReplace func(p string)

// ReadFile returns the content of the regular file at the relative path p. No
// symlink is followed, neither in the folders on the way nor at p itself; a
// symlink, folder or other non-regular file is an error.
func (d *Dir) ReadFile(p string) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(p); err != nil {
		return nil, err
	}
	fc := d.folders()
	defer fc.close()
	dirfd, err := fc.get(parent(p))
	if err != nil {
		return nil, err
	}
	data, _, err := readAt(dirfd, path.Base(p))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return data, nil
}

// Lstat returns what is at the relative path p, without following a symlink
// anywhere on the way or at p.
func (d *Dir) Lstat(p string) (fs.FileInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(p); err != nil {
		return nil, err
	}
	fc := d.folders()
	defer fc.close()
	dirfd, err := fc.get(parent(p))
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, path.Base(p), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	return statInfo(path.Base(p), &st), nil
}

// Adopt records the file at p as kvsync's version of p when it holds exactly
// data: a local file whose bytes the bucket now holds (a new file pushed,
// or an edit pushed and coming back). A file kvsync does not own becomes its
// own, so later changes of the key replace it. The file is not rewritten: it
// keeps its inode, mode and owner until kvsync next writes it. adopted is
// false, with no error, when the file holds something else or is not a
// regular file.
func (d *Dir) Adopt(p string, data []byte) (adopted bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(p); err != nil {
		return false, err
	}
	if d.err != nil {
		return false, d.err
	}
	sum := sha256.Sum256(data)
	fc := d.folders()
	defer fc.close()
	dirfd, err := fc.get(parent(p))
	if err != nil {
		return false, nil // no such folder (or a symlink): nothing to adopt
	}
	disk, _, err := readAt(dirfd, path.Base(p))
	if err != nil || !bytes.Equal(disk, data) {
		return false, nil
	}
	if old, owned := d.man.files[p]; owned && old == sum {
		return true, nil
	}
	d.man.add(p, sum)
	if err := d.man.flush(d.opts.Fsync); err != nil {
		d.err = fmt.Errorf("projection %s is unusable: %w", d.path, err)
		return false, err
	}
	return true, nil
}

// Discard removes the file at p, which kvsync does not own, if it still holds
// the content whose sha256 is sum (a local file whose bytes were saved
// elsewhere, to make room for the bucket's value). The file is renamed aside
// before it is compared, so an edit saved meanwhile is never removed: it is
// put back, or, when p is taken again by then, kept as a conflict copy whose
// absolute path is returned.
func (d *Dir) Discard(p string, sum [32]byte) (saved string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(p); err != nil {
		return "", err
	}
	if _, owned := d.man.files[p]; owned {
		return "", fmt.Errorf("discard %s: kvsync owns it", p)
	}
	fc := d.folders()
	defer fc.close()
	dirfd, err := fc.get(parent(p))
	if err != nil {
		return "", fmt.Errorf("discard %s: %w", p, err)
	}
	aside, err := setAside(dirfd, path.Base(p))
	if err != nil {
		return "", fmt.Errorf("discard %s: %w", p, err)
	}
	data, kind, err := readAt(dirfd, aside)
	if err == nil && sha256.Sum256(data) == sum {
		if err := unix.Unlinkat(dirfd, aside, 0); err != nil {
			return "", fmt.Errorf("discard %s: %w", p, &fs.PathError{Op: "unlinkat", Path: p, Err: err})
		}
		return "", d.syncIf(fc, parent(p))
	}
	// Something else: put it back where it was, if the place is still free.
	if err := putBack(dirfd, aside, path.Base(p)); err == nil {
		return "", nil
	}
	if kind == unix.S_IFDIR {
		return "", fmt.Errorf("discard %s: a folder appeared there; it is left at %s", p, path.Join(parent(p), aside))
	}
	name, err := d.moveIn(conflictsDir, dirfd, aside, p, nil)
	if err != nil {
		return "", fmt.Errorf("discard %s: %w", p, err)
	}
	return name, nil
}

// syncIf fsyncs folder q when the Dir is asked to be durable.
func (d *Dir) syncIf(fc *folders, q string) error {
	if !d.opts.Fsync {
		return nil
	}
	return d.syncFolders(fc, map[string]bool{q: true}, false)
}

// putBack renames aside back to name in the open folder dirfd, unless name
// exists again.
func putBack(dirfd int, aside, name string) error {
	err := renameat2(dirfd, aside, dirfd, name, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = unix.Linkat(dirfd, aside, dirfd, name, 0); err == nil {
			_ = unix.Unlinkat(dirfd, aside, 0) // the second name of what is back at name
		}
	}
	return err
}

// SaveConflict writes data to a new conflict copy of p,
// <dir>/.kvsync/conflicts/<p>.<unix-nanos> (the sub-folders of p kept),
// fsynced, and returns its absolute path. The write does not hold up the
// Dir's other work.
func (d *Dir) SaveConflict(p string, data []byte) (string, error) {
	d.mu.Lock()
	if err := d.usable(p); err != nil {
		d.mu.Unlock()
		return "", err
	}
	dir, err := d.stateFolder(conflictsDir, p)
	d.mu.Unlock()
	if err != nil {
		return "", err
	}
	defer dir.Close()
	return d.writeCopy(dir, conflictsDir, p, data)
}

// ReadHeld returns the content of the held displaced file name (a
// Displaced.Held), as it is now.
func (d *Dir) ReadHeld(name string) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rel, _, err := d.heldRel(name)
	if err != nil {
		return nil, err
	}
	data, err := d.readState(rel)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return data, nil
}

// DropHeld removes the held displaced file name (a Displaced.Held) if it
// holds the content whose sha256 is sum: the caller put those bytes
// somewhere safe. A file that holds anything else (a program wrote into it
// after it was read) becomes a conflict copy instead, whose absolute path is
// returned.
func (d *Dir) DropHeld(name string, sum [32]byte) (kept string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rel, p, err := d.heldRel(name)
	if err != nil {
		return "", err
	}
	data, err := d.readState(rel)
	if err == nil && sha256.Sum256(data) == sum {
		if err := d.state.Remove(rel); err != nil {
			return "", fmt.Errorf("remove %s: %w", name, err)
		}
		return "", nil
	}
	return d.keepHeld(rel, p)
}

// KeepHeld turns the held displaced file name (a Displaced.Held) into a
// conflict copy, <dir>/.kvsync/conflicts/<path>.<unix-nanos>, and returns its
// absolute path.
func (d *Dir) KeepHeld(name string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rel, p, err := d.heldRel(name)
	if err != nil {
		return "", err
	}
	return d.keepHeld(rel, p)
}

func (d *Dir) keepHeld(rel, p string) (string, error) {
	from, err := d.state.Open(path.Dir(rel))
	if err != nil {
		return "", fmt.Errorf("keep %s: %w", p, err)
	}
	defer from.Close()
	return d.moveIn(conflictsDir, int(from.Fd()), path.Base(rel), p, nil)
}

// heldRel checks that name is a held displaced file and returns its path
// relative to the state folder and the projected path it was displaced from.
func (d *Dir) heldRel(name string) (rel, p string, err error) {
	if d.state == nil {
		return "", "", errors.New("projection is closed")
	}
	top := filepath.Join(d.path, stateDir, heldDir)
	r, err := filepath.Rel(top, name)
	if err != nil || !filepath.IsLocal(r) {
		return "", "", fmt.Errorf("%s is not in %s", name, top)
	}
	r = filepath.ToSlash(r)
	i := strings.LastIndexByte(r, '.')
	if i <= 0 {
		return "", "", fmt.Errorf("%s is not a held file", name)
	}
	return heldDir + "/" + r, r[:i], nil
}

// readState reads the regular file rel of the state folder.
func (d *Dir) readState(rel string) ([]byte, error) {
	f, err := d.state.OpenFile(rel, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	data, _, err := readFD(int(f.Fd()))
	_ = f.Close() // read-only
	return data, err
}

// usable checks p and that the Dir is open.
func (d *Dir) usable(p string) error {
	if d.root == nil {
		return errors.New("projection is closed")
	}
	return checkPath(p)
}

// stateFolder opens (creating it) the folder of the state folder's kind
// (conflicts, displaced) that holds the copies of p.
func (d *Dir) stateFolder(kind, p string) (*os.File, error) {
	dir := kind
	if q := parent(p); q != "" {
		dir += "/" + q
	}
	if err := d.state.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Join(d.path, stateDir, filepath.FromSlash(dir)), err)
	}
	f, err := d.state.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", filepath.Join(d.path, stateDir, filepath.FromSlash(dir)), err)
	}
	return f, nil
}

func (d *Dir) statePath(kind, p, name string) string {
	return filepath.Join(d.path, stateDir, kind, filepath.FromSlash(parent(p)), name)
}

// copyName is the name of a copy of p made at nanosecond n.
func copyName(p string, n int64) string { return path.Base(p) + "." + strconv.FormatInt(n, 10) }

// saveIn writes data to a new, durable file of the state folder's kind for
// p, <kind>/<p>.<unix-nanos>, and returns its absolute path.
func (d *Dir) saveIn(kind, p string, data []byte) (string, error) {
	dir, err := d.stateFolder(kind, p)
	if err != nil {
		return "", err
	}
	defer dir.Close()
	return d.writeCopy(dir, kind, p, data)
}

// writeCopy writes data to a new file <p>.<unix-nanos> in dir, the open
// folder of p's copies of that kind, fsyncs it (and, with Options.Fsync, the
// folder), and returns its absolute path.
func (d *Dir) writeCopy(dir *os.File, kind, p string, data []byte) (string, error) {
	for n := time.Now().UnixNano(); ; n++ {
		name := copyName(p, n)
		fd, err := unix.Openat(int(dir.Fd()), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		abs := d.statePath(kind, p, name)
		if err != nil {
			return "", fmt.Errorf("write %s: %w", abs, err)
		}
		err = fill(fd, name, data, 0o600, -1, -1)
		if err == nil {
			err = fsync(fd, name)
		}
		if cerr := unix.Close(fd); err == nil && cerr != nil {
			err = cerr
		}
		if err == nil && d.opts.Fsync {
			err = fsync(int(dir.Fd()), kind)
		}
		if err != nil {
			_ = unix.Unlinkat(int(dir.Fd()), name, 0) // partial: the caller tries again
			return "", fmt.Errorf("write %s: %w", abs, err)
		}
		return abs, nil
	}
}

// moveIn moves the file name of the open folder fromfd, as it is (a program
// still writing into it writes into the moved file), to a new name of the
// state folder's kind for p, <kind>/<p>.<unix-nanos>, and returns its
// absolute path. Across file systems (a sub-folder that is a mount point)
// data is written as a new file instead and name removed; data nil means
// the file is read for that.
func (d *Dir) moveIn(kind string, fromfd int, name, p string, data []byte) (string, error) {
	dir, err := d.stateFolder(kind, p)
	if err != nil {
		return "", err
	}
	defer dir.Close()
	dfd := int(dir.Fd())
	for n := time.Now().UnixNano(); ; n++ {
		to := copyName(p, n)
		err := renameat2(fromfd, name, dfd, to, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// No RENAME_NOREPLACE: the folder is kvsync's, and its names
			// are taken by the nanosecond, so a name found free stays free.
			var st unix.Stat_t
			if unix.Fstatat(dfd, to, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
				continue
			}
			err = unix.Renameat(fromfd, name, dfd, to)
		}
		switch {
		case errors.Is(err, unix.EEXIST):
			continue
		case errors.Is(err, unix.EXDEV):
			if data == nil {
				if data, _, err = readAt(fromfd, name); err != nil {
					return "", fmt.Errorf("keep %s: %w", p, err)
				}
			}
			abs, err := d.saveIn(kind, p, data)
			if err == nil {
				_ = unix.Unlinkat(fromfd, name, 0) // copied; a leftover temp name is removed by Open
			}
			return abs, err
		case err != nil:
			return "", fmt.Errorf("keep %s: %w", p, &fs.PathError{Op: "renameat", Path: p, Err: err})
		}
		if d.opts.Fsync {
			if err := fsync(dfd, kind); err != nil {
				return "", err
			}
		}
		return d.statePath(kind, p, to), nil
	}
}

// recoverHeld turns the displaced files a crash left held into conflict
// copies: nobody is going to push them now.
func (d *Dir) recoverHeld() error {
	var held []string
	err := fs.WalkDir(d.state.FS(), heldDir, func(p string, e fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == heldDir {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		if !e.IsDir() {
			held = append(held, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", heldDir, err)
	}
	for _, rel := range held {
		_, p, err := d.heldRel(filepath.Join(d.path, stateDir, filepath.FromSlash(rel)))
		if err != nil {
			continue
		}
		name, err := d.keepHeld(rel, p)
		if err != nil {
			return err
		}
		d.log.Warn("a local edit displaced before a restart is kept as a conflict copy", "path", p, "saved_as", name)
	}
	return nil
}

// keepAside keeps the file named aside in the open folder dirfd (the
// displaced content of p, which held data when read) in the held folder.
func (d *Dir) keepAside(dirfd int, aside, p string, data []byte) (string, error) {
	if data == nil {
		data = []byte{}
	}
	return d.moveIn(heldDir, dirfd, aside, p, data)
}

// setAside renames name in the open folder dirfd to a fresh temp name and
// returns it. Whatever was at name at that instant moves, as a whole.
func setAside(dirfd int, name string) (string, error) {
	for range 10 {
		aside := tempName("")
		err := renameat2(dirfd, name, dirfd, aside, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// No RENAME_NOREPLACE: temp names are random and kvsync's own.
			err = unix.Renameat(dirfd, name, dirfd, aside)
		}
		switch {
		case err == nil:
			return aside, nil
		case errors.Is(err, unix.EEXIST):
			continue
		default:
			return "", &fs.PathError{Op: "renameat", Path: name, Err: err}
		}
	}
	return "", errors.New("set aside: too many name collisions")
}

// readAt reads the file name in the open folder dirfd without following a
// symlink, and returns its content and its file type (unix.S_IFMT bits). A
// non-regular file is an error; its type is still returned.
func readAt(dirfd int, name string) ([]byte, uint32, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, unix.S_IFLNK, &fs.PathError{Op: "open", Path: name, Err: errors.New("is a symlink")}
	}
	if err != nil {
		return nil, 0, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	data, kind, err := readFD(fd)
	_ = unix.Close(fd) // read-only descriptor
	return data, kind, err
}

// readFD reads a whole regular file from fd.
func readFD(fd int) ([]byte, uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, 0, &fs.PathError{Op: "fstat", Err: err}
	}
	kind := st.Mode & unix.S_IFMT
	if kind != unix.S_IFREG {
		return nil, kind, fmt.Errorf("not a regular file (%s)", statInfo("", &st).Mode().Type())
	}
	buf := make([]byte, 0, max(st.Size, 0)+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, kind, &fs.PathError{Op: "read", Err: err}
		}
		if n == 0 {
			return buf, kind, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// statInfo is an fs.FileInfo of a unix.Stat_t.
func statInfo(name string, st *unix.Stat_t) fs.FileInfo {
	return &fileStat{name: name, st: *st}
}

type fileStat struct {
	name string
	st   unix.Stat_t
}

func (f *fileStat) Name() string       { return f.name }
func (f *fileStat) Size() int64        { return f.st.Size }
func (f *fileStat) ModTime() time.Time { return time.Unix(f.st.Mtim.Unix()) }
func (f *fileStat) IsDir() bool        { return f.Mode().IsDir() }
func (f *fileStat) Sys() any           { return &f.st }
func (f *fileStat) Mode() fs.FileMode {
	m := fs.FileMode(f.st.Mode & 0o777)
	switch f.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	if f.st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if f.st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if f.st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// swap puts the temp file tmp (a bare name in the folder of p) at p, which
// kvsync owns, and returns the name (relative to the top) under which the
// file it replaced now is: "" when p was missing, or when the fallback could
// not give the old file a second name (the rename then frees it). The temp
// file is removed on error. own is the sha256 of what kvsync last wrote at p,
// next that of the temp file.
func (fc *folders) swap(tmp, p string, own, next [32]byte, res *Result) (string, error) {
	fd, err := fc.get(parent(p))
	if err != nil {
		_ = fc.d.root.Remove(path.Join(parent(p), tmp)) // best effort; Open removes leftovers
		return "", err
	}
	base := path.Base(p)
	for try := 0; !fc.d.noExchange; try++ {
		if testHookReplace != nil {
			testHookReplace(p)
		}
		err := renameat2(fd, tmp, fd, base, unix.RENAME_EXCHANGE)
		switch {
		case err == nil:
			return path.Join(parent(p), tmp), nil
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS):
			fc.d.noExchange = true
			fc.d.log.Info("the file system cannot exchange two files (renameat2 RENAME_EXCHANGE): replacing files by link and rename")
		case errors.Is(err, unix.ENOENT) && try < 3:
			// p is gone (removed locally): the new file takes its place,
			// unless something was put there meanwhile, which is swapped.
			err = renameat2(fd, tmp, fd, base, unix.RENAME_NOREPLACE)
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
				err = unix.Renameat(fd, tmp, fd, base)
			}
			if err == nil {
				return "", nil
			}
			if !errors.Is(err, unix.EEXIST) {
				_ = unix.Unlinkat(fd, tmp, 0) // best effort; Open removes leftovers
				return "", &fs.PathError{Op: "renameat", Path: p, Err: err}
			}
		default:
			_ = unix.Unlinkat(fd, tmp, 0) // best effort; Open removes leftovers
			return "", &fs.PathError{Op: "renameat2", Path: p, Err: err}
		}
	}
	// No RENAME_EXCHANGE: a second name for the old file, then the rename.
	if testHookReplace != nil {
		testHookReplace(p)
	}
	old := fc.keepOld(p)
	if old == "" && fc.d.opts.KeepEdits {
		// No hard links either: what is there now is all there is to look at.
		if data, _, err := readAt(fd, base); err == nil {
			if sum := sha256.Sum256(data); sum != own && sum != next {
				held, err := fc.d.saveIn(heldDir, p, data)
				res.Displaced = append(res.Displaced, Displaced{Path: p, Data: data, Held: held, Err: err})
			}
		}
	}
	if err := fc.rename(tmp, p); err != nil {
		if old != "" {
			_ = fc.d.root.Remove(old) // the second name of the file still at p
		}
		return "", err
	}
	return old, nil
}

// swapBack undoes a swap that put a folder (made at p meanwhile) under the
// temp name aside: the folder goes back to p and the new file is removed.
// It always returns the error that p could not be written.
func (fc *folders) swapBack(aside, p string) error {
	fd, err := fc.get(parent(p))
	if err == nil {
		err = renameat2(fd, path.Base(aside), fd, path.Base(p), unix.RENAME_EXCHANGE)
	}
	if err != nil {
		return fmt.Errorf("%s became a folder during the write, now at %s: %w", p, aside, err)
	}
	_ = unix.Unlinkat(fd, path.Base(aside), 0) // the new file; Open removes leftovers
	return &fs.PathError{Op: "renameat2", Path: p, Err: unix.EISDIR}
}

// place renames the temp file tmp (a bare name in the folder of p) to p,
// which must not exist (renameat2 RENAME_NOREPLACE; a plain rename where the
// file system lacks it), and removes the temp file if that fails. A file that
// appeared at p meanwhile is an fs.ErrExist error.
func (fc *folders) place(tmp, p string) error {
	fd, err := fc.get(parent(p))
	if err != nil {
		return err
	}
	err = renameat2(fd, tmp, fd, path.Base(p), unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = unix.Renameat(fd, tmp, fd, path.Base(p))
	}
	if err != nil {
		_ = unix.Unlinkat(fd, tmp, 0) // best effort; Open removes leftovers
		return &fs.PathError{Op: "renameat", Path: p, Err: err}
	}
	return nil
}

type settlement uint8

const (
	settleUnlink settlement = iota // kvsync's own content, or not content at all: unlink it
	settleKept                     // a local edit: kept as a conflict copy, in Result.Displaced
	settleFolder                   // a folder: not kvsync's to move
)

// settle decides about the file that a swap or a removal moved from p to
// the temp name aside (relative to the top): it is unlinked when it holds
// own or next (what kvsync wrote there, or is writing now); any other file
// is held as a local edit. Without KeepEdits only a folder is told apart. A
// symlink, pipe or device is not content: a rename over it would have
// removed it too.
func (d *Dir) settle(fc *folders, aside, p string, own, next [32]byte, res *Result) settlement {
	fd, err := fc.get(parent(p))
	if err != nil {
		return settleUnlink
	}
	name := path.Base(aside)
	if !d.opts.KeepEdits {
		var st unix.Stat_t
		if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return settleFolder
		}
		return settleUnlink
	}
	data, kind, err := readAt(fd, name)
	switch {
	case kind == unix.S_IFDIR:
		return settleFolder
	case err != nil && kind != unix.S_IFREG:
		return settleUnlink
	case err == nil:
		if sum := sha256.Sum256(data); sum == own || sum == next {
			return settleUnlink
		}
	}
	// A local edit, or a file that cannot be read: held either way.
	held, kerr := d.keepAside(fd, name, p, data)
	if kerr == nil {
		kerr = err
	}
	res.Displaced = append(res.Displaced, Displaced{Path: p, Data: data, Held: held, Err: kerr})
	return settleKept
}

// removeKeeping removes the owned file p with KeepEdits: it is renamed aside
// (whatever is at p at that instant moves, whole), then settled: unlinked,
// or kept as a local edit. A folder at p is refused like unlinkat refuses it.
func (d *Dir) removeKeeping(fc *folders, p string, res *Result) error {
	fd, err := fc.get(parent(p))
	if err != nil {
		return err
	}
	if testHookReplace != nil {
		testHookReplace(p)
	}
	base := path.Base(p)
	var st unix.Stat_t
	if err := unix.Fstatat(fd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return &fs.PathError{Op: "unlinkat", Path: p, Err: unix.EISDIR}
	}
	aside, err := setAside(fd, base)
	if err != nil {
		return err
	}
	own := d.man.files[p]
	switch d.settle(fc, path.Join(parent(p), aside), p, own, own, res) {
	case settleUnlink:
		if err := unix.Unlinkat(fd, aside, 0); err != nil {
			return &fs.PathError{Op: "unlinkat", Path: p, Err: err}
		}
	case settleFolder:
		_ = putBack(fd, aside, base) // a folder is not ours; it goes back if it can
		return &fs.PathError{Op: "unlinkat", Path: p, Err: unix.EISDIR}
	}
	return nil
}
