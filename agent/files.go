package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/user"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
)

// filesProjection projects every matching key of one bucket to one file.
type filesProjection struct {
	m      *projMeta
	cfg    *FilesConfig
	o      *owner
	dir    *projector.Dir
	layout projector.Layout

	pending  map[string]struct{} // keys changed since the last update
	rejected map[string]string   // key -> reason, for /status
	revs     map[string]uint64   // path -> revision last projected (push-back guards)

	push *pusher // push-back of local edits; nil when off

	// Safe apply (check:, rollback:): see guard.
	undo       map[string]*fileUndo  // what the last batch replaced
	rolled     map[string]rolledMark // paths whose batch was rolled back
	notes      map[string]string     // path -> why it differs from its key
	notesDirty bool                  // notes must be written again

	dry  bool              // --dry-run: log, write nothing
	opts projector.Options // how to open dir (again, after a failure)
	ctx  context.Context   // the owner's, for a pusher started late
	wg   *sync.WaitGroup
}

func newFilesProjection(c *FilesConfig, o *owner) (projection, error) {
	m, err := o.newMeta(c.Name, "files", c.Dir, []string{c.Bucket}, c.Wait, c.OnChange, c.Check, c.Rollback)
	if err != nil {
		return nil, err
	}
	p := &filesProjection{m: m, cfg: c, o: o, pending: map[string]struct{}{}, rejected: map[string]string{}, revs: map[string]uint64{},
		rolled: map[string]rolledMark{}, notes: map[string]string{},
		// Rollbacks are remembered in memory only: the notes of an earlier
		// run are stale and go at the first update.
		notesDirty: c.Rollback}
	p.dry = o.a.opts.DryRun
	if c.Layout == LayoutTree {
		p.layout = projector.Tree
	}
	if p.dry {
		return p, nil
	}
	mode, _ := ParseMode(c.Mode)
	dmode, _ := ParseMode(c.DirMode)
	uid, gid, err := lookupOwner(c.User, c.Group)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	p.opts = projector.Options{
		Dir: c.Dir, Mode: mode, DirMode: dmode, UID: uid, GID: gid,
		Fsync: *c.Fsync, Snapshot: c.Atomic == AtomicSnapshot, Logger: m.logger,
	}
	// A local edit in a file kvsync replaces or removes is held and handed
	// to push-back (Result.Displaced).
	p.opts.KeepEdits = c.Push.Enabled && !o.a.opts.Once
	// A folder that cannot be opened now (a file where it should be, no
	// permission) is this projection's error, not the agent's: the others
	// run, and update opens it again with the owner's retry backoff.
	if err := p.open(); err != nil {
		m.logger.Error("open projection folder; retrying", "err", err)
		m.setError(err)
	}
	return p, nil
}

// open opens the projection folder and, with push-back, starts watching it.
func (p *filesProjection) open() error {
	d, err := projector.Open(p.opts)
	if err != nil {
		return fmt.Errorf("open %s: %w", p.cfg.Dir, err)
	}
	p.dir = d
	if p.cfg.Push.Enabled && !p.o.a.opts.Once {
		p.push = newPusher(p.cfg, p.layout, d, p, p.m, p.o.in, p.o.js, p.o.a.metrics)
		if p.ctx != nil { // the owner runs already: start it now
			p.push.start(p.ctx, p.wg)
		}
	}
	return nil
}

// projectedRev returns the revision last projected at rel (push-back's guard).
func (p *filesProjection) projectedRev(rel string) (uint64, bool) {
	rev, ok := p.revs[rel]
	return rev, ok
}

// pushedRev notes that the bucket holds the bytes at rel at rev, so that a
// further edit before the value comes back is guarded by rev.
func (p *filesProjection) pushedRev(rel string, rev uint64) {
	if cur, ok := p.revs[rel]; !ok || cur < rev {
		p.revs[rel] = rev
	}
}

// start runs the push-back goroutines, if push-back is on, and remembers
// ctx and wg for a folder opened later.
func (p *filesProjection) start(ctx context.Context, wg *sync.WaitGroup) {
	p.ctx, p.wg = ctx, wg
	if p.push != nil {
		p.push.start(ctx, wg)
	}
}

func (p *filesProjection) meta() *projMeta { return p.m }

func (p *filesProjection) touches(bucket, key string) bool {
	return bucket == p.cfg.Bucket && kvkey.MatchAny(p.cfg.Keys, key)
}

func (p *filesProjection) noteKey(_, key string) { p.pending[key] = struct{}{} }

// close saves, through the folder, the local edits push-back has not sent
// (its goroutines have returned: the owner closes projections after them),
// and closes the folder.
func (p *filesProjection) close() error {
	if p.dir == nil {
		return nil
	}
	if p.push != nil {
		p.push.stop()
	}
	return p.dir.Close()
}

// path maps a key to its file, or records why it is refused.
func (p *filesProjection) path(key string) (string, bool) {
	rel, err := projector.KeyPath(key, p.cfg.StripPrefix, p.layout)
	if err != nil {
		if _, seen := p.rejected[key]; !seen {
			p.m.logger.Warn("key rejected: nothing written", "key", strconv.Quote(key), "err", err)
			p.o.a.metrics.rejected.WithLabelValues(p.m.name, "path").Inc()
		}
		p.rejected[key] = err.Error()
		return "", false
	}
	delete(p.rejected, key)
	return rel, true
}

func (p *filesProjection) update(s *state, full bool) (bool, error) {
	if !p.dry && p.dir == nil {
		if err := p.open(); err != nil {
			p.o.a.metrics.errors.WithLabelValues(p.m.name, "write").Inc()
			return false, err
		}
		p.m.logger.Info("projection folder opened", "dir", p.cfg.Dir)
		full = true
	}
	b := s.buckets[p.cfg.Bucket]
	start := time.Now()
	var res projector.Result
	var err, guardErr error
	var undo map[string]*fileUndo
	// Server timestamps of the entries written, for the propagation
	// histogram. A complete update (initial sync, reconcile, retry) observes
	// only entries put since the agent started: the age of older ones says
	// nothing about propagation.
	created := map[string]time.Time{}
	if full {
		revs := make(map[string]uint64, len(b.entries))
		for k, e := range b.entries {
			if !kvkey.MatchAny(p.cfg.Keys, k) {
				continue
			}
			if rel, ok := p.path(k); ok {
				if p.push != nil {
					p.push.beforeWrite(rel, k, e.Value, b, true)
				}
				revs[rel] = e.Revision
				if e.Created.After(p.o.started) {
					created[rel] = e.Created
				}
			}
		}
		if p.push != nil {
			p.push.beforeReconcile(revs, b)
		}
		p.revs = revs
		clear(p.pending)
		if p.dry {
			p.m.logger.Info("dry run: would reconcile", "files", len(revs))
			return false, nil
		}
		// The projector reads the wanted files from the state itself: a
		// copy of a large bucket's set would double the peak memory of an
		// initial sync.
		want := func(yield func(string, []byte) bool) {
			for k, e := range b.entries {
				if !kvkey.MatchAny(p.cfg.Keys, k) {
					continue
				}
				if rel, err := projector.KeyPath(k, p.cfg.StripPrefix, p.layout); err == nil && !yield(rel, e.Value) {
					return
				}
			}
		}
		if p.guarded() {
			all := map[string][]byte{}
			for rel, data := range want {
				all[rel] = data
			}
			all, undo, guardErr = p.guardFull(all, b)
			if all == nil {
				return false, guardErr
			}
			res, err = p.dir.ReconcileSeq(maps.All(all))
		} else {
			res, err = p.dir.ReconcileSeq(want)
		}
	} else {
		changes := make([]projector.Change, 0, len(p.pending))
		for k := range p.pending {
			rel, ok := p.path(k)
			if !ok {
				continue
			}
			if e, live := b.entries[k]; live {
				held := p.push != nil && p.push.beforeWrite(rel, k, e.Value, b, false)
				p.revs[rel] = e.Revision
				if held {
					continue // the file holds these bytes already: a pushed edit coming back
				}
				changes = append(changes, projector.Change{Path: rel, Data: e.Value})
				created[rel] = e.Created
			} else {
				if p.push != nil {
					p.push.beforeRemove(rel, k, b)
				}
				changes = append(changes, projector.Change{Path: rel, Remove: true})
				delete(p.revs, rel)
			}
		}
		clear(p.pending)
		if p.dry {
			for _, c := range changes {
				p.m.logger.Info("dry run: would write", "path", c.Path, "remove", c.Remove, "bytes", len(c.Data))
			}
			return false, nil
		}
		if p.guarded() {
			changes, undo, guardErr = p.guard(changes, b)
			if changes == nil && guardErr != nil && !errors.Is(guardErr, errCheck) {
				return false, guardErr
			}
		}
		res, err = p.dir.Apply(changes)
	}
	if p.m.rollback && res.Changed() {
		done := make(map[string]*fileUndo, len(res.Written)+len(res.Removed))
		for _, path := range slices.Concat(res.Written, res.Removed) {
			if u, ok := undo[path]; ok {
				done[path] = u
			}
		}
		p.undo = done
	}
	if p.notesDirty {
		p.writeNotes()
	}
	if p.push != nil {
		p.push.afterWrite(res, b)
	}
	// A fresh slice: the last /status snapshot shares the old one, and
	// an HTTP handler may be encoding it now.
	var rejected []string
	for _, k := range slices.Sorted(maps.Keys(p.rejected)) {
		rejected = append(rejected, fmt.Sprintf("%s: %s", k, p.rejected[k]))
	}
	p.m.status.Rejected = rejected
	p.m.status.Keys = len(p.revs)
	p.m.status.LastRevision = b.lastRev
	if err != nil {
		p.o.a.metrics.errors.WithLabelValues(p.m.name, "write").Inc()
		return false, fmt.Errorf("write %s: %w", p.cfg.Dir, err)
	}
	now := time.Now()
	for _, path := range res.Written {
		p.o.a.metrics.writes.WithLabelValues(p.m.name).Inc()
		if c, ok := created[path]; ok && !c.IsZero() {
			p.o.a.metrics.propagation.WithLabelValues(p.m.name).Observe(now.Sub(c).Seconds())
		}
		p.m.logger.Debug("wrote", "path", path)
	}
	for _, path := range res.Removed {
		p.o.a.metrics.removes.WithLabelValues(p.m.name).Inc()
		p.m.logger.Debug("removed", "path", path)
	}
	var errs []error
	for _, pe := range res.Errors {
		kind := "write"
		if errors.Is(pe.Err, projector.ErrForeign) {
			kind = "foreign"
		}
		p.o.a.metrics.errors.WithLabelValues(p.m.name, kind).Inc()
		errs = append(errs, pe)
	}
	if res.Changed() {
		p.m.logger.Info("files updated", "written", len(res.Written), "removed", len(res.Removed), "took", time.Since(start))
	}
	if guardErr != nil {
		errs = append(errs, guardErr)
	}
	return res.Changed(), errors.Join(errs...)
}

// lookupOwner resolves user and group names (or numbers) to ids; -1 = keep.
func lookupOwner(userName, groupName string) (uid, gid int, err error) {
	uid, gid = -1, -1
	if userName != "" {
		if n, err := strconv.Atoi(userName); err == nil {
			uid = n
		} else {
			u, err := user.Lookup(userName)
			if err != nil {
				return 0, 0, fmt.Errorf("user %q: %w", userName, err)
			}
			uid, _ = strconv.Atoi(u.Uid)
		}
	}
	if groupName != "" {
		if n, err := strconv.Atoi(groupName); err == nil {
			gid = n
		} else {
			g, err := user.LookupGroup(groupName)
			if err != nil {
				return 0, 0, fmt.Errorf("group %q: %w", groupName, err)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	if (uid >= 0 || gid >= 0) && os.Geteuid() != 0 && uid != os.Geteuid() {
		return 0, 0, fmt.Errorf("user/group need kvsync to run as root")
	}
	return uid, gid, nil
}
