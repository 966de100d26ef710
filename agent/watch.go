package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// one until the matching syncDone.
	epochStart struct {
		bucket string
		epoch  uint64
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
// projection that reads it. It is built on an ordered pull consumer with a 1 s
// heartbeat: unlike a plain WatchAll, which stalls ~18 s after a server restart
// (NATS-NOTES trap 4), it notices a dead consumer within seconds, and it is
// reset at once when the connection comes back.
type watcher struct {
	js      jetstream.JetStream
	bucket  string
	filters []string // key filters, as configured (client-side filter)
	out     *inbox
	logger  *slog.Logger
	metrics *metrics

	resumed chan struct{} // a reconnect happened: list keys once caught up
	epoch   uint64
}

func newWatcher(js jetstream.JetStream, bucket string, filters []string, out *inbox, m *metrics, logger *slog.Logger) *watcher {
	return &watcher{
		js: js, bucket: bucket, filters: filters, out: out, metrics: m,
		logger:  logger.With("bucket", bucket),
		resumed: make(chan struct{}, 1),
	}
}

// reconnected tells the watcher the connection came back.
func (w *watcher) reconnected() {
	select {
	case w.resumed <- struct{}{}:
	default:
	}
}

func (w *watcher) stream() string { return "KV_" + w.bucket }

// run follows the bucket until ctx is done. Each pass of the loop is an epoch:
// a fresh consumer from the last value of every key. A new epoch starts when
// the bucket reappears after being deleted.
func (w *watcher) run(ctx context.Context) error {
	backoff := newBackoff(250*time.Millisecond, 10*time.Second)
	gone := false
	for ctx.Err() == nil {
		err := w.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) {
			if !gone {
				w.out.push(bucketGone{bucket: w.bucket, err: fmt.Errorf("bucket %s not found", w.bucket)})
				gone = true
			}
		} else if err != nil {
			w.logger.Warn("watcher restarts", "err", err)
		}
		if err == nil {
			backoff.reset()
			gone = false
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff.next()):
		}
	}
	return nil
}

// follow runs one epoch. It returns ErrStreamNotFound when the bucket is gone.
func (w *watcher) follow(ctx context.Context) error {
	st, err := w.js.Stream(ctx, w.stream())
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	created := st.CachedInfo().Created
	lastSeq := st.CachedInfo().State.LastSeq
	// A bucket-wide TTL without limit markers removes keys with no event at
	// all (NATS-NOTES): only a listing notices. Such buckets, and only they,
	// are listed every quarter of their TTL (at least every second).
	var expiry <-chan time.Time
	if c := st.CachedInfo().Config; c.MaxAge > 0 && c.SubjectDeleteMarkerTTL == 0 {
		t := time.NewTicker(max(c.MaxAge/4, time.Second))
		defer t.Stop()
		expiry = t.C
	}

	cons, err := w.js.OrderedConsumer(ctx, w.stream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects(w.bucket, w.filters),
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	w.epoch++
	epoch := w.epoch
	w.out.push(epochStart{bucket: w.bucket, epoch: epoch})

	var (
		maxSeen    atomic.Uint64 // highest stream sequence handed to the owner
		synced     atomic.Bool
		trouble    = make(chan struct{}, 1)
		prefix     = "$KV." + w.bucket + "."
		markSynced = func() {
			if synced.CompareAndSwap(false, true) {
				w.out.push(syncDone{bucket: w.bucket, epoch: epoch})
			}
		}
	)
	handler := func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		ev, ok := parseMsg(m, prefix, w.bucket, md)
		if ok && kvkey.MatchAny(w.filters, ev.key) {
			w.out.push(ev)
		}
		maxSeen.Store(md.Sequence.Stream)
		if !synced.Load() && (md.NumPending == 0 || md.Sequence.Stream >= lastSeq) {
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
			select {
			case trouble <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer cc.Stop()
	if lastSeq == 0 {
		markSynced() // empty stream: nothing to wait for
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
			return nil
		case <-tick.C:
			if synced.Load() {
				tick.Stop()
				continue
			}
			if w.caughtUp(ctx, cons, &maxSeen) {
				markSynced()
			} else if time.Since(lastLog) >= 2*time.Second {
				// Long initial syncs (large buckets) say how far they are.
				lastLog = time.Now()
				w.logger.Info("initial sync in progress", "revision", maxSeen.Load(), "last_revision", lastSeq)
			}
		case <-expiry:
			if synced.Load() {
				if err := w.list(ctx); err != nil {
					w.logger.Warn("list keys for TTL expiry", "err", err)
				}
			}
		case <-trouble:
			if err := w.check(ctx, created); err != nil {
				return err
			}
		case <-w.resumed:
			if err := w.check(ctx, created); err != nil {
				return err
			}
			if err := w.list(ctx); err != nil {
				w.logger.Warn("reconcile after reconnect", "err", err)
				w.reconnected() // try again on the next loop
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		}
	}
}

// caughtUp asks the consumer whether everything it delivered was handled.
func (w *watcher) caughtUp(ctx context.Context, cons jetstream.Consumer, maxSeen *atomic.Uint64) bool {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := cons.Info(ictx)
	if err != nil {
		return false
	}
	return info.NumPending == 0 && info.NumAckPending == 0 && maxSeen.Load() >= info.Delivered.Stream
}

// check returns an error that ends the epoch when the stream is gone or was
// replaced by a new one of the same name (its sequences start over, so
// resuming after our last sequence would skip its entries).
func (w *watcher) check(ctx context.Context, created time.Time) error {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := w.js.Stream(ictx, w.stream())
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return err
	case err != nil:
		return nil // not reachable now; the consumer retries by itself
	case !st.CachedInfo().Created.Equal(created):
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
		bucket:  bucket,
		key:     subj[len(prefix):],
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

// backoff is an exponential delay with jitter-free doubling; the watcher uses
// it between epochs so a missing bucket does not become a tight loop that
// leaks server-side consumers (NATS-NOTES trap 8).
type backoff struct{ cur, min, max time.Duration }

func newBackoff(min, max time.Duration) *backoff { return &backoff{cur: min, min: min, max: max} }
func (b *backoff) reset()                        { b.cur = b.min }
func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d
}
