package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/kvsync/kvsync/agent/natsconn"
)

// DefaultMaxConsumers is the consumer limit kvsync gives the buckets it
// creates when the config or the command line says nothing (see
// natsconn.DefaultMaxConsumers).
const DefaultMaxConsumers = natsconn.DefaultMaxConsumers

// limitNudgeSpread bounds the random pause of a watcher refused for the
// consumer limit after the stream changed (its limit raised, say): every
// refused agent hears the same advisory, and their attempts are spread over
// this long.
const limitNudgeSpread = 2 * time.Second

// consumerLimit goes from a watcher to the owner when the server refuses the
// watcher's consumer because the stream holds as many consumers as it may
// (err says so, with the fix), and again with a nil err once a consumer runs.
type consumerLimit struct {
	bucket string
	err    error
}

// running tells the owner that a consumer runs again, if the server had
// refused the watcher's consumers for the consumer limit.
func (w *watcher) running() {
	if w.limited.CompareAndSwap(true, false) {
		w.out.push(consumerLimit{bucket: w.bucket})
	}
}

// limitError explains a consumer refused for the stream's consumer limit:
// how many consumers the stream has, its limit, and what an operator changes
// to lift it. It asks the server once for the stream's figures; without an
// answer it explains without them.
func (w *watcher) limitError(ctx context.Context, err error) error {
	have := ""
	ictx, cancel := context.WithTimeout(ctx, apiTimeout(0))
	defer cancel()
	if st, serr := w.js.Stream(ictx, w.stream()); serr == nil {
		info := st.CachedInfo()
		if mc := info.Config.MaxConsumers; mc > 0 {
			have = fmt.Sprintf("stream %s has %d consumers and its max_consumers is %d", w.stream(), info.State.Consumers, mc)
		} else {
			have = fmt.Sprintf("stream %s has %d consumers and no max_consumers of its own, so the server's default applies (1,000 unless jetstream { limits { default_max_consumers } } says otherwise)", w.stream(), info.State.Consumers)
		}
	} else {
		have = fmt.Sprintf("stream %s is at its consumer limit", w.stream())
	}
	return fmt.Errorf("the server refused a consumer for bucket %s: %w (%s); "+
		"raise the bucket's limit with `kvsync bucket add %s --max-consumers N` (or `nats stream edit %s --max-consumers N`), "+
		"or every stream's default in the server config with `jetstream { limits { default_max_consumers: N } }`; "+
		"kvsync retries with backoff and follows the bucket once there is room",
		w.bucket, err, have, w.bucket, w.stream())
}

// limitLogEvery is how often an agent whose consumer keeps being refused and
// admitted again (a fleet larger than the limit, where slots change hands as
// consumers are re-created) repeats the ERROR line with the fix.
const limitLogEvery = 10 * time.Minute

// limitState is what the owner knows of the buckets refused for the consumer
// limit.
type limitState struct {
	why  map[string]string    // bucket -> the refusal and its fix, while refused
	said map[string]time.Time // bucket -> when the refusal was last logged at ERROR
	loud map[string]bool      // bucket -> the current refusal was logged at ERROR
}

// noteConsumerLimit records that a bucket's consumer is refused for the
// consumer limit, or no longer is. A refusal is logged at ERROR with the fix
// (again only limitLogEvery later), the end of a refusal so logged at INFO,
// every other change at DEBUG; /status, /readyz and the metric show every
// change.
func (o *owner) noteConsumerLimit(m consumerLimit) {
	l := &o.limited
	if l.why == nil {
		l.why, l.said, l.loud = map[string]string{}, map[string]time.Time{}, map[string]bool{}
	}
	g := o.a.metrics.consumerLimit.WithLabelValues(m.bucket)
	if m.err == nil {
		g.Set(0)
		if _, ok := l.why[m.bucket]; !ok {
			return
		}
		delete(l.why, m.bucket)
		if l.loud[m.bucket] {
			o.logger.Info("consumer limit no longer blocks the bucket: following it", "bucket", m.bucket)
		} else {
			o.logger.Debug("consumer limit no longer blocks the bucket", "bucket", m.bucket)
		}
		delete(l.loud, m.bucket)
		return
	}
	l.why[m.bucket] = m.err.Error()
	g.Set(1)
	if at, ok := l.said[m.bucket]; ok && time.Since(at) < limitLogEvery {
		o.logger.Debug("consumer limit reached again", "bucket", m.bucket, "err", m.err)
		return
	}
	l.said[m.bucket], l.loud[m.bucket] = time.Now(), true
	o.logger.Error("consumer limit reached: this agent cannot follow the bucket until the limit is raised", "bucket", m.bucket, "err", m.err)
}
