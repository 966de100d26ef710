package retry

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// TestBackoffJitter: the n-th delays of many agents (one Backoff each, as
// after a common failure) are spread over [d/2, d] of that step, the step
// doubles up to the cap, and Reset starts over.
func TestBackoffJitter(t *testing.T) {
	const agents = 1000
	bos := make([]*Backoff, agents)
	for i := range bos {
		bos[i] = New(100*time.Millisecond, time.Second)
		bos[i].rnd = testutil.Seeded(uint64(i))
	}
	for _, d := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		d *= time.Millisecond
		i := 0
		testutil.Spread(t, "step "+d.String(), agents, d/2, d, func() time.Duration {
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
	rnd := testutil.Seeded(7)
	for _, d := range []time.Duration{0, 1, 2, 3, time.Millisecond, time.Hour} {
		for range 100 {
			if got := EqualJitter(d, rnd); got < d/2 || got > d {
				t.Fatalf("EqualJitter(%v)=%v, want in [%v, %v]", d, got, d/2, d)
			}
		}
	}
}

func TestLateJitterBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, d := range []time.Duration{0, 1, 2, 3, time.Millisecond, time.Hour} {
		for _, x := range []float64{0, 0.5, math.Nextafter(1, 0), r.Float64(), -1} {
			if got := LateJitter(d, x); got < d/2 || got > d {
				t.Fatalf("LateJitter(%v, %v)=%v, want in [%v, %v]", d, x, got, d/2, d)
			}
		}
	}
	if got := LateJitter(time.Hour, 0); got != 30*time.Minute {
		t.Fatalf("LateJitter(1h, 0)=%v, want 30m", got)
	}
}

// TestLateJitterFewEarly: of N timers drawn at once, the ones that fire
// within 30 ms of the first (the time an answer takes to reach a fleet) are
// a small fraction of one on average for fleets of 2 to 100,000, where
// uniform draws put N·30ms/15s of them there: 10 at 5,000.
func TestLateJitterFewEarly(t *testing.T) {
	const d, span = 30 * time.Second, 30 * time.Millisecond
	r := rand.New(rand.NewPCG(3, 4))
	extras := func(n, trials int, draw func() time.Duration) float64 {
		total := 0
		ts := make([]time.Duration, n)
		for range trials {
			first := d
			for i := range ts {
				ts[i] = draw()
				first = min(first, ts[i])
			}
			for _, v := range ts {
				if v > first && v <= first+span {
					total++
				}
			}
		}
		return float64(total) / float64(trials)
	}
	late := func() time.Duration { return LateJitter(d, r.Float64()) }
	for _, n := range []int{2, 100, 5000, 100_000} {
		trials := max(20, 200_000/n)
		if got := extras(n, trials, late); got > 0.2 {
			t.Errorf("%d timers: %.3f others within %v of the first, want under 0.2", n, got, span)
		}
	}
	uniform := func() time.Duration { return d/2 + time.Duration(r.Int64N(int64(d/2)+1)) }
	if got := extras(5000, 40, uniform); got < 5 {
		t.Errorf("uniform draws of 5000 timers: %.3f others within %v of the first; the measure does not tell the two apart", got, span)
	}
}
