package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvsync/kvsync/agent"
)

// agentFleet is the agents of the fanout and storm scenarios: each projects
// the key "fan" of one bucket into a folder of its own.
type agentFleet struct {
	agents []*running
	// conns are the connections the agents share (Options.Conns), closed
	// once every agent has stopped; empty when each agent has its own.
	conns []*nats.Conn
}

// startFleet starts one agent per folder of dirs, each following bucket in
// the scenario's watch mode, and waits until every one is ready.
//
// With Options.Conns set (and below the number of agents), the agents share
// that many connections round-robin. An agent given a connection installs
// two handlers on it when it starts: the asynchronous error handler
// (permission refusals, chained to the handler already there for other
// errors) and the reconnect handler (chained to the one already there, so
// every agent of a connection hears of its reconnects and re-checks its
// watcher). Each install reads the handler in place and replaces it, so two
// agents starting at once on one connection could lose one's handler:
// agents are started in waves of one per connection, the next wave once
// the previous one is ready (Run installs the handlers before anything else).
// What the agents of a connection share: its socket, its reader goroutine and
// buffers, its name, its PINGs, its reconnects, and its permission refusals,
// which are recorded by the last agent started on it (this bench's server
// refuses nothing).
func (e *env) startFleet(ctx context.Context, bucket string, dirs []string) (*agentFleet, error) {
	n := len(dirs)
	f := &agentFleet{}
	c := e.o.Conns
	if c >= n {
		c = 0
	}
	step := e.prog.start(fmt.Sprintf("start %d agents on %d connections", n, e.connCount(n)), n)
	defer step.done()
	for range c {
		nc, _, err := e.connect(ctx)
		if err != nil {
			f.stop()
			return nil, err
		}
		f.conns = append(f.conns, nc)
	}
	fsync := e.o.Fsync
	wave := n // one per agent: start all, then wait
	if c > 0 {
		wave = c
	}
	for first := 0; first < n; first += wave {
		last := min(first+wave, n)
		for i := first; i < last; i++ {
			cfg := e.baseConfig()
			cfg.Watch.Mode = e.watchMode()
			cfg.Files = []agent.FilesConfig{{Name: "files", Bucket: bucket, Keys: []string{"fan"}, Dir: dirs[i], Fsync: &fsync}}
			var shared *nats.Conn
			if c > 0 {
				shared = f.conns[i%c]
			}
			r, err := e.startAgentOn(ctx, cfg, shared)
			if err != nil {
				f.stop()
				return nil, fmt.Errorf("agent %d: %w", i, err)
			}
			f.agents = append(f.agents, r)
			if c == 0 {
				step.set(i + 1)
			}
		}
		for i := first; i < last; i++ {
			if err := f.agents[i].waitReady(ctx, 2*time.Minute); err != nil {
				f.stop()
				return nil, fmt.Errorf("agent %d: %w", i, err)
			}
			if c > 0 {
				step.set(i + 1)
			}
		}
	}
	return f, nil
}

// stop stops every agent, then closes the shared connections.
func (f *agentFleet) stop() {
	stopAll(f.agents)
	for _, nc := range f.conns {
		nc.Close()
	}
	f.agents, f.conns = nil, nil
}

// connected reports whether every agent's connection is up.
func (f *agentFleet) connected() bool {
	for _, nc := range f.conns {
		if !nc.IsConnected() {
			return false
		}
	}
	for _, r := range f.agents {
		if !r.nc.IsConnected() {
			return false
		}
	}
	return true
}

// ready reports how many agents are ready.
func (f *agentFleet) ready() int {
	k := 0
	for _, r := range f.agents {
		if r.a.Ready() {
			k++
		}
	}
	return k
}

// connCount is the number of connections the agents of a fleet of n use.
func (e *env) connCount(n int) int {
	if e.o.Conns > 0 && e.o.Conns < n {
		return e.o.Conns
	}
	return n
}

// shareNote says where n agents run and how they hold their connections.
func (e *env) shareNote(n int) string {
	where := "as goroutines of one process"
	if p := min(e.o.Procs, n); p > 1 {
		where = fmt.Sprintf("as goroutines of %d agent-host child processes (%d-%d agents each; the bench process measures)", p, n/p, (n+p-1)/p)
	}
	c := e.connCount(n)
	if c == n {
		return where + ", one connection each"
	}
	where += ", "
	return where + fmt.Sprintf("%d connections shared round-robin, %d-%d agents each (connection, its reader goroutine, buffers, pings and reconnects shared; each agent's own subscriptions, consumer or republish subscription, handlers chained)",
		c, n/c, (n+c-1)/c)
}
