package watch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/internal/retry"
)

// watcher follows one bucket for the union of the key filters of every
// projection that reads it. It is built on an ephemeral push consumer like
// nats.go's own KV watcher (in memory, no acks, flow control, an idle
// heartbeat of 5 s, gaps detected by the consumer sequence), and it re-creates
// that consumer itself, right after the last sequence it handed on, as soon as
// the connection comes back, a stream advisory arrives (a new leader, the
// stream deleted or created) or the consumer reports trouble (missing
// heartbeats, a deleted consumer, a gap): a plain WatchAll stalls ~18 s after
// a server restart, and the library's own reset waits a second or more between
// attempts and up to 10 s for each. After the initial values and after every
// catch-up it checks its view against the stream's subjects (verify) and
// fetches what is missing; only a complete view is reported synced.
// Re-creations back off from 100 ms, and each consumer left is deleted, so a
// dead cluster does not become a loop that leaks server-side consumers.
type watcher struct {
	js      jetstream.JetStream
	bucket  string
	filters []string // key filters, as configured (client-side filter)
	out     Sink
	logger  *slog.Logger

	resumed chan struct{} // a reconnect happened: resume and list the keys
	nudge   chan struct{} // a stream advisory (leader elected, deleted, created)

	// State of the current epoch (a fresh view of one stream), owned by run.
	epoch   uint64
	created time.Time // the stream's creation time: a new stream is a new epoch
	synced  atomic.Bool
	limited atomic.Bool // the server refused its consumers for the consumer limit

	mu        sync.Mutex          // serialises handlers of an old and a new consumer
	gen       uint64              // the consumer generation whose messages count
	seen      uint64              // highest stream sequence handed on in this epoch
	delivered map[string]struct{} // every key (markers included) received in this epoch

	missing prometheus.Counter // keys the self-check found missing; may be nil

	// hb is the consumer's idle heartbeat: heartbeat, or another in
	// benchmarks.
	hb time.Duration

	// drop, in tests, discards a delivered message of key as if the server
	// had never sent it.
	drop func(key string) bool

	// bg holds what outlives one consumer (its delete, late answers to
	// its creation); run waits for it before it returns.
	bg sync.WaitGroup

	// left is the consumer the last follow left and nobody deleted yet,
	// owned by Run's goroutine. The next follow deletes it once its own
	// creation is answered, not beside it: a fleet that resumes at once
	// then has one request per agent in the server's API queue, not two
	// (past 10,000 pending requests the server drops the whole queue). A
	// stream near its consumer limit is the exception: there it is
	// deleted at once (follow).
	left string
}

func newWatcher(js jetstream.JetStream, bucket string, filters []string, out Sink, logger *slog.Logger, opts Options) *watcher {
	w := &watcher{
		js: js, bucket: bucket, filters: filters, out: out,
		logger:  logger.With("bucket", bucket),
		resumed: make(chan struct{}, 1),
		nudge:   make(chan struct{}, 1),
		hb:      heartbeat,
		missing: opts.Missing,
		drop:    opts.Drop,
	}
	if opts.Heartbeat > 0 {
		w.hb = opts.Heartbeat
	}
	return w
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

// Reconnected tells the watcher the connection came back.
func (w *watcher) Reconnected() {
	select {
	case w.resumed <- struct{}{}:
	default:
	}
}

func (w *watcher) stream() string { return "KV_" + w.bucket }

// heartbeat is the idle heartbeat of the watcher's consumer: the interval of
// nats.go's own KV watcher, so an idle agent costs the server no more than
// one. It only bounds how long a consumer that died silently goes unnoticed
// (two heartbeats): a new stream leader and a reconnect are noticed at once
// by the stream advisories and the connection.
const heartbeat = 5 * time.Second

// next says how follow wants to go on.
type next struct {
	resume bool // continue the epoch after w.seen (else: a new epoch)
	list   bool // list the keys once the consumer runs (after a reconnect)
	news   bool // the consumer ran until the stream or the connection had news
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
// retries at once) or errResumed; a request answered as the news came in
// returns its answer, and the news stays for the caller to see.
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
	p := why.Load()
	switch {
	case p == nil:
	case err != nil:
		return fmt.Errorf("%w: %w", *p, err)
	case p == &errResumed:
		// The answer came as the reconnect was taken: the resume is still
		// to do (a nudge was passed on already).
		w.Reconnected()
	}
	return err
}

// run follows the bucket until ctx is done.
func (w *watcher) Run(ctx context.Context) error {
	defer w.bg.Wait()
	defer w.dropLeft()
	// Between consumers, so that a missing bucket does not become a tight
	// loop that leaks server-side consumers.
	bo := retry.New(100*time.Millisecond, 5*time.Second)
	// A stream at its consumer limit stays there until an operator acts:
	// its refusals back off longer, so that the agents it refuses do not
	// load the server that serves the others.
	limitBo := retry.New(time.Second, 30*time.Second)
	limited := false
	defer w.watchAdvisories()()
	gone := false
	fails := 0
	left := false // the last follow made a consumer and left it
	var n next
	for ctx.Err() == nil {
		started := time.Time{}
		nn, err := w.follow(ctx, n, &started, apiTimeout(fails))
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrMaximumConsumersLimit) && left {
			// The consumer this watcher left a moment ago still counts:
			// its delete is sent once the new creation is answered (here,
			// refused). Once the delete is done, ask again before
			// counting as refused, or the slot goes to an agent the stream
			// refused.
			w.dropLeft()
			w.bg.Wait()
			left = false
			continue
		}
		left = !started.IsZero()
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound):
			if !gone {
				w.out.Push(BucketGone{Bucket: w.bucket, Err: fmt.Errorf("bucket %s not found", w.bucket)})
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
				w.out.Push(ConsumerLimit{Bucket: w.bucket, Err: w.limitError(ctx, err)})
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
			limited = false // running told the sink
			limitBo.Reset()
		}
		// A consumer that ran for a while, or until news of the stream,
		// resumes at once; failures and quick re-creations back off.
		if !started.IsZero() && (nn.news || time.Since(started) > 2*time.Second) {
			bo.Reset()
			continue
		}
		var wait time.Duration
		if limited {
			wait = limitBo.Next()
		} else {
			wait = bo.Next()
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

// follow creates a consumer and feeds its sink until the consumer must be
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
	// Near the stream's consumer limit a consumer left still takes a slot
	// that a creation may need (its own or another agent's, which is then
	// refused and may lose its slot to an agent the stream refused). Unless
	// the limit leaves room for every consumer twice, the consumer left is
	// deleted as soon as it is left, and the next creation is sent once
	// that delete is answered: the server handles a delete and a creation
	// sent together in either order.
	c := info.Config.MaxConsumers
	nearLimit := c > 0 && 2*(info.State.Consumers+1) > c
	if nearLimit {
		w.dropLeft()
		w.bg.Wait()
	}
	lastSeq := info.State.LastSeq
	// A bucket-wide TTL without limit markers removes keys with no event at
	// all: only a listing notices. Such buckets, and only they,
	// are listed every quarter of their TTL (at least every second).
	var expiry <-chan time.Time
	if c := info.Config; c.MaxAge > 0 && c.SubjectDeleteMarkerTTL == 0 {
		t := time.NewTicker(max(c.MaxAge/4, time.Second))
		defer t.Stop()
		expiry = t.C
	}

	// The consumer is a push consumer of the kind nats.go's own KV watcher
	// uses (ephemeral, in memory, one replica, no acks, flow control, idle
	// heartbeat), created here with a bounded request: the library's own
	// creation waits up to 10 s for an answer that never comes while a stream
	// has no leader. Not a pull consumer: nats-server (v2.15.2) delivers the
	// initial values of a bucket with history > 1 from a list of each
	// subject's last sequence, and when a pull request cannot take the next
	// of them (its byte budget is spent, or it just expired) the server puts
	// its position back by one while the list has already moved on, so that
	// one key is never delivered and no consumer sequence is skipped either
	// (a bucket of 1,500 values of 8 KiB lost big.1012 in every run). A push
	// consumer never takes that path. Gaps are caught by the consumer
	// sequence of messages and heartbeats, as the ordered consumer does, and
	// answered by a new consumer after the last sequence handed on.
	nc := w.js.Conn()
	cfg := jetstream.ConsumerConfig{
		Name:              fmt.Sprintf("kvsync_%s_%x", w.bucket, rand.Uint64()),
		DeliverSubject:    nc.NewInbox(),
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		FlowControl:       true,
		IdleHeartbeat:     w.hb,
		InactiveThreshold: 30 * time.Second, // a consumer we left goes soon
		Replicas:          1,
		MemoryStorage:     true,
	}
	filters := subjects(w.bucket, w.filters)
	if len(filters) == 1 {
		cfg.FilterSubject = filters[0]
	} else {
		cfg.FilterSubjects = filters
	}

	// The epoch and the generation are set before the consumer exists, so
	// its first message is never taken for one of a consumer we left.
	w.mu.Lock()
	if n.resume {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, w.seen+1
	} else {
		w.epoch++
		w.seen = 0
		w.created = info.Created
		w.delivered = make(map[string]struct{}, min(info.State.NumSubjects, maxSizeHint))
		w.synced.Store(false)
		w.out.Push(EpochStart{Bucket: w.bucket, Epoch: w.epoch, Size: w.sizeHint(info.State)})
	}
	w.gen++
	gen := w.gen
	epoch := w.epoch
	w.mu.Unlock()

	var (
		trouble   = make(chan struct{}, 1)
		candidate = make(chan struct{}, 1) // the initial values may be complete
		activity  atomic.Int64             // unix nanos of the last message or heartbeat
		chosen    atomic.Pointer[string]   // the consumer whose messages count (see create)
		lastCons  uint64                   // consumer sequence of the last message, under w.mu
		prefix    = "$KV." + w.bucket + "."
	)
	signal := func(c chan struct{}) {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	handler := func(m *nats.Msg) {
		activity.Store(time.Now().UnixNano())
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			w.control(m, gen, &lastCons, trouble)
			return
		}
		md, err := m.Metadata()
		if err != nil {
			return
		}
		if name := chosen.Load(); name == nil {
			chosen.CompareAndSwap(nil, &md.Consumer)
		}
		if *chosen.Load() != md.Consumer {
			return // a second creation that came too late
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if gen != w.gen {
			return // a consumer we left
		}
		if md.Sequence.Consumer != lastCons+1 {
			// A message of this consumer was lost (e.g. a slow
			// subscription): start over after the last one handed on.
			w.gen++
			signal(trouble)
			return
		}
		lastCons = md.Sequence.Consumer
		seq := md.Sequence.Stream
		if seq <= w.seen {
			return // handed on already
		}
		if ev, ok := parseEntry(m.Subject, m.Header, m.Data, prefix, w.bucket, seq, md.Timestamp); ok {
			if w.drop != nil && w.drop(ev.Key) {
				w.seen = seq
				return
			}
			w.delivered[ev.Key] = struct{}{}
			if kvkey.MatchAny(w.filters, ev.Key) {
				w.out.Push(&ev)
			}
		}
		w.seen = seq
		if !w.synced.Load() && (md.NumPending == 0 || seq >= lastSeq) {
			signal(candidate)
		}
	}
	sub, err := nc.Subscribe(cfg.DeliverSubject, handler)
	if err != nil {
		return n, fmt.Errorf("subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	var cons jetstream.PushConsumer
	err = w.bounded(ctx, timeout, func(ctx context.Context) (err error) {
		cons, err = w.create(ctx, cfg, &chosen)
		return err
	})
	w.dropLeft() // answered (or given up): the one left before can go now
	if err != nil {
		return n, fmt.Errorf("create consumer: %w", err)
	}
	defer func() {
		w.left = cons.CachedInfo().Name
		if nearLimit {
			w.dropLeft()
		}
	}()
	*started = time.Now()
	w.running()
	activity.Store(started.UnixNano())
	if n.resume {
		w.logger.Debug("consumer re-created", "from", cfg.OptStartSeq)
	}

	// After the initial values and after every catch-up the view is checked
	// against the stream (verify); only a complete view is reported synced.
	// Until then a tick retries, and confirms the end of the initial values
	// with the consumer's own count: the per-message pending count can stall
	// when entries expire during catch-up.
	verifying, list, repairs := true, n.list, 0
	var progress stallWatch
	lastLog := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	idle := time.NewTicker(w.hb)
	defer idle.Stop()
	// The listing the check compares with is taken while the consumer
	// delivers (for 100,000 keys it takes about as long as their delivery),
	// not after it.
	var early *snapshot
	earlyCh := make(chan *snapshot, 1)
	lctx, stopListing := context.WithCancel(ctx)
	defer stopListing()
	w.bg.Go(func() {
		snap, err := w.streamKeys(lctx, st)
		if err != nil {
			snap = nil // the check takes one itself
		}
		earlyCh <- snap
	})
	var resumed bool // a request of the check was given up for a reconnect
	runVerify := func() bool {
		if earlyCh != nil {
			return false // the listing is on its way
		}
		complete, missing, err := w.verify(ctx, st, cons, gen, lastSeq, list, &early)
		switch {
		case errors.Is(err, errResumed):
			resumed = true
		case errors.Is(err, errNudged):
			// The nudge was passed on: the loop takes it.
		case err != nil:
			w.logger.Warn("check the view against the stream", "err", err)
		case complete:
			verifying, list = false, false
			tick.Stop()
			if w.synced.CompareAndSwap(false, true) {
				w.out.Push(SyncDone{Bucket: w.bucket, Epoch: epoch})
			}
		case missing > 0:
			repairs++
			if repairs > 3 {
				w.logger.Error("view still incomplete after repairs: syncing again", "missing", missing)
				return true
			}
		}
		return false
	}
	if lastSeq == 0 {
		signal(candidate) // nothing to wait for
	}
	for {
		var resync bool
		select {
		case <-ctx.Done():
			return n, nil
		case early = <-earlyCh:
			earlyCh = nil
			if verifying {
				resync = runVerify()
			}
		case <-candidate:
			if verifying {
				resync = runVerify()
			}
		case <-tick.C:
			if !verifying {
				continue
			}
			if w.stalled(ctx, cons, &progress) {
				// The server sends the initial values from a list of each
				// subject's last sequence; one removed since (superseded
				// by a newer put, purged, expired) makes it wait for the
				// next message of the stream or its next heartbeat before
				// it goes on (nats-server v2.15.2). A consumer by start
				// sequence after the last one handed on has no such list.
				w.logger.Debug("consumer stalled: resuming after the last sequence", "seq", w.lastSeen())
				return next{resume: true, list: list}, nil
			}
			resync = runVerify()
			if verifying && !w.synced.Load() && time.Since(lastLog) >= 2*time.Second {
				// Long initial syncs (large buckets) say how far they are.
				lastLog = time.Now()
				w.logger.Info("initial sync in progress", "revision", w.lastSeen(), "last_revision", lastSeq)
			}
		case <-idle.C:
			// Neither a message nor a heartbeat for two heartbeats: the
			// consumer is gone (its server died, or it was deleted).
			if nc.IsConnected() && time.Since(time.Unix(0, activity.Load())) > 2*w.hb {
				w.logger.Debug("no heartbeat from the consumer")
				signal(trouble)
			}
		case <-expiry:
			if w.synced.Load() {
				err := w.bounded(ctx, 30*time.Second, w.list)
				switch {
				case errors.Is(err, errResumed):
					resumed = true
				case errors.Is(err, errNudged):
				case err != nil:
					w.logger.Warn("list keys for TTL expiry", "err", err)
				}
			}
		case <-trouble:
			if err := w.check(ctx); err != nil {
				return next{}, err
			}
			return next{resume: true, list: list}, nil
		case <-w.nudge:
			if err := w.check(ctx); err != nil {
				return next{}, err
			}
			return next{resume: true, list: list, news: true}, nil
		case <-w.resumed:
			if err := w.check(ctx); err != nil {
				return next{}, err
			}
			return next{resume: true, list: true, news: true}, nil
		}
		if resync {
			return next{}, nil
		}
		if resumed {
			// A listing was given up for a reconnect: its request died with
			// the old connection, and waiting out its bound stalled the
			// watcher 30 s.
			if err := w.check(ctx); err != nil {
				return next{}, err
			}
			return next{resume: true, list: true, news: true}, nil
		}
	}
}

// hedge is how long a consumer creation goes unanswered before create asks
// for a second one.
const hedge = 500 * time.Millisecond

// maxAsks bounds the consumers create asks for in one call (the longest
// request bound, 5 s, over hedge, and the first).
const maxAsks = 11

// create creates the consumer of cfg. When the server is part of a cluster
// and has not answered within hedge, it asks for another consumer like it
// (another name, the same delivery subject), and again every hedge until one
// is answered or ctx ends: right after a cluster lost the node that led the
// meta group, creations sent before the new meta leader was elected are never
// answered, and later ones are answered at once. That is two small requests a
// second per watcher, only while creations go unanswered. A server on its own
// has no meta group to lose: a creation it has not answered yet waits in its
// API queue, and hedging there only multiplies the queue when thousands of
// agents reconnect at once (the server drops its whole API queue past 10,000
// pending requests), so create asks once. The first consumer whose
// creation is answered, or whose first message arrives, is chosen (*chosen
// holds its name; the message handler ignores the others); every other one
// is deleted as soon as its creation is answered.
func (w *watcher) create(ctx context.Context, cfg jetstream.ConsumerConfig, chosen *atomic.Pointer[string]) (jetstream.PushConsumer, error) {
	type result struct {
		name string
		cons jetstream.PushConsumer
		err  error
	}
	results := make(chan result, maxAsks)
	attempt := func(name string) {
		c := cfg
		c.Name = name
		w.bg.Go(func() {
			cons, err := w.js.CreatePushConsumer(ctx, w.stream(), c)
			results <- result{name, cons, err}
		})
	}
	drop := func(name string) { dropConsumer(&w.bg, w.js, w.stream(), name) }
	attempt(cfg.Name)
	asked, pending := 1, 1
	hedged := w.js.Conn().ConnectedClusterName() != "" // a meta group to lose
	timer := time.NewTimer(hedge)
	defer timer.Stop()
	var found jetstream.PushConsumer
	var lastErr error
	defer func() {
		// Late answers: every consumer but the chosen one goes.
		w.bg.Go(func() {
			for range pending {
				if r := <-results; r.err == nil && (found == nil || r.name != found.CachedInfo().Name) {
					drop(r.name)
				}
			}
		})
	}()
	for {
		select {
		case r := <-results:
			pending--
			if r.err != nil {
				lastErr = r.err
				if pending == 0 {
					return nil, lastErr
				}
				continue
			}
			name := r.name
			if chosen.CompareAndSwap(nil, &name) || *chosen.Load() == name {
				found = r.cons
				return r.cons, nil
			}
			drop(name) // another one delivers already
		case <-timer.C:
			if hedged && asked < maxAsks {
				attempt(fmt.Sprintf("kvsync_%s_%x", w.bucket, rand.Uint64()))
				asked++
				pending++
				timer.Reset(hedge)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// control handles a status message of the consumer: it answers flow control
// (a request, or a heartbeat that says the consumer is stalled waiting for the
// answer) and compares the last consumer sequence a heartbeat reports with
// the last one received: a message lost at the tail has no later message to
// reveal it. Any other status (the consumer was deleted) is trouble.
func (w *watcher) control(m *nats.Msg, gen uint64, lastCons *uint64, trouble chan struct{}) {
	signal := func() {
		select {
		case trouble <- struct{}{}:
		default:
		}
	}
	if m.Header.Get("Status") != "100" {
		w.logger.Debug("consumer status", "status", m.Header.Get("Status"), "description", m.Header.Get("Description"))
		signal()
		return
	}
	if m.Reply != "" { // a flow control request
		_ = m.Respond(nil)
		return
	}
	if fc := m.Header.Get("Nats-Consumer-Stalled"); fc != "" {
		_ = w.js.Conn().Publish(fc, nil)
	}
	last, err := strconv.ParseUint(m.Header.Get("Nats-Last-Consumer"), 10, 64)
	if err != nil {
		return
	}
	w.mu.Lock()
	gap := gen == w.gen && last > *lastCons
	if gap {
		w.gen++
	}
	w.mu.Unlock()
	if gap {
		w.logger.Debug("heartbeat reports a message not received", "last_consumer", last, "received", *lastCons)
		signal()
	}
}

// stallWatch is what stalled remembers between calls.
type stallWatch struct {
	seen  uint64
	still int // calls in a row without progress
}

// stalled reports whether the consumer has stopped while it has messages
// pending: nothing in flight, nothing handed on since the last call, for
// three calls in a row.
func (w *watcher) stalled(ctx context.Context, cons jetstream.PushConsumer, p *stallWatch) bool {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := cons.Info(ictx)
	if err != nil {
		return false
	}
	seen := w.lastSeen()
	if info.NumPending == 0 || info.Delivered.Stream > seen || seen != p.seen {
		p.seen, p.still = seen, 0
		return false
	}
	p.still++
	return p.still >= 3
}

// snapshot is a listing of the keys that have a message in the stream, as of
// the stream's sequence asOf.
type snapshot struct {
	keys map[string]struct{}
	asOf uint64
}

// verify checks that the view handed on in this epoch is complete: once the
// consumer has delivered everything up to a listing of the stream's subjects
// (the listing's sequence asOf), every subject in the listing must have been
// delivered in this epoch. Markers are subjects too, so the epoch's delivered
// set counts every subject, not only the live keys; subjects delivered and
// since removed (purged, expired) are no loss. Messages that arrive during the
// check are after asOf and do not matter. A listing taken earlier (*early,
// while the consumer delivered) is used once; a key it holds that was not
// delivered is looked for again in a fresh listing, since it may have been
// removed in between. Subjects missing from a fresh listing's view are logged
// at ERROR, counted, and fetched with their last message (repair); verify
// then reports incomplete, and the next call checks again. With list, a
// complete check also sends the listing to the sink (a reconcile after a
// reconnect).
//
// It returns complete = false with no error when the consumer has not caught
// up yet.
func (w *watcher) verify(ctx context.Context, st jetstream.Stream, cons jetstream.PushConsumer, gen, lastSeq uint64, list bool, early **snapshot) (complete bool, missing int, err error) {
	if !w.caughtUp(ctx, cons, lastSeq) {
		return false, 0, nil
	}
	snap, fresh := *early, false
	for {
		if snap == nil {
			err = w.bounded(ctx, 30*time.Second, func(ctx context.Context) (err error) {
				snap, err = w.streamKeys(ctx, st)
				return err
			})
			if err != nil {
				return false, 0, err
			}
			fresh = true
		}
		if !w.caughtUp(ctx, cons, snap.asOf) {
			if !fresh {
				*early = snap // still good once the consumer is there
			}
			return false, 0, nil
		}
		*early = nil
		lost, current := w.notDelivered(gen, snap.keys)
		if !current {
			return false, 0, nil // the consumer is being replaced
		}
		if len(lost) == 0 {
			if list {
				w.out.Push(Listing{Bucket: w.bucket, AsOf: snap.asOf, Keys: snap.keys})
			}
			return true, 0, nil
		}
		if fresh {
			slices.Sort(lost)
			w.logger.Error("the view misses keys the stream holds: fetching them", "missing", len(lost),
				"keys", strings.Join(lost[:min(len(lost), 5)], ","), "as_of", snap.asOf)
			if w.missing != nil {
				w.missing.Add(float64(len(lost)))
			}
			return false, len(lost), w.repair(ctx, st, gen, lost)
		}
		snap = nil
	}
}

// notDelivered returns the keys not delivered in this epoch; current is false
// when generation gen is no longer the watcher's.
func (w *watcher) notDelivered(gen uint64, keys map[string]struct{}) (lost []string, current bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if gen != w.gen {
		return nil, false
	}
	for k := range keys {
		if _, ok := w.delivered[k]; !ok {
			lost = append(lost, k)
		}
	}
	return lost, true
}

// repair fetches the last message of each key and hands it on. A message
// after the last one handed on is left to the consumer, which delivers it in
// order.
func (w *watcher) repair(ctx context.Context, st jetstream.Stream, gen uint64, keys []string) error {
	for _, k := range keys {
		ev, ok, err := lastEntry(ctx, st, w.bucket, k)
		if err != nil {
			return err
		}
		if !ok {
			continue // removed since the listing
		}
		w.mu.Lock()
		if gen != w.gen {
			w.mu.Unlock()
			return nil // a new consumer takes over
		}
		if ev.Revision <= w.seen {
			w.delivered[ev.Key] = struct{}{}
			if kvkey.MatchAny(w.filters, ev.Key) {
				w.out.Push(&ev)
			}
		}
		w.mu.Unlock()
	}
	return nil
}

// dropLeft deletes the consumer the last follow left, if any (dropConsumer).
func (w *watcher) dropLeft() {
	if w.left != "" {
		dropConsumer(&w.bg, w.js, w.stream(), w.left)
		w.left = ""
	}
}

// dropConsumer deletes a consumer the watcher left, best effort (its
// inactive threshold removes it anyway), in a goroutine of bg: the caller
// goes on at once, and whoever waits for bg waits 2 s at most.
func dropConsumer(bg *sync.WaitGroup, js jetstream.JetStream, stream, name string) {
	bg.Go(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, stream, name)
	})
}

// lastEntry reads the last message of key in the bucket's stream st; ok is
// false when the key has none (removed since it was listed) or its subject is
// not a key.
func lastEntry(ctx context.Context, st jetstream.Stream, bucket, key string) (ev Entry, ok bool, err error) {
	prefix := "$KV." + bucket + "."
	gctx, cancel := context.WithTimeout(ctx, apiTimeout(0))
	m, err := st.GetLastMsgForSubject(gctx, prefix+key)
	cancel()
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("get %s: %w", key, err)
	}
	ev, ok = parseEntry(m.Subject, m.Header, m.Data, prefix, bucket, m.Sequence, m.Time)
	return ev, ok, nil
}

// streamKeys lists the keys that have a message in the stream and fall under
// the consumer's filters, with the stream's last sequence at that moment. st
// is the stream's handle when the caller has one (it saves a request), or
// nil.
func (w *watcher) streamKeys(ctx context.Context, st jetstream.Stream) (*snapshot, error) {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if st == nil {
		var err error
		if st, err = w.js.Stream(lctx, w.stream()); err != nil {
			return nil, fmt.Errorf("stream info: %w", err)
		}
	}
	prefix := "$KV." + w.bucket + "."
	filters := subjects(w.bucket, w.filters)
	filter := prefix + ">"
	if len(filters) == 1 {
		filter = filters[0]
	}
	info, err := st.Info(lctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("list subjects: %w", err)
	}
	var keyFilters []string
	if len(filters) > 1 {
		for _, f := range filters {
			keyFilters = append(keyFilters, strings.TrimPrefix(f, prefix))
		}
	}
	keys := make(map[string]struct{}, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		k := strings.TrimPrefix(subj, prefix)
		if keyFilters == nil || kvkey.MatchAny(keyFilters, k) {
			keys[k] = struct{}{}
		}
	}
	return &snapshot{keys: keys, asOf: info.State.LastSeq}, nil
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

// caughtUp reports whether everything the consumer delivered was handled and
// nothing is pending, or the watcher has handed on every sequence up to asOf
// (the consumer's pending count can stall when entries expire during a
// catch-up; a filtered consumer need not see the stream's last sequence).
func (w *watcher) caughtUp(ctx context.Context, cons jetstream.PushConsumer, asOf uint64) bool {
	if asOf > 0 && w.seenAtLeast(asOf) {
		return true
	}
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
// stream, so that whoever holds the view can drop keys removed while the watcher was away without
// a marker it could see (a consumer resumed by sequence skips keys not written
// since, and their delete markers may be compacted away). It reads the stream's per-subject
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
	w.out.Push(Listing{Bucket: w.bucket, AsOf: info.State.LastSeq, Keys: keys})
	return nil
}

// parseMsg turns a message read by a consumer of the jetstream package into an
// event (see parseEntry).
func parseMsg(m jetstream.Msg, prefix, bucket string, md *jetstream.MsgMetadata) (Entry, bool) {
	return parseEntry(m.Subject(), m.Headers(), m.Data(), prefix, bucket, md.Sequence.Stream, md.Timestamp)
}

// parseEntry turns a stream message into an event. Markers written by the
// server (per-key TTL expiry, purges) count as purges.
func parseEntry(subj string, h nats.Header, data []byte, prefix, bucket string, seq uint64, ts time.Time) (Entry, bool) {
	if !strings.HasPrefix(subj, prefix) {
		return Entry{}, false
	}
	ev := Entry{
		Bucket: bucket,
		// The key alone: the state keeps it, not the whole subject.
		Key:      strings.Clone(subj[len(prefix):]),
		Value:    data,
		Revision: seq,
		Created:  ts,
	}
	switch h.Get("KV-Operation") {
	case "DEL":
		ev.Op = OpDelete
	case "PURGE":
		ev.Op = OpPurge
	default:
		switch h.Get(jetstream.MarkerReasonHeader) {
		case "MaxAge", "Purge":
			ev.Op = OpPurge
		case "Remove":
			ev.Op = OpDelete
		}
	}
	if ev.Op != OpPut {
		ev.Value = nil
	} else if len(h) > 0 {
		// The value is a slice of the message's buffer, which holds the
		// headers too: the state keeps a copy of the value alone.
		ev.Value = bytes.Clone(ev.Value)
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
