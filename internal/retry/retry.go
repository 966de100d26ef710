package retry

import (
	"math"
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

// lateSpread is the λ of LateJitter's distribution: ln(100,000), so that up
// to 100,000 timers keep about one early firing.
var lateSpread = math.Log(100_000)

// LateJitter returns a point of [d/2, d] for one of many timers that race to
// do one thing for all of them, where the first to fire does it and the
// others, when they hear of it, start over. x is uniform in [0, 1)
// (math/rand/v2 when negative).
//
// Drawn uniformly (EqualJitter), N timers put N·s/(d/2) others within a span
// s of the first: every agent whose timer fires before it hears of the first
// one's work does the work again, and that grows with the fleet. LateJitter
// draws from a truncated exponential distribution over the random half,
// u = ln(1 + x·(e^λ − 1)) / λ, with most timers late and few early: the
// others within s of the first are then about (e^(λ·s/(d/2)) − 1)·(1 + N·e^−λ),
// a small fraction of one for any N up to e^λ = 100,000 when s is a small
// part of d/2. The price is a first firing later in the random half (a
// quarter of the way through it for 5,000 timers, most of the way for one)
// and never after d.
func LateJitter(d time.Duration, x float64) time.Duration {
	if d <= 1 {
		return d
	}
	if x < 0 {
		x = rand.Float64()
	}
	half := d / 2
	u := math.Log1p(x*math.Expm1(lateSpread)) / lateSpread
	return d - half + time.Duration(u*float64(half))
}
