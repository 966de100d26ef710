package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/agent/natsconn"
)

// The scenarios, in the order All runs them.
const (
	Latency     = "latency"
	InitialSync = "initial-sync"
	Once        = "once"
	Burst       = "burst"
	Idle        = "idle"
	Fanout      = "fanout"
	Storm       = "storm"
	All         = "all"
)

// Scenarios lists every scenario name Run knows, All excluded.
func Scenarios() []string {
	return []string{Latency, InitialSync, Once, Burst, Idle, Fanout, Storm}
}

// allScenarios is what All runs: every scenario but the storm, which needs
// a server process of its own to restart (Options.ServerBin).
func allScenarios() []string {
	return []string{Latency, InitialSync, Once, Burst, Idle, Fanout}
}

// Options say what to measure and where. The zero value of a size picks the
// scenario's default (see the field comments).
type Options struct {
	// NATS reaches the server. Without a URL and a context, Run starts an
	// embedded JetStream server with a store in a temporary folder.
	NATS agent.NATSConfig
	// Scenarios to run, in the order given; empty or All runs every one.
	Scenarios []string
	// Keys is the size of the data set: initial-sync 100,000; once 10,000;
	// burst 1,000 keys (10 puts each); idle 1,000. Latency uses fixed sets
	// (1 key; templates over 1,000 and 10,000 keys; 100 env keys).
	Keys int
	// Count is the number of samples: latency 500 per case and pacing;
	// fanout 100 puts.
	Count int
	// Pacings are the gaps between one sample being seen and the next put;
	// empty means 20 ms and 0 (back to back).
	Pacings []time.Duration
	// Fsync makes files projections durable before they report a write.
	Fsync bool
	// Agents is the number of agents of the fanout and storm scenarios (200).
	Agents int
	// Conns, when positive and below Agents, is the number of connections
	// the fanout and storm agents share, round-robin; 0 gives each agent a
	// connection of its own.
	Conns int
	// Procs, when above 1, runs the fanout and storm agents in that many
	// child processes of kvsync (`kvsync bench --agent-host`, started like
	// Child), Agents/Procs each, sharing Conns/Procs connections each: a
	// files projection holds four descriptors, so one process's file limit
	// caps the agents it can host. 0 or 1: every agent in this process.
	Procs int
	// ServerBin, when set (and NATS names no server), is a nats-server
	// binary that Run starts as a child process on a free loopback port with
	// its store in the work folder, instead of embedding a server: its memory
	// and CPU are then measured on their own, and the storm scenario restarts it.
	ServerBin string
	// Watch is the fanout agents' watch mode: WatchConsumer (default) or
	// WatchRepublish (the bucket is made to republish).
	Watch string
	// IdleFor is how long the idle scenario leaves the agent alone (10 s).
	IdleFor time.Duration
	// FleetIdle is how long the fanout and storm scenarios measure the
	// CPU of their agents (and of the server) idle, after 2 s of settling
	// once every agent is ready (3 s).
	FleetIdle time.Duration
	// Dir is where the run's work folder (projected files, the embedded
	// server's store) is made, fresh for each run and removed at the end;
	// empty means the system's temp folder. Point it at the disk to measure.
	Dir string
	// Child returns a command that runs kvsync with args (`run -c FILE`):
	// the scenarios that measure one agent's memory and CPU run it as a
	// child process. Nil runs os.Executable(), which is kvsync itself.
	Child func(ctx context.Context, args ...string) *exec.Cmd
	// Logger receives the agents' and the bench's own log lines.
	Logger *slog.Logger
	// Progress, when set, receives progress: a line redrawn in place when
	// Terminal, else one log line per step.
	Progress io.Writer
	Terminal bool
	// MaxConsumers is the consumer limit of the buckets the bench makes, as
	// `kvsync bucket add --max-consumers` takes it: 0 is kvsync's default,
	// -1 none of the bucket's own (the server's default: 1,000 on
	// nats-server 2.15).
	MaxConsumers int
}

// Report is everything one Run measured.
type Report struct {
	Machine Machine  `json:"machine"`
	Results []Result `json:"results"`
}

// Machine describes where the figures were taken.
type Machine struct {
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	Server    string `json:"server"` // "embedded" or the URL
	Fsync     bool   `json:"fsync"`
	Started   string `json:"started"`
}

// Result is one measured case. Fields that do not apply are zero and left out
// of the JSON.
type Result struct {
	Scenario string `json:"scenario"`
	Case     string `json:"case"`
	Pacing   string `json:"pacing,omitempty"`
	// Latency is put → the bytes visible in the destination file.
	Latency *Summary `json:"latency,omitempty"`
	// Raw is put → a plain JetStream KV watcher received the entry, measured
	// on the same puts.
	Raw *Summary `json:"raw,omitempty"`
	// Histogram is the agent's own kvsync_propagation_seconds histogram
	// (server timestamp → bytes on disk), quantiles interpolated in buckets.
	Histogram *Summary `json:"histogram,omitempty"`
	// All is, per put, the time until every agent had the file (fanout).
	All        *Summary      `json:"all,omitempty"`
	Wall       time.Duration `json:"wall_ns,omitempty"`
	Throughput float64       `json:"throughput,omitempty"`
	Unit       string        `json:"throughput_unit,omitempty"`
	PeakRSS    int64         `json:"peak_rss_bytes,omitempty"`
	RSS        int64         `json:"rss_bytes,omitempty"`
	CPU        time.Duration `json:"cpu_ns,omitempty"`
	Actions    int           `json:"actions,omitempty"`
	Keys       int           `json:"keys,omitempty"`
	// Fleets (fanout, storm): the consumers on the bucket's stream once the
	// agents were ready and the CPU of the bench process and its agent hosts
	// while they were idle (in cores: 0.01 is 1 % of one); with the server as a process of its own
	// (Options.ServerBin), its RSS with the agents, its RSS growth per agent
	// over the bucket without agents, and its idle CPU.
	Consumers         int          `json:"consumers,omitempty"`
	CheckQuestions    int          `json:"check_questions,omitempty"` // the republish mode's shared check, in the idle window
	ProcessIdleCPU    float64      `json:"process_idle_cpu_cores,omitempty"`
	ServerRSS         int64        `json:"server_rss_bytes,omitempty"`
	ServerRSSPerAgent int64        `json:"server_rss_per_agent_bytes,omitempty"`
	ServerIdleCPU     float64      `json:"server_idle_cpu_cores,omitempty"`
	Storm             *StormResult `json:"storm,omitempty"`
	Note              string       `json:"note,omitempty"`
}

// StormResult is what the storm scenario measured: the server restarted under its
// agents. Durations count from the moment the restarted server accepted
// connections again.
type StormResult struct {
	Down        time.Duration `json:"down_ns"`        // stop signal → accepting connections again
	Reconnected time.Duration `json:"reconnected_ns"` // → every agent's connection up
	PutAcked    time.Duration `json:"put_acked_ns"`   // → the put made right after the restart acknowledged
	CaughtUp    time.Duration `json:"caught_up_ns"`   // → every agent's file holds that put and every agent is ready
	// The account's JetStream API counters: of the server before it was
	// stopped (since its start), and of the restarted one once every agent
	// caught up.
	APIBefore APIStats `json:"api_before"`
	APIAfter  APIStats `json:"api_after"`
	// Requests the server dropped because a JetStream API queue was full:
	// the sum over the "API limit reached" advisories heard (the bench's
	// system-account connection hears those published after it reconnected),
	// and the server's log lines saying so ("limit reached, dropping N
	// requests", logged at most once a second).
	Dropped      int64 `json:"api_dropped"`
	Advisories   int64 `json:"api_limit_advisories"`
	DropLogLines int   `json:"api_drop_log_lines"`
}

// APIStats are an account's JetStream API counters.
type APIStats struct {
	Total  uint64 `json:"total"`
	Errors uint64 `json:"errors"`
}

// Run runs the scenarios of o and returns what they measured. A scenario that
// fails stops the run; the results so far are returned with the error.
func Run(ctx context.Context, o Options) (*Report, error) {
	names, err := expand(o.Scenarios)
	if err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if len(o.Pacings) == 0 {
		o.Pacings = []time.Duration{20 * time.Millisecond, 0}
	}
	e, err := newEnv(ctx, o)
	if err != nil {
		return nil, err
	}
	defer e.close()
	rep := &Report{Machine: Machine{
		GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(),
		Server: e.server, Fsync: o.Fsync, Started: time.Now().UTC().Format(time.RFC3339),
	}}
	for _, n := range names {
		var res []Result
		var err error
		switch n {
		case Latency:
			res, err = e.latency(ctx)
		case InitialSync:
			res, err = e.initialSync(ctx)
		case Once:
			res, err = e.once(ctx)
		case Burst:
			res, err = e.burst(ctx)
		case Idle:
			res, err = e.idle(ctx)
		case Fanout:
			res, err = e.fanout(ctx)
		case Storm:
			res, err = e.storm(ctx)
		}
		rep.Results = append(rep.Results, res...)
		if err != nil {
			return rep, fmt.Errorf("%s: %w", n, err)
		}
	}
	return rep, nil
}

// expand checks the scenario names and replaces All by every scenario.
func expand(names []string) ([]string, error) {
	if len(names) == 0 {
		return allScenarios(), nil
	}
	var out []string
	for _, n := range names {
		switch {
		case n == All:
			out = append(out, allScenarios()...)
		case slices.Contains(Scenarios(), n):
			out = append(out, n)
		default:
			return nil, fmt.Errorf("unknown scenario %q (want one of %s, %s)", n, strings.Join(Scenarios(), ", "), All)
		}
	}
	return out, nil
}

// env is the server, the writer's connection and the work folder shared by
// the scenarios of one run.
type env struct {
	o      Options
	nats   agent.NATSConfig
	server string // "embedded" or the URL, for the report
	srv    *server.Server
	proc   *serverProc // the server as a child process (Options.ServerBin)
	nc     *nats.Conn
	js     jetstream.JetStream
	dir    string
	rmDir  bool
	prog   *progress
	logger *slog.Logger
	seq    int // samples taken so far: makes every value unique
}

func newEnv(ctx context.Context, o Options) (*env, error) {
	e := &env{o: o, nats: o.NATS, logger: o.Logger, prog: &progress{w: o.Progress, term: o.Terminal}}
	if e.nats.Name == "" {
		e.nats.Name = "kvsync-bench"
	}
	// Every run works in a folder of its own (under Dir when given), so no
	// file of an earlier run is taken for this one's.
	if o.Dir != "" {
		if err := os.MkdirAll(o.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("work folder: %w", err)
		}
	}
	d, err := os.MkdirTemp(o.Dir, "kvsync-bench-")
	if err != nil {
		return nil, fmt.Errorf("work folder: %w", err)
	}
	e.dir, e.rmDir = d, true
	if e.nats.URL == "" && e.nats.Context == "" && o.ServerBin != "" {
		p, err := startServerProc(ctx, o.ServerBin, e.path("server"))
		if err != nil {
			e.close()
			return nil, err
		}
		e.proc, e.server = p, "process "+p.url()
		e.nats.URL = p.url()
	} else if e.nats.URL == "" && e.nats.Context == "" {
		srv, err := natsconn.StartEmbedded(agent.EmbeddedConfig{StoreDir: e.path("server"), Listen: "127.0.0.1:0"})
		if err != nil {
			e.close()
			return nil, err
		}
		e.srv, e.server = srv, "embedded"
		e.nats.URL = srv.ClientURL()
	} else {
		e.server = e.nats.URL
		if e.server == "" {
			e.server = "context " + e.nats.Context
		}
	}
	nc, js, err := e.connect(ctx)
	if err != nil {
		e.close()
		return nil, err
	}
	e.nc, e.js = nc, js
	return e, nil
}

// connect opens a connection of its own (each agent and the writer have one).
func (e *env) connect(ctx context.Context) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := natsconn.ConnectOnce(ctx, e.nats)
	if err != nil {
		return nil, nil, err
	}
	js, err := natsconn.JetStream(nc, e.nats)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	}
	if e.proc != nil {
		e.proc.close()
	}
	if e.rmDir {
		_ = os.RemoveAll(e.dir)
	}
}

// path returns a fresh path under the work folder.
func (e *env) path(parts ...string) string {
	return strings.Join(append([]string{e.dir}, parts...), string(os.PathSeparator))
}

// bucket creates a bucket of its own for one case; drop deletes it.
func (e *env) bucket(ctx context.Context, name string) (jetstream.KeyValue, func(), error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	full := "kvsync_bench_" + strings.ReplaceAll(name, "-", "_") + "_" + hex.EncodeToString(b[:])
	mc := e.o.MaxConsumers
	if mc == 0 {
		mc = agent.DefaultMaxConsumers
	}
	// Made as kvsync makes buckets (`bucket add`, `buckets:`).
	kv, err := natsconn.CreateBucket(ctx, e.js, jetstream.KeyValueConfig{Bucket: full, Storage: jetstream.FileStorage}, mc)
	if err != nil {
		return nil, nil, fmt.Errorf("create bucket %s: %w", full, err)
	}
	drop := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := e.js.DeleteKeyValue(dctx, full); err != nil {
			e.logger.Warn("delete bench bucket", "bucket", full, "err", err)
		}
	}
	return kv, drop, nil
}

// fill puts n keys named by key(i) with values val(i), asynchronously, and
// waits for every ack.
func (e *env) fill(ctx context.Context, kv jetstream.KeyValue, n int, key func(int) string, val func(int) []byte) error {
	bucket := kv.Bucket()
	step := e.prog.start("fill "+bucket, n)
	defer step.done()
	for i := 0; i < n; i++ {
		if _, err := e.js.PublishAsync("$KV."+bucket+"."+key(i), val(i)); err != nil {
			return fmt.Errorf("put %s: %w", key(i), err)
		}
		// Wait for the acks now and then: the client refuses more than
		// 4,000 unacknowledged messages.
		if i%2000 == 1999 || i == n-1 {
			if err := e.acked(ctx); err != nil {
				return err
			}
			step.set(i + 1)
		}
	}
	return nil
}

// acked waits until every async publish of the writer was acknowledged.
func (e *env) acked(ctx context.Context) error {
	select {
	case <-e.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Minute):
		return errors.New("publish acks not received within 1m")
	}
}

// pad returns s padded with 'x' to n bytes.
func pad(s string, n int) []byte {
	b := make([]byte, 0, max(n, len(s)))
	b = append(b, s...)
	for len(b) < n {
		b = append(b, 'x')
	}
	return b
}

// orDefault returns v, or def when v is zero.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
