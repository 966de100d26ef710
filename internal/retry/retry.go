package retry

import (
	"math/rand/v2"
	"time"
)

// Backoff is an exponential delay with equal jitter: each delay is drawn
// uniformly from [d/2, d], where d doubles from min up to max. A Backoff is
// not safe for concurrent use; each retry loop keeps its own.
type Backoff struct {
	cur, min, max time.Duration
	rnd           func(n int64) int64 // uniform in [0, n); nil: math/rand/v2
}

// New returns a Backoff whose first delay is drawn from [min/2, min].
func New(min, max time.Duration) *Backoff { return &Backoff{cur: min, min: min, max: max} }

// Reset makes the next delay the first one again.
func (b *Backoff) Reset() { b.cur = b.min }

// Next returns the next delay and doubles the one after it, up to max.
func (b *Backoff) Next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return EqualJitter(d, b.rnd)
}

// EqualJitter returns a delay drawn uniformly from [d/2, d] with rnd (uniform
// in [0, n)), or math/rand/v2 when rnd is nil.
func EqualJitter(d time.Duration, rnd func(n int64) int64) time.Duration {
	if d <= 1 {
		return d
	}
	if rnd == nil {
		rnd = rand.Int64N
	}
	half := d / 2
	return d - half + time.Duration(rnd(int64(half)+1))
}
