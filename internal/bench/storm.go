package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// storm is the reconnect storm: Agents agents (200) follow one key, as in
// fanout; once they are ready and idle, the server process is stopped and
// started again on the same port and store, and a put is made as soon as it
// answers. Measured from the moment it accepts connections again: until
// every agent's connection is back, until the put is acknowledged, and until
// every agent's file holds the put and every agent is ready (caught up); and
// whether the server dropped JetStream API requests on the way.
func (e *env) storm(ctx context.Context) ([]Result, error) {
	if e.proc == nil {
		return nil, errNoServerProc
	}
	n := orDefault(e.o.Agents, 200)
	res := Result{Scenario: Storm, Case: fmt.Sprintf("%d agents, 1 key, watch %s, server restarted", n, e.watchMode())}
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
		dirs[i] = e.path("storm", fmt.Sprintf("agent-%03d", i))
		files[i] = filepath.Join(dirs[i], "fan")
		index[files[i]] = i
	}
	var cur atomic.Pointer[round]
	// An agent that reconnects may write its file again with what it held:
	// only the bytes of the put count, so every event's file is read.
	stopFiles, err := watchFiles(dirs, files, func(path string, _ bool) {
		at := time.Now()
		i, ok := index[path]
		r := cur.Load()
		if !ok || r == nil || !r.arrived[i].IsZero() {
			return
		}
		if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, r.val) {
			return
		}
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
	step := e.prog.start("storm: idle agents", 0)
	cost.after(ctx, e, fl, kv.Bucket(), n, e.settle(), e.idleWindow())
	step.done()

	st := &StormResult{}
	total, errs, err := apiStats(ctx, e.js)
	if err != nil {
		return nil, err
	}
	st.APIBefore = APIStats{Total: total, Errors: errs}
	drops0, advs0, lines0 := e.proc.drops.Load(), e.proc.advs.Load(), e.proc.dropLines()

	step = e.prog.start(fmt.Sprintf("storm: restart the server under %d agents", n), n)
	defer step.done()
	r := &round{val: pad(fmt.Sprintf("storm-%d-", time.Now().UnixNano()), 100), arrived: make([]time.Time, n), left: n, done: make(chan struct{})}
	cur.Store(r)
	stopped := time.Now()
	if err := e.proc.restart(ctx); err != nil {
		return nil, fmt.Errorf("restart the server: %w", err)
	}
	t0 := e.proc.accepting()
	st.Down = t0.Sub(stopped)

	// Every agent's connection back: watched beside the put.
	reconnected := make(chan time.Time, 1)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() {
		if poll(wctx, 5*time.Minute, 5*time.Millisecond, func() error {
			if !fl.connected() {
				return errors.New("not every connection is back")
			}
			return nil
		}) == nil {
			reconnected <- time.Now()
		}
	}()
	err = poll(ctx, 2*time.Minute, 10*time.Millisecond, func() error {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := kv.Put(pctx, "fan", r.val)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("put fan after the restart: %w", err)
	}
	st.PutAcked = time.Since(t0)
	select {
	case <-r.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(5 * time.Minute):
		return nil, fmt.Errorf("%d of %d agents did not have the put within 5m of the restart", r.left, n)
	}
	cur.Store(nil)
	var last time.Time
	var each []time.Duration
	for _, at := range r.arrived {
		each = append(each, at.Sub(t0))
		if at.After(last) {
			last = at
		}
	}
	err = poll(ctx, 5*time.Minute, 5*time.Millisecond, func() error {
		if k := fl.ready(); k < n {
			return fmt.Errorf("%d of %d agents ready", k, n)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("after the restart: %w", err)
	}
	if now := time.Now(); now.After(last) {
		last = now
	}
	st.CaughtUp = last.Sub(t0)
	select {
	case at := <-reconnected:
		st.Reconnected = at.Sub(t0)
	case <-time.After(5 * time.Minute):
		return nil, errors.New("not every agent's connection was back within 5m of the restart")
	}
	step.set(n)
	for i, d := range dirs {
		if b, err := os.ReadFile(filepath.Join(d, "fan")); err != nil || !bytes.Equal(b, r.val) {
			return nil, fmt.Errorf("agent %d: after the storm the file holds %q (%v), want %q", i, b, err, r.val)
		}
	}
	if total, errs, err = apiStats(ctx, e.js); err != nil {
		return nil, err
	}
	st.APIAfter = APIStats{Total: total, Errors: errs}
	st.Dropped, st.Advisories = e.proc.drops.Load()-drops0, e.proc.advs.Load()-advs0
	st.DropLogLines = e.proc.dropLines() - lines0
	consumers := -1
	if si, err := e.js.Stream(ctx, "KV_"+kv.Bucket()); err == nil {
		consumers = si.CachedInfo().State.Consumers
	}

	res.Latency, res.All = summarize(each), summarize([]time.Duration{st.CaughtUp})
	res.Storm = st
	cost.fill(&res)
	res.Note = fmt.Sprintf("%d agents %s; the server (a process of its own) was stopped (SIGTERM) and started again on the same port and store: down %v; from accepting connections again: every connection back after %v, the put acknowledged after %v, every agent's file held the put and every agent was ready after %v (latency: per agent, accepting -> its file held the put; all: the caught-up time, one sample); JetStream API of the account: %d requests (%d errors) before the stop, %d (%d errors) on the restarted server once caught up; dropped API requests: %d in %d \"limit reached\" advisories heard, %d server log lines; consumers on the stream after: %d; before the restart: %s",
		n, e.shareNote(n), st.Down.Round(time.Millisecond), st.Reconnected.Round(time.Millisecond), st.PutAcked.Round(time.Millisecond), st.CaughtUp.Round(time.Millisecond),
		st.APIBefore.Total, st.APIBefore.Errors, st.APIAfter.Total, st.APIAfter.Errors, st.Dropped, st.Advisories, st.DropLogLines, consumers, &cost)
	return []Result{res}, nil
}
