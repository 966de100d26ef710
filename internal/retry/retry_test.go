package retry

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// spread draws n delays from next and checks that each lies in [lo, hi] and
// that together they cover most of that range: a fleet that failed at one
// moment retries over the whole window, not in step.
func spread(t *testing.T, what string, n int, lo, hi time.Duration, next func() time.Duration) {
	t.Helper()
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = next()
		if ds[i] < lo || ds[i] > hi {
			t.Fatalf("%s: delay %v outside [%v, %v]", what, ds[i], lo, hi)
		}
	}
	slices.Sort(ds)
	if got, want := ds[n-1]-ds[0], (hi-lo)*8/10; got < want {
		t.Fatalf("%s: %d delays span %v (%v..%v), want at least %v", what, n, got, ds[0], ds[n-1], want)
	}
	// No tenth of the window holds more than a quarter of the delays.
	var bins [10]int
	for _, d := range ds {
		bins[min(int((d-lo)*10/(hi-lo+1)), 9)]++
	}
	for i, c := range bins {
		if c > n/4 {
			t.Fatalf("%s: %d of %d delays in tenth %d of the window: %v", what, c, n, i, bins)
		}
	}
}

// seeded is a deterministic random source per agent.
func seeded(agent uint64) func(int64) int64 {
	return rand.New(rand.NewPCG(agent, 42)).Int64N
}

// TestBackoffJitter: the n-th delays of many agents (one Backoff each, as
// after a common failure) are spread over [d/2, d] of that step, the step
// doubles up to the cap, and Reset starts over.
func TestBackoffJitter(t *testing.T) {
	const agents = 1000
	bos := make([]*Backoff, agents)
	for i := range bos {
		bos[i] = New(100*time.Millisecond, time.Second)
		bos[i].rnd = seeded(uint64(i))
	}
	for _, d := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		d *= time.Millisecond
		i := 0
		spread(t, "step "+d.String(), agents, d/2, d, func() time.Duration {
			v := bos[i].Next()
			i++
			return v
		})
	}
	b := bos[0]
	b.Reset()
	if d := b.Next(); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Fatalf("after reset: %v, want in [50ms, 100ms]", d)
	}
	// Without an injected source the library's is used, with the same bounds.
	b = New(time.Second, time.Second)
	for range 100 {
		if d := b.Next(); d < 500*time.Millisecond || d > time.Second {
			t.Fatalf("default source: %v, want in [500ms, 1s]", d)
		}
	}
}

func TestEqualJitterBounds(t *testing.T) {
	rnd := seeded(7)
	for _, d := range []time.Duration{0, 1, 2, 3, time.Millisecond, time.Hour} {
		for range 100 {
			if got := EqualJitter(d, rnd); got < d/2 || got > d {
				t.Fatalf("EqualJitter(%v)=%v, want in [%v, %v]", d, got, d/2, d)
			}
		}
	}
}
