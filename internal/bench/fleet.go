package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
)

// Watch modes of the fanout scenario's agents (Options.Watch).
const (
	WatchConsumer  = agent.WatchConsumer
	WatchRepublish = agent.WatchRepublish
)

// fanoutBucket creates the fanout scenario's bucket: one that republishes its
// entries when the agents follow it in the republish mode.
func (e *env) fanoutBucket(ctx context.Context) (jetstream.KeyValue, func(), error) {
	if e.o.Watch != WatchRepublish {
		return e.bucket(ctx, "fanout")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	full := "kvsync_bench_fanout_" + hex.EncodeToString(b[:])
	mc := e.o.MaxConsumers
	if mc == 0 {
		mc = agent.DefaultMaxConsumers
	}
	// Made as kvsync makes buckets: the agents' initial syncs each hold a
	// consumer for a moment, so a fleet starting at once needs the limit too.
	kv, err := agent.CreateBucket(ctx, e.js, jetstream.KeyValueConfig{Bucket: full, Storage: jetstream.FileStorage, RePublish: agent.RePublish(full)}, mc)
	if err != nil {
		return nil, nil, fmt.Errorf("create bucket %s: %w", full, err)
	}
	return kv, func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := e.js.DeleteKeyValue(dctx, full); err != nil {
			e.logger.Warn("delete bench bucket", "bucket", full, "err", err)
		}
	}, nil
}

// watchMode is the agents' watch mode of the fanout scenario.
func (e *env) watchMode() string {
	if e.o.Watch == "" {
		return WatchConsumer
	}
	return e.o.Watch
}

// fleetCost is what a fleet of agents costs, measured on this process (the
// embedded server and the agents, which are goroutines of it).
type fleetCost struct {
	rssBefore int64
	consumers int           // consumers of the bucket's stream once every agent is ready
	rssPer    int64         // process RSS growth per agent
	idleCPU   time.Duration // process CPU per second of wall time, all agents idle
}

// before records the process's RSS before the agents start.
func (c *fleetCost) before() {
	runtime.GC()
	if st, err := procStatus(os.Getpid()); err == nil {
		c.rssBefore = st.rss
	}
}

// after measures, once n agents are ready and 2 s later: the process's CPU
// over idle seconds with nothing put, then the bucket's consumers (the short-lived ones
// of the republish mode are gone by then) and the RSS per agent.
func (c *fleetCost) after(ctx context.Context, e *env, bucket string, n int, idle time.Duration) {
	// The start's own work (consumers deleted, memory handed back) settles
	// first.
	select {
	case <-ctx.Done():
		return
	case <-time.After(2 * time.Second):
	}
	cpu0, err := procCPU(os.Getpid())
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return
	case <-time.After(idle):
	}
	if cpu1, err1 := procCPU(os.Getpid()); err == nil && err1 == nil {
		c.idleCPU = time.Duration(float64(cpu1-cpu0) / time.Since(t0).Seconds())
	}
	if st, err := e.js.Stream(ctx, "KV_"+bucket); err == nil {
		c.consumers = st.CachedInfo().State.Consumers
	}
	runtime.GC()
	if st, err := procStatus(os.Getpid()); err == nil && c.rssBefore > 0 {
		c.rssPer = (st.rss - c.rssBefore) / int64(n)
	}
}

func (c *fleetCost) String() string {
	return fmt.Sprintf("consumers on the stream %d; process RSS +%d KiB per agent; idle process CPU %.1f%% of a core",
		c.consumers, c.rssPer>>10, 100*c.idleCPU.Seconds())
}

// rawFanout is the physical limit of a fanout to n: n plain core
// subscriptions to one subject, over as many connections as the agents use
// at most (50 here, each carrying n/50 subscriptions), and per publish of a
// 100 B message the time until each, and until the last, had it.
func (e *env) rawFanout(ctx context.Context, n, rounds int, pacing time.Duration) (Result, error) {
	res := Result{Scenario: Fanout, Case: fmt.Sprintf("%d core subscriptions, raw (the physical limit)", n), Pacing: pacing.String()}
	conns := min(n, 50)
	var b [4]byte
	_, _ = rand.Read(b[:])
	subject := "kvsync.bench.raw." + hex.EncodeToString(b[:])

	type hit struct {
		round int
		at    time.Time
	}
	var cur atomic.Int64
	cur.Store(-1)
	hits := make(chan hit, n)
	var ncs []*nats.Conn
	defer func() {
		for _, nc := range ncs {
			nc.Close()
		}
	}()
	step := e.prog.start(fmt.Sprintf("fanout: %d core subscriptions", n), n)
	for i := range conns {
		nc, err := agent.ConnectOnce(ctx, e.nats)
		if err != nil {
			step.done()
			return res, err
		}
		ncs = append(ncs, nc)
		for j := i; j < n; j += conns {
			_, err := nc.Subscribe(subject, func(m *nats.Msg) {
				at := time.Now()
				r, _, _ := strings.Cut(string(m.Data), "-")
				var round int
				if _, err := fmt.Sscanf(r, "r%d", &round); err == nil && int64(round) == cur.Load() {
					hits <- hit{round, at}
				}
			})
			if err != nil {
				step.done()
				return res, fmt.Errorf("subscribe: %w", err)
			}
			step.set(j + 1)
		}
		if err := nc.FlushTimeout(10 * time.Second); err != nil {
			step.done()
			return res, fmt.Errorf("flush: %w", err)
		}
	}
	step.done()

	warm := min(2, rounds/10)
	step = e.prog.start(fmt.Sprintf("raw fanout to %d subscriptions", n), rounds+warm)
	defer step.done()
	var each, all []time.Duration
	for r := 0; r < rounds+warm; r++ {
		cur.Store(int64(r))
		t0 := time.Now()
		if err := e.nc.Publish(subject, pad(fmt.Sprintf("r%d-", r), 100)); err != nil {
			return res, fmt.Errorf("publish: %w", err)
		}
		var last time.Duration
		timeout := time.After(30 * time.Second)
		for got := 0; got < n; {
			select {
			case h := <-hits:
				if h.round != r {
					continue
				}
				got++
				d := h.at.Sub(t0)
				last = max(last, d)
				if r >= warm {
					each = append(each, d)
				}
			case <-timeout:
				return res, fmt.Errorf("raw fanout: %d of %d subscriptions had round %d within 30s", got, n, r)
			case <-ctx.Done():
				return res, ctx.Err()
			}
		}
		if r >= warm {
			all = append(all, last)
		}
		step.set(r + 1)
		if pacing > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(pacing):
			}
		}
	}
	res.Latency, res.All = summarize(each), summarize(all)
	res.Note = fmt.Sprintf("publish -> each core subscription's handler; %d subscriptions over %d connections of this process; all = until the last had it", n, conns)
	return res, nil
}
