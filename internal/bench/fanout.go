package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// round is one fanout put: when each agent's file held its value.
type round struct {
	val     []byte
	arrived []time.Time // written by the watcher goroutine until done is closed
	left    int
	done    chan struct{}
}

// fanoutAgents: Agents agents (200), each hosted in a goroutine of this process
// with a connection of its own or sharing Conns connections, project the same
// key; per put, the time until each agent's file holds it, and until all do.
func (e *env) fanoutAgents(ctx context.Context) ([]Result, error) {
	n := orDefault(e.o.Agents, 200)
	count := orDefault(e.o.Count, 100)
	warm := min(2, count/10)
	pacing := e.o.Pacings[0]
	res := Result{Scenario: Fanout, Case: fmt.Sprintf("%d agents, 1 key, watch %s", n, e.watchMode()), Pacing: pacing.String()}
	kv, drop, err := e.fanoutBucket(ctx)
	if err != nil {
		return nil, err
	}
	defer drop()
	if _, err := kv.Put(ctx, "fan", []byte("init")); err != nil {
		return nil, fmt.Errorf("put fan: %w", err)
	}

	dirs := make([]string, n)
	files := make([]string, n)
	index := map[string]int{}
	for i := range dirs {
		dirs[i] = e.path("fanout", fmt.Sprintf("agent-%03d", i))
		files[i] = filepath.Join(dirs[i], "fan")
		index[files[i]] = i
	}
	var cur atomic.Pointer[round]
	stopFiles, err := watchFiles(dirs, files, func(path string, looked bool) {
		at := time.Now()
		i, ok := index[path]
		r := cur.Load()
		if !ok || r == nil || !r.arrived[i].IsZero() {
			return
		}
		if looked {
			// No event: only the round's bytes count.
			if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, r.val) {
				return
			}
		}
		// The bytes are checked once every agent has had its event: reading
		// 200 files here, one after the other, would delay the events
		// queued behind them and count the bench's own reads as latency.
		r.arrived[i] = at
		if r.left--; r.left == 0 {
			close(r.done)
		}
	})
	if err != nil {
		return nil, err
	}
	defer stopFiles()

	var cost fleetCost
	cost.before(e)
	fl, err := e.startAgents(ctx, kv.Bucket(), dirs)
	if err != nil {
		return nil, err
	}
	defer fl.stop()
	step := e.prog.start("fanout: idle agents", 0)
	cost.after(ctx, e, fl, kv.Bucket(), n, e.settle(), e.idleWindow())
	step.done()

	rawHits, stopRaw, err := rawWatch(ctx, kv, "fan")
	if err != nil {
		return nil, err
	}
	defer stopRaw()

	step = e.prog.start(fmt.Sprintf("fanout to %d agents pacing=%v", n, pacing), count+warm)
	defer step.done()
	var each, all, raw []time.Duration
	for s := 0; s < count+warm; s++ {
		r := &round{val: pad(fmt.Sprintf("f%07d-", s), 100), arrived: make([]time.Time, n), left: n, done: make(chan struct{})}
		cur.Store(r)
		t0 := time.Now()
		rev, err := kv.Put(ctx, "fan", r.val)
		if err != nil {
			return nil, fmt.Errorf("put fan: %w", err)
		}
		rawAt, err := awaitRaw(ctx, rawHits, rev)
		if err != nil {
			return nil, err
		}
		select {
		case <-r.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(30 * time.Second):
			return nil, errors.New("not every agent had the put within 30s")
		}
		cur.Store(nil)
		for i, d := range dirs {
			if b, err := os.ReadFile(filepath.Join(d, "fan")); err != nil || !bytes.Equal(b, r.val) {
				return nil, fmt.Errorf("agent %d: after its file event the file holds %q (%v), want %q", i, b, err, r.val)
			}
		}
		if s >= warm {
			var last time.Duration
			for _, at := range r.arrived {
				d := at.Sub(t0)
				each = append(each, d)
				last = max(last, d)
			}
			all = append(all, last)
			raw = append(raw, rawAt.Sub(t0))
		}
		step.set(s + 1)
		if pacing > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(pacing):
			}
		}
	}
	res.Latency, res.All, res.Raw = summarize(each), summarize(all), summarize(raw)
	if st, err := procStatus(os.Getpid()); err == nil {
		res.RSS = st.rss
	}
	cost.fill(&res)
	res.Note = fmt.Sprintf("%d agents %s; latency over every agent and put, all = until the last agent had it; fsync=%v; RSS is the whole bench process (server included when embedded); %s", n, e.shareNote(n), e.o.Fsync, &cost)
	return []Result{res}, nil
}

// fanout is fanoutAgents, then, once the agents are stopped, the same fan-out
// without kvsync: raw core subscriptions, the same that each write a file, and
// the disk alone (the same number of files replaced at once by plain
// goroutines).
func (e *env) fanout(ctx context.Context) ([]Result, error) {
	out, err := e.fanoutAgents(ctx)
	if err != nil {
		return nil, err
	}
	n := orDefault(e.o.Agents, 200)
	for _, write := range []bool{false, true} {
		raw, err := e.rawFanout(ctx, n, orDefault(e.o.Count, 100), e.o.Pacings[0], write)
		if err != nil {
			return out, fmt.Errorf("raw fanout: %w", err)
		}
		out = append(out, raw)
	}
	rounds := min(orDefault(e.o.Count, 100), 30)
	step := e.prog.start(fmt.Sprintf("fanout: %d files replaced at once by plain goroutines (the disk alone)", n), 0)
	walls, err := diskFanout(e.path("fanout", "disk"), n, rounds, e.o.Fsync)
	step.done()
	if err != nil {
		return nil, fmt.Errorf("disk alone: %w", err)
	}
	how := "temp file, rename"
	if e.o.Fsync {
		how = "temp file, fsync, rename, folder fsync"
	}
	return append(out, Result{
		Scenario: Fanout, Case: fmt.Sprintf("%d files at once, disk alone", n), Pacing: "20ms", All: summarize(walls),
		Note: fmt.Sprintf("per round, %d goroutines of the bench process each replace one 100 B file in a folder of its own (%s); all = until the last was done", n, how),
	}), nil
}

// stopAll stops agents in parallel.
func stopAll(agents []*running) {
	var wg sync.WaitGroup
	for _, r := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.stop()
		}()
	}
	wg.Wait()
}

// settle is how long the fleet scenarios let a ready fleet settle before
// measuring it idle: the start's consumers deleted, memory handed back.
func (e *env) settle() time.Duration {
	return 2 * time.Second
}

// idleWindow is how long the fleet scenarios measure a settled fleet idle.
func (e *env) idleWindow() time.Duration {
	return orDefault(e.o.FleetIdle, 3*time.Second)
}
