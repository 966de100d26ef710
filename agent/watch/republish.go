package watch

import (
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

	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/internal/retry"
)

// Errors of the republish watcher's epochs, which run turns into what the
// sink is told.
var (
	errUseConsumer     = errors.New("bucket does not republish: follow it with a consumer")
	errNotRepublishing = errors.New("bucket does not republish")
	errRecreated       = errors.New("bucket was recreated")
)

// republishWatcher follows one bucket without a consumer of its own: a plain
// subscription receives what the stream republishes, and the agent costs the
// server a subscription instead of a consumer. It feeds its sink exactly
// what the consumer watcher does: events in stream order, an epoch per full
// view, listings after a reconnect.
//
// Republished copies are sent at most once, so the watcher checks what it
// gets. The republish covers every subject of the stream, so the stream
// sequences it sees are consecutive; the algorithm:
//
//  1. Subscribe first: what is stored from then on is queued in the
//     subscription's channel.
//  2. Initial sync (a new epoch): a short-lived consumer (last value per key)
//     reads the bucket to its end, and is deleted; the epoch is done at the
//     larger of the last sequence delivered and the stream's last sequence
//     read before the consumer was made.
//  3. Live: a copy of sequence seen+1 is handed on; an older one was handed
//     on already; a newer one shows a gap, and the watcher catches up: a
//     short-lived consumer reads every entry after seen to the stream's end.
//     When that range has holes (entries removed since, such as a delete
//     marker compacted away), the keys are listed too.
//  4. A lost copy with nothing after it shows no gap, so the watcher also
//     asks the stream for its last sequence: about a second after its own
//     client dropped a copy (a slow consumer), at once after a reconnect
//     (then it lists the keys as well), when the stream reports news, and
//     periodically (the check, below).
//  5. The periodic check is shared by every agent of the bucket. At a random
//     point of the second half of its check interval, late more often than
//     early, an agent asks the stream, with a direct get, for the first
//     entry after seen, and has the answer sent to
//     $KVR.<bucket>.$check.<seen> (no key makes that subject): the server
//     delivers it to every agent's republish subscription, as it delivers a
//     copy. Usually the answer is a 404 of a few bytes: the stream holds
//     nothing after that sequence. An answer that says so for an agent's
//     own seen, whoever asked, starts its interval anew, so a fleet asks
//     once or twice per interval instead of once per agent. An answer that
//     shows entries after an agent's seen is caught up a second later
//     unless the copies arrived meanwhile (an answer may overtake them).
//     With no answer two seconds after its own question (no permission, a
//     dropped answer), the agent looks at the stream info itself; it also
//     does so at a random point of every hundred check intervals. A lost
//     last entry stays unseen at most a check interval and a second.
//  6. A recreated bucket is told by the stream's advisories; without them
//     (lost, or not permitted), by a copy up to seen that is newer than
//     every entry of the epoch, or an answer that the stream holds nothing
//     after a sequence below seen: the agent then looks at the stream info.
//
// When the bucket is recreated a new epoch starts; when it is deleted the
// sink is told, as by the consumer watcher.
type republishWatcher struct {
	js      jetstream.JetStream
	bucket  string
	filters []string
	out     Sink
	logger  *slog.Logger
	mode    string        // ModeRepublish or ModeAuto
	every   time.Duration // check interval
	buffer  int           // capacity of the subscription's channel; beyond it the client drops copies
	// checkPrefix starts the subjects the answers of the shared check go to:
	// the question "what follows sequence X" is answered to checkPrefix + X.
	checkPrefix string

	resumed  chan struct{} // a reconnect happened
	nudge    chan struct{} // a stream advisory (leader elected, updated, deleted, created)
	fallback atomic.Pointer[watcher]

	// Owned by run.
	msgs chan *nats.Msg
	sub  *nats.Subscription
	// lister lists the keys (its list and streamKeys methods), counts the
	// keys a check found missing (its missing), and follows the bucket when
	// it does not republish (handOver).
	lister  *watcher
	epoch   uint64
	created time.Time // the stream's creation time: a new stream is a new epoch
	synced  bool      // the epoch's initial sync is done
	seen    uint64    // every entry up to this stream sequence was handed on or is superseded
	dropped int       // the subscription's drop count when last looked at
	told    error     // what the sink was last told is wrong with the bucket

	latest time.Time // the newest entry's time in this epoch: a copy up to seen that is newer comes from another stream

	// The shared check (live): when this agent last asked, when any
	// answer last came, and the largest sequence an answer showed ahead of
	// seen.
	asked, answered time.Time
	want            uint64

	bg sync.WaitGroup // consumer deletes; run waits for them
}

// checkToken names the subjects the shared check's answers go to,
// $KVR.<bucket>.$check.<sequence>: inside the republish subscription of
// every agent of the bucket, and made by no key ("$" is not a key
// character).
const checkToken = "$check"

// CheckSubjects is the subject pattern the answers of a bucket's shared
// check go to: one message per question asked by any agent of the bucket.
func CheckSubjects(bucket string) string { return "$KVR." + bucket + "." + checkToken + ".>" }

// infoChecks: every so many check intervals each agent asks for the stream
// info itself (50 minutes at the default interval), whatever the answers
// said. Asked by every agent of a fleet, it is the costliest question, so it
// is asked rarely; stream advisories and the answers cover nearly every case
// sooner.
const infoChecks = 100

// Waits of the shared check: for the answer to this agent's own question,
// and for the copies an answer showed to be missing.
const (
	answerWait = 2 * time.Second
	copiesWait = time.Second
)

// defaultRepublishBuffer is how many republished copies wait for the watcher
// (during a catch-up, say) before the client drops them: 8 KiB of pointers,
// and a drop costs only a catch-up.
const defaultRepublishBuffer = 1024

func newRepublishWatcher(js jetstream.JetStream, bucket string, filters []string, out Sink, logger *slog.Logger, opts Options) *republishWatcher {
	w := &republishWatcher{
		js: js, bucket: bucket, filters: filters, out: out,
		logger: logger.With("bucket", bucket, "watch", "republish"),
		mode:   opts.Mode, every: opts.CheckInterval, buffer: defaultRepublishBuffer,
		resumed:     make(chan struct{}, 1),
		nudge:       make(chan struct{}, 1),
		lister:      newWatcher(js, bucket, filters, out, logger, opts),
		checkPrefix: strings.TrimSuffix(CheckSubjects(bucket), ">"),
	}
	if opts.Buffer > 0 {
		w.buffer = opts.Buffer
	}
	return w
}

func (w *republishWatcher) stream() string { return "KV_" + w.bucket }

// Reconnected tells the watcher the connection came back.
func (w *republishWatcher) Reconnected() {
	if fb := w.fallback.Load(); fb != nil {
		fb.Reconnected()
		return
	}
	select {
	case w.resumed <- struct{}{}:
	default:
	}
}

func (w *republishWatcher) poke() {
	select {
	case w.nudge <- struct{}{}:
	default:
	}
}

// run follows the bucket until ctx is done.
func (w *republishWatcher) Run(ctx context.Context) error {
	defer w.bg.Wait()
	if w.mode == ModeAuto && !w.decide(ctx) {
		return w.handOver(ctx)
	}
	nc := w.js.Conn()
	w.msgs = make(chan *nats.Msg, w.buffer)
	sub, err := nc.ChanSubscribe(natsconn.RepublishSubject(w.bucket), w.msgs)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", natsconn.RepublishSubject(w.bucket), err)
	}
	w.sub = sub
	subs := []*nats.Subscription{sub}
	adv, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.*."+w.stream(), func(*nats.Msg) { w.poke() })
	if err != nil {
		w.logger.Debug("no stream advisories", "err", err)
	} else {
		subs = append(subs, adv)
	}
	unsubscribe := func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		subs = nil
	}
	defer func() { unsubscribe() }()

	bo := retry.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		started := time.Now()
		err := w.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := bo.Next()
		switch {
		case errors.Is(err, errUseConsumer):
			unsubscribe()
			return w.handOver(ctx)
		case errors.Is(err, jetstream.ErrStreamNotFound):
			w.tell(fmt.Errorf("bucket %s not found", w.bucket))
		case errors.Is(err, errNotRepublishing):
			w.tell(fmt.Errorf("%w to %s (watch mode republish): give it one (kvsync bucket add %s --republish, or nats stream edit %s --republish-source '$KV.%s.>' --republish-destination '%s'), or set watch mode auto",
				errNotRepublishing, natsconn.RepublishSubject(w.bucket), w.bucket, w.stream(), w.bucket, natsconn.RepublishSubject(w.bucket)))
			// Jittered like every wait here, so a fleet does not come back in step;
			// or until the stream reports an update.
			wait = retry.EqualJitter(w.every, nil)
		case errors.Is(err, errRecreated):
			w.logger.Warn("bucket was recreated: following the new one from its start")
			w.synced = false
			continue
		case err != nil:
			w.logger.Warn("watcher restarts", "err", err)
		}
		if time.Since(started) > 2*time.Second {
			bo.Reset()
		}
		select {
		case <-ctx.Done():
		case <-w.nudge:
		case <-w.resumed: // follow resumes with a listing anyway
		case <-time.After(wait):
		}
	}
	return nil
}

// decide says, in the auto mode, whether the bucket republishes as the
// republish watcher needs, asking until the server answers: before anything
// is subscribed to, so a user without the republish mode's permissions
// never asks for them. A bucket that does not exist yet is followed by a
// consumer.
func (w *republishWatcher) decide(ctx context.Context) bool {
	bo := retry.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		info, err := w.streamInfo(ctx)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			return false
		case err == nil:
			return natsconn.Republishes(w.bucket, info.Config.RePublish)
		}
		w.logger.Debug("watch mode auto: stream info", "err", err)
		wait := bo.Next()
		select {
		case <-ctx.Done():
		case <-w.nudge:
		case <-w.resumed:
		case <-time.After(wait):
		}
	}
	return false
}

// handOver follows the bucket with a consumer watcher from now on.
func (w *republishWatcher) handOver(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	w.logger.Info("bucket does not republish to " + natsconn.RepublishSubject(w.bucket) + ": following it with a consumer")
	fb := w.lister // built with the same arguments; the republish loop is done with it
	w.fallback.Store(fb)
	return fb.Run(ctx)
}

// tell tells the sink, once, that the bucket cannot be followed: the files
// stay as they are and the bucket counts as missing until a new epoch's
// initial sync is done, so the next follow starts one.
func (w *republishWatcher) tell(err error) {
	w.synced = false
	if w.told != nil && w.told.Error() == err.Error() {
		return
	}
	w.told = err
	w.out.Push(BucketGone{Bucket: w.bucket, Err: err})
}

// follow runs one epoch, or resumes the current one, until ctx is done or
// the bucket must be looked at afresh (the error says why).
func (w *republishWatcher) follow(ctx context.Context) error {
	info, err := w.streamInfo(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) && w.epoch == 0 && w.mode == ModeAuto {
		return errUseConsumer // the consumer watcher waits for the bucket
	}
	if err != nil {
		return err
	}
	if !natsconn.Republishes(w.bucket, info.Config.RePublish) {
		if w.mode == ModeAuto {
			return errUseConsumer
		}
		return errNotRepublishing
	}
	select {
	case <-w.resumed: // follow lists below when resuming; a new epoch needs no listing
	default:
	}
	if w.synced && info.Created.Equal(w.created) {
		if err := w.catchUp(ctx, true); err != nil {
			return err
		}
	} else if err := w.sync(ctx, info); err != nil {
		return err
	}
	return w.live(ctx, info.Config)
}

// streamInfo asks for the stream's state, bounded.
func (w *republishWatcher) streamInfo(ctx context.Context) (*jetstream.StreamInfo, error) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := w.js.Stream(ictx, w.stream())
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("stream info: %w", err)
	}
	return st.CachedInfo(), nil
}

// sync starts a new epoch and sends the bucket's full view.
func (w *republishWatcher) sync(ctx context.Context, info *jetstream.StreamInfo) error {
	w.epoch++
	w.synced, w.seen, w.created, w.latest = false, 0, info.Created, info.State.LastTime
	size := 0
	if slices.Contains(w.filters, ">") {
		size = int(min(info.State.NumSubjects, maxSizeHint))
	}
	w.out.Push(EpochStart{Bucket: w.bucket, Epoch: w.epoch, Size: size})
	cfg := ephemeral(w.bucket, jetstream.DeliverLastPerSubjectPolicy)
	if f := subjects(w.bucket, w.filters); len(f) == 1 {
		cfg.FilterSubject = f[0]
	} else {
		cfg.FilterSubjects = f
	}
	last := uint64(0)
	delivered := map[string]struct{}{}
	prefix := "$KV." + w.bucket + "."
	if _, _, err := w.read(ctx, cfg, func(m jetstream.Msg, md *jetstream.MsgMetadata) {
		if k, ok := strings.CutPrefix(m.Subject(), prefix); ok {
			delivered[k] = struct{}{}
		}
		w.emit(m, md)
		last = md.Sequence.Stream
	}); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	// Every entry up to the stream's last sequence before the consumer was
	// made was delivered or superseded, and so was every one up to the last
	// one delivered.
	w.seen = max(last, info.State.LastSeq)
	if err := w.verify(ctx, delivered); err != nil {
		return fmt.Errorf("initial sync check: %w", err)
	}
	w.synced, w.told = true, nil
	w.out.Push(SyncDone{Bucket: w.bucket, Epoch: w.epoch})
	w.logger.Debug("initial sync done", "revision", w.seen)
	return nil
}

// verify checks the initial sync's view against the keys the stream holds:
// nats-server 2.15 can skip a key for good when a pull consumer that delivers
// the last value per key (on a bucket with history > 1) cannot hand a message
// to the waiting request, and shows no gap for it. A key the stream holds at
// a sequence up to seen that was not delivered is logged at ERROR, counted,
// and fetched with its last message; later entries come through the
// republished copies.
func (w *republishWatcher) verify(ctx context.Context, delivered map[string]struct{}) error {
	snap, err := w.lister.streamKeys(ctx, nil)
	if err != nil {
		return err
	}
	var lost []string
	for k := range snap.keys {
		if _, ok := delivered[k]; !ok {
			lost = append(lost, k)
		}
	}
	if len(lost) == 0 {
		return nil
	}
	st, err := w.js.Stream(ctx, w.stream())
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	slices.Sort(lost)
	fetched := 0
	for _, k := range lost {
		ev, ok, err := lastEntry(ctx, st, w.bucket, k)
		if err != nil {
			return err
		}
		if !ok || ev.Revision > w.seen {
			continue // removed since the listing, or written after the sync: its republished copy follows
		}
		if kvkey.MatchAny(w.filters, ev.Key) {
			w.out.Push(&ev)
		}
		fetched++
	}
	if fetched > 0 {
		w.logger.Error("the initial sync missed keys the stream holds: fetched them", "missing", fetched,
			"keys", strings.Join(lost[:min(len(lost), 5)], ","))
		if m := w.lister.missing; m != nil {
			m.Add(float64(fetched))
		}
	}
	return nil
}

// ephemeral is the configuration of the watcher's short-lived consumers: in
// memory, one replica, no acks, removed by the server soon if left behind.
func ephemeral(bucket string, policy jetstream.DeliverPolicy) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Name:              fmt.Sprintf("kvsync_%s_%x", bucket, rand.Uint64()),
		DeliverPolicy:     policy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: 10 * time.Second,
		Replicas:          1,
		MemoryStorage:     true,
	}
}

// maxCatchUpReads bounds the consumers one catch-up makes when each stops
// with entries pending; then the watcher starts over.
const maxCatchUpReads = 3

// errLost: a message of a short-lived consumer did not arrive.
var errLost = errors.New("a consumer message was lost")

// read creates a consumer with cfg, hands every message it delivers to fn
// until it has delivered everything, deletes it, and returns how many it
// delivered. The end is the message that says nothing is pending, or a
// pull that stays empty while the consumer's info says nothing is pending.
// An empty pull with entries still pending ends the read incomplete
// (complete false): under load a pull can expire before the server
// delivers (seen in a reconnect storm of 5,000 agents, where taking such
// an end for the last entry lost it), and the pending count can stall when
// entries expire while it runs; the caller reads on with a new consumer.
func (w *republishWatcher) read(ctx context.Context, cfg jetstream.ConsumerConfig, fn func(jetstream.Msg, *jetstream.MsgMetadata)) (n int, complete bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	cons, err := w.js.CreateConsumer(cctx, w.stream(), cfg)
	cancel()
	if err != nil {
		return 0, false, fmt.Errorf("create consumer: %w", err)
	}
	defer dropConsumer(&w.bg, w.js, w.stream(), cfg.Name)
	if cons.CachedInfo().NumPending == 0 {
		return 0, true, nil
	}
	var delivered uint64
	for ctx.Err() == nil {
		// The byte cap bounds the client's buffer for large values; it is
		// above the largest message a server takes.
		batch, err := cons.Fetch(1024, jetstream.FetchMaxBytes(64<<20), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return int(delivered), false, fmt.Errorf("fetch: %w", err)
		}
		n, done := 0, false
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				return int(delivered), false, fmt.Errorf("message metadata: %w", err)
			}
			if md.Sequence.Consumer != delivered+1 {
				return int(delivered), false, errLost
			}
			delivered++
			n++
			fn(m, md)
			if md.NumPending == 0 {
				done = true
				break
			}
		}
		if done {
			return int(delivered), true, nil
		}
		if err := batch.Error(); err != nil {
			return int(delivered), false, fmt.Errorf("fetch: %w", err)
		}
		if n == 0 {
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			info, err := cons.Info(ictx)
			cancel()
			if err != nil {
				return int(delivered), false, fmt.Errorf("consumer info: %w", err)
			}
			return int(delivered), info.NumPending == 0, nil
		}
	}
	return int(delivered), false, ctx.Err()
}

// emit hands an entry read by a consumer on, when the filters take it.
func (w *republishWatcher) emit(m jetstream.Msg, md *jetstream.MsgMetadata) {
	if md.Timestamp.After(w.latest) {
		w.latest = md.Timestamp
	}
	ev, ok := parseMsg(m, "$KV."+w.bucket+".", w.bucket, md)
	if ok && kvkey.MatchAny(w.filters, ev.Key) {
		w.out.Push(&ev)
	}
}

// catchUp reads every entry after seen to the stream's end with a
// short-lived consumer; it lists the keys when list is set or when entries
// of that range are gone (a delete marker among them may have been removed).
// It also notices a deleted, recreated or no longer republishing bucket.
func (w *republishWatcher) catchUp(ctx context.Context, list bool) error {
	info, err := w.streamInfo(ctx)
	if err != nil {
		return err
	}
	switch {
	case !info.Created.Equal(w.created):
		return errRecreated
	case !natsconn.Republishes(w.bucket, info.Config.RePublish) && w.mode == ModeAuto:
		return errUseConsumer
	case !natsconn.Republishes(w.bucket, info.Config.RePublish):
		return errNotRepublishing
	}
	last := info.State.LastSeq
	if info.State.LastTime.After(w.latest) {
		w.latest = info.State.LastTime
	}
	// Copies queued already may take the watcher there without a consumer.
	w.drain()
	for reads := 1; last > w.seen; reads++ {
		from := w.seen + 1
		w.logger.Debug("catching up", "from", from, "to", last)
		cfg := ephemeral(w.bucket, jetstream.DeliverByStartSequencePolicy)
		cfg.OptStartSeq = from
		n, complete, err := w.read(ctx, cfg, func(m jetstream.Msg, md *jetstream.MsgMetadata) {
			if md.Sequence.Stream > w.seen {
				w.emit(m, md)
				w.seen = md.Sequence.Stream
			}
		})
		if err != nil {
			return fmt.Errorf("catch up from %d: %w", from, err)
		}
		if !complete {
			// Stopped with entries pending: what was not delivered is not
			// gone. A new consumer reads on from the last one handed on.
			if reads < maxCatchUpReads {
				continue
			}
			return fmt.Errorf("catch up from %d: %d reads stopped with entries pending", from, reads)
		}
		// Entries of the range that were not delivered are gone (a delete
		// marker among them may have been removed): the keys are listed.
		end := max(w.seen, last)
		if uint64(n) < end-from+1 {
			list = true
		}
		w.seen = end
	}
	if list {
		if err := w.lister.list(ctx); err != nil {
			return fmt.Errorf("list keys: %w", err)
		}
	}
	return nil
}

// check makes sure nothing was missed after the client dropped copies: when
// the stream's last sequence is the last one handed on, there is nothing to
// do; otherwise, or when the direct get cannot answer, catchUp looks.
func (w *republishWatcher) check(ctx context.Context) error {
	w.drain()
	if last, ok := w.lastSeq(ctx); ok && last == w.seen {
		return nil
	}
	return w.catchUp(ctx, false)
}

// ask sends this agent's question of the shared check: a direct get of the
// first entry after seen, answered to the check subject of seen. Usually
// there is none, and the answer is a 404 of a few bytes.
func (w *republishWatcher) ask() error {
	w.asked = time.Now()
	return w.js.Conn().PublishMsg(&nats.Msg{
		Subject: w.apiPrefix() + "DIRECT.GET." + w.stream(),
		Reply:   w.checkPrefix + strconv.FormatUint(w.seen, 10),
		Data:    fmt.Appendf(nil, `{"seq":%d,"next_by_subj":">"}`, w.seen+1),
	})
}

// Answers of the shared check, as answer reads them.
type answerKind int

const (
	notAnswer  answerKind = iota // not an answer: a status other than 404, another stream's message
	checked                      // the stream holds nothing after seen, or holds more and the catch-up follows
	behindSeen                   // the stream holds nothing after a sequence below seen
	entryAfter                   // the stream holds an entry after the asker's sequence
)

// answer reads an answer of the shared check to "what follows sequence X",
// this agent's question or another's, delivered to checkPrefix + X: a 404
// says the stream's last sequence is at most X; an entry of the stream says
// that entry follows X. What this agent lacks goes into want.
func (w *republishWatcher) answer(m *nats.Msg) answerKind {
	x, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, w.checkPrefix), 10, 64)
	if err != nil {
		return notAnswer
	}
	if m.Header.Get("Status") == "404" {
		w.answered = time.Now()
		switch {
		case x < w.seen:
			return behindSeen
		case x > w.seen:
			w.want = max(w.want, x) // the asker had seen x
		}
		return checked
	}
	seq, ok := w.sequence(m)
	if !ok || seq <= x {
		return notAnswer
	}
	w.answered = time.Now()
	if seq > w.seen {
		w.want = max(w.want, seq)
	}
	return entryAfter
}

// apiPrefix is the JetStream API prefix of the watcher's context (a
// domain's, when one is set).
func (w *republishWatcher) apiPrefix() string {
	o := w.js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return "$JS.API."
}

// lastSeq is the stream's last sequence, read from its last message with a
// direct get. ok is false when that cannot answer: no direct get on the
// stream, no permission, the last message removed, no server.
func (w *republishWatcher) lastSeq(ctx context.Context) (uint64, bool) {
	rctx, cancel := context.WithTimeout(ctx, answerWait)
	defer cancel()
	m, err := w.js.Conn().RequestWithContext(rctx, w.apiPrefix()+"DIRECT.GET."+w.stream(), []byte(`{"last_by_subj":">"}`))
	if err != nil || m.Header.Get("Status") != "" {
		return 0, false
	}
	seq, err := strconv.ParseUint(last(m.Header, jetstream.SequenceHeader), 10, 64)
	return seq, err == nil && last(m.Header, jetstream.StreamHeader) == w.stream()
}

// drain hands on the queued copies that follow seen, up to the first gap.
func (w *republishWatcher) drain() {
	for {
		select {
		case m := <-w.msgs:
			if strings.HasPrefix(m.Subject, w.checkPrefix) {
				w.answer(m)
				continue
			}
			seq, ok := w.sequence(m)
			if !ok || seq <= w.seen {
				continue
			}
			if seq != w.seen+1 {
				return // a gap: the catch-up that follows reads it
			}
			w.handOn(m, seq)
		default:
			return
		}
	}
}

// live hands on republished copies until something needs a new look at the
// stream.
func (w *republishWatcher) live(ctx context.Context, cfg jetstream.StreamConfig) error {
	// A bucket-wide TTL without limit markers removes keys with no message at
	// all: only a listing notices. Such buckets, and only they, are listed
	// every quarter of their TTL (at least every second).
	var expiry <-chan time.Time
	if cfg.MaxAge > 0 && cfg.SubjectDeleteMarkerTTL == 0 {
		t := time.NewTicker(max(cfg.MaxAge/4, time.Second))
		defer t.Stop()
		expiry = t.C
	}
	check := time.NewTimer(w.nextCheck())
	defer check.Stop()
	// After copies arrive, the drop count is looked at a second later: a copy
	// the client dropped at the end of a burst shows no gap.
	drops := newAlarm()
	defer drops.disarm()
	// The shared check's waits: for an answer to this agent's question, for
	// copies an answer showed missing, and, after an answer behind seen, for
	// one that is not.
	unanswered, missing, behind := newAlarm(), newAlarm(), newAlarm()
	defer unanswered.disarm()
	defer missing.disarm()
	defer behind.disarm()
	// A copy newer than the epoch with a sequence up to seen: a new stream.
	renewed := newAlarm()
	defer renewed.disarm()
	// Answers show a recreated bucket only when its last sequence differs
	// from the old one's; a stream info, which shows it always, is asked for
	// at a random point of every infoChecks check intervals.
	info := time.NewTimer(retry.EqualJitter(infoChecks*w.every, nil))
	defer info.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return nil
		case m := <-w.msgs:
			drops.arm(time.Second)
			if strings.HasPrefix(m.Subject, w.checkPrefix) {
				switch w.answer(m) {
				case checked:
					check.Reset(w.nextCheck()) // this agent need not ask
					behind.disarm()
				case behindSeen:
					// A recreated bucket, or a replica that lags: looked
					// at unless a later answer says otherwise.
					behind.arm(w.nextCheck())
				}
				break
			}
			seq, ok := w.sequence(m)
			switch {
			case !ok:
			case seq <= w.seen:
				if w.newer(m) {
					// Not a copy handed on before: a new stream's.
					renewed.arm(copiesWait)
				}
			case seq == w.seen+1:
				w.handOn(m, seq)
			default:
				w.logger.Debug("missed republished entries", "from", w.seen+1, "to", seq-1)
				err = w.catchUp(ctx, false)
			}
		case <-drops.c():
			drops.rang()
			if d, _ := w.sub.Dropped(); d != w.dropped {
				w.dropped = d
				w.logger.Debug("client dropped republished entries", "dropped", d)
				err = w.check(ctx)
			}
		case <-check.C:
			w.drain()
			if err = w.ask(); err == nil {
				unanswered.arm(answerWait)
			} else {
				w.logger.Debug("check: ask", "err", err)
				err = w.catchUp(ctx, false)
			}
			check.Reset(w.nextCheck())
		case <-unanswered.c():
			unanswered.rang()
			if w.answered.Before(w.asked) {
				w.logger.Debug("check: no answer, asking for the stream info")
				err = w.catchUp(ctx, false)
			}
		case <-missing.c():
			missing.rang()
			w.drain()
			if w.want > w.seen {
				w.logger.Debug("check: entries missing", "from", w.seen+1, "to", w.want)
				err = w.catchUp(ctx, false)
			}
		case <-renewed.c():
			renewed.rang()
			w.logger.Debug("a copy newer than the bucket's entries, with an old sequence")
			err = w.catchUp(ctx, false)
		case <-behind.c():
			behind.rang()
			w.logger.Debug("check: the stream's last sequence is behind the one seen", "seen", w.seen)
			err = w.catchUp(ctx, false)
		case <-info.C:
			err = w.catchUp(ctx, false)
			info.Reset(retry.EqualJitter(infoChecks*w.every, nil))
		case <-w.nudge:
			err = w.catchUp(ctx, false)
		case <-w.resumed:
			err = w.catchUp(ctx, true)
		case <-expiry:
			if err := w.lister.list(ctx); err != nil {
				w.logger.Warn("list keys for TTL expiry", "err", err)
			}
		}
		if err != nil {
			return err
		}
		if w.want > w.seen {
			missing.arm(copiesWait)
		} else {
			w.want = 0
			missing.disarm()
		}
	}
}

// alarm is a timer that is set or not: arm sets it unless it is set.
type alarm struct {
	t   *time.Timer
	set bool
}

func newAlarm() *alarm {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &alarm{t: t}
}

func (a *alarm) arm(d time.Duration) {
	if !a.set {
		a.set = true
		a.t.Reset(d)
	}
}

func (a *alarm) disarm() {
	a.set = false
	a.t.Stop()
}

// c is the channel the alarm rings on; who receives from it calls rang.
func (a *alarm) c() <-chan time.Time { return a.t.C }

// rang marks the alarm unset after it rang.
func (a *alarm) rang() { a.set = false }

// nextCheck is when an idle watcher next asks the stream: a random point of
// the second half of the check interval, drawn so that most agents of a
// fleet come late and few early (retry.LateJitter). The first to ask asks
// for all; the agents whose timer fires before its answer reaches them ask
// again, and with uniform draws those were N·(the answer's round trip)/
// (half the interval): ~30 questions a minute at 5,000 agents, each answer
// delivered to every agent.
func (w *republishWatcher) nextCheck() time.Duration {
	return retry.LateJitter(w.every, -1)
}

// newer says whether a copy is newer than every entry of the epoch the
// watcher knows of. A copy handed on before, or superseded, is not: the
// server stamps entries in order, and a copy carries its entry's time.
func (w *republishWatcher) newer(m *nats.Msg) bool {
	ts, err := time.Parse(time.RFC3339Nano, last(m.Header, jetstream.TimeStampHeaer))
	return err == nil && ts.After(w.latest)
}

// sequence returns the stream sequence of a republished copy of this
// bucket's stream. The server appends its headers after the entry's own, so
// the last value counts: a raw publisher's header of the same name is not
// believed.
func (w *republishWatcher) sequence(m *nats.Msg) (uint64, bool) {
	if last(m.Header, jetstream.StreamHeader) != w.stream() {
		return 0, false
	}
	seq, err := strconv.ParseUint(last(m.Header, jetstream.SequenceHeader), 10, 64)
	return seq, err == nil && seq > 0
}

// handOn hands a republished copy on as an event and moves seen to it.
func (w *republishWatcher) handOn(m *nats.Msg, seq uint64) {
	w.seen = seq
	ts, err := time.Parse(time.RFC3339Nano, last(m.Header, jetstream.TimeStampHeaer))
	if err != nil {
		ts = time.Now()
	}
	md := &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: seq}, Timestamp: ts, Stream: w.stream()}
	w.emit(republished{msg: m, subject: last(m.Header, jetstream.SubjectHeader)}, md)
}

func last(h nats.Header, key string) string {
	v := h.Values(key)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// republished is a republished copy as parseMsg reads it: the subject is the
// entry's own. parseMsg calls only the methods defined here.
type republished struct {
	jetstream.Msg
	msg     *nats.Msg
	subject string
}

func (r republished) Subject() string      { return r.subject }
func (r republished) Data() []byte         { return r.msg.Data }
func (r republished) Headers() nats.Header { return r.msg.Header }
