package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/kvsync/kvsync/projector"
)

// scanChunk is how many paths one localEdits message carries: one scan on
// the owner goroutine looks at that many.
const scanChunk = 256

// pushWatcher is push-back's folder watcher (see push.go): it follows the
// folder with fsnotify and hands the paths whose events settled to the owner
// as localEdits messages. It reads nothing but the folder tree, and keeps its
// debounce state (dirty) to itself.
type pushWatcher struct {
	dir      string // the folder's absolute path
	debounce time.Duration
	delete   bool // push.delete: a removal is checked again before it is pushed
	logger   *slog.Logger
	out      *inbox           // the owner's
	to       *pusher          // the pusher the messages are for, on the owner goroutine
	owned    <-chan listOwned // the owner's answers to ownedWanted
}

func newPushWatcher(dir string, debounce time.Duration, del bool, logger *slog.Logger, out *inbox, to *pusher, owned <-chan listOwned) *pushWatcher {
	return &pushWatcher{dir: dir, debounce: debounce, delete: del, logger: logger, out: out, to: to, owned: owned}
}

// pendingPath is a path waiting for its debounce to pass.
type pendingPath struct {
	due     time.Time
	removed bool // an event said it went away: check again before deleting
}

func (pw *pushWatcher) run(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		pw.out.push(watchFailed{pushMsg: pushMsg{pw.to}, err: fmt.Errorf("watch %s: %w", pw.dir, err)})
		return
	}
	defer w.Close()
	dirty := map[string]pendingPath{}
	// A file kvsync projected and that was edited or removed before the
	// watch existed raises no event: every owned path is looked at once, as
	// if it had gone (a removal must be seen twice, a debounce apart).
	// The owner answers with a listOwned.
	recheck := func() { pw.out.push(ownedWanted{pushMsg: pushMsg{pw.to}}) }
	pw.addTree(w, "", dirty)
	recheck()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var next time.Time
		for _, pp := range dirty {
			if next.IsZero() || pp.due.Before(next) {
				next = pp.due
			}
		}
		if next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			pw.event(w, ev, dirty)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				pw.logger.Warn("folder events overflowed: rescanning", "dir", pw.dir)
				pw.addTree(w, "", dirty)
				recheck()
				continue
			}
			pw.logger.Warn("watch folder", "dir", pw.dir, "err", err)
		case lo := <-pw.owned:
			due := time.Now().Add(pw.debounce)
			for _, r := range lo.rels {
				dirty[r] = pendingPath{due: due, removed: true}
			}
		case <-timer.C:
			pw.flushDirty(dirty)
		}
	}
}

func (pw *pushWatcher) event(w *fsnotify.Watcher, ev fsnotify.Event, dirty map[string]pendingPath) {
	if ev.Op == fsnotify.Chmod {
		return // kvsync's own temp files get chmod; content did not change
	}
	rel, ok := pw.relOf(ev.Name)
	if !ok || rel == "" || skipPath(rel) {
		return
	}
	if ev.Has(fsnotify.Create) {
		if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
			pw.addTree(w, rel, dirty)
		}
	}
	pp := dirty[rel]
	pp.due = time.Now().Add(pw.debounce)
	pp.removed = pp.removed || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)
	dirty[rel] = pp
}

// flushDirty hands the paths whose debounce passed to the owner. A path that
// went away is checked once more a debounce later, so a save that replaces
// the file by rename is never taken for a removal.
func (pw *pushWatcher) flushDirty(dirty map[string]pendingPath) {
	now := time.Now()
	var rels []string
	for rel, pp := range dirty {
		if pp.due.After(now) {
			continue
		}
		rels = append(rels, rel)
		if pp.removed && pw.delete {
			dirty[rel] = pendingPath{due: now.Add(pw.debounce)}
		} else {
			delete(dirty, rel)
		}
	}
	if len(rels) == 0 {
		return
	}
	slices.Sort(rels)
	// In chunks: a first scan of a big folder must not hold the owner
	// goroutine (and the projection of remote changes) for long.
	for chunk := range slices.Chunk(rels, scanChunk) {
		pw.out.push(localEdits{pushMsg: pushMsg{pw.to}, rels: chunk})
	}
}

// addTree watches the folder rel and every folder below it, and marks the
// files found there dirty (they may have appeared before the watch did).
func (pw *pushWatcher) addTree(w *fsnotify.Watcher, rel string, dirty map[string]pendingPath) {
	due := time.Now().Add(pw.debounce)
	top := filepath.Join(pw.dir, filepath.FromSlash(rel))
	_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil // gone meanwhile, or unreadable: nothing of ours
		}
		r, ok := pw.relOf(p)
		if !ok {
			return nil
		}
		if d.IsDir() {
			if r != "" && skipPath(r) {
				return fs.SkipDir
			}
			if err := w.Add(p); err != nil {
				pw.logger.Warn("watch folder", "dir", p, "err", err)
				return fs.SkipDir
			}
			return nil
		}
		if !skipPath(r) {
			pp := dirty[r]
			pp.due = due
			dirty[r] = pp
		}
		return nil
	})
}

func (pw *pushWatcher) relOf(abs string) (string, bool) {
	r, err := filepath.Rel(pw.dir, abs)
	if err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return "", false
	}
	if r == "." {
		return "", true
	}
	return filepath.ToSlash(r), true
}

// skipPath reports whether a path is never pushed and not worth a look:
// the projector's own names (state folder, temp files, reserved names) and
// editor temp files.
func skipPath(rel string) bool {
	return projector.Reserved(rel) || editorTemp(path.Base(rel))
}

// editorTemp reports names editors use for probes, swap, backup, lock and
// temp files while they save.
func editorTemp(name string) bool {
	switch {
	case name == "4913": // vim's probe for write access
		return true
	case strings.HasSuffix(name, "~"): // backups: vim, emacs, many more
		return true
	case strings.HasPrefix(name, ".#"): // emacs lock links
		return true
	case len(name) > 1 && name[0] == '#' && name[len(name)-1] == '#': // emacs autosave
		return true
	case strings.HasSuffix(name, "___jb_tmp___"), strings.HasSuffix(name, "___jb_old___"): // JetBrains
		return true
	}
	// vim swap files: .name.swp, .swo, ... down to .swa, and the .swx probe.
	if n := len(name); n >= 4 && name[n-4:n-1] == ".sw" {
		if c := name[n-1]; c >= 'a' && c <= 'p' || c == 'x' {
			return true
		}
	}
	return false
}
