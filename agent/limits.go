package agent

import (
	"time"

	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/agent/watch"
)

// DefaultMaxConsumers is the consumer limit kvsync gives the buckets it
// creates when the config or the command line says nothing (see
// natsconn.DefaultMaxConsumers).
const DefaultMaxConsumers = natsconn.DefaultMaxConsumers

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
func (o *owner) noteConsumerLimit(m watch.ConsumerLimit) {
	l := &o.limited
	if l.why == nil {
		l.why, l.said, l.loud = map[string]string{}, map[string]time.Time{}, map[string]bool{}
	}
	g := o.a.metrics.consumerLimit.WithLabelValues(m.Bucket)
	if m.Err == nil {
		g.Set(0)
		if _, ok := l.why[m.Bucket]; !ok {
			return
		}
		delete(l.why, m.Bucket)
		if l.loud[m.Bucket] {
			o.logger.Info("consumer limit no longer blocks the bucket: following it", "bucket", m.Bucket)
		} else {
			o.logger.Debug("consumer limit no longer blocks the bucket", "bucket", m.Bucket)
		}
		delete(l.loud, m.Bucket)
		return
	}
	l.why[m.Bucket] = m.Err.Error()
	g.Set(1)
	if at, ok := l.said[m.Bucket]; ok && time.Since(at) < limitLogEvery {
		o.logger.Debug("consumer limit reached again", "bucket", m.Bucket, "err", m.Err)
		return
	}
	l.said[m.Bucket], l.loud[m.Bucket] = time.Now(), true
	o.logger.Error("consumer limit reached: this agent cannot follow the bucket until the limit is raised", "bucket", m.Bucket, "err", m.Err)
}
