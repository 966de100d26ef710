package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/kvsync/kvsync/agent"
)

// A files projection holds four descriptors while it runs (its folder twice,
// its state folder, its manifest), so one process with a file limit of
// 20,000 hosts fewer than 5,000 agents. With Options.Procs the fanout and
// storm agents run in that many child processes (`kvsync bench
// --agent-host`), each hosting its share of the agents as goroutines; the
// bench process keeps the measuring: it watches every agent's folder, makes
// the puts, and reads the children's memory and CPU from /proc.

// HostJob is what an agent-host child runs: one agent per folder in Dirs,
// each following the key "fan" of Bucket, sharing Conns connections (0: one
// each).
type HostJob struct {
	NATS   agent.NATSConfig `json:"nats"`
	Bucket string           `json:"bucket"`
	Watch  string           `json:"watch"`
	Fsync  bool             `json:"fsync"`
	Conns  int              `json:"conns"`
	Dirs   []string         `json:"dirs"`
}

// HostAgents is the agent-host child: it reads a HostJob (one JSON line)
// from in, starts its agents, writes "ready" to out once every one is ready,
// then answers each "status" line with "status CONNECTED READY" (1 when every
// connection is up, else 0; the number of agents ready) until in ends, and
// then stops the agents.
func HostAgents(ctx context.Context, in io.Reader, out io.Writer, logger *slog.Logger) error {
	r := bufio.NewReader(in)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read the job: %w", err)
	}
	var job HostJob
	if err := json.Unmarshal(line, &job); err != nil {
		return fmt.Errorf("read the job: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &env{o: Options{Fsync: job.Fsync, Watch: job.Watch, Conns: job.Conns}, nats: job.NATS, logger: logger, prog: &progress{}}
	fl, err := e.startFleet(ctx, job.Bucket, job.Dirs)
	if err != nil {
		return err
	}
	defer fl.stop()
	if _, err := fmt.Fprintln(out, "ready"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil // the bench is done with this host
		}
		if strings.TrimSpace(line) != "status" {
			return fmt.Errorf("unknown request %q", strings.TrimSpace(line))
		}
		up := 0
		if fl.connected() {
			up = 1
		}
		if _, err := fmt.Fprintf(out, "status %d %d\n", up, fl.ready()); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
}

// fleet is the agents of a fanout or storm run, in this process
// (agentFleet) or in agent-host children (hostFleet).
type fleet interface {
	stop()
	connected() bool
	ready() int
	pids() []int // the processes that host agents besides this one
}

func (f *agentFleet) pids() []int { return nil }

// hostFleet is agents hosted by child processes.
type hostFleet struct {
	hosts []*host
}

type host struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr *tailBuffer
	mu     sync.Mutex // one request at a time
}

// startHosts splits dirs over Options.Procs agent-host children, each
// sharing its part of Options.Conns, and waits until every agent is ready.
func (e *env) startHosts(ctx context.Context, bucket string, dirs []string) (*hostFleet, error) {
	p := min(e.o.Procs, len(dirs))
	f := &hostFleet{}
	step := e.prog.start(fmt.Sprintf("start %d agents in %d processes", len(dirs), p), p)
	defer step.done()
	for i := range p {
		part := dirs[len(dirs)*i/p : len(dirs)*(i+1)/p]
		conns := 0
		if e.o.Conns > 0 {
			conns = max(1, e.o.Conns*(i+1)/p-e.o.Conns*i/p)
		}
		h, err := e.startHost(ctx, HostJob{NATS: e.nats, Bucket: bucket, Watch: e.watchMode(), Fsync: e.o.Fsync, Conns: conns, Dirs: part})
		if err != nil {
			f.stop()
			return nil, err
		}
		f.hosts = append(f.hosts, h)
	}
	for i, h := range f.hosts {
		ready := make(chan error, 1)
		go func() {
			_, err := h.reply("ready")
			ready <- err
		}()
		var err error
		select {
		case err = <-ready:
		case <-time.After(10 * time.Minute):
			err = errors.New("not ready within 10m")
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			f.stop()
			return nil, fmt.Errorf("agent host %d: %w: %s", i, err, h.stderr.String())
		}
		step.set(i + 1)
	}
	return f, nil
}

// startHost starts one agent-host child and hands it its job.
func (e *env) startHost(ctx context.Context, job HostJob) (*host, error) {
	args := []string{"bench", "--agent-host"}
	var cmd *exec.Cmd
	if e.o.Child != nil {
		cmd = e.o.Child(context.WithoutCancel(ctx), args...)
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find kvsync: %w", err)
		}
		cmd = exec.Command(exe, args...)
	}
	h := &host{cmd: cmd, stderr: &tailBuffer{max: 8 << 10}}
	cmd.Stderr = h.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("agent host: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("agent host: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent host: %w", err)
	}
	h.stdin, h.out = stdin, bufio.NewReader(stdout)
	b, err := json.Marshal(job)
	if err == nil {
		_, err = fmt.Fprintf(stdin, "%s\n", b)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("agent host job: %w", err)
	}
	return h, nil
}

// status asks a host how its agents are.
func (h *host) status() (connected bool, ready int, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := io.WriteString(h.stdin, "status\n"); err != nil {
		return false, 0, err
	}
	line, err := h.reply("status ")
	if err != nil {
		return false, 0, err
	}
	var up int
	if _, err := fmt.Sscanf(line, "status %d %d", &up, &ready); err != nil {
		return false, 0, fmt.Errorf("agent host said %q", line)
	}
	return up == 1, ready, nil
}

// reply reads the host's output up to the next line that starts with
// prefix (a test binary standing in for kvsync may print lines of its own).
func (h *host) reply(prefix string) (string, error) {
	for {
		line, err := h.out.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("agent host: %w", err)
		}
		if strings.HasPrefix(line, prefix) {
			return line, nil
		}
	}
}

func (f *hostFleet) connected() bool {
	for _, h := range f.hosts {
		if up, _, err := h.status(); err != nil || !up {
			return false
		}
	}
	return true
}

func (f *hostFleet) ready() int {
	k := 0
	for _, h := range f.hosts {
		if _, n, err := h.status(); err == nil {
			k += n
		}
	}
	return k
}

func (f *hostFleet) pids() []int {
	var out []int
	for _, h := range f.hosts {
		out = append(out, h.cmd.Process.Pid)
	}
	return out
}

// stop ends every host's input, so that it stops its agents and exits, and
// waits for them (killed after 60 s).
func (f *hostFleet) stop() {
	var wg sync.WaitGroup
	for _, h := range f.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.mu.Lock()
			_ = h.stdin.Close() // the host stops on end of input
			h.mu.Unlock()
			done := make(chan struct{})
			go func() {
				_ = h.cmd.Wait()
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				_ = h.cmd.Process.Kill()
				<-done
			}
		}()
	}
	wg.Wait()
	f.hosts = nil
}

// startAgents starts the fanout or storm agents, in this process or, with
// Options.Procs above 1, in agent-host children.
func (e *env) startAgents(ctx context.Context, bucket string, dirs []string) (fleet, error) {
	if e.o.Procs > 1 {
		return e.startHosts(ctx, bucket, dirs)
	}
	return e.startFleet(ctx, bucket, dirs)
}
