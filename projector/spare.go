package projector

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Spares: the inodes of replaced files, recycled for later writes.
//
// Replacing a file allocates an inode for the new contents and frees the old
// one. Both are slow on some file systems (on ext4 without a journal, or
// mounted with discard, each costs ~50–80 µs of kernel time, most of a small
// write), and they cost journal work everywhere. So the old contents of a
// replaced file are linked into the state folder (.kvsync/spare) instead of
// being freed, and a later write fills one of them and renames it into place.
//
// An inode is reused only when nobody else can see it change. The check is a
// write lease (fcntl F_SETLEASE, F_WRLCK), which the kernel grants only when
// no other open file description of the inode exists anywhere (a reader that
// still holds the old file open, or has it mapped, refuses it), and which makes
// any later open(2) wait until it is released; with it, the inode must also
// have one link, its name in the spare folder (a hard link made elsewhere
// refuses it). The lease is taken when an old content is parked (its bytes are
// then overwritten with zeros, so no old value lingers) and again when it is
// filled (the new bytes are written and the length set before the lease is
// released). An inode that fails either check is unlinked, as before.
//
// Only local file systems whose leases see every opener take part; elsewhere
// (NFS, FUSE, overlayfs, or leases turned off) no spare is ever kept.

const (
	spareDir = "spare"
	// maxSpares bounds the spare inodes one Dir keeps.
	maxSpares = 256
	// maxSpareSize is the largest old content that is kept as a spare: its
	// blocks stay allocated (zeroed) while it waits.
	maxSpareSize = 16 << 10
)

// leaseFS lists the file systems whose leases are local and complete:
// ext2/3/4, XFS, Btrfs, tmpfs, F2FS.
var leaseFS = map[int64]bool{
	0xEF53:     true,
	0x58465342: true,
	0x9123683E: true,
	0x01021994: true,
	0xF2F52010: true,
}

// spares is the pool of zeroed inodes in the state folder, ready to be filled.
type spares struct {
	dir  int    // the spare folder, open
	dev  uint64 // its device: only folders on it can take a spare
	seq  atomic.Uint64
	off  atomic.Bool // leases refused: stop keeping spares
	mu   sync.Mutex
	free []string // parked, zeroed, ready
}

var zeros [maxSpareSize]byte

// openSpares prepares the spare folder of state (emptying what a previous run
// left there), or returns nil when the file system does not qualify.
func openSpares(state int) (*spares, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(state, &sfs); err != nil || !leaseFS[int64(sfs.Type)] {
		return nil, nil
	}
	if err := unix.Mkdirat(state, spareDir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create spare folder: %w", err)
	}
	fd, err := unix.Openat(state, spareDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open spare folder: %w", err)
	}
	s := &spares{dir: fd}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		s.close()
		return nil, fmt.Errorf("open spare folder: %w", err)
	}
	s.dev = st.Dev
	if err := s.clear(); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// clear unlinks every entry of the spare folder.
func (s *spares) clear() error {
	fd, err := unix.Openat(s.dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("read spare folder: %w", err)
	}
	f := os.NewFile(uintptr(fd), spareDir)
	names, err := f.Readdirnames(-1)
	_ = f.Close() // read-only descriptor
	if err != nil {
		return fmt.Errorf("read spare folder: %w", err)
	}
	for _, n := range names {
		if err := unix.Unlinkat(s.dir, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove spare %s: %w", n, err)
		}
	}
	s.mu.Lock()
	s.free = s.free[:0]
	s.mu.Unlock()
	return nil
}

func (s *spares) close() {
	if s.dir >= 0 {
		_ = unix.Close(s.dir)
		s.dir = -1
	}
}

// name returns a fresh name in the spare folder.
func (s *spares) name() string { return strconv.FormatUint(s.seq.Add(1), 36) }

// keep links the file name in folder dirfd into the spare folder and returns
// its spare name, or "" when it cannot (no such file, another device, no hard
// links).
func (s *spares) keep(dirfd int, name string) string {
	if s.off.Load() {
		return ""
	}
	n := s.name()
	if err := unix.Linkat(dirfd, name, s.dir, n, 0); err != nil {
		return ""
	}
	return n
}

// lease takes a write lease on fd, which must be open for writing: it
// reports false when another open file description of the inode exists. A
// refusal for any other reason turns spares off.
func (s *spares) lease(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK)
	switch {
	case err == nil:
		return true
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
		return false
	default:
		s.off.Store(true) // EINVAL (leases off), EACCES (not ours), ...
		return false
	}
}

func unlease(fd int) { _, _ = unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK) }

// alone reports whether fd is a regular file of at most maxSize bytes whose
// only link is its spare name.
func alone(fd int, maxSize int64) (unix.Stat_t, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return st, false
	}
	return st, st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1 && st.Size <= maxSize
}

// park zeroes the spare n and adds it to the pool, or unlinks it when it
// cannot be reused (another process has it open, it has another link, it is
// large, or the pool is full).
func (s *spares) park(n string) {
	if !s.tryPark(n) {
		_ = unix.Unlinkat(s.dir, n, 0) // best effort: Open empties the folder
	}
}

func (s *spares) tryPark(n string) bool {
	s.mu.Lock()
	full := len(s.free) >= maxSpares
	s.mu.Unlock()
	if full || s.off.Load() {
		return false
	}
	fd, err := unix.Openat(s.dir, n, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if !s.lease(fd) {
		return false
	}
	defer unlease(fd)
	st, ok := alone(fd, maxSpareSize)
	if !ok {
		return false
	}
	if _, err := unix.Pwrite(fd, zeros[:st.Size], 0); err != nil {
		return false
	}
	s.mu.Lock()
	s.free = append(s.free, n)
	s.mu.Unlock()
	return true
}

// fill writes data into a spare with the given mode and owner (uid, gid -1:
// as is), fsyncs it when sync is set, and returns its name in the spare
// folder; "" when no spare could take it.
func (s *spares) fill(data []byte, mode uint32, uid, gid int, sync bool) string {
	for range 2 {
		s.mu.Lock()
		if len(s.free) == 0 {
			s.mu.Unlock()
			return ""
		}
		n := s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
		s.mu.Unlock()
		if s.tryFill(n, data, mode, uid, gid, sync) {
			return n
		}
		_ = unix.Unlinkat(s.dir, n, 0) // best effort: Open empties the folder
	}
	return ""
}

func (s *spares) tryFill(n string, data []byte, mode uint32, uid, gid int, sync bool) bool {
	fd, err := unix.Openat(s.dir, n, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if !s.lease(fd) {
		return false
	}
	leased := true
	defer func() {
		if leased {
			unlease(fd)
		}
	}()
	st, ok := alone(fd, maxSpareSize)
	if !ok {
		return false
	}
	if st.Mode&0o777 != mode {
		if err := unix.Fchmod(fd, mode); err != nil {
			return false
		}
	}
	if uid >= 0 && st.Uid != uint32(uid) || gid >= 0 && st.Gid != uint32(gid) {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return false
		}
	}
	for off := 0; off < len(data); {
		w, err := unix.Pwrite(fd, data[off:], int64(off))
		if err != nil || w == 0 {
			return false
		}
		off += w
	}
	if int64(len(data)) != st.Size {
		if err := unix.Ftruncate(fd, int64(len(data))); err != nil {
			return false
		}
	}
	unlease(fd)
	leased = false
	return !sync || unix.Fsync(fd) == nil
}
