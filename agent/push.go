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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
)

// Push-back of local edits in a files projection.
//
// Three actors and one rule: projection state (revisions, manifest, the
// files kvsync writes, the held edits and conflict copies) is read and
// changed only on the owner goroutine, and NATS is called only by the
// sender. The owner never waits for either, and the actors talk only
// through typed messages: the owner's inbox, the sender's job queue, the
// watcher's listOwned channel and the reply channel of a sender's request.
//
//  1. The watcher (push_watch.go, pushWatcher) follows the folder with
//     fsnotify (sub-folders as they appear, never .kvsync/) and ignores
//     editor and kvsync temp names. A path is handed on once no event
//     touched it for the debounce period, so a rename-and-replace save
//     arrives as one change of the final file: a localEdits message in the
//     owner's inbox.
//  2. The pusher (this file), on the owner goroutine, reads the file and
//     decides (scan): a file that holds what kvsync wrote there (the
//     manifest's hash) or what the bucket already holds is not pushed, which
//     is what keeps kvsync's own writes from echoing back; a name that is not
//     a key, a key outside the keys: filters, a symlink or a non-regular file
//     is refused; anything else becomes a job guarded by the revision last
//     projected at that path, queued for the sender.
//  3. The sender (push_send.go, pushSender) runs the jobs in order: Create
//     for a new file, Update guarded by the revision, Delete guarded by it. A
//     connection problem keeps the job and retries it with backoff; a
//     compare-and-set conflict goes to the conflict policy; a refusal is
//     reported and the file kept. Each outcome the owner must know of comes
//     back as a pushDone message. The sender never touches the disk: when a
//     job needs the bytes of a held edit or a conflict copy, it asks the
//     owner (heldRead, conflictSave: a request with a reply channel the
//     owner answers without waiting, and that the sender stops waiting on
//     when its context ends), and it tells the owner when a held edit may
//     go (heldSafe, pushDone).
//  4. When kvsync replaces or removes a file that holds a local edit, the
//     projector (Options.KeepEdits) swaps the file out whole, sees that it
//     does not hold what kvsync wrote, holds it (the same inode, under
//     .kvsync/displaced/) and reports it in Result.Displaced; afterWrite
//     turns it into a job guarded by the revision the edit was based on
//     (noted by beforeWrite and beforeRemove). The sender gives a held edit
//     a debounce period (a program may still be writing into it), pushes
//     what the owner then reads from it, and the owner has the projector
//     drop it once it landed or turn it into a conflict copy when it lost.
//     Jobs still queued when push-back stops are the pusher's once the
//     sender has returned: before the folder closes, a displaced edit among
//     them becomes a conflict copy (pusher.stop). So a remote change racing a
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
// discards, drops held edits and saves conflict copies through the
// projector.Dir, and only on the owner goroutine.

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

// pushMsg is in every message of push-back in the owner's inbox: to is the
// pusher it is for, and the owner hands the message to it (pusher.handle).
type pushMsg struct{ to *pusher }

func (pushMsg) ownerEvent()       {}
func (m pushMsg) target() *pusher { return m.to }

// pushEvent is a message of push-back: an owner event for a pusher.
type pushEvent interface {
	ownerEvent
	target() *pusher
}

// Messages of push-back in the owner's inbox.
type (
	// localEdits: paths of the folder whose events settled, to be scanned.
	localEdits struct {
		pushMsg
		rels []string
	}
	// ownedWanted: the watcher asks for the paths kvsync owns (at its start,
	// and after events were lost), to look at each once; the answer is a
	// listOwned on the watcher's channel.
	ownedWanted struct{ pushMsg }
	// watchFailed: the folder cannot be watched; push-back is off.
	watchFailed struct {
		pushMsg
		err error
	}
	// pushDone: an outcome of a job that the owner must act on.
	pushDone struct {
		pushMsg
		result pushResult
		job    pushJob
		rev    uint64 // pushLanded: the revision that holds the job's bytes
		err    error  // pushRefused: why
	}
	// heldRead: the sender reached a held edit and its debounce passed; the
	// owner answers on reply with what the held file holds now.
	heldRead struct {
		pushMsg
		held  string
		reply chan<- heldBytes // room for the answer: the owner never waits
	}
	// heldSafe: the bytes of the job's held edit are safe (an earlier job
	// handled them); the owner has the projector drop it.
	heldSafe struct {
		pushMsg
		job pushJob
	}
	// conflictSave: the job's local bytes must be kept in a conflict copy
	// (the edit lost a conflict, or it cannot be pushed and exists nowhere
	// else); the owner answers on reply with the copy's name.
	conflictSave struct {
		pushMsg
		job   pushJob
		reply chan<- savedCopy // room for the answer: the owner never waits
	}
)

// heldBytes is the owner's answer to heldRead. ok is false when the held
// edit was dropped or kept already, or cannot be read: the job's bytes, as
// the projector found them when it displaced the file, stand.
type heldBytes struct {
	data []byte
	ok   bool
}

// savedCopy is the owner's answer to conflictSave: the conflict copy's
// name, or why it could not be saved.
type savedCopy struct {
	name string
	err  error
}

// listOwned is the owner's answer to ownedWanted: every path kvsync owns in
// the folder, sorted.
type listOwned struct{ rels []string }

// pushResult is what became of a job, as the owner needs to know it.
type pushResult uint8

const (
	// pushLanded: the bucket holds the job's bytes at rev.
	pushLanded pushResult = iota
	// pushRefused: the job cannot be pushed (err); the file stays.
	pushRefused
	// pushLost: a put or delete lost a conflict and the remote value is
	// kept; a put's local bytes are in a conflict copy.
	pushLost
)

// pushDir is what the pusher reads and changes in the projection folder, on
// the owner goroutine: a *projector.Dir.
type pushDir interface {
	Lstat(rel string) (fs.FileInfo, error)
	ReadFile(rel string) ([]byte, error)
	Hash(rel string) ([32]byte, bool)
	Files() map[string][32]byte
	Adopt(rel string, data []byte) (bool, error)
	Discard(rel string, sum [32]byte) (string, error)
	ReadHeld(name string) ([]byte, error)
	DropHeld(name string, sum [32]byte) (string, error)
	KeepHeld(name string) (string, error)
	SaveConflict(rel string, data []byte) (string, error)
}

// projectedRevs is the revision last projected per path of the files
// projection (owner goroutine only).
type projectedRevs interface {
	// projectedRev returns the revision projected at rel.
	projectedRev(rel string) (uint64, bool)
	// pushedRev notes that the bucket holds the bytes at rel at rev, unless
	// a later revision was projected there already.
	pushedRev(rel string, rev uint64)
}

// pusher pushes the local edits of one files projection back to its bucket.
// It is the deciding part of push-back, and the only one that reads or
// writes files of the folder; it runs on the owner goroutine only. Its
// watcher and sender run on goroutines of their own.
type pusher struct {
	cfg      PushConfig
	files    *FilesConfig     // bucket, keys and strip_prefix of the projection
	layout   projector.Layout // how keys map to paths
	d        pushDir          // the projection folder: every read and write goes through it
	revs     projectedRevs
	m        *projMeta // the projection's last error and dirty mark
	logger   *slog.Logger
	metrics  *metrics
	debounce time.Duration

	jobs    *queue[pushJob]  // to the sender
	owned   chan<- listOwned // to the watcher
	watcher *pushWatcher
	sender  *pushSender

	settled  map[string][32]byte  // path -> bytes already queued or dealt with
	refused  map[string][32]byte  // path -> bytes refused (reported once)
	missing  map[string]time.Time // path -> first scan that found it gone
	base     map[string]uint64    // path -> revision projected before the running update, for displaced edits
	deferred map[string]struct{}  // scans before the first complete update
	ready    bool                 // the first complete update ran
	kept     map[string]string    // held edit -> the conflict copy it became ("" dropped)
}

// newPusher builds push-back for the files projection of fc in the folder d,
// whose messages go to the owner's inbox in.
func newPusher(fc *FilesConfig, layout projector.Layout, d *projector.Dir, revs projectedRevs, m *projMeta,
	in *inbox, js jetstream.JetStream, met *metrics) *pusher {
	debounce := fc.Push.Debounce
	if debounce <= 0 {
		debounce = 100 * time.Millisecond
	}
	logger := m.logger.With("push", true)
	jobs := newQueue[pushJob]()
	owned := make(chan listOwned, 1)
	ps := &pusher{
		cfg: fc.Push, files: fc, layout: layout, d: d, revs: revs, m: m,
		logger: logger, metrics: met, debounce: debounce,
		jobs: jobs, owned: owned,
		settled: map[string][32]byte{}, refused: map[string][32]byte{},
		missing: map[string]time.Time{}, base: map[string]uint64{}, deferred: map[string]struct{}{},
		kept: map[string]string{},
	}
	ps.watcher = newPushWatcher(d.Path(), debounce, fc.Push.Delete, logger, in, ps, owned)
	ps.sender = newPushSender(js, fc.Bucket, m.name, fc.Push, debounce, jobs, in, ps, logger, met)
	return ps
}

// start runs the folder watcher and the sender until ctx is done.
func (ps *pusher) start(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		ps.watcher.run(ctx)
	}()
	go func() {
		defer wg.Done()
		ps.sender.run(ctx)
	}()
}

// handle takes a message of push-back from the owner's inbox, on the owner
// goroutine; st is the owner's state.
func (ps *pusher) handle(m ownerEvent, st *state) {
	switch m := m.(type) {
	case localEdits:
		ps.scan(m.rels, st.bucket(ps.files.Bucket))
	case ownedWanted:
		select {
		case ps.owned <- listOwned{rels: slices.Sorted(maps.Keys(ps.d.Files()))}:
		default: // one is pending already; the owner never blocks here
		}
	case watchFailed:
		ps.fail(".", m.err)
	case pushDone:
		switch m.result {
		case pushLanded:
			ps.release(m.job)
			ps.revs.pushedRev(m.job.rel, m.rev)
		case pushRefused:
			ps.refusedJob(m.job, m.err)
		case pushLost:
			ps.reproject(m.job)
		}
	case heldRead:
		m.reply <- ps.readHeld(m.held)
	case heldSafe:
		ps.release(m.job)
	case conflictSave:
		name, err := ps.saveConflict(m.job)
		m.reply <- savedCopy{name: name, err: err}
	default:
		panic(fmt.Sprintf("pusher: no case for the event %T", m))
	}
}

// stopped takes an event of push-back that was still in the owner's inbox
// when the owner loop ended, after the sender returned: a held edit whose
// bytes are safe is dropped, as it would have been. Everything else is
// moot; a request's sender is gone.
func (ps *pusher) stopped(m ownerEvent) {
	switch m := m.(type) {
	case pushDone:
		if m.result == pushLanded {
			ps.release(m.job)
		}
	case heldSafe:
		ps.release(m.job)
	}
}

// stop keeps what only the sender's queue holds when push-back stops: local
// edits kvsync already replaced on disk go to conflict files. Edits still on
// disk are found again by the next start. It runs on the owner goroutine
// once the sender has returned (or never ran), before the folder closes.
func (ps *pusher) stop() {
	for _, j := range ps.jobs.drain() {
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

// ---- deciding, on the owner goroutine ----

// scan looks at paths whose events settled.
func (ps *pusher) scan(rels []string, b *bucketState) {
	if !ps.ready {
		for _, r := range rels {
			ps.deferred[r] = struct{}{}
		}
		return
	}
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
	key, err := projector.PathKey(rel, ps.files.StripPrefix, ps.layout)
	if err != nil {
		ps.fail(rel, fmt.Errorf("file name is not a valid key: %w", err))
		return
	}
	if !kvkey.MatchAny(ps.files.Keys, key) {
		ps.fail(rel, fmt.Errorf("key %q is outside the projection's keys %q", key, ps.files.Keys))
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
		guard, _ = ps.revs.projectedRev(rel)
	}
	ps.enqueue(pushJob{op: pushPut, rel: rel, key: key, data: data, sum: sum, guard: guard})
}

// gone handles a path found missing: a removal to push (twice seen, a
// debounce apart, with push.delete), or a folder whose files went with it.
func (ps *pusher) gone(rel string) {
	_, owned := ps.d.Hash(rel)
	rev, known := ps.revs.projectedRev(rel)
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
	key, err := projector.PathKey(rel, ps.files.StripPrefix, ps.layout)
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
	ps.jobs.push(j)
}

// fail reports a local file that is not pushed: an error log, the push error
// counter and the projection's last error. The file stays as it is.
func (ps *pusher) fail(rel string, err error) {
	err = fmt.Errorf("push %s: %w", rel, err)
	ps.logger.Error("local change not pushed", "path", rel, "err", err)
	ps.metrics.errors.WithLabelValues(ps.m.name, "push").Inc()
	ps.m.setError(err)
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
	if rev, ok := ps.revs.projectedRev(rel); ok {
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
		key, err := projector.PathKey(rel, ps.files.StripPrefix, ps.layout)
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
	key, err := projector.PathKey(dp.Path, ps.files.StripPrefix, ps.layout)
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

// afterWrite runs on the owner goroutine after an Apply or Reconcile; b is
// the state of the projection's bucket.
func (ps *pusher) afterWrite(res projector.Result, b *bucketState) {
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
			ps.scan(rels, b)
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
	ps.m.markDirty(time.Now(), true, "push-back conflict on "+j.rel)
}

// ---- held edits and conflict copies, for the sender, on the owner goroutine ----

// readHeld answers heldRead: what the held edit name holds now, unless it
// was dropped or kept already.
func (ps *pusher) readHeld(name string) heldBytes {
	if _, done := ps.kept[name]; done {
		return heldBytes{}
	}
	data, err := ps.d.ReadHeld(name)
	if err != nil {
		return heldBytes{}
	}
	return heldBytes{data: data, ok: true}
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

// saveConflict keeps the local bytes of a job in a conflict copy,
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

// refusedJob records a job the sender could not push and reports it.
func (ps *pusher) refusedJob(j pushJob, err error) {
	if j.op == pushPut {
		ps.refused[j.rel] = j.sum
		if s, ok := ps.settled[j.rel]; ok && s == j.sum {
			delete(ps.settled, j.rel)
		}
	}
	ps.fail(j.rel, err)
}
