package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/agent/watch"
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
	kv, err := natsconn.CreateBucket(ctx, e.js, jetstream.KeyValueConfig{Bucket: full, Storage: jetstream.FileStorage, RePublish: natsconn.RePublish(full)}, mc)
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

// fleetCost is what a fleet of agents costs: measured on this process (the
// agents, which are goroutines of it, and the server when it is embedded),
// and on the server alone when the bench runs it as a process of its own.
type fleetCost struct {
	n         int
	rssBefore int64         // this process, before the agents
	consumers int           // consumers of the bucket's stream once every agent is ready
	rssPer    int64         // RSS growth per agent of this process and its agent hosts
	idleCPU   time.Duration // CPU per second of wall time of this process and its agent hosts, all agents idle
	window    time.Duration // the idle window
	checks    int           // answers of the shared check heard in the window (one per question; republish mode)
	hosts     int           // agent-host child processes (Options.Procs)

	// The server as a process of its own (Options.ServerBin).
	server               bool
	srvBefore, srvAfter  int64         // RSS with the bucket and no agents; with the agents, idle
	srvIdleCPU           time.Duration // per second of wall time, all agents idle
	srvErrRSS, srvErrCPU error
	settle               time.Duration
}

// before records the RSS of this process and of the server process before
// the agents start (the bucket exists).
func (c *fleetCost) before(e *env) {
	runtime.GC()
	if st, err := procStatus(os.Getpid()); err == nil {
		c.rssBefore = st.rss
	}
	if e.proc != nil {
		c.server = true
		c.srvBefore, c.srvErrRSS = e.proc.rss()
	}
}

// after measures, once n agents are ready and settle later: the CPU of this
// process (with the agent-host children of fl) and of the server process
// over window with nothing put, then the bucket's consumers (the short-lived
// ones of the republish mode are gone by then) and the RSS per agent.
func (c *fleetCost) after(ctx context.Context, e *env, fl fleet, bucket string, n int, settle, window time.Duration) {
	c.n, c.settle, c.window, c.hosts = n, settle, window, len(fl.pids())
	// The start's own work (consumers deleted, memory handed back) settles
	// first.
	select {
	case <-ctx.Done():
		return
	case <-time.After(settle):
	}
	pids := append([]int{os.Getpid()}, fl.pids()...)
	cpu0, err := cpuOf(pids)
	var srv0 time.Duration
	var serr error
	if e.proc != nil {
		srv0, serr = procCPU(e.proc.pid())
	}
	// Every question of the republish mode's shared check is answered to a
	// subject every agent hears: the bench hears them too.
	var checks atomic.Int64
	sub, serr2 := e.nc.Subscribe(watch.CheckSubjects(bucket), func(*nats.Msg) { checks.Add(1) })
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return
	case <-time.After(window):
	}
	wall := time.Since(t0).Seconds()
	if serr2 == nil {
		_ = sub.Unsubscribe()
		c.checks = int(checks.Load())
	}
	if cpu1, err1 := cpuOf(pids); err == nil && err1 == nil {
		c.idleCPU = time.Duration(float64(cpu1-cpu0) / wall)
	}
	if e.proc != nil {
		if srv1, err1 := procCPU(e.proc.pid()); serr == nil && err1 == nil {
			c.srvIdleCPU = time.Duration(float64(srv1-srv0) / wall)
		} else {
			c.srvErrCPU = errors.Join(serr, err1)
		}
		if c.srvAfter, err = e.proc.rss(); err != nil {
			c.srvErrRSS = err
		}
	}
	if st, err := e.js.Stream(ctx, "KV_"+bucket); err == nil {
		c.consumers = st.CachedInfo().State.Consumers
	}
	runtime.GC()
	var rss int64
	for _, pid := range pids {
		if st, err := procStatus(pid); err == nil {
			rss += st.rss
		}
	}
	if c.rssBefore > 0 {
		c.rssPer = (rss - c.rssBefore) / int64(n)
	}
}

// cpuOf is the CPU time the processes pids used so far.
func cpuOf(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		d, err := procCPU(pid)
		if err != nil {
			return 0, err
		}
		total += d
	}
	return total, nil
}

// serverPer is the server's RSS growth per agent.
func (c *fleetCost) serverPer() int64 {
	if !c.server || c.srvErrRSS != nil || c.n == 0 {
		return 0
	}
	return (c.srvAfter - c.srvBefore) / int64(c.n)
}

// fill sets the cost fields of res.
func (c *fleetCost) fill(res *Result) {
	res.ProcessIdleCPU = c.idleCPU.Seconds()
	res.Consumers = c.consumers
	res.CheckQuestions = c.checks
	if c.server && c.srvErrRSS == nil {
		res.ServerRSS = c.srvAfter
		res.ServerRSSPerAgent = c.serverPer()
	}
	if c.server && c.srvErrCPU == nil {
		res.ServerIdleCPU = c.srvIdleCPU.Seconds()
	}
}

func (c *fleetCost) String() string {
	idle := fmt.Sprintf("idle = %v with nothing put (%d questions of the republish mode's shared check heard), after %v of settling", c.window, c.checks, c.settle)
	if !c.server {
		return fmt.Sprintf("consumers on the stream %d; process RSS +%d KiB per agent; idle process CPU %.1f%% of a core (%s; server and agents together when embedded)",
			c.consumers, c.rssPer>>10, 100*c.idleCPU.Seconds(), idle)
	}
	srv := "server RSS unreadable: " + fmt.Sprint(c.srvErrRSS)
	if c.srvErrRSS == nil {
		srv = fmt.Sprintf("server process RSS %.1f MiB with the bucket and no agents, %.1f MiB with %d agents: %+.1f KiB per agent",
			float64(c.srvBefore)/(1<<20), float64(c.srvAfter)/(1<<20), c.n, float64(c.srvAfter-c.srvBefore)/1024/float64(c.n))
	}
	cpu := "idle server CPU unreadable: " + fmt.Sprint(c.srvErrCPU)
	if c.srvErrCPU == nil {
		cpu = fmt.Sprintf("idle server CPU %.2f%% of a core", 100*c.srvIdleCPU.Seconds())
	}
	who := "bench process (agents, no server)"
	if c.hosts > 0 {
		who = fmt.Sprintf("bench process and its %d agent-host processes (agents, no server)", c.hosts)
	}
	return fmt.Sprintf("consumers on the stream %d; %s; %s; %s: RSS +%d KiB per agent, idle CPU %.2f%% of a core, %.1f µs per agent per second (%s)",
		c.consumers, srv, cpu, who, c.rssPer>>10, 100*c.idleCPU.Seconds(), float64(c.idleCPU.Microseconds())/float64(max(c.n, 1)), idle)
}

// rawFanout is the physical limit of a fanout to n: n plain core
// subscriptions to one subject, over the connections the agents share
// (Options.Conns) or else 50 (each carrying n/50 subscriptions), and per
// publish of a 100 B message the time until each, and until the last, had
// it. With write, each subscription also replaces a file of its own with the
// message, as an agent's files projection does (temp file, fsync when asked,
// rename, folder fsync), and counts once it is done: the fan-out and the disk
// without kvsync.
func (e *env) rawFanout(ctx context.Context, n, rounds int, pacing time.Duration, write bool) (Result, error) {
	res := Result{Scenario: Fanout, Case: fmt.Sprintf("%d core subscriptions, raw (the physical limit)", n), Pacing: pacing.String()}
	if write {
		res.Case = fmt.Sprintf("%d core subscriptions, each writes its file", n)
	}
	conns := min(n, 50)
	if e.o.Conns > 0 {
		conns = min(n, e.o.Conns)
	}
	var dirs []string
	if write {
		dirs = make([]string, n)
		for i := range dirs {
			dirs[i] = e.path("fanout", "raw-write", fmt.Sprintf("s%05d", i))
			if err := os.MkdirAll(dirs[i], 0o755); err != nil {
				return res, fmt.Errorf("create %s: %w", dirs[i], err)
			}
		}
	}
	var writeErr atomic.Pointer[error]
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
		nc, err := natsconn.ConnectOnce(ctx, e.nats)
		if err != nil {
			step.done()
			return res, err
		}
		ncs = append(ncs, nc)
		for j := i; j < n; j += conns {
			_, err := nc.Subscribe(subject, func(m *nats.Msg) {
				if write {
					if err := replace(dirs[j], "fan", m.Data, e.o.Fsync); err != nil {
						writeErr.CompareAndSwap(nil, &err)
						return
					}
				}
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
				if err := writeErr.Load(); err != nil {
					return res, fmt.Errorf("raw fanout: write: %w", *err)
				}
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
	if write {
		how := "temp file, rename"
		if e.o.Fsync {
			how = "temp file, fsync, rename, folder fsync"
		}
		res.Note = fmt.Sprintf("publish -> each core subscription's handler replaced a 100 B file in a folder of its own with the message (%s); %d subscriptions over %d connections of this process; all = until the last file was replaced", how, n, conns)
	}
	return res, nil
}
