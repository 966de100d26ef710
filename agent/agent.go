package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/agent/process"
	"github.com/kvsync/kvsync/projector"
)

// Options are the run-time choices of one agent that are not part of the
// config file.
type Options struct {
	Logger *slog.Logger
	// Once renders everything once, runs no action and no child, and returns:
	// an init container. Run returns ErrIncomplete if anything could not be
	// written (a missing key, a write error).
	Once bool
	// DryRun computes and logs every change but writes nothing and acts on nothing.
	DryRun bool
	// Conn, when set, is used instead of dialing cfg.NATS (kvsync dev, tests).
	// The agent does not close it.
	Conn *nats.Conn
	// Reloads delivers a value for each reload request (SIGHUP); Reload loads
	// the new config. A config that fails to load or validate keeps the old one.
	Reloads <-chan struct{}
	Reload  func() (*Config, error)
	// Listener, when set, serves the HTTP endpoints instead of cfg.HTTP.Listen.
	// Run closes it when it returns; Once mode does not use it.
	Listener net.Listener
	// Version is kvsync's version, shown in the fleet record.
	Version string
}

// ErrIncomplete is returned by Run in Once mode when a projection could not be
// written completely.
var ErrIncomplete = errors.New("projection incomplete")

// ChildExit is returned by Run when the exec child exited by itself; Code is
// its exit code, which kvsync exits with.
type ChildExit struct{ Code int }

func (e *ChildExit) Error() string { return fmt.Sprintf("child exited with code %d", e.Code) }

// Agent keeps projections in step with buckets. Create it with New, start it
// with Run, once: Run's goroutines are gone when it returns, but for the
// few that wait on a process rather than on the agent (see the package
// comment).
type Agent struct {
	cfg     *Config
	opts    Options
	logger  *slog.Logger
	metrics *metrics

	status atomic.Pointer[Status]           // the latest snapshot, served by /status
	warned projector.WarnOnce               // in-place write fallbacks already logged
	reaper *process.Reaper                  // set when kvsync is PID 1 or a subreaper
	exec   atomic.Pointer[process.ExecLoop] // the exec child's loop, when there is one
	ready  atomic.Bool
	conn   atomic.Bool

	refusals *Refusals     // permissions the server refused; conn.go sets its handlers
	link     natsconn.Link // whether the server is still heard from
	rendered sync.Map      // templateKey of every template that rendered in this process; kept across reloads
	started  time.Time     // when New ran, shown in the fleet record
	rep      *reporter     // keeps the fleet record; nil in Once and DryRun mode

	js      atomic.Pointer[jetstream.JetStream] // set by Run, for /status
	mirrors natsconn.MirrorCache                // the mirror state /status shows
}

// jetStream is the agent's JetStream handle once Run made it, else nil.
func (a *Agent) jetStream() jetstream.JetStream {
	if p := a.js.Load(); p != nil {
		return *p
	}
	return nil
}

// New checks cfg and returns an agent. It starts no goroutine, opens no
// connection and writes nothing; its only I/O is cfg.Validate's reading of
// the templates: each source and file_root is looked up, and each source
// read and parsed.
func New(cfg *Config, opts Options) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, opts: opts, logger: opts.Logger, metrics: newMetrics(), refusals: natsconn.NewRefusals(), started: time.Now()}
	a.link.StaleGauge = a.metrics.linkStale
	a.connHandlers()
	a.status.Store(&Status{})
	if !opts.Once && !opts.DryRun {
		a.rep = newReporter(opts.Logger) // connected in Run
	}
	return a, nil
}

// Run connects, starts the watchers and projections, serves HTTP, and returns
// when ctx is done (nil), when the exec child exits (*ChildExit), in Once mode
// when everything was written, or on a fatal error, a failure of the HTTP
// server among them. It returns only after every goroutine it started has
// returned, but for those that wait on a process (the reader of a command
// action's output that a daemon keeps open, the reaper's waits for children
// still running): see the package comment.
//
// Run first opens the HTTP listener, so that an address in use fails it at
// once, before it connects to NATS and before anything is written; then it
// connects. From there it is a group of actors (see group): the first actor
// to return stops the others, one after the other, in this order:
//
//  1. projections: the running config (the owner with its watchers,
//     projections, actions and push-back) and its reloads. It returns when
//     ctx is done, when the exec child exits by itself, in Once mode when
//     everything was written, or on a fatal error. Stopping it first stops
//     all writing, and waits for the last action.
//  2. exec: the exec child's loop. The child is stopped (kill_signal, SIGKILL
//     after kill_timeout) only after the last action ran.
//  3. reaper: as PID 1 or a subreaper, the waiter of every child; it
//     outlives the exec child and the command actions.
//  4. report: the fleet record, purged on the way out while the connection
//     is still open.
//  5. http: the endpoints answer until here.
//  6. link: the stale-link monitor.
//
// The NATS connection, when Run dialled it, is closed after all of them.
func (a *Agent) Run(ctx context.Context) error {
	var ln net.Listener
	if !a.opts.Once {
		var err error
		if ln, err = a.listen(); err != nil {
			return err
		}
	}
	nc, js, reconnects, closeConn, err := a.connect(ctx)
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	defer closeConn()

	// As PID 1 or a subreaper, kvsync reaps orphans. The one reaper is then
	// the only waiter for children: the exec child and command actions get
	// their exit status from it.
	if process.ReaperWanted() {
		a.reaper = process.NewReaper(a.logger)
	}
	var exec *process.ExecLoop
	var child execChild // stays nil, not a nil *process.ExecLoop, without a child
	if a.cfg.Exec != nil && !a.opts.Once && !a.opts.DryRun {
		exec, err = process.NewExecLoop(*a.cfg.Exec, a.logger, a.reaper, a.metrics)
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			return err
		}
		a.exec.Store(exec)
		child = exec
	}

	// Every actor but the first runs on a context of its own, which only its
	// interrupt cancels: ctx ending stops the projections, and the group
	// stops the rest in order.
	base := context.WithoutCancel(ctx)
	g := group{logger: a.logger}
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	g.add("projections",
		func() error { return a.runConfigs(pctx, js, child, reconnects) },
		func(error) { pcancel() })
	if exec != nil {
		ectx, ecancel := context.WithCancel(base)
		defer ecancel()
		g.add("exec",
			func() error { exec.Run(ectx); return nil },
			func(error) { ecancel() })
	}
	if a.reaper != nil {
		rctx, rcancel := context.WithCancel(base)
		defer rcancel()
		g.add("reaper",
			func() error { a.reaper.Run(rctx); return nil },
			func(error) { rcancel() })
	}
	// The reporter outlives reloads: a reload must not delete the record.
	if a.rep != nil {
		a.rep.js = js
		rctx, rcancel := context.WithCancel(base)
		defer rcancel()
		g.add("report",
			func() error { a.rep.run(rctx); return nil },
			func(error) { rcancel() })
	}
	if ln != nil {
		h := a.newHTTPServer(ln)
		g.add("http", h.serve, func(error) { h.stop() })
	}
	lctx, lcancel := context.WithCancel(base)
	defer lcancel()
	g.add("link",
		func() error { a.link.Run(lctx, nc, a.logger); return nil },
		func(error) { lcancel() })
	return g.run()
}

// connect dials cfg.NATS, or takes Options.Conn, and makes the JetStream
// handle. reconnects gets a value for each reconnect. closeConn closes the
// connection when connect dialled it, and does nothing for Options.Conn.
func (a *Agent) connect(ctx context.Context) (nc *nats.Conn, js jetstream.JetStream, reconnects chan struct{}, closeConn func(), err error) {
	reconnects = make(chan struct{}, 1)
	closeConn = func() {}
	nc = a.opts.Conn
	if nc == nil {
		nc, err = natsconn.Connect(ctx, a.cfg.NATS,
			nats.ErrorHandler(a.refusals.Handler(nil)),
			nats.Name(connName(a.cfg)),
			nats.ConnectHandler(func(*nats.Conn) { a.setConnected(true) }),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				a.setConnected(false)
				if err != nil {
					a.logger.Warn("disconnected from NATS", "err", err)
				}
			}),
			nats.ReconnectHandler(func(c *nats.Conn) {
				a.setConnected(true)
				a.logger.Info("reconnected to NATS", "url", c.ConnectedUrlRedacted())
				select {
				case reconnects <- struct{}{}:
				default:
				}
			}),
		)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		closeConn = nc.Close
	} else {
		nc.SetErrorHandler(a.refusals.Handler(nc.Opts.AsyncErrorCB))
		prev := nc.Opts.ReconnectedCB
		nc.SetReconnectHandler(func(c *nats.Conn) {
			if prev != nil {
				prev(c)
			}
			select {
			case reconnects <- struct{}{}:
			default:
			}
		})
	}
	a.setConnected(nc.IsConnected())
	js, err = natsconn.JetStream(nc, a.cfg.NATS)
	if err != nil {
		closeConn()
		return nil, nil, nil, nil, err
	}
	a.js.Store(&js)
	return nc, js, reconnects, closeConn, nil
}

// runConfigs runs the config, and each config a reload brings, until ctx is
// done or the running one ends.
func (a *Agent) runConfigs(ctx context.Context, js jetstream.JetStream, exec execChild, reconnects <-chan struct{}) error {
	cfg := a.cfg
	for {
		rctx, rcancel := context.WithCancel(ctx)
		res := make(chan error, 1)
		go func() { res <- a.runConfig(rctx, cfg, js, exec, reconnects) }()
		next, err := a.awaitReload(res)
		rcancel()
		if next == nil {
			return err
		}
		// The running config is waited for before the next one starts.
		if err := <-res; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		cfg = next
	}
}

// awaitReload waits for the running config to end (nil, its error) or for a
// reload whose config loads (the new config). A config that does not load is
// logged and the running one kept.
func (a *Agent) awaitReload(res <-chan error) (*Config, error) {
	for {
		select {
		case err := <-res:
			return nil, err
		case <-a.opts.Reloads:
			next, err := a.opts.Reload()
			if err != nil {
				a.logger.Error("reload: keeping the running config", "err", err)
				continue
			}
			if !reflect.DeepEqual(next.Exec, a.cfg.Exec) {
				a.logger.Warn("reload: exec: changed; the running child is kept, restart kvsync to apply it")
			}
			a.logger.Info("reload: applying the new config")
			return next, nil
		}
	}
}

func (a *Agent) setConnected(up bool) {
	a.conn.Store(up)
	if up {
		a.metrics.connected.Set(1)
	} else {
		a.metrics.connected.Set(0)
	}
}

// runConfig runs one configuration until ctx is done.
func (a *Agent) runConfig(ctx context.Context, cfg *Config, js jetstream.JetStream, exec execChild, reconnects <-chan struct{}) error {
	if err := natsconn.Provision(ctx, js, cfg.Buckets, a.logger); err != nil {
		return err
	}
	o, err := newOwner(cfg, a, js, exec)
	if err != nil {
		return err
	}
	return o.run(ctx, reconnects)
}

// Ready reports whether every projection finished its initial sync, no
// bucket is missing, and every template rendered at least once.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Status returns the latest status snapshot.
// The exec child's part is read at the time of the call: the child restarts
// on the exec loop's own time, after the owner published its snapshot.
func (a *Agent) Status() *Status {
	c := *a.status.Load()
	if l := a.exec.Load(); l != nil {
		c.Child = l.Status()
	}
	if a.rep != nil {
		if r := a.rep.Status(); r.Bucket != "" {
			c.Report = r
		}
	}
	return &c
}

// Status is the JSON document served by GET /status.
type Status struct {
	ID          string             `json:"id"`
	Labels      map[string]string  `json:"labels,omitempty"`
	Ready       bool               `json:"ready"`
	Connected   bool               `json:"connected"`
	Connection  *ConnStatus        `json:"connection,omitempty"`
	Buckets     []BucketStatus     `json:"buckets"`
	Projections []ProjectionStatus `json:"projections"`
	Child       *ChildStatus       `json:"child,omitempty"`
	Report      *ReportStatus      `json:"report,omitempty"`
}

// BucketStatus is one watched bucket.
type BucketStatus struct {
	Name         string `json:"name"`
	Synced       bool   `json:"synced"`
	Missing      bool   `json:"missing"`
	Keys         int    `json:"keys"`
	LastRevision uint64 `json:"last_revision"`
	// ConsumerLimit: the server refuses this agent's consumer because the
	// bucket's stream holds as many consumers as it may; Error says what to
	// change. The agent is not ready while it lasts.
	ConsumerLimit bool   `json:"consumer_limit_reached,omitempty"`
	Error         string `json:"error,omitempty"`
	// Mirror is set when the bucket is a mirror of a bucket elsewhere.
	Mirror *MirrorStatus `json:"mirror,omitempty"`
}

// ProjectionStatus is one projection.
type ProjectionStatus struct {
	Name         string        `json:"name"`
	Kind         string        `json:"kind"`
	Buckets      []string      `json:"buckets"`
	Target       string        `json:"target"`
	Synced       bool          `json:"synced"`
	Keys         int           `json:"keys_projected"`
	LastRevision uint64        `json:"last_revision"`
	LastWrite    *time.Time    `json:"last_write,omitempty"`
	LastAction   *ActionStatus `json:"last_action,omitempty"`
	WaitingOn    []string      `json:"waiting_on,omitempty"`
	Rejected     []string      `json:"rejected,omitempty"`
	LastError    string        `json:"last_error,omitempty"`
	LastErrorAt  *time.Time    `json:"last_error_at,omitempty"`

	// Safe apply: the last check of a staged output, and the revision
	// rejected by a rollback (until a newer one goes live).
	LastCheck  *CheckStatus    `json:"last_check,omitempty"`
	RolledBack *RollbackStatus `json:"rolled_back,omitempty"`
	NotReady   string          `json:"not_ready,omitempty"` // why the projection holds readiness back (a template that never rendered)
}

// ActionStatus is the last run of a projection's on_change action.
type ActionStatus struct {
	Kind     string    `json:"kind"`
	Detail   string    `json:"detail"`
	Trigger  string    `json:"trigger"`
	At       time.Time `json:"at"`
	Duration string    `json:"duration"`
	Error    string    `json:"error,omitempty"`
}

// ChildStatus is the exec child.
type ChildStatus = process.ChildStatus
