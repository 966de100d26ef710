package retry

import (
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
