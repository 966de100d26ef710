package projector

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Options configures a projection folder.
type Options struct {
	Dir      string      // absolute or relative; created (with DirMode) if missing
	Mode     fs.FileMode // file permission bits; 0 means DefaultMode
	DirMode  fs.FileMode // permission bits of folders kvsync creates; 0 means DefaultDirMode
	UID, GID int         // owner of what kvsync creates; -1 leaves it as is (the zero value 0 means root)
	Fsync    bool        // make every Apply durable before it returns
	Snapshot bool        // atomic "snapshot": the whole set is swapped at once through a ..data symlink
	// KeepEdits ("file" mode): a file kvsync replaces or removes that does
	// not hold what kvsync last wrote there is a local edit; it is moved,
	// whole, into <Dir>/.kvsync/displaced/ and reported in Result.Displaced
	// instead of being deleted. See edits.go for what this guarantees.
	KeepEdits bool
	Logger    *slog.Logger
}

// Change is one file to write or remove. Path comes from KeyPath.
type Change struct {
	Path   string
	Data   []byte
	Remove bool
}

// Result says what an Apply or ReconcileSeq changed on disk. Written and Removed hold
// only paths whose bytes actually changed, sorted; a file already holding the
// same bytes is neither rewritten nor listed.
type Result struct {
	Written, Removed []string
	Errors           []PathError // per-path problems; the other paths were still applied
	// Displaced holds, with Options.KeepEdits, the local edits found in
	// files kvsync replaced or removed, each held for the caller to settle.
	Displaced []Displaced
}

// Changed reports whether any file was written or removed.
func (r Result) Changed() bool { return len(r.Written)+len(r.Removed) > 0 }

func (r *Result) fail(p string, err error) { r.Errors = append(r.Errors, PathError{Path: p, Err: err}) }

// PathError is a problem with one path of a batch. Err may wrap ErrForeign,
// ErrInvalidKey or an fs error.
type PathError struct {
	Path string
	Err  error
}

// Error returns "path: err".
func (e PathError) Error() string { return e.Path + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e PathError) Unwrap() error { return e.Err }

// maxDirSyncs is how many folders Apply fsyncs one by one before one syncfs(2) of
// the whole file system is cheaper.
const maxDirSyncs = 8

// Dir is a projection folder: the files kvsync writes there and the manifest of
// what it owns. Its methods are safe for concurrent use; they are serialised.
type Dir struct {
	mu    sync.Mutex
	opts  Options
	path  string   // absolute
	root  *os.Root // every file operation goes through it, so none can leave the folder
	top   *os.File // the folder itself: syncfs(2), fsync, unlinkat(2)
	state *os.Root // the .kvsync folder
	man   *manifest
	log   *slog.Logger
	cur   string // snapshot mode: the data folder ..data points to, "" before the first
	// snapshot mode: replaced data folders, removed once retire has passed
	retired []retired
	retire  time.Duration
	batch   int // changes a file-mode reconcile applies at a time
	// tmpfiles is how many new files one batch may write as unnamed temp
	// files (O_TMPFILE) that get their name by linkat(2): one directory
	// entry per file instead of a temp entry and a rename. 0 where the file
	// system or /proc cannot do it.
	tmpfiles int
	err      error // sticky: the manifest could not be written; Close and Open again
	// noExchange: the file system refused renameat2(RENAME_EXCHANGE); owned
	// files are replaced by a second name (linkat) and a rename instead.
	noExchange bool

	// The old contents of replaced files, under temp names, are unlinked by
	// a goroutine of their own: freeing an inode is the slow part of a
	// replace, and it need not hold up the next batch.
	trash   chan trashBatch
	trashed sync.WaitGroup // batches sent and not yet unlinked
}

// Open opens the projection folder opts.Dir, creating it if missing. It reads the
// manifest (<Dir>/.kvsync/manifest), removes temp files a crash left behind, and
// compacts the manifest. A manifest that cannot be read back is an error wrapping
// ErrCorruptManifest: kvsync does not silently disown its files.
func Open(opts Options) (*Dir, error) {
	if opts.Dir == "" {
		return nil, errors.New("open projection: dir is empty")
	}
	if opts.Mode == 0 {
		opts.Mode = DefaultMode
	}
	if opts.DirMode == 0 {
		opts.DirMode = DefaultDirMode
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("open projection %s: %w", opts.Dir, err)
	}
	if err := os.MkdirAll(abs, opts.DirMode); err != nil {
		return nil, fmt.Errorf("create %s: %w", abs, err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("open projection %s: %w", abs, err)
	}
	d := &Dir{opts: opts, path: abs, root: root, log: opts.Logger.With(slog.String("dir", abs)), retire: retireAfter, batch: reconcileBatch}
	if err := d.open(); err != nil {
		_ = d.closeAll() // the open error is the one to report
		return nil, fmt.Errorf("open projection %s: %w", abs, err)
	}
	d.trash = make(chan trashBatch, 16)
	go d.emptyTrash(d.root, d.trash)
	if n := tmpfileBudget(); n > 0 {
		d.tmpfiles = n
		d.batch = min(d.batch, n)
	}
	return d, nil
}

// maxTmpfiles bounds the unnamed temp files a batch holds open at once.
const maxTmpfiles = 8192

// tmpfileBudget is how many unnamed temp files a batch may hold open: what
// the descriptor limit leaves, up to maxTmpfiles, or 0 when /proc (which
// linkat needs to name them without privileges) is missing.
func tmpfileBudget() int {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		return 0
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2048 {
		return 0
	}
	return int(min(uint64(maxTmpfiles), (lim.Cur-1024)/2))
}

// trashBatch is the old contents one batch replaced, sent to emptyTrash.
type trashBatch struct {
	sent time.Time
	olds []trashed
}

// trashed is the temp name (relative to the top) of a replaced file's old
// content. With check, it held one of sums when the batch compared it.
type trashed struct {
	name, path string
	sums       [2][32]byte
	check      bool
}

// trashGrace is how long, with KeepEdits, the old content of a replaced
// file is kept before it is compared once more and unlinked: a program that
// resolved the file's name before the swap may truncate and write it a
// moment after the batch compared it.
const trashGrace = 50 * time.Millisecond

// emptyTrash unlinks the temp names of replaced files' old contents. One
// that changed since the batch compared it (KeepEdits) is kept as a conflict
// copy instead. A failure leaves a temp file that the next Open removes; it
// is logged.
func (d *Dir) emptyTrash(root *os.Root, trash <-chan trashBatch) {
	for b := range trash {
		for i, o := range b.olds {
			if o.check {
				if i == 0 {
					time.Sleep(time.Until(b.sent.Add(trashGrace)))
				}
				if d.changedOld(o) {
					continue
				}
			}
			if err := root.Remove(o.name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				d.log.Warn("cannot remove the temp name of a replaced file; it is removed at the next start", slog.String("path", o.name), slog.String("err", err.Error()))
			}
		}
		d.trashed.Done()
	}
}

// changedOld reports whether the old content o no longer holds what it held
// when its batch compared it (a write through a descriptor opened before the
// swap), and then keeps it as a conflict copy. It runs on the trash
// goroutine, which Close waits for before it closes the folders.
func (d *Dir) changedOld(o trashed) bool {
	q := parent(o.name)
	fd := int(d.top.Fd())
	if q != "" {
		var err error
		if fd, err = openFolder(fd, q); err != nil {
			return false
		}
		defer func() { _ = unix.Close(fd) }() // read-only descriptor
	}
	data, _, err := readAt(fd, path.Base(o.name))
	if err != nil {
		return false
	}
	if sum := sha256.Sum256(data); sum == o.sums[0] || sum == o.sums[1] {
		return false
	}
	name, err := d.moveIn(conflictsDir, fd, path.Base(o.name), o.path, data)
	if err != nil {
		d.log.Error("a replaced file was written after kvsync compared it and cannot be kept", "path", o.path, "err", err)
		return true // left under its temp name, removed at the next start
	}
	d.log.Warn("a replaced file was written after kvsync compared it; kept as a conflict copy", "path", o.path, "saved_as", name)
	return true
}

// waitTrash returns once every old content sent to the trash is unlinked.
func (d *Dir) waitTrash() { d.trashed.Wait() }

func (d *Dir) open() error {
	top, err := d.root.Open(".")
	if err != nil {
		return err
	}
	d.top = top
	fi, err := d.root.Lstat(stateDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := d.root.Mkdir(stateDir, 0o755); err != nil {
			return fmt.Errorf("create state folder: %w", err)
		}
	case err != nil:
		return fmt.Errorf("check state folder: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a folder (a symlink?)", stateDir)
	}
	if d.state, err = d.root.OpenRoot(stateDir); err != nil {
		return fmt.Errorf("open state folder: %w", err)
	}
	mode := "file"
	if d.opts.Snapshot {
		mode = "snapshot"
	}
	m, torn, err := loadManifest(d.state, mode)
	if err != nil {
		return err
	}
	d.man = m
	if torn {
		d.log.Warn("dropped the incomplete last record of the manifest, cut short by a crash")
	}
	if err := d.removeTemps(); err != nil {
		return err
	}
	if err := d.recoverHeld(); err != nil {
		return err
	}
	if d.opts.Snapshot {
		if err := d.recoverSnapshot(); err != nil {
			return err
		}
	}
	for p := range m.dirs {
		// A folder recorded before a crash may never have been made durable, and
		// one removed by hand is no longer ours to prune.
		if fi, err := d.root.Lstat(p); errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir() {
			delete(m.dirs, p)
		}
	}
	return m.compact()
}

// removeTemps removes the temp files of ours a crash left behind: in the state
// folder (renameio's, named ".manifest*") and anywhere in the projection.
func (d *Dir) removeTemps() error {
	ents, err := fs.ReadDir(d.state.FS(), ".")
	if err != nil {
		return fmt.Errorf("read state folder: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+manifestName) && !e.IsDir() {
			if err := d.state.Remove(e.Name()); err != nil {
				return fmt.Errorf("remove leftover %s: %w", e.Name(), err)
			}
		}
	}
	var n int
	err = fs.WalkDir(d.root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil // an unreadable foreign folder: kvsync never wrote there
		}
		if e.IsDir() {
			if p == stateDir || strings.HasPrefix(p, "..data_") {
				return fs.SkipDir // snapshot data folders are recovered as a whole
			}
			return nil
		}
		if strings.HasPrefix(e.Name(), tempPrefix) {
			if err := d.root.Remove(p); err != nil {
				return fmt.Errorf("remove leftover %s: %w", p, err)
			}
			n++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if n > 0 {
		d.log.Info("removed temp files left by an interrupted write", slog.Int("count", n))
	}
	return nil
}

// Path returns the absolute path of the projection folder.
func (d *Dir) Path() string { return d.path }

// Files returns the manifest: every path kvsync currently owns in this Dir, with
// the sha256 of what it wrote there. The map is a copy.
func (d *Dir) Files() map[string][32]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.man == nil {
		return nil
	}
	return maps.Clone(d.man.files)
}

// Owns reports whether the relative path is in the manifest.
func (d *Dir) Owns(path string) bool {
	_, ok := d.Hash(path)
	return ok
}

// Hash returns the sha256 of what kvsync last wrote at the relative path, and
// whether it owns it.
func (d *Dir) Hash(path string) ([32]byte, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.man == nil {
		return [32]byte{}, false
	}
	h, ok := d.man.files[path]
	return h, ok
}

// Close releases the folder. The Dir must not be used afterwards.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.closeAll(); err != nil {
		return fmt.Errorf("close projection %s: %w", d.path, err)
	}
	return nil
}

func (d *Dir) closeAll() error {
	if d.trash != nil {
		close(d.trash)
		d.waitTrash()
		d.trash = nil
	}
	var errs []error
	if d.man != nil {
		errs = append(errs, d.man.close())
		d.man = nil
	}
	if d.state != nil {
		errs = append(errs, d.state.Close())
		d.state = nil
	}
	if d.top != nil {
		errs = append(errs, d.top.Close())
		d.top = nil
	}
	if d.root != nil {
		errs = append(errs, d.root.Close())
		d.root = nil
	}
	d.err = errors.New("projection is closed")
	return errors.Join(errs...)
}

// Apply applies a batch of changes; for one path the last change wins. It never
// overwrites or deletes a file that is not in the manifest (ErrForeign), never
// writes through a parent folder that is a symlink, and removes the folders it
// created once they are empty. Per-path problems go to Result.Errors and the other
// paths are still applied; the error is non-nil only when the whole batch failed
// (the manifest could not be written; the Dir then refuses further work until it
// is closed and opened again, which replays the manifest).
func (d *Dir) Apply(changes []Change) (Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.apply(changes, nil)
}

func (d *Dir) apply(changes []Change, force map[string]bool) (Result, error) {
	if d.err != nil {
		return Result{}, d.err
	}
	var (
		res Result
		err error
	)
	if d.opts.Snapshot {
		res, err = d.applySnapshot(changes, force)
	} else {
		res, err = d.applyFiles(changes, force)
	}
	if err != nil {
		d.err = fmt.Errorf("projection %s is unusable after a failed batch: %w", d.path, err)
		return res, err
	}
	if d.man.needsCompaction() {
		if err := d.man.compact(); err != nil {
			d.err = fmt.Errorf("projection %s is unusable: %w", d.path, err)
			return res, err
		}
	}
	return res, nil
}

// reconcileBatch is how many changes a file-mode reconcile applies at a time:
// a complete update of a large bucket then holds the bookkeeping of one batch,
// not of every file, and each batch is durable before the next starts.
const reconcileBatch = 16384

// ReconcileSeq makes the projection hold exactly want, a sequence of (path,
// bytes) pairs, each path once (the caller need not build a map of it). It
// compares with the files on disk, not only with the manifest, so a local edit
// of a file kvsync owns is repaired; it writes what differs and removes owned
// files that are not in want. Foreign files are left alone (ErrForeign in
// Result.Errors). want may be iterated twice: once to find the owned paths it
// keeps, then to write.
//
// In "file" mode the changes are applied in batches, the removals first (a
// file may stand where a folder of want goes); a folder that the removals
// leave empty may be removed and made again by a later batch. In "snapshot"
// mode the whole set is one batch, swapped in at once.
func (d *Dir) ReconcileSeq(want iter.Seq2[string, []byte]) (Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return Result{}, d.err
	}
	// (1) The owned paths want keeps; the other owned paths are removed.
	keep := make(map[string]bool)
	if len(d.man.files) > 0 {
		for p := range want {
			if _, owned := d.man.files[p]; owned {
				keep[p] = true
			}
		}
	}
	var changes []Change
	for p := range d.man.files {
		if !keep[p] {
			changes = append(changes, Change{Path: p, Remove: true})
		}
	}
	// (2) Write what differs from the disk, a batch at a time.
	var res Result
	batches := 0
	force := make(map[string]bool)
	flush := func() error {
		r, err := d.apply(changes, force)
		res.Written = append(res.Written, r.Written...)
		res.Removed = append(res.Removed, r.Removed...)
		res.Errors = append(res.Errors, r.Errors...)
		res.Displaced = append(res.Displaced, r.Displaced...)
		clear(changes)
		changes = changes[:0]
		clear(force)
		batches++
		return err
	}
	for p, data := range want {
		if sum, owned := d.man.files[p]; owned && keep[p] {
			actual, err := d.root.ReadFile(d.visible(p))
			if err == nil && bytes.Equal(actual, data) && sha256.Sum256(data) == sum {
				continue
			}
			force[p] = true
		}
		changes = append(changes, Change{Path: p, Data: data})
		if len(changes) >= d.batch && !d.opts.Snapshot {
			if err := flush(); err != nil {
				return res, err
			}
		}
	}
	if len(changes) > 0 || batches == 0 {
		if err := flush(); err != nil {
			return res, err
		}
	}
	if batches > 1 {
		slices.Sort(res.Written)
	}
	return res, nil
}

// visible is where the content of an owned path can be read without following
// the top-level links.
func (d *Dir) visible(p string) string {
	if d.opts.Snapshot && d.cur != "" {
		return d.cur + "/" + p
	}
	return p
}

// dedupe keeps the last change of each path and returns the paths sorted.
func dedupe(changes []Change) ([]string, map[string]Change) {
	final := make(map[string]Change, len(changes))
	for _, c := range changes {
		final[c.Path] = c
	}
	return slices.Sorted(maps.Keys(final)), final
}

// parent returns the folder of a relative path, "" for the top.
func parent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

type put struct {
	path  string
	data  []byte
	sum   [32]byte
	old   [32]byte
	owned bool
	tmp   string // the temp file to rename over path, or
	tf    int    // the unnamed temp file to link at path (a new file); -1: none
}

// applyFiles is Apply in "file" mode:
//
//  1. Remove the owned files the batch removes (unlinkat(2), which never removes a
//     folder in their place).
//  2. Remove the folders kvsync created that became empty, deepest first, unless
//     this batch writes below them.
//  3. For each file to write: check every parent folder with Lstat (a symlink is
//     refused; a missing one is created and recorded), refuse a target that
//     exists and is not owned (ErrForeign), and write a temp file
//     (.kvsync-tmp-*) beside the target, with mode and owner set; in a batch,
//     new files are unnamed temp files (O_TMPFILE) instead. Files are
//     created, renamed and removed relative to an open descriptor of their
//     folder (openat, renameat, unlinkat).
//  4. Make 1–3 durable: one syncfs(2) for a batch, fsync of the one file (and
//     the touched folders) for a single change.
//  5. Record the intent in the manifest ('-' for removals, which happened; 'd'
//     and '+' for folders and files about to appear), fdatasync'ed: a crash never
//     leaves a file kvsync wrote but does not own.
//  6. Link every unnamed temp file at its target (linkat(2), which fails
//     rather than replace a file that appeared meanwhile), rename a temp file
//     to a new target (renameat2 RENAME_NOREPLACE, which fails the same way),
//     and swap a temp file with the target kvsync owns (renameat2
//     RENAME_EXCHANGE): the old file stays under the temp name, so its inode
//     is not freed (freeing it is most of a replace's cost on ext4, and is
//     left to step 8, after the new bytes are visible), and with KeepEdits it
//     is compared with what kvsync wrote: a local edit is kept (edits.go).
//     Without RENAME_EXCHANGE the target is first given a second, temp name
//     (linkat(2)) and the temp file renamed over it.
//  7. Fsync the touched folders (or syncfs(2) when there are many).
//  8. Hand the old contents' temp names to the goroutine that unlinks them
//     while the next batch is being written.
func (d *Dir) applyFiles(changes []Change, force map[string]bool) (Result, error) {
	var res Result
	paths, final := dedupe(changes)
	var puts []*put
	var removes []string
	for _, p := range paths {
		c := final[p]
		if err := checkPath(p); err != nil {
			res.fail(p, err)
			continue
		}
		old, owned := d.man.files[p]
		if c.Remove {
			if owned {
				removes = append(removes, p)
			} else if _, err := d.root.Lstat(p); err == nil {
				res.fail(p, fmt.Errorf("remove: %w", ErrForeign))
			}
			continue
		}
		sum := sha256.Sum256(c.Data)
		if owned && sum == old && !force[p] {
			continue
		}
		puts = append(puts, &put{path: p, data: c.Data, sum: sum, old: old, owned: owned, tf: -1})
	}
	if len(puts)+len(removes) == 0 {
		return res, nil
	}
	syncDirs := make(map[string]bool)

	fc := d.folders()
	defer fc.close()

	// (1)
	checked := make(map[string]error)
	var emptied []string
	for _, p := range removes {
		err := d.checkParents(p, checked, nil)
		if err == nil && d.opts.KeepEdits {
			err = d.removeKeeping(fc, p, &res)
		} else if err == nil {
			err = fc.unlink(p, 0)
		}
		switch {
		case err == nil:
			res.Removed = append(res.Removed, p)
			syncDirs[parent(p)] = true
			emptied = append(emptied, p)
		case errors.Is(err, fs.ErrNotExist):
			// Already gone: only the manifest entry is left to drop.
		default:
			res.fail(p, fmt.Errorf("remove: %w", err))
			continue
		}
		d.man.remove(p)
	}

	// (2)
	needed := make(map[string]bool)
	for _, w := range puts {
		for q := parent(w.path); q != ""; q = parent(q) {
			needed[q] = true
		}
	}
	d.prune(fc, emptied, needed, syncDirs)

	// (3)
	single := len(puts) == 1 && len(removes) == 0
	checked = make(map[string]error)
	tmpfiles := 0
	defer func() {
		for _, w := range puts {
			if w.tf >= 0 {
				_ = unix.Close(w.tf) // unnamed: it goes with its descriptor
			}
		}
	}()
	for _, w := range puts {
		if err := d.checkParents(w.path, checked, syncDirs); err != nil {
			res.fail(w.path, err)
			continue
		}
		if !w.owned {
			if fi, err := d.root.Lstat(w.path); err == nil {
				if fi.IsDir() {
					res.fail(w.path, fmt.Errorf("write: %s is a folder", w.path))
				} else {
					res.fail(w.path, fmt.Errorf("write: %w", ErrForeign))
				}
				continue
			} else if !errors.Is(err, fs.ErrNotExist) {
				res.fail(w.path, fmt.Errorf("write: %w", err))
				continue
			}
		}
		dirfd, err := fc.get(parent(w.path))
		if err == nil && !w.owned && !single && tmpfiles < d.tmpfiles {
			if w.tf = d.newTmpfile(dirfd, w.data); w.tf >= 0 {
				tmpfiles++
			}
		}
		if err == nil && w.tf < 0 {
			w.tmp, err = writeTemp(dirfd, w.data, d.opts.Mode, d.opts.UID, d.opts.GID, single && d.opts.Fsync)
		}
		if err != nil {
			res.fail(w.path, fmt.Errorf("write: %w", err))
			continue
		}
	}

	// (4)
	if d.opts.Fsync {
		whole := len(puts) > 1 || len(puts) == 1 && !single || len(syncDirs) > maxDirSyncs
		if err := d.syncFolders(fc, syncDirs, whole); err != nil {
			fc.removeTemps(puts)
			return res, err
		}
	}

	// (5)
	for _, w := range puts {
		if w.tmp != "" || w.tf >= 0 {
			d.man.add(w.path, w.sum)
		}
	}
	if err := d.man.flush(d.opts.Fsync); err != nil {
		fc.removeTemps(puts)
		return res, err
	}

	// (6)
	clear(syncDirs)
	undo := false
	var olds []trashed
	defer func() { // (8)
		if len(olds) > 0 {
			d.trashed.Add(1)
			d.trash <- trashBatch{sent: time.Now(), olds: olds}
		}
	}()
	for _, w := range puts {
		// placed records the placing of a new file: written, or refused when
		// a file appeared at its name meanwhile (never replaced).
		placed := func(err error) {
			if err != nil {
				if errors.Is(err, fs.ErrExist) {
					err = fmt.Errorf("%w (it appeared during the write)", ErrForeign)
				}
				res.fail(w.path, fmt.Errorf("write: %w", err))
				d.man.remove(w.path)
				undo = true
				return
			}
			res.Written = append(res.Written, w.path)
			syncDirs[parent(w.path)] = true
		}
		if w.tf >= 0 {
			err := fc.link(w.tf, w.path)
			_ = unix.Close(w.tf) // written, and synced with the batch when asked
			w.tf = -1
			placed(err)
			continue
		}
		if w.tmp == "" {
			continue
		}
		if !w.owned {
			placed(fc.place(w.tmp, w.path))
			continue
		}
		aside, err := fc.swap(w.tmp, w.path, w.old, w.sum, &res)
		if err == nil && aside != "" {
			switch d.settle(fc, aside, w.path, w.old, w.sum, &res) {
			case settleUnlink:
				olds = append(olds, trashed{name: aside, path: w.path, sums: [2][32]byte{w.old, w.sum}, check: d.opts.KeepEdits})
			case settleFolder:
				err = fc.swapBack(aside, w.path)
			}
		}
		if err != nil {
			res.fail(w.path, fmt.Errorf("rename: %w", err))
			d.man.add(w.path, w.old) // the file still holds the old bytes
			undo = true
			continue
		}
		res.Written = append(res.Written, w.path)
		syncDirs[parent(w.path)] = true
	}

	// (7)
	if d.opts.Fsync {
		if err := d.syncFolders(fc, syncDirs, len(syncDirs) > maxDirSyncs); err != nil {
			return res, err
		}
	}
	if undo {
		if err := d.man.flush(d.opts.Fsync); err != nil {
			return res, err
		}
	}
	return res, nil
}

// prune removes the folders kvsync created that the removal of files left empty,
// deepest first, except those in keep. A folder that is not empty stays.
func (d *Dir) prune(fc *folders, removed []string, keep, syncDirs map[string]bool) {
	cand := make(map[string]bool)
	for _, p := range removed {
		for q := parent(p); q != ""; q = parent(q) {
			if d.man.dirs[q] && !keep[q] {
				cand[q] = true
			}
		}
	}
	if len(cand) == 0 {
		return
	}
	d.waitTrash() // a folder holding an old content's temp name is not empty yet
	list := slices.Collect(maps.Keys(cand))
	slices.SortFunc(list, func(a, b string) int {
		if na, nb := strings.Count(a, "/"), strings.Count(b, "/"); na != nb {
			return nb - na
		}
		return strings.Compare(a, b)
	})
	for _, q := range list {
		fc.forget(q)
		err := fc.unlink(q, unix.AT_REMOVEDIR)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue // not empty (or not ours to judge): it stays
		}
		d.man.removeDir(q)
		delete(syncDirs, q) // gone: its parent's sync makes that durable
		syncDirs[parent(q)] = true
	}
}

// checkParents checks every parent folder of p, top down, with Lstat: a symlink
// is refused and a non-folder is an error. When created is non-nil a missing
// folder is created with DirMode and owner, recorded in the manifest, and its
// parent added to created (to be fsynced); otherwise a missing folder is an
// fs.ErrNotExist error. checked caches results within one batch.
//
// A folder swapped for a symlink between this check and the moment its
// descriptor is opened is refused then: openFolder follows no symlink
// anywhere on the path, and every later operation on the file is relative to
// that descriptor.
func (d *Dir) checkParents(p string, checked map[string]error, created map[string]bool) error {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		q := p[:i]
		err, ok := checked[q]
		if !ok {
			err = d.checkFolder(q, created)
			checked[q] = err
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *Dir) checkFolder(q string, created map[string]bool) error {
	fi, err := d.root.Lstat(q)
	if errors.Is(err, fs.ErrNotExist) && created != nil {
		err = d.root.Mkdir(q, d.opts.DirMode)
		if err == nil {
			d.man.addDir(q)
			created[parent(q)] = true
			return d.setFolder(q)
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create folder %s: %w", q, err)
		}
		fi, err = d.root.Lstat(q) // made by someone else meanwhile
	}
	switch {
	case err != nil:
		return fmt.Errorf("check folder %s: %w", q, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("folder %s is a symlink: refusing to write through it", q)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a folder", q)
	}
	return nil
}

// setFolder gives a folder kvsync created its mode (explicitly, so the umask
// does not narrow it) and owner.
func (d *Dir) setFolder(q string) error {
	if err := d.root.Chmod(q, d.opts.DirMode); err != nil {
		return fmt.Errorf("chmod folder %s: %w", q, err)
	}
	if d.opts.UID >= 0 || d.opts.GID >= 0 {
		if err := d.root.Lchown(q, d.opts.UID, d.opts.GID); err != nil {
			return fmt.Errorf("chown folder %s: %w", q, err)
		}
	}
	return nil
}

// unlink removes p with unlinkat(2) in its parent folder. flags 0 removes only a
// non-folder; unix.AT_REMOVEDIR only an empty folder.
func (d *Dir) unlink(p string, flags int) error {
	fc := d.folders()
	defer fc.close()
	return fc.unlink(p, flags)
}

// syncFolders fsyncs each folder in dirs, or, when whole is set, the whole file
// system with one syncfs(2), which also covers files written without fsync.
func (d *Dir) syncFolders(fc *folders, dirs map[string]bool, whole bool) error {
	if whole {
		if err := unix.Syncfs(int(d.top.Fd())); err != nil {
			return fmt.Errorf("syncfs %s: %w", d.path, err)
		}
		return nil
	}
	for q := range dirs {
		fd, err := fc.get(q)
		if err == nil {
			err = fsync(fd, q)
		}
		if err != nil {
			return fmt.Errorf("sync %s: %w", path.Join(d.path, q), err)
		}
	}
	return nil
}

func (d *Dir) syncFolder(q string) error {
	fc := d.folders()
	defer fc.close()
	return d.syncFolders(fc, map[string]bool{q: true}, false)
}

// maxOpenFolders bounds the descriptors a folders cache keeps open.
const maxOpenFolders = 256

// folders holds open descriptors of the folders one batch works in. Temp files,
// renames and removals are then done relative to the folder itself (openat,
// renameat, unlinkat with a bare name), which is both tighter (the folder cannot
// be swapped between operations) and much cheaper than resolving the path
// through os.Root again for every operation.
//
// The descriptors are bare (no *os.File, which costs four fcntl calls and a
// refused epoll registration per folder).
type folders struct {
	d    *Dir
	open map[string]int
}

func (d *Dir) folders() *folders { return &folders{d: d, open: make(map[string]int)} }

// get returns the open folder q ("" for the top), refusing a symlink.
func (fc *folders) get(q string) (int, error) {
	if q == "" {
		return int(fc.d.top.Fd()), nil
	}
	if fd, ok := fc.open[q]; ok {
		return fd, nil
	}
	if len(fc.open) >= maxOpenFolders {
		fc.close()
	}
	fd, err := openFolder(int(fc.d.top.Fd()), q)
	if err != nil {
		return -1, err
	}
	fc.open[q] = fd
	return fd, nil
}

// openFolder opens the folder q below the open top folder without following
// a symlink anywhere on the way and without leaving the top: with one
// openat2(2) (RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS), or, where the kernel has
// no openat2, one openat(2) with O_NOFOLLOW per path component.
func openFolder(top int, q string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := openat2(top, q, &unix.OpenHow{
		Flags:   flags,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return -1, &fs.PathError{Op: "openat2", Path: q, Err: err}
	}
	// No openat2 (Linux < 5.6, or a seccomp filter that refuses it).
	fd = top
	for seg := range strings.SplitSeq(q, "/") {
		if seg == "" || seg == "." || seg == ".." {
			err = unix.EXDEV
		} else {
			var next int
			if next, err = unix.Openat(fd, seg, flags, 0); err == nil {
				if fd != top {
					_ = unix.Close(fd) // read-only descriptor
				}
				fd = next
				continue
			}
		}
		if fd != top {
			_ = unix.Close(fd) // read-only descriptor
		}
		return -1, &fs.PathError{Op: "openat", Path: q, Err: err}
	}
	return fd, nil
}

// openat2 is unix.Openat2; tests take it away.
var openat2 = unix.Openat2

// forget closes folder q, before it is removed.
func (fc *folders) forget(q string) {
	if fd, ok := fc.open[q]; ok {
		_ = unix.Close(fd) // read-only descriptor
		delete(fc.open, q)
	}
}

func (fc *folders) close() {
	for q, fd := range fc.open {
		_ = unix.Close(fd) // read-only descriptor
		delete(fc.open, q)
	}
}

func (fc *folders) unlink(p string, flags int) error {
	fd, err := fc.get(parent(p))
	if err == nil {
		err = unix.Unlinkat(fd, path.Base(p), flags)
	}
	if err != nil {
		return &fs.PathError{Op: "unlinkat", Path: p, Err: err}
	}
	return nil
}

// rename renames the temp file tmp (a bare name in the folder of p) over p, and
// removes the temp file if that fails.
func (fc *folders) rename(tmp, p string) error {
	fd, err := fc.get(parent(p))
	if err != nil {
		return err
	}
	if err := unix.Renameat(fd, tmp, fd, path.Base(p)); err != nil {
		_ = unix.Unlinkat(fd, tmp, 0) // best effort; Open removes leftovers
		return &fs.PathError{Op: "renameat", Path: p, Err: err}
	}
	return nil
}

// newTmpfile writes data to an unnamed temp file in the open folder dirfd
// (O_TMPFILE) with the Dir's mode and owner and returns its descriptor, or -1
// when it cannot: the caller then writes a named temp file, which reports a
// real error again. A file system without O_TMPFILE turns it off for the Dir.
func (d *Dir) newTmpfile(dirfd int, data []byte) int {
	fd, err := unix.Openat(dirfd, ".", unix.O_WRONLY|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			d.tmpfiles = 0
		}
		return -1
	}
	if err := fill(fd, "", data, d.opts.Mode, d.opts.UID, d.opts.GID); err != nil {
		_ = unix.Close(fd)
		return -1
	}
	return fd
}

// link gives the unnamed temp file fd the name p, which must not exist.
// linkat(2) through /proc/self/fd needs no privilege, unlike AT_EMPTY_PATH.
func (fc *folders) link(fd int, p string) error {
	dirfd, err := fc.get(parent(p))
	if err != nil {
		return err
	}
	err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), dirfd, path.Base(p), unix.AT_SYMLINK_FOLLOW)
	if err != nil {
		return &fs.PathError{Op: "linkat", Path: p, Err: err}
	}
	return nil
}

// keepOld gives the file at p a second name, a temp name in its folder, and
// returns that name relative to the top (or "" when p is missing or the file
// system refuses hard links: the rename then frees the old inode itself). The
// old contents stay reachable under it until emptyTrash unlinks it, so
// renaming over p does not free them: the rename is then ~25 µs on ext4
// instead of ~80 µs, and the freeing is done after the new bytes are visible,
// off the writer's path. A crash in between leaves a temp file that Open
// removes.
func (fc *folders) keepOld(p string) string {
	fd, err := fc.get(parent(p))
	if err != nil {
		return ""
	}
	for range 3 {
		old := tempName(parent(p))
		switch err := unix.Linkat(fd, path.Base(p), fd, path.Base(old), 0); {
		case err == nil:
			return old
		case errors.Is(err, unix.EEXIST):
			continue
		default:
			return ""
		}
	}
	return ""
}

func (fc *folders) removeTemps(puts []*put) {
	for _, w := range puts {
		if w.tmp == "" {
			continue
		}
		if fd, err := fc.get(parent(w.path)); err == nil {
			_ = unix.Unlinkat(fd, w.tmp, 0) // best effort; Open removes leftovers
		}
	}
}
