package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/retry"
)

// valueHeadroom is what a pushed value leaves of the bucket's max value size
// for the headers the server counts too: a bucket's max value size includes
// the message's header bytes, so a delete or a TTL create on a tight bucket
// would otherwise be refused.
const valueHeadroom = 150

// pushTimeout bounds one KV call of the sender.
const pushTimeout = 5 * time.Second

// keepLocalTries bounds how often keep-local re-reads the latest revision
// when other writers keep winning the race.
const keepLocalTries = 5

// pushSender is push-back's sender (see push.go): it alone calls the bucket,
// runs the jobs the pusher queues in order, and reports what the owner must
// know as pushDone messages. It never touches the disk: what a held edit
// holds, dropping it, and conflict copies are the owner's to do, asked for
// through the owner's inbox (heldRead, heldSafe, conflictSave). Its per-path
// maps are its own.
type pushSender struct {
	js         jetstream.JetStream
	bucketName string
	name       string // the projection's, for the metrics
	cfg        PushConfig
	debounce   time.Duration
	jobs       *queue[pushJob] // from the pusher
	out        *inbox          // the owner's
	to         *pusher         // the pusher the messages are for, on the owner goroutine
	logger     *slog.Logger
	metrics    *metrics

	kv       jetstream.KeyValue
	maxValue int64 // the bucket's max value size; <= 0: none
	statusAt time.Time
	chain    map[string]revChain
	last     map[string]jobID
}

func newPushSender(js jetstream.JetStream, bucket, name string, cfg PushConfig, debounce time.Duration,
	jobs *queue[pushJob], out *inbox, to *pusher, logger *slog.Logger, met *metrics) *pushSender {
	return &pushSender{
		js: js, bucketName: bucket, name: name, cfg: cfg, debounce: debounce,
		jobs: jobs, out: out, to: to, logger: logger, metrics: met,
		chain: map[string]revChain{}, last: map[string]jobID{},
	}
}

// run sends the jobs until ctx is done. The jobs it leaves in the queue are
// the pusher's to save once it has returned (pusher.stop).
func (ps *pushSender) run(ctx context.Context) {
	bo := retry.New(100*time.Millisecond, 5*time.Second)
	failing := false
	for {
		j, ok := ps.jobs.peek()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-ps.jobs.ready:
			}
			continue
		}
		err := ps.handle(ctx, j)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !failing {
				ps.logger.Warn("push postponed: retrying", "path", j.rel, "key", j.key, "err", err)
				failing = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(bo.Next()):
			}
			continue
		}
		if failing {
			ps.logger.Info("push resumed", "path", j.rel, "key", j.key)
			failing = false
		}
		bo.Reset()
		ps.jobs.pop()
	}
}

// handle sends one job. It returns an error only when the job must be tried
// again (no connection, no answer); every other outcome is dealt with here.
func (ps *pushSender) handle(ctx context.Context, j pushJob) error {
	if j.held != "" {
		read := j.sum
		var err error
		if j, err = ps.settleHeld(ctx, j); err != nil {
			return err
		}
		if j.dup && j.sum == read {
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
			if err := ps.refuse(ctx, j, fmt.Errorf("value of %d bytes is over the bucket's max value size (%d bytes, headers included)", len(j.data), lim+valueHeadroom)); err != nil {
				return err
			}
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
		if err := ps.refuse(ctx, j, err); err != nil {
			return err
		}
	default:
		return err
	}
	ps.last[j.rel] = id
	return nil
}

// settleHeld gives a held edit a debounce period from the moment it was
// displaced — a program that truncated the file before the swap may still be
// writing into it — and then takes what it holds as the job's bytes, which
// the owner reads (heldRead). It fails only when ctx ends.
func (ps *pushSender) settleHeld(ctx context.Context, j pushJob) (pushJob, error) {
	if wait := time.Until(j.queued.Add(ps.debounce)); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	if err := ctx.Err(); err != nil {
		return j, err
	}
	held, err := ask(ctx, ps.out, func(reply chan<- heldBytes) ownerEvent {
		return heldRead{pushMsg: pushMsg{ps.to}, held: j.held, reply: reply}
	})
	if err != nil {
		return j, err
	}
	if held.ok {
		j.data, j.sum = held.data, sha256.Sum256(held.data)
	}
	return j, nil
}

// release tells the owner that a held edit's bytes are safe (handled by an
// earlier job), so that the owner has it dropped (heldSafe). A job whose
// bytes landed needs no release: its pushDone says so.
func (ps *pushSender) release(j pushJob) {
	if j.held == "" {
		return
	}
	ps.out.push(heldSafe{pushMsg: pushMsg{ps.to}, job: j})
}

// ask puts a request into the owner's inbox and waits for the answer, or
// for ctx to end. The reply channel has room for the one answer, so the
// owner never waits for the sender; a stopping sender does not wait for an
// owner that is gone, since the owner's loop ends only with ctx.
func ask[T any](ctx context.Context, out *inbox, req func(reply chan<- T) ownerEvent) (T, error) {
	reply := make(chan T, 1)
	out.push(req(reply))
	select {
	case r := <-reply:
		return r, nil
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (ps *pushSender) write(ctx context.Context, kv jetstream.KeyValue, j pushJob) (uint64, error) {
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
func (ps *pushSender) conflict(ctx context.Context, kv jetstream.KeyValue, j pushJob) error {
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
	ps.metrics.conflicts.WithLabelValues(ps.name, ps.cfg.Conflict).Inc()
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
				return ps.refuse(ctx, j, err)
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
		saved, err := ps.saveConflict(ctx, j)
		if err == nil {
			err = saved.err
		}
		if err != nil {
			return err // retried: the bytes must land somewhere
		}
		ps.logger.Warn("push conflict: remote value kept, local edit saved",
			"path", j.rel, "key", j.key, "base_revision", j.guard, "remote_revision", remoteRev, "saved_as", saved.name)
	} else {
		ps.logger.Warn("push conflict: local removal not applied, remote value kept",
			"path", j.rel, "key", j.key, "base_revision", j.guard, "remote_revision", remoteRev)
	}
	ps.out.push(pushDone{pushMsg: pushMsg{ps.to}, result: pushLost, job: j})
	return nil
}

// latest returns the key's current entry; have is false when it is absent or
// deleted.
func (ps *pushSender) latest(ctx context.Context, kv jetstream.KeyValue, key string) (e jetstream.KeyValueEntry, have bool, err error) {
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

// saveConflict has the owner keep the local bytes of a losing edit in a
// conflict copy (conflictSave, pusher.saveConflict) and returns the owner's
// answer: the copy's name, or why it could not be saved. It fails only when
// ctx ends before the owner answered.
func (ps *pushSender) saveConflict(ctx context.Context, j pushJob) (savedCopy, error) {
	return ask(ctx, ps.out, func(reply chan<- savedCopy) ownerEvent {
		return conflictSave{pushMsg: pushMsg{ps.to}, job: j, reply: reply}
	})
}

// pushed records a successful push.
func (ps *pushSender) pushed(j pushJob, rev uint64) {
	ps.metrics.pushes.WithLabelValues(ps.name, j.opName()).Inc()
	ps.logger.Info("local change pushed", "path", j.rel, "key", j.key, "op", j.opName(), "revision", rev)
	ps.landed(j, rev)
}

// landed tells the owner that the bucket holds the job's bytes at rev, so
// that a further edit before the echo arrives is guarded by rev, and a held
// edit can go.
func (ps *pushSender) landed(j pushJob, rev uint64) {
	if j.op != pushPut {
		return
	}
	ps.out.push(pushDone{pushMsg: pushMsg{ps.to}, result: pushLanded, job: j, rev: rev})
}

// refuse reports a job that cannot be pushed. The file stays; bytes that are
// no longer on disk go to a conflict file first. It fails only when ctx
// ends before the owner answered; the job is then left for pusher.stop.
func (ps *pushSender) refuse(ctx context.Context, j pushJob, err error) error {
	if j.rescue && j.op == pushPut {
		saved, aerr := ps.saveConflict(ctx, j)
		switch {
		case aerr != nil:
			return aerr
		case saved.err == nil:
			err = fmt.Errorf("%w (the local bytes were replaced by a remote change and are saved as %s)", err, saved.name)
		default:
			err = fmt.Errorf("%w (saving the local bytes: %w)", err, saved.err)
		}
	}
	ps.out.push(pushDone{pushMsg: pushMsg{ps.to}, result: pushRefused, job: j, err: err})
	return nil
}

// bucket returns the KV handle, opening it on first use.
func (ps *pushSender) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	if ps.kv != nil {
		return ps.kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	kv, err := ps.js.KeyValue(ctx, ps.bucketName)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", ps.bucketName, err)
	}
	ps.kv = kv
	return kv, nil
}

// limit returns the largest value the bucket takes, less the headroom for
// headers; 0 means no limit known. The bucket's status is read at most every
// few seconds.
func (ps *pushSender) limit(ctx context.Context, kv jetstream.KeyValue) int64 {
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
