package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/bench"
	"github.com/kvsync/kvsync/internal/testutil"
)

// benchChildEnv makes this test binary act as kvsync (see
// TestBenchChildHelper): the bench scenarios that measure an agent in a
// process of its own start it.
const benchChildEnv = "KVSYNC_BENCH_TEST_CHILD"

// TestBenchChildHelper is kvsync itself when benchChildEnv is set; run
// normally, it returns at once.
func TestBenchChildHelper(t *testing.T) {
	if os.Getenv(benchChildEnv) == "" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(run(context.Background(), args, os.Stdin, os.Stdout, os.Stderr))
}

func benchChild(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"-test.run=^TestBenchChildHelper$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), benchChildEnv+"=1")
	return cmd
}

// runBench runs `kvsync bench --json args...` against an embedded server and
// decodes the report.
func runBench(t *testing.T, args ...string) *bench.Report {
	t.Helper()
	return runBenchOn(t, "embedded", args...)
}

// runBenchOn is runBench for a server the report names with the prefix server.
func runBenchOn(t *testing.T, server string, args ...string) *bench.Report {
	t.Helper()
	var out, errOut bytes.Buffer
	c := &BenchCommand{io: ioStreams{in: strings.NewReader(""), out: &out, err: &errOut}, child: benchChild}
	args = append([]string{"--json", "--dir", t.TempDir()}, args...)
	if err := c.Run(context.Background(), args); err != nil {
		t.Fatalf("bench %v: %v\n%s", args, err, errOut.String())
	}
	var rep bench.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("decode report: %v\n%s", err, out.String())
	}
	if got, want := rep.Machine.Server, server; !strings.HasPrefix(got, want) {
		t.Fatalf("Machine.Server=%q, want %q", got, want)
	}
	return &rep
}

// checkSummary asserts a distribution of n samples is ordered and positive.
func checkSummary(t *testing.T, what string, s *bench.Summary, n int) {
	t.Helper()
	if s == nil {
		t.Fatalf("%s: no summary", what)
	}
	if got, want := s.N, n; got != want {
		t.Fatalf("%s: N=%d, want %d", what, got, want)
	}
	if !(0 < s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99 && s.P99 <= s.Max) {
		t.Fatalf("%s: percentiles out of order: %+v", what, s)
	}
}

func TestBenchLatency(t *testing.T) {
	rep := runBench(t, "--scenario", "latency", "--keys", "10", "--count", "5", "--pacing", "0")
	var cases []string
	for _, r := range rep.Results {
		cases = append(cases, r.Case)
		if got, want := r.Pacing, "0s"; got != want {
			t.Fatalf("%s: Pacing=%q, want %q", r.Case, got, want)
		}
		checkSummary(t, r.Case+" latency", r.Latency, 5)
		if r.Case == "files, disk alone" {
			if r.Raw != nil || r.Histogram != nil {
				t.Fatalf("disk alone has raw or histogram figures: %+v", r)
			}
			continue
		}
		checkSummary(t, r.Case+" raw", r.Raw, 5)
		if got, want := r.Histogram != nil, r.Case == "files"; got != want {
			t.Fatalf("%s: histogram present=%v, want %v", r.Case, got, want)
		}
	}
	if got, want := strings.Join(cases, ","), "files,files, disk alone,template-10,template-100,env"; got != want {
		t.Fatalf("cases=%s, want %s", got, want)
	}
	files := rep.Results[0]
	if files.Histogram.N < 5 {
		t.Fatalf("files histogram N=%d, want at least the 5 samples", files.Histogram.N)
	}
}

func TestBenchChildScenarios(t *testing.T) {
	for _, tt := range []struct {
		scenario string
		results  int  // once: a template case and a files case
		idle     bool // CPU is measured while idle, RSS while running
	}{
		{scenario: "initial-sync", results: 2}, // the agent, the disk alone
		{scenario: "once", results: 2},
		{scenario: "idle", results: 1, idle: true},
	} {
		t.Run(tt.scenario, func(t *testing.T) {
			rep := runBench(t, "--scenario", tt.scenario, "--keys", "30", "--idle", "200ms")
			if got, want := len(rep.Results), tt.results; got != want {
				t.Fatalf("%d results, want %d", got, want)
			}
			for _, r := range rep.Results {
				if strings.HasSuffix(r.Case, "disk alone") {
					checkDiskResult(t, r)
					continue
				}
				checkChildResult(t, tt.scenario, tt.idle, r)
			}
		})
	}
}

// checkDiskResult checks the plain-loop baseline of initial-sync.
func checkDiskResult(t *testing.T, r bench.Result) {
	t.Helper()
	if r.Scenario != "initial-sync" || r.Keys != 30 || r.Wall <= 0 || r.Unit != "files/s" || r.Throughput <= 0 {
		t.Fatalf("disk alone: %+v, want initial-sync, 30 keys, a wall time and files/s", r)
	}
}

func checkChildResult(t *testing.T, scenario string, idle bool, r bench.Result) {
	t.Helper()
	if got, want := r.Scenario, scenario; got != want {
		t.Fatalf("Scenario=%q, want %q", got, want)
	}
	if got, want := r.Keys, 30; got != want {
		t.Fatalf("Keys=%d, want %d", got, want)
	}
	if r.Wall <= 0 || r.PeakRSS <= 0 {
		t.Fatalf("%s: Wall=%v PeakRSS=%d, want both positive", r.Case, r.Wall, r.PeakRSS)
	}
	if idle {
		if r.CPU < 0 || r.RSS <= 0 || r.RSS > r.PeakRSS {
			t.Fatalf("idle: CPU=%v RSS=%d PeakRSS=%d", r.CPU, r.RSS, r.PeakRSS)
		}
	} else if r.CPU <= 0 || r.Throughput <= 0 {
		t.Fatalf("%s: CPU=%v Throughput=%v, want both positive", r.Case, r.CPU, r.Throughput)
	}
}

func TestBenchBurstRunsOneAction(t *testing.T) {
	rep := runBench(t, "--scenario", "burst", "--keys", "20")
	if got, want := len(rep.Results), 3; got != want {
		t.Fatalf("%d results, want %d (no wait, wait, the disk alone)", got, want)
	}
	disk := rep.Results[2]
	if !strings.HasSuffix(disk.Case, "disk alone") || disk.Keys != 20 || disk.Wall <= 0 || disk.Unit != "files/s" || disk.Throughput <= 0 {
		t.Fatalf("disk alone: %+v, want 20 files, a wall time and files/s", disk)
	}
	for i, r := range rep.Results[:2] {
		if r.Wall <= 0 || r.Throughput <= 0 {
			t.Fatalf("%s: Wall=%v Throughput=%v, want both positive", r.Case, r.Wall, r.Throughput)
		}
		if i == 1 {
			if got, want := r.Actions, 1; got != want {
				t.Fatalf("%s: Actions=%d, want %d (%s)", r.Case, got, want, r.Note)
			}
			if !strings.Contains(r.Note, "20 file writes for 20 keys") {
				t.Fatalf("Note=%q, want one write per key under wait", r.Note)
			}
		} else if r.Actions != 0 {
			t.Fatalf("%s: Actions=%d without an action", r.Case, r.Actions)
		}
	}
}

func TestBenchFanout(t *testing.T) {
	for _, watch := range []string{"consumer", "republish"} {
		t.Run(watch, func(t *testing.T) {
			rep := runBench(t, "--scenario", "fanout", "--agents", "3", "--count", "4", "--pacing", "0", "--watch", watch)
			r := rep.Results[0]
			checkSummary(t, "per agent", r.Latency, 3*4)
			checkSummary(t, "all agents", r.All, 4)
			checkSummary(t, "raw", r.Raw, 4)
			if got, want := r.All.Max, r.Latency.Max; got != want {
				t.Fatalf("All.Max=%v, want the slowest agent %v", got, want)
			}
			if !strings.Contains(r.Case, "watch "+watch) {
				t.Fatalf("case %q does not name the watch mode %s", r.Case, watch)
			}
			// The republish mode leaves no consumer; the consumer mode one per agent.
			consumers := map[string]string{"consumer": "consumers on the stream 3;", "republish": "consumers on the stream 0;"}[watch]
			if !strings.Contains(r.Note, consumers) || !strings.Contains(r.Note, "idle process CPU") {
				t.Fatalf("note %q lacks %q and the idle CPU", r.Note, consumers)
			}
			if len(rep.Results) != 4 {
				t.Fatalf("%d results, want 4 (the agents, raw core subscriptions, the same writing files, the disk alone)", len(rep.Results))
			}
			checkRaw(t, rep.Results[1:3], 3, 4)
			disk := rep.Results[3]
			if !strings.HasSuffix(disk.Case, "disk alone") || disk.Latency != nil {
				t.Fatalf("third result %+v, want the disk alone", disk)
			}
			checkSummary(t, "disk alone", disk.All, 4)
		})
	}
}

// checkRaw checks the fan-out without kvsync: raw core subscriptions, then
// the same each writing a file, n subscriptions and count rounds.
func checkRaw(t *testing.T, raws []bench.Result, n, count int) {
	t.Helper()
	for i, want := range []string{fmt.Sprintf("%d core subscriptions, raw", n), fmt.Sprintf("%d core subscriptions, each writes its file", n)} {
		r := raws[i]
		if !strings.Contains(r.Case, want) {
			t.Fatalf("result %+v, want %q", r, want)
		}
		checkSummary(t, r.Case, r.Latency, n*count)
		checkSummary(t, r.Case+", all", r.All, count)
	}
}

// The agents share two connections and the server is a process of its own:
// every agent converges, the server's figures are its own.
func TestBenchFanoutSharedConns(t *testing.T) {
	bin := testutil.NATSServerBin(t)
	rep := runBenchOn(t, "process nats://127.0.0.1:", "--scenario", "fanout", "--agents", "5", "--conns", "2", "--count", "3",
		"--pacing", "0", "--watch", "republish", "--nats-server", bin, "--fleet-idle", "300ms")
	if len(rep.Results) != 4 {
		t.Fatalf("%d results, want 4", len(rep.Results))
	}
	r := rep.Results[0]
	checkSummary(t, "per agent", r.Latency, 5*3)
	checkSummary(t, "all agents", r.All, 3)
	for _, want := range []string{"2 connections shared round-robin, 2-3 agents each", "server process RSS", "idle server CPU", "bench process (agents, no server)"} {
		if !strings.Contains(r.Note, want) {
			t.Fatalf("note %q lacks %q", r.Note, want)
		}
	}
	if r.ServerRSS <= 0 || r.ServerIdleCPU < 0 || r.ProcessIdleCPU < 0 || r.Consumers != 0 {
		t.Fatalf("ServerRSS=%d ServerIdleCPU=%v ProcessIdleCPU=%v Consumers=%d, want a server RSS, no negative CPU, no consumer (republish)",
			r.ServerRSS, r.ServerIdleCPU, r.ProcessIdleCPU, r.Consumers)
	}
	checkRaw(t, rep.Results[1:3], 5, 3)
	if !strings.Contains(rep.Results[1].Note, "over 2 connections") {
		t.Fatalf("raw fan-out note %q: want the agents' 2 connections", rep.Results[1].Note)
	}
}

// The server restarted under five agents: every agent catches up, on
// connections of its own and shared ones, in both watch modes.
func TestBenchStorm(t *testing.T) {
	bin := testutil.NATSServerBin(t)
	for _, tt := range []struct{ watch, conns, procs string }{{"consumer", "0", "1"}, {"republish", "2", "2"}} {
		t.Run(tt.watch, func(t *testing.T) {
			rep := runBenchOn(t, "process nats://127.0.0.1:", "--scenario", "storm", "--agents", "5", "--conns", tt.conns,
				"--procs", tt.procs, "--watch", tt.watch, "--nats-server", bin, "--fleet-idle", "300ms")
			if len(rep.Results) != 1 {
				t.Fatalf("%d results, want 1", len(rep.Results))
			}
			r := rep.Results[0]
			st := r.Storm
			if r.Scenario != "storm" || st == nil {
				t.Fatalf("result %+v, want the storm's", r)
			}
			checkSummary(t, "per agent", r.Latency, 5)
			checkSummary(t, "caught up", r.All, 1)
			if st.Down <= 0 || st.Reconnected <= 0 || st.PutAcked <= 0 || st.CaughtUp < st.PutAcked || st.CaughtUp < r.Latency.Max {
				t.Fatalf("storm %+v (slowest agent %v): want positive times, caught up after the put and the slowest agent", st, r.Latency.Max)
			}
			// The agents asked the first server (their initial sync) and the
			// restarted one (the bench's own API calls at least); at five
			// agents no queue comes near its limit.
			if st.APIBefore.Total == 0 || st.APIAfter.Total == 0 || st.Dropped != 0 || st.Advisories != 0 || st.DropLogLines != 0 {
				t.Fatalf("storm %+v: want API requests on both servers, none dropped", st)
			}
			if got, want := r.Consumers, map[string]int{"consumer": 5, "republish": 0}[tt.watch]; got != want {
				t.Fatalf("consumers before the restart: %d, want %d", got, want)
			}
			// Republish: the agents run in two agent-host children.
			share := map[string]string{"0": "of one process, one connection each", "2": "of 2 agent-host child processes (2-3 agents each; the bench process measures), 2 connections shared"}[tt.conns]
			if !strings.Contains(r.Note, share) || !strings.Contains(r.Note, "every agent was ready after") {
				t.Fatalf("note %q lacks %q or the caught-up time", r.Note, share)
			}
		})
	}
}

func TestBenchTable(t *testing.T) {
	var out, errOut bytes.Buffer
	c := &BenchCommand{io: ioStreams{in: strings.NewReader(""), out: &out, err: &errOut}, child: benchChild}
	if err := c.Run(context.Background(), []string{"--scenario", "burst", "--keys", "5", "--dir", t.TempDir()}); err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut.String())
	}
	for _, want := range []string{"SCENARIO", "THROUGHPUT", "burst", "50 puts over 5 keys"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("table lacks %q:\n%s", want, out.String())
		}
	}
	// Not a terminal: progress comes as log lines, one per step start and end.
	if got := strings.Count(errOut.String(), "bench: burst of 50 puts over 5 keys"); got != 4 {
		t.Fatalf("progress lines for the two bursts: %d, want 4:\n%s", got, errOut.String())
	}
}

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--scenario", "nope"},
		{"bench", "--pacing", "fast"},
		{"bench", "--agents", "0"},
		{"bench", "--watch", "pull"},
		{"bench", "--conns", "-1"},
		{"bench", "--procs", "0"},
		{"bench", "--procs", "3", "--conns", "2"}, // a connection per process at least
		{"bench", "--fleet-idle", "0s"},
		{"bench", "--scenario", "storm"},                                 // no server of its own to restart
		{"bench", "--nats-server", "/nonexistent/nats-server"},           // not a program
		{"bench", "--nats-server", "nats-server", "-s", "nats://x:4222"}, // two servers
		{"bench", "extra"},
	} {
		var out, errOut bytes.Buffer
		if got, want := run(context.Background(), args, strings.NewReader(""), &out, &errOut), exitUsage; got != want {
			t.Fatalf("%v: exit %d, want %d (%s)", args, got, want, errOut.String())
		}
	}
	if !slices.Contains(bench.Scenarios(), "fanout") {
		t.Fatalf("Scenarios()=%v lacks fanout", bench.Scenarios())
	}
}

// kvsync keeps no heap profile: sampling is off from init on (idle RSS).
func TestNoHeapProfileSampling(t *testing.T) {
	if runtime.MemProfileRate != 0 {
		t.Fatalf("runtime.MemProfileRate=%d, want 0", runtime.MemProfileRate)
	}
}
