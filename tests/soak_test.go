package tests

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

var (
	long          = flag.Bool("long", false, "run the long tests (soak)")
	soakDuration  = flag.Duration("soak-duration", 30*time.Minute, "how long TestSoak runs its load")
	soakRate      = flag.Int("soak-rate", 200, "operations per second TestSoak sends")
	soakKeyCount  = flag.Int("soak-keys", 500, "how many keys TestSoak spreads its load over")
	soakMaxGrowth = flag.Float64("soak-heap-growth", 2, "largest allowed ratio of heap in use at the end to after warm-up")
)

// agentSample is what TestSoak reads from /metrics.
type agentSample struct {
	goroutines, heap, rss float64
}

func (a *agentProc) sample(t testing.TB) agentSample {
	t.Helper()
	return agentSample{
		goroutines: a.metric(t, "go_goroutines"),
		heap:       a.metric(t, "go_memstats_heap_inuse_bytes"),
		rss:        a.metric(t, "process_resident_memory_bytes"),
	}
}

func (s agentSample) String() string {
	return fmt.Sprintf("%.0f goroutines, heap in use %.1f MiB, RSS %.1f MiB", s.goroutines, s.heap/(1<<20), s.rss/(1<<20))
}

// TestSoak runs mixed puts, deletes and purges at -soak-rate operations per
// second for -soak-duration against the kvsync binary and a separate
// nats-server, then checks that the agent neither leaks goroutines nor grows
// its heap past -soak-heap-growth times the level after warm-up, and that the
// files are exactly the bucket. It runs only with -long:
//
//	go test ./tests -run Soak -long -timeout 40m
//	go test ./tests -run Soak -long -soak-duration 2m
func TestSoak(t *testing.T) {
	if !*long {
		t.Skip("soak: run with -long (and -soak-duration, default 30m)")
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < *soakDuration+time.Minute {
		t.Fatalf("-timeout leaves %v, the soak needs %v and a minute: raise -timeout", time.Until(dl).Round(time.Second), *soakDuration)
	}
	n := testutil.StartNATSProc(t)
	_, js := testutil.ConnectRetrying(t, n.URL())
	kv := createBucket(t, js, "app", 1)
	dir := filepath.Join(t.TempDir(), "conf")
	a := startAgent(t, n.URL(), fmt.Sprintf("log: {level: warn}\nfiles:\n  - {name: app, bucket: app, dir: %q}\n", dir))
	a.waitReady(t, 15*time.Second)

	warmup := min(max(*soakDuration/10, 20*time.Second), 2*time.Minute)
	rng := rand.New(rand.NewPCG(1, 2))
	tick := time.NewTicker(time.Second / time.Duration(*soakRate))
	defer tick.Stop()
	start := time.Now()
	var warm agentSample
	var ops, puts, dels, purges, failed int
	next := start.Add(time.Minute)
	for now := start; now.Sub(start) < *soakDuration; now = <-tick.C {
		if warm == (agentSample{}) && now.Sub(start) >= warmup {
			warm = a.sample(t)
			t.Logf("after %v of warm-up: %v", warmup, warm)
		}
		if now.After(next) {
			next = next.Add(time.Minute)
			t.Logf("%v: %d operations (%d failed); %v", now.Sub(start).Round(time.Second), ops, failed, a.sample(t))
			a.alive(t)
		}
		key := fmt.Sprintf("k%04d", rng.IntN(*soakKeyCount))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		switch r := rng.IntN(100); {
		case r < 75:
			val := make([]byte, 16+rng.IntN(2048))
			for i := range val {
				val[i] = 'a' + byte(rng.IntN(26))
			}
			_, err = kv.Put(ctx, key, val)
			puts++
		case r < 92:
			err = kv.Delete(ctx, key)
			dels++
		default:
			err = kv.Purge(ctx, key)
			purges++
		}
		cancel()
		ops++
		if err != nil {
			failed++
		}
	}
	took := time.Since(start)
	converges(t, time.Minute, kv, dir)
	end := a.sample(t)
	count := a.metric(t, "kvsync_propagation_seconds_count")
	sum := a.metric(t, "kvsync_propagation_seconds_sum")
	t.Logf("soak: %v, %d operations (%d puts, %d deletes, %d purges, %d failed), %.0f ops/s",
		took.Round(time.Second), ops, puts, dels, purges, failed, float64(ops)/took.Seconds())
	t.Logf("after warm-up: %v", warm)
	t.Logf("at the end:    %v", end)
	if count > 0 {
		t.Logf("mean propagation (entry timestamp to bytes on disk) over %.0f writes: %v", count, time.Duration(sum/count*float64(time.Second)))
	}
	if failed > ops/100 {
		t.Errorf("%d of %d operations failed", failed, ops)
	}
	if end.goroutines > warm.goroutines+5 {
		t.Errorf("goroutines grew from %.0f to %.0f", warm.goroutines, end.goroutines)
	}
	if end.heap > warm.heap**soakMaxGrowth+8<<20 {
		t.Errorf("heap in use grew from %.1f MiB to %.1f MiB", warm.heap/(1<<20), end.heap/(1<<20))
	}
	a.alive(t)
}
