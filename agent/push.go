package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
)

// Push-back of local edits in a files projection.
//
// Three goroutines and one rule: projection state (revisions, manifest,
// the files kvsync writes) is read and changed only on the owner goroutine,
// and NATS is called only by the sender. The owner never waits for either.
//
//  1. The watcher follows the folder with fsnotify (sub-folders as they
//     appear, never .kvsync/) and ignores editor and kvsync temp names. A path
//     is handed on once no event touched it for the debounce period, so a
//     rename-and-replace save arrives as one change of the final file.
//  2. scan, on the owner goroutine, reads the file and decides: a file that
//     holds what kvsync wrote there (the manifest's hash) or what the bucket
//     already holds is not pushed, which is what keeps kvsync's own writes
//     from echoing back; a name that is not a key, a key outside the keys:
//     filters, a symlink or a non-regular file is refused; anything else
//     becomes a job guarded by the revision last projected at that path.
//  3. The sender runs the jobs in order: Create for a new file, Update
//     guarded by the revision, Delete guarded by it. A connection problem
//     keeps the job and retries it with backoff; a compare-and-set conflict
//     goes to the conflict policy; a refusal is reported and the file kept.
//  4. When kvsync replaces or removes a file that holds a local edit, the
//     projector (Options.KeepEdits) swaps the file out whole, sees that it
//     does not hold what kvsync wrote, holds it (the same inode, under
//     .kvsync/displaced/) and reports it in Result.Displaced; afterWrite
//     turns it into a job guarded by the revision the edit was based on
//     (noted by beforeWrite and beforeRemove). The sender gives a held edit
//     a debounce period (a program may still be writing into it), pushes
//     what it then holds, and has the projector drop it once it landed or
//     turn it into a conflict copy when it lost. So a remote change racing a
//     local edit never silently wins, whatever the interleaving: the edit
//     ends in the bucket or in a conflict file (projector/edits.go says what
//     exactly is guaranteed, and what is left on file systems without
//     RENAME_EXCHANGE).
//  5. When the pushed value comes back from the bucket, a file that already
//     holds it is left alone (no rewrite, no on_change) and adopted as
//     kvsync's version (projector.Dir.Adopt: the manifest takes its hash);
//     so is a new local file pushed with Create.
//
// Push-back never writes into the projection folder itself: it reads, adopts,
// discards and saves conflict copies through the projector.Dir.

// valueHeadroom is what a pushed value leaves of the bucket's max value size
// for the headers the server counts too: a bucket's max value size includes
// the message's header bytes, so a delete or a TTL create on a tight bucket
// would otherwise be refused.
const valueHeadroom = 150

// pushTimeout bounds one KV call of the sender.
const pushTimeout = 5 * time.Second

// scanChunk is how many paths one scan on the owner goroutine looks at.
const scanChunk = 256

// keepLocalTries bounds how often keep-local re-reads the latest revision
// when other writers keep winning the race.
const keepLocalTries = 5

type pushOp uint8

const (
	pushPut pushOp = iota
	pushDelete
)

// pushJob is one local change to send.
type pushJob struct {
	op    pushOp
	rel   string // path in the projection folder
	key   string
	data  []byte
	sum   [32]byte
	guard uint64 // revision the edit is based on; 0: the key must not exist
	// stale: the revision the edit is based on is unknown and the bucket moved
	// on (an edit made while kvsync was stopped): a conflict without asking.
	stale bool
	// rescue: kvsync displaced the file; these bytes exist only here and
	// in held, if set: the name under which the projector holds the
	// displaced file (Displaced.Held) until the job drops or keeps it.
	rescue bool
	held   string
	queued time.Time // when a held edit was queued
	// dup: an earlier job took these very bytes of the file (a push still
	// under way when the file was replaced): a held edit that still holds
	// them needs no push of its own.
	dup bool
}

func (j pushJob) opName() string {
	switch {
	case j.op == pushDelete:
		return "delete"
	case j.guard == 0 && !j.stale:
		return "create"
	}
	return "update"
}

// jobID identifies a job as enqueued, to drop duplicates: two scans of the
// same bytes made before the first push's result came back.
type jobID struct {
	op    pushOp
	sum   [32]byte
	guard uint64
}

// revChain records that pushes from revision base led to revision head, so
// a job scanned before the result of the previous push came back is sent
// with the right guard.
type revChain struct{ base, head uint64 }

// pushQueue is the FIFO from the owner to the sender. push never blocks.
type pushQueue struct {
	mu   sync.Mutex
	jobs []pushJob
	wake chan struct{}
}

func (q *pushQueue) push(j pushJob) {
	q.mu.Lock()
	q.jobs = append(q.jobs, j)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *pushQueue) peek() (pushJob, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.jobs) == 0 {
		return pushJob{}, false
	}
	return q.jobs[0], true
}

func (q *pushQueue) pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.jobs[0] = pushJob{}
	q.jobs = q.jobs[1:]
}

func (q *pushQueue) drain() []pushJob {
	q.mu.Lock()
	defer q.mu.Unlock()
	jobs := q.jobs
	q.jobs = nil
	return jobs
}

// pusher pushes the local edits of one files projection back to its bucket.
type pusher struct {
	p        *filesProjection
	cfg      PushConfig
	d        *projector.Dir // the projection folder: every read and write goes through it
	dir      string         // its absolute path, for the folder watch
	post     func(func(*owner))
	js       jetstream.JetStream
	logger   *slog.Logger
	metrics  *metrics
	q        *pushQueue
	debounce time.Duration

	// Owner goroutine only.
	settled  map[string][32]byte  // path -> bytes already queued or dealt with
	refused  map[string][32]byte  // path -> bytes refused (reported once)
	missing  map[string]time.Time // path -> first scan that found it gone
	base     map[string]uint64    // path -> revision projected before the running update, for displaced edits
	deferred map[string]struct{}  // scans before the first complete update
	ready    bool                 // the first complete update ran

	// Sender goroutine only.
	kv       jetstream.KeyValue
	maxValue int64 // the bucket's max value size; <= 0: none
	statusAt time.Time
	chain    map[string]revChain
	last     map[string]jobID
	kept     map[string]string // held edit -> the conflict copy it became ("" dropped)
}

func newPusher(p *filesProjection, o *owner) *pusher {
	d := p.cfg.Push.Debounce
	if d <= 0 {
		d = 100 * time.Millisecond
	}
	in := o.in
	return &pusher{
		p: p, cfg: p.cfg.Push, d: p.dir, dir: p.dir.Path(),
		post:     func(f func(*owner)) { in.push(f) },
		js:       o.js,
		logger:   p.m.logger.With("push", true),
		metrics:  o.a.metrics,
		q:        &pushQueue{wake: make(chan struct{}, 1)},
		debounce: d,
		settled:  map[string][32]byte{}, refused: map[string][32]byte{},
		missing: map[string]time.Time{}, base: map[string]uint64{}, deferred: map[string]struct{}{},
		chain: map[string]revChain{}, last: map[string]jobID{}, kept: map[string]string{},
	}
}

// start runs the folder watcher and the sender until ctx is done.
func (ps *pusher) start(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		ps.watch(ctx)
	}()
	go func() {
		defer wg.Done()
		ps.send(ctx)
	}()
}

// ---- (1) the folder watcher ----

// pendingPath is a path waiting for its debounce to pass.
type pendingPath struct {
	due     time.Time
	removed bool // an event said it went away: check again before deleting
}

func (ps *pusher) watch(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		ps.post(func(*owner) { ps.fail(".", fmt.Errorf("watch %s: %w", ps.dir, err)) })
		return
	}
	defer w.Close()
	dirty := map[string]pendingPath{}
	// A file kvsync projected and that was edited or removed before the
	// watch existed raises no event: every owned path is looked at once, as
	// if it had gone (a removal must be seen twice, a debounce apart).
	owned := make(chan []string, 1)
	recheck := func() {
		ps.post(func(*owner) {
			select {
			case owned <- slices.Sorted(maps.Keys(ps.d.Files())):
			default: // one is pending already; the owner never blocks here
			}
		})
	}
	ps.addTree(w, "", dirty)
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
			ps.event(w, ev, dirty)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				ps.logger.Warn("folder events overflowed: rescanning", "dir", ps.dir)
				ps.addTree(w, "", dirty)
				recheck()
				continue
			}
			ps.logger.Warn("watch folder", "dir", ps.dir, "err", err)
		case rels := <-owned:
			due := time.Now().Add(ps.debounce)
			for _, r := range rels {
				dirty[r] = pendingPath{due: due, removed: true}
			}
		case <-timer.C:
			ps.flushDirty(dirty)
		}
	}
}

func (ps *pusher) event(w *fsnotify.Watcher, ev fsnotify.Event, dirty map[string]pendingPath) {
	if ev.Op == fsnotify.Chmod {
		return // kvsync's own temp files get chmod; content did not change
	}
	rel, ok := ps.relOf(ev.Name)
	if !ok || rel == "" || skipPath(rel) {
		return
	}
	if ev.Has(fsnotify.Create) {
		if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
			ps.addTree(w, rel, dirty)
		}
	}
	pp := dirty[rel]
	pp.due = time.Now().Add(ps.debounce)
	pp.removed = pp.removed || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)
	dirty[rel] = pp
}

// flushDirty hands the paths whose debounce passed to the owner. A path that
// went away is checked once more a debounce later, so a save that replaces
// the file by rename is never taken for a removal.
func (ps *pusher) flushDirty(dirty map[string]pendingPath) {
	now := time.Now()
	var rels []string
	for rel, pp := range dirty {
		if pp.due.After(now) {
			continue
		}
		rels = append(rels, rel)
		if pp.removed && ps.cfg.Delete {
			dirty[rel] = pendingPath{due: now.Add(ps.debounce)}
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
		ps.post(func(o *owner) { ps.scan(o, chunk) })
	}
}

// addTree watches the folder rel and every folder below it, and marks the
// files found there dirty (they may have appeared before the watch did).
func (ps *pusher) addTree(w *fsnotify.Watcher, rel string, dirty map[string]pendingPath) {
	due := time.Now().Add(ps.debounce)
	top := filepath.Join(ps.dir, filepath.FromSlash(rel))
	_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil // gone meanwhile, or unreadable: nothing of ours
		}
		r, ok := ps.relOf(p)
		if !ok {
			return nil
		}
		if d.IsDir() {
			if r != "" && skipPath(r) {
				return fs.SkipDir
			}
			if err := w.Add(p); err != nil {
				ps.logger.Warn("watch folder", "dir", p, "err", err)
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

func (ps *pusher) relOf(abs string) (string, bool) {
	r, err := filepath.Rel(ps.dir, abs)
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

// ---- (2) deciding, on the owner goroutine ----

// scan looks at paths whose events settled.
func (ps *pusher) scan(o *owner, rels []string) {
	if !ps.ready {
		for _, r := range rels {
			ps.deferred[r] = struct{}{}
		}
		return
	}
	b := o.st.bucket(ps.p.cfg.Bucket)
	for _, rel := range rels {
		ps.scanOne(rel, b)
	}
}

func (ps *pusher) scanOne(rel string, b *bucketState) {
	fi, err := ps.d.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		ps.gone(rel)
		return
	}
	if err != nil {
		ps.fail(rel, fmt.Errorf("stat: %w", err))
		return
	}
	delete(ps.missing, rel)
	if fi.IsDir() {
		return
	}
	key, err := projector.PathKey(rel, ps.p.cfg.StripPrefix, ps.p.layout)
	if err != nil {
		ps.fail(rel, fmt.Errorf("file name is not a valid key: %w", err))
		return
	}
	if !kvkey.MatchAny(ps.p.cfg.Keys, key) {
		ps.fail(rel, fmt.Errorf("key %q is outside the projection's keys %q", key, ps.p.cfg.Keys))
		return
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		ps.fail(rel, errors.New("symlinks are not pushed"))
		return
	case !fi.Mode().IsRegular():
		ps.fail(rel, fmt.Errorf("not a regular file (%s)", fi.Mode().Type()))
		return
	}
	data, ok := ps.read(rel)
	if !ok {
		return // replaced by something else meanwhile: its own event follows
	}
	sum := sha256.Sum256(data)
	own, owned := ps.d.Hash(rel)
	if owned && own == sum {
		return // what kvsync wrote: never echoed back
	}
	if s, ok := ps.settled[rel]; ok && s == sum {
		return
	}
	if r, ok := ps.refused[rel]; ok && r == sum {
		return
	}
	if e, ok := b.entries[key]; ok && bytes.Equal(e.Value, data) {
		ps.adopt(rel, data)
		return // the bucket holds these bytes already
	}
	// The guard is the revision kvsync projected at this path. A file kvsync
	// does not own was never a projection of the key (it was there first, and
	// the write of the key was refused): it is new, and a key that exists
	// meanwhile is a conflict.
	var guard uint64
	if owned {
		guard = ps.p.revs[rel]
	}
	ps.enqueue(pushJob{op: pushPut, rel: rel, key: key, data: data, sum: sum, guard: guard})
}

// gone handles a path found missing: a removal to push (twice seen, a
// debounce apart, with push.delete), or a folder whose files went with it.
func (ps *pusher) gone(rel string) {
	_, owned := ps.d.Hash(rel)
	rev, known := ps.p.revs[rel]
	if !owned && !known {
		prefix := rel + "/"
		for f := range ps.d.Files() {
			if strings.HasPrefix(f, prefix) {
				ps.gone(f)
			}
		}
		return
	}
	if !ps.cfg.Delete || !known {
		return
	}
	now := time.Now()
	first, seen := ps.missing[rel]
	if !seen {
		ps.missing[rel] = now
		return
	}
	if now.Sub(first) < ps.debounce/2 {
		return
	}
	delete(ps.missing, rel)
	key, err := projector.PathKey(rel, ps.p.cfg.StripPrefix, ps.p.layout)
	if err != nil {
		return
	}
	ps.enqueue(pushJob{op: pushDelete, rel: rel, key: key, guard: rev})
}

func (ps *pusher) enqueue(j pushJob) {
	if j.op == pushPut {
		ps.settled[j.rel] = j.sum
	}
	ps.logger.Debug("local change queued", "path", j.rel, "key", j.key, "op", j.opName(), "guard", j.guard, "held", j.held)
	ps.q.push(j)
}

// fail reports a local file that is not pushed: an error log, the push error
// counter and the projection's last error. The file stays as it is.
func (ps *pusher) fail(rel string, err error) {
	err = fmt.Errorf("push %s: %w", rel, err)
	ps.logger.Error("local change not pushed", "path", rel, "err", err)
	ps.metrics.errors.WithLabelValues(ps.p.m.name, "push").Inc()
	ps.p.m.setError(err)
}

// read returns the content of a regular file, without following a symlink.
func (ps *pusher) read(rel string) ([]byte, bool) {
	data, err := ps.d.ReadFile(rel)
	return data, err == nil
}

// beforeWrite runs on the owner goroutine before kvsync writes data at rel
// (full: in a Reconcile, which also rewrites a file whose bytes on disk
// differ). A file that holds exactly data already (a pushed edit coming
// back, or a new file pushed with Create) is adopted as kvsync's version,
// and held reports it: the caller leaves it alone rather than replace it
// with identical bytes, which would run on_change for nothing. Any other
// local edit is the projector's to keep (Result.Displaced).
func (ps *pusher) beforeWrite(rel, key string, data []byte, b *bucketState, full bool) (held bool) {
	ps.noteBase(rel, key, b)
	sum := sha256.Sum256(data)
	own, owned := ps.d.Hash(rel)
	if !full && owned && own == sum {
		return false // Apply leaves the file alone
	}
	if disk, ok := ps.read(rel); ok && bytes.Equal(disk, data) {
		return ps.adopt(rel, data)
	}
	return false
}

// beforeRemove runs on the owner goroutine before kvsync removes rel.
func (ps *pusher) beforeRemove(rel, key string, b *bucketState) { ps.noteBase(rel, key, b) }

// noteBase remembers the revision an edit of rel displaced by the running
// update would be based on: the revision projected there, or, when kvsync
// does not know it (the first update after a start), the key's revision if
// the bucket still holds what kvsync wrote.
func (ps *pusher) noteBase(rel, key string, b *bucketState) {
	if rev, ok := ps.p.revs[rel]; ok {
		ps.base[rel] = rev
		return
	}
	if own, owned := ps.d.Hash(rel); owned {
		if e, ok := b.entries[key]; ok && sha256.Sum256(e.Value) == own {
			ps.base[rel] = e.Revision
		}
	}
}

// beforeReconcile is beforeRemove for every owned path not in want, the
// paths a complete update writes (the caller runs beforeWrite for those).
func (ps *pusher) beforeReconcile(want map[string]uint64, b *bucketState) {
	for rel := range ps.d.Files() {
		if _, ok := want[rel]; ok {
			continue
		}
		key, err := projector.PathKey(rel, ps.p.cfg.StripPrefix, ps.p.layout)
		if err != nil {
			continue
		}
		ps.beforeRemove(rel, key, b)
	}
}

// displaced queues a local edit the projector found in a file it had just
// replaced or removed, guarded by the revision it was based on.
func (ps *pusher) displaced(dp projector.Displaced) {
	if dp.Err != nil {
		ps.logger.Error("local edit displaced by a remote change could not be held as a file; pushing it from memory",
			"path", dp.Path, "held", dp.Held, "err", dp.Err)
	}
	key, err := projector.PathKey(dp.Path, ps.p.cfg.StripPrefix, ps.p.layout)
	if err != nil {
		name, kerr := ps.d.KeepHeld(dp.Held)
		ps.fail(dp.Path, fmt.Errorf("displaced local edit kept as %s: %w", name, errors.Join(err, kerr)))
		return
	}
	j := pushJob{op: pushPut, rel: dp.Path, key: key, data: dp.Data, sum: sha256.Sum256(dp.Data), rescue: true, held: dp.Held, queued: time.Now()}
	if s, ok := ps.settled[dp.Path]; ok && s == j.sum {
		j.dup = true
	}
	if rev, ok := ps.base[dp.Path]; ok {
		j.guard = rev
	} else {
		j.stale = true
	}
	ps.logger.Info("local edit meets a remote change: pushing it first", "path", dp.Path, "key", key)
	ps.enqueue(j)
}

// afterWrite runs on the owner goroutine after an Apply or Reconcile.
func (ps *pusher) afterWrite(res projector.Result) {
	for _, dp := range res.Displaced {
		ps.displaced(dp)
	}
	clear(ps.base)
	for _, rel := range slices.Concat(res.Written, res.Removed) {
		delete(ps.settled, rel)
		delete(ps.refused, rel)
	}
	if !ps.ready {
		ps.ready = true
		rels := slices.Sorted(maps.Keys(ps.deferred))
		clear(ps.deferred)
		if len(rels) > 0 {
			ps.scan(ps.p.o, rels)
		}
	}
}

// adopt makes a foreign file that holds exactly what the bucket holds
// kvsync's, so later remote changes can replace it.
func (ps *pusher) adopt(rel string, data []byte) bool {
	ok, err := ps.d.Adopt(rel, data)
	if err != nil {
		ps.logger.Warn("adopt local file", "path", rel, "err", err)
	}
	return ok
}

// ---- (3) the sender ----

func (ps *pusher) send(ctx context.Context) {
	bo := newBackoff(100*time.Millisecond, 5*time.Second)
	failing := false
	for {
		j, ok := ps.q.peek()
		if !ok {
			select {
			case <-ctx.Done():
				ps.saveUnsent()
				return
			case <-ps.q.wake:
			}
			continue
		}
		err := ps.handle(ctx, j)
		if ctx.Err() != nil {
			ps.saveUnsent()
			return
		}
		if err != nil {
			if !failing {
				ps.logger.Warn("push postponed: retrying", "path", j.rel, "key", j.key, "err", err)
				failing = true
			}
			select {
			case <-ctx.Done():
				ps.saveUnsent()
				return
			case <-time.After(bo.next()):
			}
			continue
		}
		if failing {
			ps.logger.Info("push resumed", "path", j.rel, "key", j.key)
			failing = false
		}
		bo.reset()
		ps.q.pop()
	}
}

// handle sends one job. It returns an error only when the job must be tried
// again (no connection, no answer); every other outcome is dealt with here.
func (ps *pusher) handle(ctx context.Context, j pushJob) error {
	if j.held != "" {
		read := j.sum
		if j = ps.settleHeld(ctx, j); j.dup && j.sum == read {
			ps.release(j)
			return nil
		}
	}
	id := jobID{op: j.op, sum: j.sum, guard: j.guard}
	if last, ok := ps.last[j.rel]; ok && last == id && !j.stale {
		ps.release(j)
		return nil // the same bytes from the same base were handled already
	}
	kv, err := ps.bucket(ctx)
	if err != nil {
		return err
	}
	if j.op == pushPut {
		if lim := ps.limit(ctx, kv); lim > 0 && int64(len(j.data)) > lim {
			ps.refuse(j, fmt.Errorf("value of %d bytes is over the bucket's max value size (%d bytes, headers included)", len(j.data), lim+valueHeadroom))
			ps.last[j.rel] = id
			return nil
		}
	}
	base := j.guard
	if c, ok := ps.chain[j.rel]; ok && !j.stale && (j.guard == c.base || j.guard == c.head) {
		j.guard, base = c.head, c.base
	}
	var rev uint64
	if j.stale {
		err = jetstream.ErrKeyRevisionMismatch
	} else {
		rev, err = ps.write(ctx, kv, j)
	}
	switch {
	case err == nil:
		ps.chain[j.rel] = revChain{base: base, head: rev}
		ps.pushed(j, rev)
	case isConflict(err):
		delete(ps.chain, j.rel)
		if err := ps.conflict(ctx, kv, j); err != nil {
			return err
		}
	case permanent(err):
		delete(ps.chain, j.rel)
		ps.refuse(j, err)
	default:
		return err
	}
	ps.last[j.rel] = id
	return nil
}

// settleHeld gives a held edit a debounce period from the moment it was
// displaced — a program that truncated the file before the swap may still be
// writing into it — and then takes what it holds as the job's bytes.
func (ps *pusher) settleHeld(ctx context.Context, j pushJob) pushJob {
	if wait := time.Until(j.queued.Add(ps.debounce)); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	if _, done := ps.kept[j.held]; done {
		return j
	}
	if data, err := ps.d.ReadHeld(j.held); err == nil {
		j.data, j.sum = data, sha256.Sum256(data)
	}
	return j
}

// release lets the projector drop a held edit whose bytes are safe (in the
// bucket, or handled by an earlier job); one written again after it was
// read becomes a conflict copy instead.
func (ps *pusher) release(j pushJob) {
	if j.held == "" {
		return
	}
	if _, done := ps.kept[j.held]; done {
		return
	}
	kept, err := ps.d.DropHeld(j.held, j.sum)
	switch {
	case err != nil:
		ps.logger.Warn("release a pushed local edit", "path", j.rel, "held", j.held, "err", err)
	case kept != "":
		ps.logger.Warn("displaced local edit was written again after it was pushed; kept", "path", j.rel, "saved_as", kept)
	}
	ps.kept[j.held] = kept
}

func (ps *pusher) write(ctx context.Context, kv jetstream.KeyValue, j pushJob) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	switch {
	case j.op == pushDelete:
		return 0, kv.Delete(ctx, j.key, jetstream.LastRevision(j.guard))
	case j.guard == 0:
		return kv.Create(ctx, j.key, j.data)
	default:
		return kv.Update(ctx, j.key, j.data, j.guard)
	}
}

// conflict applies the conflict policy. Nothing is lost either way: the local
// bytes end in the bucket (keep-local) or in a conflict file (keep-remote).
func (ps *pusher) conflict(ctx context.Context, kv jetstream.KeyValue, j pushJob) error {
	cur, have, err := ps.latest(ctx, kv, j.key)
	if err != nil {
		return err
	}
	if j.op == pushPut && have && bytes.Equal(cur.Value(), j.data) {
		ps.landed(j, cur.Revision()) // the bucket holds these bytes already: a retry that made it
		return nil
	}
	if j.op == pushDelete && !have {
		return nil // deleted already
	}
	var remoteRev uint64
	if have {
		remoteRev = cur.Revision()
	}
	ps.metrics.conflicts.WithLabelValues(ps.p.m.name, ps.cfg.Conflict).Inc()
	if ps.cfg.Conflict == ConflictKeepLocal {
		for range keepLocalTries {
			k := j
			k.stale = false
			k.guard = remoteRev
			if !have && j.op == pushPut {
				k.guard = 0
			}
			rev, err := ps.write(ctx, kv, k)
			if err == nil {
				ps.logger.Warn("push conflict: local change applied over the remote value",
					"path", j.rel, "key", j.key, "base_revision", j.guard, "remote_revision", remoteRev, "revision", rev)
				ps.chain[j.rel] = revChain{base: j.guard, head: rev}
				ps.pushed(k, rev)
				return nil
			}
			switch {
			case isConflict(err):
			case permanent(err):
				ps.refuse(j, err)
				return nil
			default:
				return err
			}
			if cur, have, err = ps.latest(ctx, kv, j.key); err != nil {
				return err
			}
			remoteRev = 0
			if have {
				remoteRev = cur.Revision()
			}
		}
		ps.logger.Warn("push conflict: other writers kept winning; keeping the remote value", "path", j.rel, "key", j.key, "tries", keepLocalTries)
	}
	if j.op == pushPut {
		name, err := ps.saveConflict(j)
		if err != nil {
			return err // retried: the bytes must land somewhere
		}
		ps.logger.Warn("push conflict: remote value kept, local edit saved",
			"path", j.rel, "key", j.key, "base_revision", j.guard, "remote_revision", remoteRev, "saved_as", name)
	} else {
		ps.logger.Warn("push conflict: local removal not applied, remote value kept",
			"path", j.rel, "key", j.key, "base_revision", j.guard, "remote_revision", remoteRev)
	}
	ps.post(func(*owner) { ps.reproject(j) })
	return nil
}

// latest returns the key's current entry; have is false when it is absent or
// deleted.
func (ps *pusher) latest(ctx context.Context, kv jetstream.KeyValue, key string) (e jetstream.KeyValueEntry, have bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	e, err = kv.Get(ctx, key)
	switch {
	case err == nil:
		return e, true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("get %s: %w", key, err)
}

// reproject, on the owner goroutine, writes the remote value over a local edit
// that lost (keep-remote) and is still on disk. A foreign file (a new local
// file whose key exists) is discarded first, to make room. When the disk holds
// something else, kvsync already wrote the remote value there, or the file
// was edited again and that edit has its own turn.
func (ps *pusher) reproject(j pushJob) {
	if j.op == pushPut {
		disk, ok := ps.read(j.rel)
		if !ok || sha256.Sum256(disk) != j.sum {
			return
		}
		ps.settled[j.rel] = j.sum // saved: the forced write below must not rescue it again
		if _, owned := ps.d.Hash(j.rel); !owned {
			saved, err := ps.d.Discard(j.rel, j.sum)
			switch {
			case err != nil:
				ps.logger.Warn("remove local file after a conflict", "path", j.rel, "err", err)
			case saved != "":
				ps.logger.Warn("local file changed again after a conflict; kept", "path", j.rel, "saved_as", saved)
			}
		}
	}
	ps.p.m.markDirty(time.Now(), true, "push-back conflict on "+j.rel)
}

// saveConflict keeps the local bytes of a losing edit in a conflict copy,
// <dir>/.kvsync/conflicts/<path>.<unix-nanos> (made by the projector: the
// held displaced file itself, or a new file), and returns its name.
func (ps *pusher) saveConflict(j pushJob) (string, error) {
	if j.held == "" {
		return ps.d.SaveConflict(j.rel, j.data)
	}
	if name, done := ps.kept[j.held]; done {
		if name != "" {
			return name, nil
		}
		return ps.d.SaveConflict(j.rel, j.data) // dropped: these bytes were safe elsewhere
	}
	name, err := ps.d.KeepHeld(j.held)
	if err != nil {
		return "", err
	}
	ps.kept[j.held] = name
	return name, nil
}

// pushed records a successful push.
func (ps *pusher) pushed(j pushJob, rev uint64) {
	ps.metrics.pushes.WithLabelValues(ps.p.m.name, j.opName()).Inc()
	ps.logger.Info("local change pushed", "path", j.rel, "key", j.key, "op", j.opName(), "revision", rev)
	ps.landed(j, rev)
}

// landed tells the owner that the bucket holds the job's bytes at rev, so
// that a further edit before the echo arrives is guarded by rev.
func (ps *pusher) landed(j pushJob, rev uint64) {
	if j.op != pushPut {
		return
	}
	ps.release(j)
	ps.post(func(*owner) {
		if cur, ok := ps.p.revs[j.rel]; !ok || cur < rev {
			ps.p.revs[j.rel] = rev
		}
	})
}

// refuse reports a job that cannot be pushed. The file stays; bytes that are
// no longer on disk go to a conflict file first.
func (ps *pusher) refuse(j pushJob, err error) {
	if j.rescue && j.op == pushPut {
		if name, serr := ps.saveConflict(j); serr == nil {
			err = fmt.Errorf("%w (the local bytes were replaced by a remote change and are saved as %s)", err, name)
		} else {
			err = fmt.Errorf("%w (saving the local bytes: %w)", err, serr)
		}
	}
	ps.post(func(*owner) {
		if j.op == pushPut {
			ps.refused[j.rel] = j.sum
			if s, ok := ps.settled[j.rel]; ok && s == j.sum {
				delete(ps.settled, j.rel)
			}
		}
		ps.fail(j.rel, err)
	})
}

// saveUnsent keeps what only the queue holds when the pusher stops: local
// edits kvsync already replaced on disk go to conflict files. Edits still on
// disk are found again by the next start.
func (ps *pusher) saveUnsent() {
	for _, j := range ps.q.drain() {
		if !j.rescue || j.op != pushPut {
			continue
		}
		if name, err := ps.saveConflict(j); err == nil {
			ps.logger.Warn("stopping with an unpushed local edit; saved", "path", j.rel, "saved_as", name)
		} else {
			ps.logger.Error("stopping with an unpushed local edit that cannot be saved", "path", j.rel, "err", err)
		}
	}
}

// bucket returns the KV handle, opening it on first use.
func (ps *pusher) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	if ps.kv != nil {
		return ps.kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	kv, err := ps.js.KeyValue(ctx, ps.p.cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", ps.p.cfg.Bucket, err)
	}
	ps.kv = kv
	return kv, nil
}

// limit returns the largest value the bucket takes, less the headroom for
// headers; 0 means no limit known. The bucket's status is read at most every
// few seconds.
func (ps *pusher) limit(ctx context.Context, kv jetstream.KeyValue) int64 {
	if ps.statusAt.IsZero() || time.Since(ps.statusAt) > 5*time.Second {
		sctx, cancel := context.WithTimeout(ctx, pushTimeout)
		st, err := kv.Status(sctx)
		cancel()
		if err == nil {
			ps.statusAt = time.Now()
			ps.maxValue = 0
			if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
				ps.maxValue = int64(bs.Config().MaxValueSize)
			}
		}
	}
	lim := ps.maxValue
	if nc := ps.js.Conn(); nc != nil {
		if mp := nc.MaxPayload(); mp > 0 && (lim <= 0 || mp < lim) {
			lim = mp
		}
	}
	if lim <= 0 {
		return 0
	}
	return max(lim-valueHeadroom, 1)
}

// isConflict reports a compare-and-set failure.
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// permanent reports an error that trying again will not fix: the server
// refused the value, or the key. Everything else (no connection, timeouts,
// no responders during an election, a bucket not found for now) is retried.
func permanent(err error) bool {
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return api.Code != 503 && api.Code != 408 && api.ErrorCode != jetstream.JSErrCodeStreamNotFound
	}
	return errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, jetstream.ErrInvalidKey) || errors.Is(err, nats.ErrBadSubject)
}
