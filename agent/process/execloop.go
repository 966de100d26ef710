package process

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kvsync/kvsync/internal/retry"
)

// ExecLoop owns the supervised child for the agent's whole life (it survives
// config reloads). The owner hands it the environment; it starts the child
// after the initial sync and restarts or signals it when the environment
// changes, once per batch.
//
// When the child exits by itself, exec.on_exit decides: exit (kvsync exits
// with the child's code), restart, or restart-on-failure (restart unless the
// code is 0). A restart waits restart_backoff: min after the first exit,
// doubling after each further one up to max, each delay jittered to a random
// point of its upper half, so that a fleet of crashing children does not
// restart in step. A child that stayed up at least max resets the delay to
// min. Once kvsync forwarded SIGINT, SIGTERM or SIGQUIT to the child, its
// exit ends kvsync whatever on_exit says: `docker stop` must stop it.
type ExecLoop struct {
	cfg     ExecConfig
	sup     *supervisor
	logger  *slog.Logger
	metrics Metrics
	inherit []string // what the child inherits of kvsync's environment
	exit    chan int // exit codes for the agent, per on_exit
	now     func() time.Time

	mu        sync.Mutex
	env       []string // the projected variables
	started   bool
	restarts  int
	kick      chan struct{}
	startedAt time.Time     // when the running child was started
	backoff   time.Duration // the next restart delay
	exits     int
	exitRuns  int // starts after an exit
	lastCode  *int
	lastExit  *time.Time
	nextStart *time.Time
}

// Metrics counts what happens to the exec child; the agent exports the counts.
type Metrics interface {
	ChildExited(code int)         // the child exited by itself with code
	ChildRestarted()              // it was started again after such an exit
	ChildBackoff(d time.Duration) // the delay before that start; 0 once it is due
}

// ChildStatus is the exec child, as /status shows it.
type ChildStatus struct {
	PID      int    `json:"pid"`
	Command  string `json:"command"`
	Restarts int    `json:"restarts"`

	// Exits: how often the child exited by itself, its last exit code and
	// when, and, with on_exit: restart, when the next start is due.
	Exits         int        `json:"exits"`
	ExitRestarts  int        `json:"exit_restarts"`
	LastExitCode  *int       `json:"last_exit_code,omitempty"`
	LastExitAt    *time.Time `json:"last_exit_at,omitempty"`
	NextRestartAt *time.Time `json:"next_restart_at,omitempty"`
	Backoff       string     `json:"backoff,omitempty"`
}

// NewExecLoop prepares the loop of the exec child described by cfg (after
// ExecConfig.Default); it starts nothing. With a reaper, the child is waited
// by it. m counts the child's exits and restarts.
func NewExecLoop(cfg ExecConfig, logger *slog.Logger, reaper *Reaper, m Metrics) (*ExecLoop, error) {
	if cfg.RestartBackoff.Min <= 0 {
		cfg.RestartBackoff.Min = time.Second
	}
	cfg.RestartBackoff.Max = max(cfg.RestartBackoff.Max, cfg.RestartBackoff.Min)
	l := &ExecLoop{
		cfg: cfg, logger: logger.With("exec", cfg.Command[0]), kick: make(chan struct{}, 1),
		metrics: m, exit: make(chan int, 1), now: time.Now,
		inherit: inheritEnv(os.Environ(), cfg.Env), backoff: cfg.RestartBackoff.Min,
	}
	var opts []Option
	if reaper != nil {
		opts = append(opts, WithReaper(reaper))
	}
	sup, err := newSupervisor(cfg, l.logger, opts...)
	if err != nil {
		return nil, err
	}
	l.sup = sup
	return l, nil
}

// inheritEnv is the part of environ (NAME=value pairs) the child inherits
// under env: nothing when pristine; else the names that match an allow
// pattern (every name when there is none) and no deny pattern; then set.
func inheritEnv(environ []string, env ExecEnvConfig) []string {
	var out []string
	if !env.Pristine {
		for _, kv := range environ {
			name, _, _ := strings.Cut(kv, "=")
			if len(env.Allow) > 0 && !matchAnyGlob(env.Allow, name) {
				continue
			}
			if matchAnyGlob(env.Deny, name) {
				continue
			}
			out = append(out, kv)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(env.Set)) {
		out = append(out, name+"="+env.Set[name])
	}
	return out
}

// matchAnyGlob reports whether name matches one of the (validated) patterns.
func matchAnyGlob(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// environ is the child's whole environment: what it inherits, then the
// projected variables (which win a name both define).
func (l *ExecLoop) environ(projected []string) []string {
	return append(slices.Clip(l.inherit), projected...)
}

// Update hands over the latest projected variables. The first call starts
// the child.
func (l *ExecLoop) Update(env []string) {
	l.mu.Lock()
	l.env = env
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Exited delivers the exit code of a child that exited by itself and is not
// restarted (exec.on_exit): the agent exits with it.
func (l *ExecLoop) Exited() <-chan int { return l.exit }

// Restart is the {restart: true} action.
func (l *ExecLoop) Restart(ctx context.Context) error {
	l.mu.Lock()
	env, started := l.env, l.started
	l.mu.Unlock()
	if !started {
		return nil // it starts with the current files anyway
	}
	if err := l.sup.Restart(ctx, l.environ(env)); err != nil {
		return err
	}
	l.mu.Lock()
	l.restarts++
	l.startedAt = l.now()
	l.mu.Unlock()
	return nil
}

// Status is the child's part of the agent's status, read now.
func (l *ExecLoop) Status() *ChildStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := &ChildStatus{
		PID: l.sup.PID(), Command: strings.Join(l.cfg.Command, " "), Restarts: l.restarts,
		Exits: l.exits, ExitRestarts: l.exitRuns, LastExitCode: l.lastCode, LastExitAt: l.lastExit,
		NextRestartAt: l.nextStart,
	}
	if l.cfg.OnExit != OnExitExit && l.cfg.OnExit != "" {
		st.Backoff = l.backoff.String()
	}
	return st
}

// childExited handles an exit of the child by itself. It returns the delay
// before the next start, or false when kvsync exits with code instead.
func (l *ExecLoop) childExited(code int) (time.Duration, bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.exits++
	l.lastCode, l.lastExit = &code, &now
	l.metrics.ChildExited(code)
	switch {
	case l.sup.terminating.Load():
		return 0, false // kvsync was told to stop: the child's exit ends it
	case l.cfg.OnExit == OnExitRestart:
	case l.cfg.OnExit == OnExitRestartOnFailure && code != 0:
	default:
		return 0, false
	}
	b := l.cfg.RestartBackoff
	if now.Sub(l.startedAt) >= b.Max {
		l.backoff = b.Min // it ran well for a while: this is not a crash loop
	}
	d := l.backoff
	l.backoff = min(2*l.backoff, b.Max)
	d = retry.EqualJitter(d, nil)
	next := now.Add(d)
	l.nextStart = &next
	l.metrics.ChildBackoff(d)
	return d, true
}

// Run starts, restarts and finally stops the child. On return the child is gone.
func (l *ExecLoop) Run(ctx context.Context) {
	fctx, fcancel := context.WithCancel(context.Background())
	var fwd sync.WaitGroup
	fwd.Go(func() { l.sup.forwardSignals(fctx) })
	defer fwd.Wait()
	defer fcancel()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), l.cfg.KillTimeout+5*time.Second)
		defer cancel()
		if err := l.sup.Stop(sctx); err != nil {
			l.logger.Error("stop child", "err", err)
		}
	}()
	var restartC <-chan time.Time // set while a restart after an exit is due
	var restartT *time.Timer
	defer func() {
		if restartT != nil {
			restartT.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case code := <-l.sup.Exited():
			d, again := l.childExited(code)
			if !again {
				select {
				case l.exit <- code:
				default:
				}
				continue
			}
			l.logger.Warn("exec child exited; restarting it after a delay", "exit_code", code, "delay", d, "on_exit", l.cfg.OnExit)
			restartT = time.NewTimer(d)
			restartC = restartT.C
			continue
		case <-restartC:
			restartC = nil
			l.startAfterExit()
			continue
		case <-l.kick:
		}
		l.mu.Lock()
		env, started := l.env, l.started
		l.mu.Unlock()
		if !started {
			if err := l.sup.Start(l.environ(env)); err != nil {
				l.logger.Error("start child", "err", err)
				continue
			}
			l.mu.Lock()
			l.started, l.startedAt = true, l.now()
			l.mu.Unlock()
			l.logger.Info("child started", "pid", l.sup.PID())
			continue
		}
		if restartC != nil {
			continue // the restart after the exit takes the new environment
		}
		switch l.cfg.OnChange {
		case ExecRestart:
			old := l.sup.PID()
			if err := l.sup.Restart(ctx, l.environ(env)); err != nil {
				l.logger.Error("restart child", "err", err)
				continue
			}
			l.mu.Lock()
			l.restarts++
			l.startedAt = l.now()
			l.mu.Unlock()
			l.logger.Info("child restarted: environment changed", "old_pid", old, "pid", l.sup.PID())
		case ExecSignal:
			sig, _ := ParseSignal(l.cfg.Signal)
			if err := l.sup.Signal(sig); err != nil {
				l.logger.Error("signal child", "signal", l.cfg.Signal, "err", err)
				continue
			}
			l.logger.Info("child signalled: environment changed", "signal", l.cfg.Signal, "pid", l.sup.PID())
		case ExecNone:
			l.logger.Info("environment changed; exec.on_change is none, child keeps its environment")
		}
	}
}

// startAfterExit starts the child again after an exit (exec.on_exit). A
// child that cannot start counts as an exit with code -1 and is tried again
// after the next delay.
func (l *ExecLoop) startAfterExit() {
	l.mu.Lock()
	env := l.env
	l.nextStart = nil
	l.mu.Unlock()
	l.metrics.ChildBackoff(0)
	if l.sup.PID() != 0 {
		return // a restart action started it already
	}
	err := l.sup.Start(l.environ(env))
	l.mu.Lock()
	l.exitRuns++
	l.startedAt = l.now()
	l.mu.Unlock()
	l.metrics.ChildRestarted()
	if err != nil {
		l.logger.Error("start child after its exit", "err", err)
		select {
		case l.sup.exited <- -1:
		default:
		}
		return
	}
	l.logger.Info("child started again after its exit", "pid", l.sup.PID())
}
