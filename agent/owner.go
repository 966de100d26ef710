package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/process"
	"github.com/kvsync/kvsync/agent/watch"
)

// projection is one output kept in step with the state: a folder of files, a
// rendered template, or an env set.
type projection interface {
	// meta returns the bookkeeping every projection shares.
	meta() *projMeta
	// touches reports whether a change of bucket/key can change the output.
	touches(bucket, key string) bool
	// noteKey records that key changed, for projections that update per key.
	noteKey(bucket, key string)
	// update brings the output up to date with s: everything when full, else
	// what changed since the last update. It reports whether any byte changed.
	update(s *state, full bool) (changed bool, err error)
	// close releases what the projection holds.
	close() error
}

// A failed update is retried after firstRetry, doubling up to maxRetry.
const (
	firstRetry = time.Second
	maxRetry   = 30 * time.Second
)

// starter is a projection with goroutines of its own (push-back watches its
// folder). start runs them until ctx is done, tracked by wg.
type starter interface {
	start(ctx context.Context, wg *sync.WaitGroup)
}

// projMeta is what the owner tracks for every projection.
type projMeta struct {
	name, kind, target string
	buckets            []string // buckets whose initial sync the first write waits for
	wait               WaitConfig
	logger             *slog.Logger

	slot     *actionSlot // the on_change action (own or named); nil without one
	check    *checker    // the check of staged outputs; nil without one
	rollback bool        // restore the previous output when the action fails
	seq      uint64      // counts the updates that changed bytes
	proj     projection  // the projection this is the meta of

	dirty      bool
	full       bool
	firstDirty time.Time
	due        time.Time
	synced     bool          // the first complete update ran
	retry      time.Duration // wait before retrying a failed update
	failed     bool          // the last update failed (Once mode exits 1)
	triggerMsg string

	status ProjectionStatus
	rep    repState // for the fleet record
}

func (m *projMeta) markDirty(now time.Time, full bool, why string) {
	if !m.dirty {
		m.dirty, m.firstDirty = true, now
		m.triggerMsg = why
	}
	m.full = m.full || full
	due := now.Add(m.wait.Min)
	if m.wait.Max > 0 && due.After(m.firstDirty.Add(m.wait.Max)) {
		due = m.firstDirty.Add(m.wait.Max)
	}
	m.due = due
}

func (m *projMeta) setError(err error) {
	now := time.Now()
	m.status.LastError, m.status.LastErrorAt = err.Error(), &now
}

// owner is the single goroutine that holds the key -> entry state and drives
// every projection. Watchers feed it through the inbox; nothing else touches
// the state.
type owner struct {
	a       *Agent
	cfg     *Config
	js      jetstream.JetStream
	logger  *slog.Logger
	st      *state
	in      *inbox
	projs   []projection
	watched map[string]watch.Watcher
	results chan actionDone
	slots   []*actionSlot          // every action, own and named, each with a loop
	named   map[string]*actionSlot // the named actions in use
	fired   map[*actionSlot][]batchMember
	exec    execChild
	execFed bool // the exec loop has an environment (the child runs)

	limited limitState // buckets whose consumer the server refuses for the consumer limit

	ctx     context.Context
	wg      sync.WaitGroup
	started time.Time // when this owner was built
	freed   bool      // memory was handed back after the first sync
}

type actionDone struct {
	slot    *actionSlot
	members []batchMember
	res     ActionResult
}

func newOwner(cfg *Config, a *Agent, js jetstream.JetStream, exec execChild) (*owner, error) {
	o := &owner{
		a: a, cfg: cfg, js: js, logger: a.logger,
		st: newState(js), in: newInbox(), watched: map[string]watch.Watcher{},
		results: make(chan actionDone, 16), exec: exec, started: time.Now(),
		named: map[string]*actionSlot{}, fired: map[*actionSlot][]batchMember{},
	}
	var errs []error
	add := func(p projection, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		p.meta().proj = p
		o.projs = append(o.projs, p)
	}
	for i := range cfg.Files {
		add(newFilesProjection(&cfg.Files[i], o))
	}
	for i := range cfg.Templates {
		add(newTemplateProjection(&cfg.Templates[i], o))
	}
	for i := range cfg.Env {
		add(newEnvProjection(&cfg.Env[i], o))
	}
	if err := errors.Join(errs...); err != nil {
		o.closeAll()
		return nil, err
	}
	return o, nil
}

// waitFor returns the quiescence of a projection: its own, else the global one.
func (o *owner) waitFor(w *WaitConfig) WaitConfig {
	if w != nil {
		return *w
	}
	return o.cfg.Wait
}

// newMeta fills the shared part of a projection: its action (a named one is
// shared with the other projections that name it), check and rollback.
func (o *owner) newMeta(name, kind, target string, buckets []string, w *WaitConfig, act *Action, check *CheckConfig, rollback bool) (*projMeta, error) {
	m := &projMeta{
		name: name, kind: kind, target: target, buckets: buckets,
		wait:   o.waitFor(w),
		logger: o.logger.With("projection", name),
		retry:  firstRetry,
	}
	m.status = ProjectionStatus{Name: name, Kind: kind, Target: target, Buckets: buckets}
	m.check = newChecker(check, name, m.logger, o.a.reaper)
	m.rollback = rollback
	if act == nil || o.a.opts.Once || o.a.opts.DryRun {
		return m, nil
	}
	if act.Ref != "" {
		if s, ok := o.named[act.Ref]; ok {
			m.slot = s
			return m, nil
		}
		named, ok := o.cfg.Actions[act.Ref]
		if !ok {
			return nil, fmt.Errorf("%s: on_change: %q is not defined in actions", name, act.Ref)
		}
		label := "actions." + act.Ref
		r, err := o.newRunner(named, label, o.logger.With("action", act.Ref))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		m.slot = newActionSlot(label, true, r)
		o.named[act.Ref] = m.slot
		o.slots = append(o.slots, m.slot)
		return m, nil
	}
	r, err := o.newRunner(*act, name, m.logger)
	if err != nil {
		return nil, fmt.Errorf("%s: on_change: %w", name, err)
	}
	m.slot = newActionSlot(name, false, r)
	o.slots = append(o.slots, m.slot)
	return m, nil
}

// newRunner prepares an action; owner names it in the logs.
func (o *owner) newRunner(act Action, owner string, logger *slog.Logger) (*process.ActionRunner, error) {
	var restart func(context.Context) error
	if o.exec != nil {
		restart = o.exec.Restart
	}
	var opts []process.Option
	if o.a.reaper != nil {
		opts = append(opts, process.WithReaper(o.a.reaper))
	}
	return process.NewActionRunner(act, owner, logger, restart, opts...)
}

func (o *owner) closeAll() {
	for _, p := range o.projs {
		if err := p.close(); err != nil {
			o.logger.Warn("close projection", "projection", p.meta().name, "err", err)
		}
	}
}

// watch starts the watcher of a bucket, once.
func (o *owner) watch(bucket string, filters []string) {
	if _, ok := o.watched[bucket]; ok {
		return
	}
	w := o.newBucketWatcher(bucket, filters, o.watchOptions(bucket))
	o.watched[bucket] = w
	o.st.bucket(bucket)
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		_ = w.Run(o.ctx)
	}()
}

// bucketFilters is the union of the key filters per bucket of every file and
// env projection; templates watch whole buckets (they may read any key).
func (o *owner) bucketFilters() map[string][]string {
	out := map[string][]string{}
	addAll := func(b string, keys []string) {
		for _, k := range keys {
			if !slices.Contains(out[b], k) {
				out[b] = append(out[b], k)
			}
		}
	}
	for _, f := range o.cfg.Files {
		addAll(f.Bucket, f.Keys)
	}
	for _, e := range o.cfg.Env {
		addAll(e.Bucket, e.Keys)
	}
	for _, t := range o.cfg.Templates {
		if t.Bucket != "" {
			out[t.Bucket] = []string{">"}
		}
	}
	return out
}

// run is the owner loop. It returns when ctx is done, or in Once mode when
// every projection has been written once.
func (o *owner) run(ctx context.Context, reconnects <-chan struct{}) error {
	ctx, cancel := context.WithCancel(ctx)
	o.ctx = ctx
	defer func() {
		cancel()
		o.wg.Wait()
		o.stopPush()
		o.closeAll()
	}()
	for b, f := range o.bucketFilters() {
		o.watch(b, f)
	}
	for _, p := range o.projs {
		if s, ok := p.(starter); ok {
			s.start(ctx, &o.wg)
		}
	}
	for _, s := range o.slots {
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			o.actionLoop(ctx, s)
		}()
	}
	o.publishStatus()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var buf []ownerEvent
	var childExit <-chan int
	if o.exec != nil {
		childExit = o.exec.Exited()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case code := <-childExit:
			return &ChildExit{Code: code}
		case <-reconnects:
			for _, w := range o.watched {
				w.Reconnected()
			}
		case <-o.in.ready:
			buf = o.in.take(buf)
			for i, m := range buf {
				o.handle(m)
				buf[i] = nil
			}
		case <-timer.C:
		case d := <-o.results:
			o.recordAction(d)
		}
		next, err := o.flush()
		if err != nil {
			return err
		}
		if o.a.opts.Once && o.allSynced() {
			return o.onceResult()
		}
		o.publishStatus()
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
	}
}

// handle applies one message of the inbox: a watcher's (watchEntry,
// watchEvent) to the state, marking projections dirty (handleWatch);
// push-back's (pushEvent: localEdits, ownedWanted, watchFailed, pushDone,
// and the sender's heldRead, heldSafe, conflictSave) to the pusher it names.
// The set of events is closed (ownerEvent): a type without a case here is a
// bug.
func (o *owner) handle(m ownerEvent) {
	now := time.Now()
	switch m := m.(type) {
	case watchEntry:
		o.handleWatch(m.e, now)
	case watchEvent:
		o.handleWatch(m.e, now)
	case pushEvent:
		m.target().handle(m, o.st)
	default:
		panic(fmt.Sprintf("owner: no case for the event %T", m))
	}
}

// handleWatch applies a watcher's event to the state, marking the
// projections whose keys changed dirty. The set is closed (watch.Event): a
// type without a case here is a bug.
func (o *owner) handleWatch(m watch.Event, now time.Time) {
	switch m := m.(type) {
	case *watch.Entry:
		o.a.metrics.updates.WithLabelValues(m.Bucket, m.Op.String()).Inc()
		b := o.st.bucket(m.Bucket)
		if !b.apply(m) {
			return
		}
		o.a.metrics.lastRev.WithLabelValues(m.Bucket).Set(float64(b.lastRev))
		for _, p := range o.projs {
			if p.touches(m.Bucket, m.Key) {
				p.noteKey(m.Bucket, m.Key)
				p.meta().markDirty(now, false, fmt.Sprintf("%s %s:%s rev %d", m.Op, m.Bucket, m.Key, m.Revision))
			}
		}
	case watch.EpochStart:
		b := o.st.bucket(m.Bucket)
		b.epoch, b.building = m.Epoch, make(map[string]entry, m.Size)
	case watch.SyncDone:
		b := o.st.bucket(m.Bucket)
		if b.epoch != m.Epoch || b.building == nil {
			return
		}
		changed := b.swap()
		if b.gone {
			o.logger.Info("bucket is back", "bucket", m.Bucket)
		}
		b.gone = false
		o.logger.Info("initial sync done", "bucket", m.Bucket, "keys", len(b.entries), "changed", changed)
		for _, p := range o.projs {
			// Every projection may read the bucket (templates read any): a
			// complete update compares against what is on disk.
			p.meta().markDirty(now, true, "initial sync of bucket "+m.Bucket)
		}
	case watch.Listing:
		b := o.st.bucket(m.Bucket)
		var gone []string
		for k, e := range b.entries {
			if _, ok := m.Keys[k]; !ok && e.Revision <= m.AsOf {
				gone = append(gone, k)
			}
		}
		for _, k := range gone {
			o.handleWatch(&watch.Entry{Bucket: m.Bucket, Key: k, Op: OpDelete, Revision: m.AsOf, Created: now}, now)
		}
		if len(gone) > 0 {
			o.logger.Info("reconciled after reconnect", "bucket", m.Bucket, "removed", len(gone))
		}
	case watch.BucketGone:
		b := o.st.bucket(m.Bucket)
		b.gone = true
		o.logger.Error("bucket is missing: keeping the files as they are", "bucket", m.Bucket, "err", m.Err)
	case watch.ConsumerLimit:
		o.noteConsumerLimit(m)
	default:
		panic(fmt.Sprintf("owner: no case for the watch event %T", m))
	}
}

// stopPush hands push-back the events its goroutines sent that the owner
// loop did not take, once they have all returned: a pusher drops the held
// edits whose bytes are safe (pusher.stopped). The rest of the inbox is moot.
func (o *owner) stopPush() {
	for _, m := range o.in.drain() {
		switch m := m.(type) {
		case pushDone:
			m.to.stopped(m)
		case heldSafe:
			m.to.stopped(m)
		}
	}
}

// flush updates every dirty projection that is due and whose buckets are
// synced. It returns when the next one is due (zero: none pending).
func (o *owner) flush() (time.Time, error) {
	now := time.Now()
	var next time.Time
	envChanged := false
	for _, p := range o.projs {
		m := p.meta()
		if !m.dirty {
			continue
		}
		if !o.bucketsSynced(m.buckets) {
			continue
		}
		if m.due.After(now) {
			if next.IsZero() || m.due.Before(next) {
				next = m.due
			}
			continue
		}
		full := m.full || !m.synced
		m.dirty, m.full = false, false
		changed, err := p.update(o.st, full)
		if errors.Is(err, errWaitingForBucket) {
			m.full = true // render again once the bucket is synced
			o.watchWanted()
			continue
		}
		o.noteUpdate(m, err)
		m.synced = true
		if err != nil {
			m.failed = true
			m.setError(err)
			if errors.Is(err, errRender) || errors.Is(err, errCheck) {
				// Only a change of what it reads can fix a render or make
				// a check pass: no retry. A files projection may have
				// written the other files of the batch.
				m.logger.Error("update", "err", err)
				if changed {
					o.wrote(m)
					envChanged = envChanged || isEnv(p)
				}
				continue
			}
			m.logger.Error("update", "err", err, "retry_in", m.retry)
			// Try again with a backoff, also without a change of the keys:
			// an operator who fixes the folder sees the files appear.
			m.markDirty(now, true, "retry after error")
			m.due = now.Add(m.retry)
			m.retry = min(m.retry*2, maxRetry)
			if next.IsZero() || m.due.Before(next) {
				next = m.due
			}
		} else {
			m.failed = false
			m.retry = firstRetry
		}
		if changed {
			o.wrote(m)
			envChanged = envChanged || isEnv(p)
		}
		o.watchWanted()
	}
	o.fireActions()
	switch {
	case o.exec == nil:
	case !o.execFed && o.allSynced():
		o.execFed = true
		o.exec.Update(o.environ())
	case o.execFed && envChanged:
		o.exec.Update(o.environ()) // one restart per batch
	}
	return next, nil
}

// watchWanted starts watchers for buckets a template asked for.
func (o *owner) watchWanted() {
	for b := range o.st.wanted {
		delete(o.st.wanted, b)
		if _, ok := o.watched[b]; !ok {
			o.logger.Info("watching bucket read by a template", "bucket", b)
			o.watch(b, []string{">"})
		}
	}
}

func (o *owner) bucketsSynced(buckets []string) bool {
	for _, b := range buckets {
		if bs := o.st.buckets[b]; bs == nil || !bs.synced {
			return false
		}
	}
	return true
}

func (o *owner) allSynced() bool {
	for _, p := range o.projs {
		if m := p.meta(); !m.synced || m.dirty {
			return false
		}
	}
	return true
}

func (o *owner) onceResult() error {
	var errs []error
	for _, p := range o.projs {
		if m := p.meta(); m.failed {
			errs = append(errs, fmt.Errorf("%s: %s", m.name, m.status.LastError))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrIncomplete, errors.Join(errs...))
	}
	return nil
}

func isEnv(p projection) bool {
	_, ok := p.(*envProjection)
	return ok
}

// wrote notes that an update of m changed bytes: a new version is live, so
// a rolled-back one is no longer what m reports, and m's action is due once
// the whole batch is written.
func (o *owner) wrote(m *projMeta) {
	now := time.Now()
	m.status.LastWrite = &now
	m.seq++
	if m.status.RolledBack != nil {
		m.status.RolledBack = nil
		o.a.metrics.rejectedRev.WithLabelValues(m.name).Set(0)
	}
	if m.slot != nil {
		o.fired[m.slot] = append(o.fired[m.slot], batchMember{m: m, seq: m.seq})
		o.noteFired(m)
	}
}

// fireActions hands every action the projections of this batch that use it:
// a named action shared by several runs once for all of them.
func (o *owner) fireActions() {
	for s, members := range o.fired {
		whys := make([]string, 0, len(members))
		for _, bm := range members {
			whys = append(whys, bm.m.triggerMsg)
		}
		if s.named {
			// Say which projections it runs for.
			for i, bm := range members {
				whys[i] = bm.m.name + ": " + whys[i]
			}
		}
		s.add(members, strings.Join(whys, "; "))
		delete(o.fired, s)
	}
}

func (o *owner) actionLoop(ctx context.Context, s *actionSlot) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			members, why := s.take()
			if len(members) == 0 {
				continue
			}
			res := s.runner.Run(ctx, why)
			select {
			case o.results <- actionDone{slot: s, members: members, res: res}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// recordAction records an action's run on every projection it ran for and,
// when it failed, rolls back those with rollback: true and runs the action
// once more.
func (o *owner) recordAction(d actionDone) {
	r := d.res
	st := &ActionStatus{Kind: r.Kind, Detail: r.Detail, Trigger: r.Trigger, At: r.Start, Duration: r.Duration.String()}
	result := "ok"
	if r.Err != nil {
		st.Error = r.Err.Error()
		result = "error"
		o.a.metrics.errors.WithLabelValues(d.slot.label, "action").Inc()
	}
	o.a.metrics.actions.WithLabelValues(d.slot.label, result).Inc()
	var rerun []batchMember
	envChanged := false
	for _, bm := range d.members {
		m := bm.m
		m.status.LastAction = st
		o.noteAction(bm, r)
		if r.Err == nil {
			continue
		}
		m.setError(fmt.Errorf("action: %w", r.Err))
		if !m.rollback || bm.rerun || errors.Is(r.Err, context.Canceled) {
			continue
		}
		if m.seq != bm.seq {
			m.logger.Info("action failed, but a newer version is live already: not rolled back", "err", r.Err)
			continue
		}
		rb, ok := m.proj.(rollbacker)
		if !ok {
			continue
		}
		restored, err := rb.rollback()
		if err != nil {
			m.setError(fmt.Errorf("roll back: %w", err))
			o.a.metrics.errors.WithLabelValues(m.name, "rollback").Inc()
			m.logger.Error("roll back after a failed action", "err", err)
			continue
		}
		if !restored {
			continue
		}
		m.status.RolledBack = &RollbackStatus{Revision: m.status.LastRevision, At: time.Now(), Reason: "action failed: " + r.Err.Error()}
		o.a.metrics.rollbacks.WithLabelValues(m.name).Inc()
		o.a.metrics.rejectedRev.WithLabelValues(m.name).Set(float64(m.status.LastRevision))
		m.logger.Warn("action failed: previous version restored; the revision is rejected until a newer one arrives",
			"revision", m.status.LastRevision, "err", r.Err)
		if n, ok := m.proj.(noter); ok {
			n.noteRollback(m.status.RolledBack)
		}
		envChanged = envChanged || isEnv(m.proj)
		rerun = append(rerun, batchMember{m: m, seq: m.seq, rerun: true})
	}
	if envChanged && o.execFed {
		o.exec.Update(o.environ())
	}
	if len(rerun) > 0 {
		d.slot.add(rerun, "rollback after a failed action")
	}
}

// publishStatus stores a fresh snapshot for /status and sets readiness.
func (o *owner) publishStatus() {
	s := &Status{ID: o.cfg.Agent.ID, Labels: o.cfg.Agent.Labels, Connected: o.a.conn.Load()}
	ready := true
	for _, name := range slices.Sorted(maps.Keys(o.st.buckets)) {
		b := o.st.buckets[name]
		bs := BucketStatus{Name: name, Synced: b.synced, Missing: b.gone, Keys: len(b.entries), LastRevision: b.lastRev}
		if why, ok := o.limited.why[name]; ok {
			bs.ConsumerLimit, bs.Error = true, why
			ready = false
		}
		s.Buckets = append(s.Buckets, bs)
		if b.gone {
			ready = false
		}
	}
	for _, p := range o.projs {
		m := p.meta()
		ps := m.status
		ps.Synced = m.synced
		s.Projections = append(s.Projections, ps)
		if !m.synced {
			ready = false
		}
	}
	if ready && !o.a.ready.Load() && !o.freed {
		// The initial sync's transient memory (every entry as received, the
		// complete update's maps) is garbage now: hand it back to the OS
		// at once rather than when the scavenger gets to it, so a sidecar's
		// steady RSS is its working set.
		o.freed = true
		o.wg.Go(debug.FreeOSMemory)
	}
	// Ready also waits for every template's first render.
	s.Ready = ready && templatesReady(s)
	o.a.ready.Store(s.Ready)
	if s.Ready {
		o.a.metrics.ready.Set(1)
	} else {
		o.a.metrics.ready.Set(0)
	}
	o.a.status.Store(s)
	switch {
	case o.a.rep == nil:
	case o.cfg.Report != nil:
		o.a.rep.offer(o.record(s), o.cfg.Report)
	default:
		o.a.rep.offer(nil, nil) // a reload may have removed report:
	}
}

// environ is the projected part of the child's environment: every env
// projection, in config order (a later projection wins a name both define).
// The exec loop adds what the child inherits.
func (o *owner) environ() []string {
	var env []string
	for _, p := range o.projs {
		if e, ok := p.(*envProjection); ok {
			env = append(env, e.environ()...)
		}
	}
	return env
}
