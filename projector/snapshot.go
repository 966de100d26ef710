package projector

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	dataLink   = "..data"  // the symlink readers go through
	dataPrefix = "..data_" // the data folders it points to
)

// top returns the first segment of a relative path.
func top(p string) string {
	if i := strings.IndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return p
}

// recoverSnapshot finds the data folder ..data points to and removes every other
// data folder: a crash left them half built, or not yet deleted.
func (d *Dir) recoverSnapshot() error {
	target, err := d.root.Readlink(dataLink)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read %s: %w", dataLink, err)
	case !strings.HasPrefix(target, dataPrefix) || strings.Contains(target, "/"):
		return fmt.Errorf("%s points to %q, not to a data folder of kvsync", dataLink, target)
	default:
		d.cur = target
	}
	ents, err := fs.ReadDir(d.root.FS(), ".")
	if err != nil {
		return fmt.Errorf("read %s: %w", d.path, err)
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, dataPrefix) && n != d.cur {
			if err := d.root.RemoveAll(n); err != nil {
				return fmt.Errorf("remove stale %s: %w", n, err)
			}
		}
	}
	return nil
}

// checkTop returns nil when the top-level entry t is absent or is kvsync's link
// into ..data, and an error wrapping ErrForeign when it is anything else.
func (d *Dir) checkTop(t string, cache map[string]error) error {
	if err, ok := cache[t]; ok {
		return err
	}
	var err error
	fi, lerr := d.root.Lstat(t)
	switch {
	case errors.Is(lerr, fs.ErrNotExist):
	case lerr != nil:
		err = fmt.Errorf("check %s: %w", t, lerr)
	case fi.Mode()&fs.ModeSymlink == 0:
		err = fmt.Errorf("%s: %w", t, ErrForeign)
	default:
		if target, rerr := d.root.Readlink(t); rerr != nil || target != dataLink+"/"+t {
			err = fmt.Errorf("%s is a symlink to %q: %w", t, target, ErrForeign)
		}
	}
	cache[t] = err
	return err
}

// applySnapshot is Apply in "snapshot" mode, after Kubernetes' atomic writer.
// Readers go through <Dir>/<top> -> ..data/<top>, and ..data -> ..data_<n>, a
// folder that is never modified once ..data points to it:
//
//  1. Compute the next set of files from the manifest and the changes; refuse
//     paths under a top-level entry that is not kvsync's link (ErrForeign) and
//     paths that collide as file and folder.
//  2. Create a new data folder ..data_<n>.
//  3. Fill it: write changed files, hard-link unchanged ones from the current
//     data folder (safe: files there are never modified in place).
//  4. Make it durable with one syncfs(2).
//  5. Record the new set in the manifest, fdatasync'ed.
//  6. Point ..data at the new folder: a temp symlink renamed over ..data, then
//     fsync of <Dir>. Readers now see the whole new revision.
//  7. Create the top-level links the new set needs, remove those it no longer
//     needs, fsync <Dir>.
//  8. Retire the previous data folder: it is removed by the first Apply at
//     least retireAfter later. Removing it at once would fail a reader that
//     resolved ..data just before the swap and has yet to look up the file in
//     the old folder (ENOENT: a race Kubernetes' writer has).
//
// A reader that resolves ..data once (opens it as a folder) sees one revision for
// as long as it reads; one that opens files one by one through the top-level
// links sees each file whole and never an older revision after a newer one.
// Each Apply costs one link(2) per unchanged file: snapshot mode suits sets of a
// moderate size.
func (d *Dir) applySnapshot(changes []Change, force map[string]bool) (Result, error) {
	d.removeRetired()
	var res Result
	paths, final := dedupe(changes)
	prev := d.man.files // updated in place only from step 5 on
	prevTops := topSet(prev)
	next := maps.Clone(prev)
	written := make(map[string][]byte)
	tops := make(map[string]error)

	// (1)
	for _, p := range paths {
		c := final[p]
		if err := checkPath(p); err != nil {
			res.fail(p, err)
			continue
		}
		old, owned := prev[p]
		if c.Remove {
			if owned {
				delete(next, p)
			} else if _, err := d.root.Lstat(p); err == nil {
				res.fail(p, fmt.Errorf("remove: %w", ErrForeign))
			}
			continue
		}
		if err := d.checkTop(top(p), tops); err != nil {
			res.fail(p, fmt.Errorf("write: %w", err))
			continue
		}
		sum := sha256.Sum256(c.Data)
		if owned && sum == old && !force[p] {
			continue
		}
		next[p] = sum
		written[p] = c.Data
	}
	folders := make(map[string]bool)
	for p := range next {
		for q := parent(p); q != ""; q = parent(q) {
			folders[q] = true
		}
	}
	for _, p := range slices.Sorted(maps.Keys(written)) {
		clash := ""
		if folders[p] {
			clash = fmt.Sprintf("%s is a folder of other files", p)
		}
		for q := parent(p); q != "" && clash == ""; q = parent(q) {
			if _, ok := next[q]; ok {
				clash = fmt.Sprintf("its parent %s is a file", q)
			}
		}
		if clash == "" {
			continue
		}
		res.fail(p, fmt.Errorf("write: %s", clash))
		delete(written, p)
		if old, ok := prev[p]; ok {
			next[p] = old
		} else {
			delete(next, p)
		}
	}
	var removed []string
	for p := range prev {
		if _, ok := next[p]; !ok {
			removed = append(removed, p)
		}
	}
	if len(written)+len(removed) == 0 {
		return res, nil
	}
	slices.Sort(removed)

	// (2)
	name, err := d.makeDataFolder()
	if err != nil {
		return res, err
	}
	fail := func(err error) (Result, error) {
		_ = d.root.RemoveAll(name) // best effort; Open removes stale data folders
		return res, err
	}

	// (3)
	made := make(map[string]error)
	for _, p := range slices.Sorted(maps.Keys(next)) {
		dst := name + "/" + p
		err := d.makeParents(name, p, made)
		if err == nil {
			if data, ok := written[p]; ok {
				var f *os.File
				if f, err = d.root.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
					err = fill(int(f.Fd()), dst, data, d.opts.Mode, d.opts.UID, d.opts.GID)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
			} else {
				err = d.root.Link(d.cur+"/"+p, dst)
			}
		}
		if err != nil {
			res.fail(p, fmt.Errorf("write: %w", err))
			delete(next, p)
			delete(written, p)
			if _, ok := prev[p]; ok {
				removed = append(removed, p)
			}
		}
	}
	slices.Sort(removed)

	// (4)
	if d.opts.Fsync {
		if err := d.syncFolders(nil, nil, true); err != nil {
			return fail(err)
		}
	}

	// (5)
	for _, p := range removed {
		d.man.remove(p)
	}
	for _, p := range slices.Sorted(maps.Keys(written)) {
		d.man.add(p, next[p])
	}
	if err := d.man.flush(d.opts.Fsync); err != nil {
		return fail(err)
	}

	// (6)
	tmp := tempName("")
	if err := d.root.Symlink(name, tmp); err != nil {
		return fail(fmt.Errorf("link %s: %w", dataLink, err))
	}
	if err := d.root.Rename(tmp, dataLink); err != nil {
		_ = d.root.Remove(tmp) // best effort; Open removes leftovers
		return fail(fmt.Errorf("swap %s: %w", dataLink, err))
	}
	old := d.cur
	d.cur = name
	if d.opts.Fsync {
		if err := d.syncFolder(""); err != nil {
			return res, err
		}
	}

	// (7)
	nextTops := topSet(next)
	for t := range nextTops {
		if prevTops[t] {
			continue
		}
		if err := d.root.Symlink(dataLink+"/"+t, t); err != nil && !(errors.Is(err, fs.ErrExist) && d.checkTop(t, make(map[string]error)) == nil) {
			res.fail(t, fmt.Errorf("link: %w", err))
		}
	}
	for t := range prevTops {
		if nextTops[t] || d.checkTop(t, make(map[string]error)) != nil {
			continue
		}
		if err := d.unlink(t, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			res.fail(t, fmt.Errorf("unlink: %w", err))
		}
	}
	if d.opts.Fsync {
		if err := d.syncFolder(""); err != nil {
			return res, err
		}
	}

	// (8)
	if old != "" {
		d.retired = append(d.retired, retired{name: old, at: time.Now()})
	}
	d.removeRetired()
	res.Written = slices.Sorted(maps.Keys(written))
	res.Removed = removed
	return res, nil
}

// topSet returns the first segments of the paths in files.
func topSet(files map[string][32]byte) map[string]bool {
	tops := make(map[string]bool)
	for p := range files {
		tops[top(p)] = true
	}
	return tops
}

// makeDataFolder creates a fresh, empty data folder and returns its name.
func (d *Dir) makeDataFolder() (string, error) {
	base := dataPrefix + strconv.FormatInt(time.Now().UnixNano(), 10)
	for i := 0; i < 100; i++ {
		name := base
		if i > 0 {
			name += "_" + strconv.Itoa(i)
		}
		err := d.root.Mkdir(name, d.opts.DirMode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("create data folder: %w", err)
		}
		return name, d.setFolder(name)
	}
	return "", errors.New("create data folder: too many name collisions")
}

// makeParents creates the parent folders of p inside the new data folder.
func (d *Dir) makeParents(data, p string, made map[string]error) error {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		q := data + "/" + p[:i]
		err, ok := made[q]
		if !ok {
			if err = d.root.Mkdir(q, d.opts.DirMode); err == nil {
				err = d.setFolder(q)
			}
			made[q] = err
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// retireAfter is how long a replaced data folder is kept for readers still
// resolving paths in it.
const retireAfter = 2 * time.Second

// retired is a data folder ..data no longer points to.
type retired struct {
	name string
	at   time.Time
}

// removeRetired removes the data folders retired at least d.retire ago.
func (d *Dir) removeRetired() {
	keep := d.retired[:0]
	for _, r := range d.retired {
		if time.Since(r.at) < d.retire {
			keep = append(keep, r)
			continue
		}
		if err := d.root.RemoveAll(r.name); err != nil {
			d.log.Warn("cannot remove previous data folder; it is removed on the next start",
				slog.String("folder", r.name), slog.String("err", err.Error()))
		}
	}
	d.retired = keep
}
