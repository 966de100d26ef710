package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/internal/bench"
)

// BenchCommand measures propagation latency, initial sync, bursts, an idle
// agent and fan-out against a server: the one given with -s, else an
// embedded one with a store in a temporary folder.
type BenchCommand struct {
	io ioStreams
	// child, when set, replaces os.Executable() as the kvsync run by the
	// scenarios that measure an agent in a process of its own (tests).
	child func(ctx context.Context, args ...string) *exec.Cmd
}

// Run implements command.
func (c *BenchCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("bench", c.io.err)
	scenario := fs.String("scenario", bench.All, "what to measure: "+strings.Join(bench.Scenarios(), "|")+"|all (all: every one but storm; comma-separated list allowed)")
	keys := fs.Int("keys", 0, "size of the data set (default per scenario: initial-sync 100000, once 10000, burst 1000, idle 1000, latency templates 1000 and 10x)")
	count := fs.Int("count", 0, "samples (default: latency 500 per case and pacing, fanout 100 puts)")
	pacing := fs.String("pacing", "", "gap between a sample being seen and the next put, e.g. 20ms or 0 (default: both 20ms and 0)")
	fsync := fs.Bool("fsync", true, "files projections fsync every write")
	agents := fs.Int("agents", 200, "agents of the fanout and storm scenarios")
	conns := fs.Int("conns", 0, "connections the fanout and storm agents share, round-robin (default: one per agent)")
	procs := fs.Int("procs", 1, "processes the fanout and storm agents run in: above 1, child processes of kvsync host them (a files projection holds 4 descriptors, so one process's file limit caps its agents)")
	agentHost := fs.Bool("agent-host", false, "internal: host agents for a bench process with --procs (reads its job on stdin)")
	natsServer := fs.String("nats-server", "", "run this nats-server binary as a child process (loopback port, store in the work folder) instead of an embedded server: its memory and CPU are measured on their own; the storm scenario needs it")
	fleetIdle := fs.Duration("fleet-idle", 3*time.Second, "how long the fanout and storm scenarios measure the CPU of their ready agents (and of the server) idle")
	maxConsumers := fs.Int("max-consumers", agent.DefaultMaxConsumers, "consumer limit of the buckets the bench makes, as bucket add takes it; -1: none of their own (the server's default, 1,000 unless configured)")
	watch := fs.String("watch", bench.WatchConsumer, "watch mode of the fanout agents: consumer|republish")
	idle := fs.Duration("idle", 10*time.Second, "how long the idle scenario leaves the agent alone")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	dir := fs.String("dir", "", "where each run makes its work folder (projected files, embedded store); removed at the end (default: the temp folder)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the bench process (embedded server, in-process agents, publisher) to this file, for go tool pprof")
	var conn connFlags
	conn.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if *agentHost {
		logger := slog.New(slog.NewTextHandler(c.io.err, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if err := bench.HostAgents(ctx, c.io.in, c.io.out, logger); err != nil {
			return fmt.Errorf("bench agent host: %w", err)
		}
		return nil
	}
	o := bench.Options{
		Keys: *keys, Count: *count, Fsync: *fsync, Agents: *agents, Watch: *watch, IdleFor: *idle, Dir: *dir,
		Child: c.child, MaxConsumers: *maxConsumers, Conns: *conns, Procs: *procs, ServerBin: *natsServer, FleetIdle: *fleetIdle,
	}
	if *keys < 0 || *count < 0 || *agents < 1 || *idle <= 0 || *fleetIdle <= 0 {
		return usagef("--keys and --count must not be negative, --agents, --idle and --fleet-idle must be positive")
	}
	if *conns < 0 {
		return usagef("--conns %d: give a positive number of connections, or 0 for one per agent", *conns)
	}
	if *procs < 1 || *conns > 0 && *procs > *conns {
		return usagef("--procs %d: give at least 1, and no more than --conns (each process needs a connection of its own)", *procs)
	}
	if *maxConsumers < -1 || *maxConsumers == 0 {
		return usagef("--max-consumers %d: give a positive limit, or -1 to leave it to the server", *maxConsumers)
	}
	if *watch != bench.WatchConsumer && *watch != bench.WatchRepublish {
		return usagef("--watch %q: want consumer or republish", *watch)
	}
	for _, s := range strings.Split(*scenario, ",") {
		s = strings.TrimSpace(s)
		if s != bench.All && !slices.Contains(bench.Scenarios(), s) {
			return usagef("--scenario %q: want %s or %s", s, strings.Join(bench.Scenarios(), ", "), bench.All)
		}
		o.Scenarios = append(o.Scenarios, s)
	}
	if *natsServer != "" && (conn.server != "" || conn.context != "") {
		return usagef("--nats-server runs a server of the bench's own: give it or -s/--context, not both")
	}
	if slices.Contains(o.Scenarios, bench.Storm) && *natsServer == "" {
		return usagef("--scenario storm restarts the server: give a nats-server binary with --nats-server PATH")
	}
	if *natsServer != "" {
		if _, err := exec.LookPath(*natsServer); err != nil {
			return usagef("--nats-server %q: %v", *natsServer, err)
		}
	}
	if *pacing != "" {
		d, err := time.ParseDuration(*pacing)
		if *pacing == "0" {
			d, err = 0, nil
		}
		if err != nil || d < 0 {
			return usagef("--pacing %q: want a duration such as 20ms, or 0", *pacing)
		}
		o.Pacings = []time.Duration{d}
	}
	// Only -s (or a context) points the bench at a server of your own; the
	// NATS_* environment does not, so a stray NATS_URL never turns a
	// measurement of the embedded server into one of a production server.
	if conn.server != "" || conn.context != "" {
		if o.NATS, err = cliNATSConfig(&conn); err != nil {
			return err
		}
	}
	terminal := isTerminal(c.io.err)
	o.Progress, o.Terminal = c.io.err, terminal
	o.Logger = slog.New(slog.NewTextHandler(c.io.err, &slog.HandlerOptions{Level: slog.LevelWarn}))

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := bench.Run(ctx, o)
	if rep != nil && len(rep.Results) > 0 {
		var werr error
		if *jsonOut {
			werr = rep.WriteJSON(c.io.out)
		} else {
			werr = rep.WriteTable(c.io.out)
		}
		if err == nil {
			err = werr
		}
	}
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
