package testutil

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Spread draws n delays from next and checks that each lies in [lo, hi] and
// that together they cover most of that range: a fleet that failed at one
// moment retries over the whole window, not in step.
func Spread(t testing.TB, what string, n int, lo, hi time.Duration, next func() time.Duration) {
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

// Seeded is a deterministic random source per agent.
func Seeded(agent uint64) func(int64) int64 {
	return rand.New(rand.NewPCG(agent, 42)).Int64N
}
