package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// Op is what happened to a key.
type Op uint8

// The operations of a KV entry.
const (
	OpPut Op = iota
	OpDelete
	OpPurge
)

func (o Op) String() string {
	switch o {
	case OpDelete:
		return "DEL"
	case OpPurge:
		return "PURGE"
	}
	return "PUT"
}

// event is one KV entry as the watcher received it.
type event struct {
	bucket  string
	key     string
	op      Op
	value   []byte
	rev     uint64
	created time.Time // server timestamp: propagation is measured from here
}

// Messages from watchers to the owner goroutine, in stream order per bucket.
type (
	// epochStart: a fresh full view of the bucket follows; keep serving the old
	// one until the matching syncDone. size is about how many keys it holds,
	// so the view is allocated once rather than grown.
	epochStart struct {
		bucket string
		epoch  uint64
		size   int
	}
	// syncDone: every entry that existed when the epoch started has been sent.
	syncDone struct {
		bucket string
		epoch  uint64
	}
	// listing: after a resume, the complete key list as of stream sequence
	// asOf. Keys the owner holds at a revision <= asOf that are not listed were
	// deleted while the watcher was away, and their markers are gone.
	listing struct {
		bucket string
		asOf   uint64
		keys   map[string]struct{}
	}
	// bucketGone: the stream disappeared. Files are kept.
	bucketGone struct {
		bucket string
		err    error
	}
)

// inbox is the unbounded queue from the watchers to the owner. Watchers must
// never block on a slow owner (the client would buffer hundreds of MiB, see
// NATS-NOTES trap 7), so push appends and signals without waiting.
type inbox struct {
	mu    sync.Mutex
	items []any
	ready chan struct{}
}

func newInbox() *inbox { return &inbox{ready: make(chan struct{}, 1)} }

func (q *inbox) push(m any) {
	q.mu.Lock()
	q.items = append(q.items, m)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns everything queued and leaves the queue empty. buf is reused.
func (q *inbox) take(buf []any) []any {
	q.mu.Lock()
	items := q.items
	q.items = buf[:0]
	q.mu.Unlock()
	return items
}

// watcher follows one bucket for the union of the key filters of every
// projection that reads it. It is built on an ephemeral pull consumer like the
// library's ordered consumer (in memory, no acks, gaps detected by the
// consumer sequence) with a 1 s heartbeat, and it re-creates that consumer
// itself, right after the last sequence it handed on, as soon as the
// connection comes back or the consumer reports trouble (missing heartbeats
// after a leader change, a deleted consumer, a gap): a plain WatchAll stalls
// ~18 s after a server restart, and the library's own reset waits a second or
// more between attempts and up to 10 s for each (NATS-NOTES trap 4).
// Re-creations back off from 100 ms, and each consumer left is deleted, so a
// dead cluster does not become a loop that leaks server-side consumers
// (trap 8).
type watcher struct {
	js      jetstream.JetStream
	bucket  string
	filters []string // key filters, as configured (client-side filter)
	out     *inbox
	logger  *slog.Logger

	resumed chan struct{} // a reconnect happened: resume and list the keys
	nudge   chan struct{} // a stream advisory (leader elected, deleted, created)

	// State of the current epoch (a fresh view of one stream), owned by run.
	epoch   uint64
	created time.Time // the stream's creation time: a new stream is a new epoch
	synced  atomic.Bool
	limited atomic.Bool // the server refused its consumers for the consumer limit

	mu   sync.Mutex // serialises handlers of an old and a new consumer
	gen  uint64     // the consumer generation whose messages count
	seen uint64     // highest stream sequence handed on in this epoch
}

func newWatcher(js jetstream.JetStream, bucket string, filters []string, out *inbox, logger *slog.Logger) *watcher {
	return &watcher{
		js: js, bucket: bucket, filters: filters, out: out,
		logger:  logger.With("bucket", bucket),
		resumed: make(chan struct{}, 1),
		nudge:   make(chan struct{}, 1),
	}
}

// watchAdvisories subscribes to the JetStream advisories of the bucket's
// stream: a new stream leader, the stream deleted or created. Each nudges the
// watcher to check the stream and re-create its consumer at once, instead of
// waiting for missing heartbeats. Without permission for the advisories the
// heartbeats still do it, a second or two later.
func (w *watcher) watchAdvisories() func() {
	nc := w.js.Conn()
	if nc == nil {
		return func() {}
	}
	sub, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.*."+w.stream(), func(*nats.Msg) {
		select {
		case w.nudge <- struct{}{}:
		default:
		}
	})
	if err != nil {
		w.logger.Debug("no stream advisories", "err", err)
		return func() {}
	}
	return func() { _ = sub.Unsubscribe() }
}

// reconnected tells the watcher the connection came back.
func (w *watcher) reconnected() {
	select {
	case w.resumed <- struct{}{}:
	default:
	}
}

func (w *watcher) stream() string { return "KV_" + w.bucket }

// next says how follow wants to go on.
type next struct {
	resume bool // continue the epoch after w.seen (else: a new epoch)
	list   bool // list the keys once the consumer runs (after a reconnect)
}

// apiTimeout bounds one JetStream API request of the watcher after fails
// failed attempts in a row: 500 ms, doubling up to 5 s. During a leader
// election requests go unanswered; a short first bound retries soon after the
// new leader is up instead of waiting out a 5 or 10 s default, and the
// doubling still lets a slow server answer.
func apiTimeout(fails int) time.Duration {
	return min(5*time.Second, 500*time.Millisecond<<min(fails, 4))
}

// errNudged: a request was given up because the stream reported news;
// errResumed: because the connection came back.
var (
	errNudged  = errors.New("given up for news of the stream")
	errResumed = errors.New("given up: the connection came back")
)

// bounded runs one JetStream request of the watcher, bounded by timeout, and
// gives it up early when the stream reports news (a new leader, the bucket
// created) or the connection comes back: a request sent during a leader
// election is never answered, and that news is the moment to ask again. A
// request given up fails with errNudged (the nudge is passed on, so run
// retries at once) or errResumed.
func (w *watcher) bounded(ctx context.Context, timeout time.Duration, req func(context.Context) error) error {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var why atomic.Pointer[error]
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-done:
		case <-w.nudge:
			why.Store(&errNudged)
			select {
			case w.nudge <- struct{}{}: // passed on before the request ends
			default:
			}
			cancel()
		case <-w.resumed:
			why.Store(&errResumed)
			cancel()
		}
	}()
	err := req(rctx)
	close(done)
	<-exited
	if p := why.Load(); err != nil && p != nil {
		return fmt.Errorf("%w: %w", *p, err)
	}
	return err
}

// run follows the bucket until ctx is done.
func (w *watcher) run(ctx context.Context) error {
	bo := newBackoff(100*time.Millisecond, 5*time.Second)
	// A stream at its consumer limit stays there until an operator acts:
	// its refusals back off longer, so that the agents it refuses do not
	// load the server that serves the others.
	limitBo := newBackoff(time.Second, 30*time.Second)
	limited := false
	defer w.watchAdvisories()()
	gone := false
	fails := 0
	var n next
	for ctx.Err() == nil {
		started := time.Time{}
		nn, err := w.follow(ctx, n, &started, apiTimeout(fails))
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound):
			if !gone {
				w.out.push(bucketGone{bucket: w.bucket, err: fmt.Errorf("bucket %s not found", w.bucket)})
				gone = true
			}
			n = next{} // when it is back, it is a new stream
		case errors.Is(err, errNudged):
			w.logger.Debug("watcher restarts", "err", err)
			n.list = n.list || nn.list
		case errors.Is(err, errResumed):
			w.logger.Debug("watcher restarts", "err", err)
			n.list = true
			continue // the reconnect back-off has paced this already
		case errors.Is(err, jetstream.ErrMaximumConsumersLimit):
			if !limited {
				w.out.push(consumerLimit{bucket: w.bucket, err: w.limitError(ctx, err)})
				limited = true
				w.limited.Store(true)
			}
			w.logger.Debug("watcher restarts", "err", err)
			n.list = n.list || nn.list
		case err != nil:
			fails++
			w.logger.Warn("watcher restarts", "err", err)
			n.list = n.list || nn.list
		default:
			fails = 0
			gone = false
			n = nn
		}
		if !started.IsZero() {
			limited = false // running told the owner
			limitBo.reset()
		}
		// A consumer that ran for a while resumes at once; failures and
		// quick re-creations back off.
		if !started.IsZero() && time.Since(started) > 2*time.Second {
			bo.reset()
			continue
		}
		var wait time.Duration
		if limited {
			wait = limitBo.next()
		} else {
			wait = bo.next()
		}
		select {
		case <-ctx.Done():
		case <-w.nudge: // e.g. the bucket was created again, or its limit raised
			if limited {
				// Every agent the stream refused hears the same advisory:
				// spread their attempts.
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(rand.Int64N(int64(limitNudgeSpread)))):
				}
			}
		case <-time.After(wait):
		}
	}
	return nil
}

// follow creates a consumer and feeds the owner until the consumer must be
// re-created (it returns how) or ctx is done. It returns ErrStreamNotFound
// when the bucket is gone. started is set once the consumer runs.
func (w *watcher) follow(ctx context.Context, n next, started *time.Time, timeout time.Duration) (next, error) {
	var st jetstream.Stream
	err := w.bounded(ctx, timeout, func(ctx context.Context) (err error) {
		st, err = w.js.Stream(ctx, w.stream())
		return err
	})
	if err != nil {
		return n, fmt.Errorf("stream info: %w", err)
	}
	info := st.CachedInfo()
	if n.resume && !info.Created.Equal(w.created) {
		w.logger.Warn("bucket was recreated: following the new one from its start")
		n = next{}
	}
	lastSeq := info.State.LastSeq
	// A bucket-wide TTL without limit markers removes keys with no event at
	// all (NATS-NOTES): only a listing notices. Such buckets, and only they,
	// are listed every quarter of their TTL (at least every second).
	var expiry <-chan time.Time
	if c := info.Config; c.MaxAge > 0 && c.SubjectDeleteMarkerTTL == 0 {
		t := time.NewTicker(max(c.MaxAge/4, time.Second))
		defer t.Stop()
		expiry = t.C
	}

	// The consumer is what the library's ordered consumer makes (ephemeral,
	// in memory, one replica, no acks), created here with a bounded request:
	// the library's own creation waits up to 10 s for an answer that never
	// comes while a stream has no leader. Gaps are caught below by the
	// consumer sequence, as the ordered consumer does, and answered by a
	// new consumer after the last sequence handed on.
	cfg := jetstream.ConsumerConfig{
		Name:              fmt.Sprintf("kvsync_%s_%x", w.bucket, rand.Uint64()),
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: 30 * time.Second, // a consumer we left goes soon
		Replicas:          1,
		MemoryStorage:     true,
	}
	if f := subjects(w.bucket, w.filters); len(f) == 1 {
		cfg.FilterSubject = f[0]
	} else {
		cfg.FilterSubjects = f
	}
	w.mu.Lock()
	if n.resume {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, w.seen+1
	}
	w.mu.Unlock()
	var cons jetstream.Consumer
	err = w.bounded(ctx, timeout, func(ctx context.Context) (err error) {
		cons, err = w.js.CreateConsumer(ctx, w.stream(), cfg)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("create consumer: %w", err)
	}
	defer func() {
		// Best effort: the inactive threshold removes it anyway.
		go func() {
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = w.js.DeleteConsumer(dctx, w.stream(), cfg.Name)
		}()
	}()
	w.mu.Lock()
	w.gen++
	gen := w.gen
	var delivered uint64 // consumer sequence of the last message of this consumer
	if !n.resume {
		w.epoch++
		w.seen = 0
		w.created = info.Created
		w.synced.Store(false)
		w.out.push(epochStart{bucket: w.bucket, epoch: w.epoch, size: w.sizeHint(info.State)})
	}
	epoch := w.epoch
	w.mu.Unlock()

	var (
		trouble    = make(chan struct{}, 1)
		prefix     = "$KV." + w.bucket + "."
		markSynced = func() {
			if w.synced.CompareAndSwap(false, true) {
				w.out.push(syncDone{bucket: w.bucket, epoch: epoch})
			}
		}
	)
	handler := func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		seq := md.Sequence.Stream
		if gen != w.gen {
			return // a consumer we left
		}
		if md.Sequence.Consumer != delivered+1 {
			// A message of this consumer was lost (e.g. across a
			// reconnect): start over after the last one handed on.
			w.gen++
			select {
			case trouble <- struct{}{}:
			default:
			}
			return
		}
		delivered = md.Sequence.Consumer
		if seq <= w.seen {
			return // handed on already
		}
		ev, ok := parseMsg(m, prefix, w.bucket, md)
		if ok && kvkey.MatchAny(w.filters, ev.key) {
			w.out.push(ev)
		}
		w.seen = seq
		if !w.synced.Load() && (md.NumPending == 0 || seq >= lastSeq) {
			markSynced()
		}
	}
	cc, err := cons.Consume(handler,
		jetstream.PullHeartbeat(time.Second),
		// Large pulls make the initial sync of a big bucket a few round
		// trips; the byte cap bounds the client buffer for large values.
		jetstream.PullMaxMessagesWithBytesLimit(4096, 8<<20),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			w.logger.Debug("consumer error", "err", err)
			if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
				errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, nats.ErrNoResponders) ||
				errors.Is(err, jetstream.ErrStreamNotFound) {
				select {
				case trouble <- struct{}{}:
				default:
				}
			}
		}))
	if err != nil {
		return n, fmt.Errorf("consume: %w", err)
	}
	defer cc.Stop()
	*started = time.Now()
	w.running()
	if n.resume {
		w.logger.Debug("consumer re-created", "from", cfg.OptStartSeq)
	}
	if lastSeq == 0 || (n.resume && w.seenAtLeast(lastSeq)) {
		markSynced() // nothing (more) to wait for
	}
	if n.list {
		if err := w.list(ctx); err != nil {
			w.logger.Warn("reconcile after reconnect", "err", err)
			w.reconnected() // try again
		}
	}

	// Until synced, confirm the end of the initial values with the consumer's
	// own count as well: the per-message pending count can stall when entries
	// expire during catch-up (NATS-NOTES trap 3).
	lastLog := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return n, nil
		case <-tick.C:
			if w.synced.Load() {
				tick.Stop()
				continue
			}
			if w.caughtUp(ctx, cons) {
				markSynced()
			} else if time.Since(lastLog) >= 2*time.Second {
				// Long initial syncs (large buckets) say how far they are.
				lastLog = time.Now()
				w.logger.Info("initial sync in progress", "revision", w.lastSeen(), "last_revision", lastSeq)
			}
		case <-expiry:
			if w.synced.Load() {
				if err := w.list(ctx); err != nil {
					w.logger.Warn("list keys for TTL expiry", "err", err)
				}
			}
		case <-trouble:
			if err := w.check(ctx); err != nil {
				return next{}, err
			}
			return next{resume: true}, nil
		case <-w.nudge:
			if err := w.check(ctx); err != nil {
				return next{}, err
			}
			return next{resume: true}, nil
		case <-w.resumed:
			if err := w.check(ctx); err != nil {
				return next{}, err
			}
			return next{resume: true, list: true}, nil
		}
	}
}

// maxSizeHint bounds the size hint of an epoch: a bucket's subjects include
// deleted keys, and a hint that is too large costs memory for nothing.
const maxSizeHint = 1 << 20

// sizeHint is how many keys an epoch of st is expected to hold: the stream's
// subjects when the watcher takes every key, else nothing known.
func (w *watcher) sizeHint(st jetstream.StreamState) int {
	if !slices.Contains(w.filters, ">") {
		return 0
	}
	return int(min(st.NumSubjects, maxSizeHint))
}

func (w *watcher) lastSeen() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

func (w *watcher) seenAtLeast(seq uint64) bool { return w.lastSeen() >= seq }

// caughtUp asks the consumer whether everything it delivered was handled.
func (w *watcher) caughtUp(ctx context.Context, cons jetstream.Consumer) bool {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := cons.Info(ictx)
	if err != nil {
		return false
	}
	return info.NumPending == 0 && info.NumAckPending == 0 && w.seenAtLeast(info.Delivered.Stream)
}

// check returns an error that ends the epoch when the stream is gone or was
// replaced by a new one of the same name (its sequences start over, so
// resuming after our last sequence would skip its entries). A stream that
// cannot be asked now (no leader, no connection) is not an error: the
// consumer is re-created, and that retries.
func (w *watcher) check(ctx context.Context) error {
	// Short: during an election this request is not answered, and the
	// re-creation that follows asks again with requests that give up on news.
	ictx, cancel := context.WithTimeout(ctx, apiTimeout(0))
	defer cancel()
	st, err := w.js.Stream(ictx, w.stream())
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return err
	case err != nil:
		return nil
	case !st.CachedInfo().Created.Equal(w.created):
		return fmt.Errorf("bucket %s was recreated", w.bucket)
	}
	return nil
}

// list sends the complete list of keys that still have a message in the
// stream, so the owner can drop keys removed while the watcher was away without
// a marker it could see (NATS-NOTES trap 9). It reads the stream's per-subject
// state: complete or an error, never a partial list that would delete files.
func (w *watcher) list(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := w.js.Stream(lctx, w.stream())
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	prefix := "$KV." + w.bucket + "."
	info, err := st.Info(lctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return fmt.Errorf("list subjects: %w", err)
	}
	keys := make(map[string]struct{}, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		keys[strings.TrimPrefix(subj, prefix)] = struct{}{}
	}
	w.out.push(listing{bucket: w.bucket, asOf: info.State.LastSeq, keys: keys})
	return nil
}

// parseMsg turns a stream message into an event. Markers written by the server
// (per-key TTL expiry, purges) count as purges.
func parseMsg(m jetstream.Msg, prefix, bucket string, md *jetstream.MsgMetadata) (event, bool) {
	subj := m.Subject()
	if !strings.HasPrefix(subj, prefix) {
		return event{}, false
	}
	ev := event{
		bucket: bucket,
		// The key alone: the state keeps it, not the whole subject.
		key:     strings.Clone(subj[len(prefix):]),
		value:   m.Data(),
		rev:     md.Sequence.Stream,
		created: md.Timestamp,
	}
	h := m.Headers()
	switch h.Get("KV-Operation") {
	case "DEL":
		ev.op = OpDelete
	case "PURGE":
		ev.op = OpPurge
	default:
		switch h.Get(jetstream.MarkerReasonHeader) {
		case "MaxAge", "Purge":
			ev.op = OpPurge
		case "Remove":
			ev.op = OpDelete
		}
	}
	if ev.op != OpPut {
		ev.value = nil
	} else if len(h) > 0 {
		// The value is a slice of the message's buffer, which holds the
		// headers too: the state keeps a copy of the value alone.
		ev.value = bytes.Clone(ev.value)
	}
	return ev, true
}

// subjects turns key filters into stream subject filters the server accepts:
// filters must not overlap, so a filter covered by another is dropped, and
// when two overlap without one covering the other, the watcher takes the whole
// bucket and filters on the client.
func subjects(bucket string, filters []string) []string {
	keep := []string{}
	for i, f := range filters {
		covered := false
		for j, g := range filters {
			if i != j && covers(g, f) && (!covers(f, g) || j < i) {
				covered = true
				break
			}
		}
		if !covered {
			keep = append(keep, f)
		}
	}
	for i := range keep {
		for j := i + 1; j < len(keep); j++ {
			if overlap(keep[i], keep[j]) {
				keep = []string{">"}
			}
		}
	}
	out := make([]string, len(keep))
	for i, f := range keep {
		out[i] = "$KV." + bucket + "." + f
	}
	return out
}

// covers reports whether every key matching f also matches g.
func covers(g, f string) bool {
	gt, ft := strings.Split(g, "."), strings.Split(f, ".")
	for i, t := range gt {
		if t == ">" {
			return len(ft) > i
		}
		if i >= len(ft) {
			return false
		}
		if t != "*" && (ft[i] == "*" || ft[i] == ">" || ft[i] != t) {
			return false
		}
		if t == "*" && ft[i] == ">" {
			return false
		}
	}
	return len(gt) == len(ft)
}

// overlap reports whether some key matches both filters.
func overlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(at) && i < len(bt); i++ {
		if at[i] == ">" || bt[i] == ">" {
			return true
		}
		if at[i] != "*" && bt[i] != "*" && at[i] != bt[i] {
			return false
		}
	}
	return len(at) == len(bt)
}

// backoff is an exponential delay with equal jitter: each delay is drawn
// uniformly from [d/2, d], where d doubles from min up to max. The random half
// spreads a fleet of agents that failed at the same moment (a server restart,
// a refused consumer) so that they do not retry in step; the fixed half keeps
// a floor under each agent's retry rate. The watcher uses it between
// consumers, so a missing bucket does not become a tight loop that leaks
// server-side consumers.
type backoff struct {
	cur, min, max time.Duration
	rnd           func(n int64) int64 // uniform in [0, n); nil: math/rand/v2
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{cur: min, min: min, max: max} }
func (b *backoff) reset()                        { b.cur = b.min }
func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return equalJitter(d, b.rnd)
}

// equalJitter returns a delay drawn uniformly from [d/2, d] with rnd (uniform
// in [0, n)), or math/rand/v2 when rnd is nil.
func equalJitter(d time.Duration, rnd func(n int64) int64) time.Duration {
	if d <= 1 {
		return d
	}
	if rnd == nil {
		rnd = rand.Int64N
	}
	half := d / 2
	return d - half + time.Duration(rnd(int64(half)+1))
}
