package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors of the exec supervisor that callers branch on.
var (
	// errNoChild: there is no exec child running to signal.
	errNoChild = errors.New("no exec child running")
	// errSupervisorStopped: Stop was called; the supervisor starts nothing any more.
	errSupervisorStopped = errors.New("exec supervisor stopped")
)

const (
	// defaultKillTimeout applies when ExecConfig.KillTimeout is zero.
	defaultKillTimeout = 10 * time.Second
	// killWait bounds the wait for a child's exit after SIGKILL. A process
	// stuck in uninterruptible sleep does not die; kvsync must not hang on it.
	killWait = 5 * time.Second
)

// procOptions are the options shared by newSupervisor and NewActionRunner.
type procOptions struct {
	reaper *Reaper
}

// Option sets an option of newSupervisor or NewActionRunner.
type Option func(*procOptions)

// WithReaper makes the children started by a supervisor or an action runner
// be waited by r, which must be run (go r.Run(ctx)). The agent turns it on
// when ReaperWanted() is true, and then gives the same r to the supervisor
// and to every action runner: a child started without it would have its exit
// status taken by r's wait4(-1).
func WithReaper(r *Reaper) Option {
	return func(o *procOptions) { o.reaper = r }
}

// procChild is a started child process whose exit is reported exactly once.
type procChild struct {
	pid  int
	done chan struct{} // closed after the child exited and was reaped
	ws   syscall.WaitStatus
	err  error // the wait itself failed; ws is meaningless
}

func newProcChild(pid int) *procChild {
	return &procChild{pid: pid, done: make(chan struct{})}
}

// finish records the exit; called once, by whoever reaped the child.
func (c *procChild) finish(ws syscall.WaitStatus, err error) {
	c.ws, c.err = ws, err
	close(c.done)
}

// exitCode is the shell convention: the exit status, or 128+signal for a
// child killed by a signal; -1 if the status is unknown. Only valid after done.
func (c *procChild) exitCode() int {
	if c.err != nil {
		return -1
	}
	return procExitCode(c.ws)
}

// describe says how the child ended, for logs: "exit 0", "killed by SIGKILL".
// Only valid after done.
func (c *procChild) describe() string {
	switch {
	case c.err != nil:
		return fmt.Sprintf("exit status unknown (%v)", c.err)
	case c.ws.Signaled():
		return "killed by " + unix.SignalName(c.ws.Signal())
	default:
		return fmt.Sprintf("exit %d", c.ws.ExitStatus())
	}
}

// procExitCode maps a wait status to an exit code as a shell does.
func procExitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// startProc starts cmd. With a reaper the reaper owns its wait; without one
// os/exec waits for it. cmd's Stdout and Stderr must be nil or *os.File, so
// that no copying goroutine outlives the wait.
func startProc(cmd *exec.Cmd, r *Reaper) (*procChild, error) {
	if r != nil {
		return r.start(cmd)
	}
	return startWaited(cmd)
}

// startWaited starts cmd and waits for it with os/exec in a goroutine.
func startWaited(cmd *exec.Cmd) (*procChild, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := newProcChild(cmd.Process.Pid)
	go func() {
		err := cmd.Wait()
		if cmd.ProcessState != nil {
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
				c.finish(ws, nil)
				return
			}
		}
		c.finish(0, err)
	}()
	return c, nil
}

// killGroup sends sig to the process group pgid; a group that is already
// gone is not an error.
func killGroup(pgid int, sig syscall.Signal) error {
	if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("send %s to process group %d: %w", unix.SignalName(sig), pgid, err)
	}
	return nil
}

// supervisor runs the exec child: it starts it in a
// process group of its own with the projected environment, restarts or
// signals it on change, relays kvsync's signals to it, and reports when it
// exits by itself so that kvsync can exit with its code.
//
// Stopping a child (Restart, Stop) sends kill_signal to its whole group,
// waits kill_timeout for it to exit, then sends SIGKILL to the group. Once
// the child is gone, SIGKILL goes to the group once more, so that no
// grandchild it left behind survives into the next generation.
//
// Start, Restart and Stop are serialised; Signal, PID and Exited may be
// called at any time from any goroutine.
type supervisor struct {
	argv        []string
	killSignal  syscall.Signal
	killTimeout time.Duration
	logger      *slog.Logger
	reaper      *Reaper
	ops         chan struct{} // one-slot semaphore held by Start, Restart, Stop
	exited      chan int

	mu      sync.Mutex // guards cur and stopped
	cur     *supervisedChild
	stopped bool

	watches sync.WaitGroup // one watch per child started; Stop waits for them

	// terminating is set once SIGINT, SIGTERM or SIGQUIT was forwarded: the
	// child's exit that follows ends kvsync, whatever exec.on_exit says.
	terminating atomic.Bool
}

// supervisedChild is one generation of the exec child.
type supervisedChild struct {
	proc *procChild
	ours bool // guarded by supervisor.mu: we are stopping it, its exit is not reported
}

// newSupervisor checks cfg and prepares a supervisor; it starts nothing.
// A zero KillTimeout means 10 s, an empty KillSignal SIGTERM.
func newSupervisor(cfg ExecConfig, logger *slog.Logger, opts ...Option) (*supervisor, error) {
	var o procOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, errors.New("exec.command: required")
	}
	killSig := syscall.SIGTERM
	if cfg.KillSignal != "" {
		sig, err := ParseSignal(cfg.KillSignal)
		if err != nil {
			return nil, fmt.Errorf("exec.kill_signal: %w", err)
		}
		killSig = sig
	}
	killTimeout := cfg.KillTimeout
	if killTimeout == 0 {
		killTimeout = defaultKillTimeout
	}
	if killTimeout < 0 {
		return nil, errors.New("exec.kill_timeout: must not be negative")
	}
	return &supervisor{
		argv:        append([]string(nil), cfg.Command...),
		killSignal:  killSig,
		killTimeout: killTimeout,
		logger:      logger,
		reaper:      o.reaper,
		ops:         make(chan struct{}, 1),
		exited:      make(chan int, 1),
	}, nil
}

// Start starts the child with env as its whole environment (the agent
// passes os.Environ() plus the projected variables), in a process group of
// its own, with kvsync's stdin, stdout and stderr. Being in its own group,
// the child is not in the terminal's foreground group: it gets Ctrl-C only
// through forwardSignals, and reading the terminal stops it (SIGTTIN).
// It returns an error if a child is running already, or errSupervisorStopped.
func (s *supervisor) Start(env []string) error {
	s.ops <- struct{}{}
	defer func() { <-s.ops }()
	return s.startLocked(env)
}

// Restart stops the running child, if any (kill_signal to its group, then
// SIGKILL after kill_timeout or when ctx is done), and starts a new one with
// env. If the old child does not go away, no new one is started.
func (s *supervisor) Restart(ctx context.Context, env []string) error {
	select {
	case s.ops <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("restart exec child: %w", ctx.Err())
	}
	defer func() { <-s.ops }()
	if err := s.stopLocked(ctx); err != nil {
		return fmt.Errorf("restart exec child: %w", err)
	}
	return s.startLocked(env)
}

// Stop stops the child like Restart does and starts nothing any more.
// It is idempotent; a Stop that ctx cut short may be called again.
func (s *supervisor) Stop(ctx context.Context) error {
	select {
	case s.ops <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("stop exec child: %w", ctx.Err())
	}
	defer func() { <-s.ops }()
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	if err := s.stopLocked(ctx); err != nil {
		return fmt.Errorf("stop exec child: %w", err)
	}
	s.watches.Wait() // every child is gone: their watches end at once
	return nil
}

// Signal sends sig to the child process (not its group: the child decides
// what its own children get). It returns errNoChild when none is running.
func (s *supervisor) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cur
	if c == nil || closedChan(c.proc.done) {
		return errNoChild
	}
	if err := syscall.Kill(c.proc.pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return errNoChild
		}
		return fmt.Errorf("send %s to pid %d: %w", unix.SignalName(sig), c.proc.pid, err)
	}
	return nil
}

// Exited delivers the child's exit code (128+signal if a signal killed it)
// each time it exits by itself; never for a child that Restart or Stop
// ended. kvsync exits with that code.
func (s *supervisor) Exited() <-chan int { return s.exited }

// PID is the pid of the running child, or 0.
func (s *supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || closedChan(s.cur.proc.done) {
		return 0
	}
	return s.cur.proc.pid
}

// forwardSignals relays SIGINT, SIGTERM, SIGQUIT, SIGUSR1 and SIGUSR2 to the
// child until ctx is done. While it runs, these signals do not stop kvsync
// by themselves: SIGTERM reaches the child, the child exits, Exited delivers
// its code, and the agent then exits with it. A signal that arrives while a
// Restart is under way goes to the new child.
func (s *supervisor) forwardSignals(ctx context.Context) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	s.forward(ctx, sigs)
}

// forward relays every signal received on sigs to the child until ctx is done.
func (s *supervisor) forward(ctx context.Context, sigs <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-sigs:
			ssig, ok := sig.(syscall.Signal)
			if !ok {
				continue
			}
			// Wait for a Restart in progress, so the signal is not lost in
			// the gap between two children.
			select {
			case s.ops <- struct{}{}:
			case <-ctx.Done():
				return
			}
			pid := s.PID()
			if ssig == syscall.SIGINT || ssig == syscall.SIGTERM || ssig == syscall.SIGQUIT {
				s.terminating.Store(true)
			}
			err := s.Signal(ssig)
			<-s.ops
			if err != nil {
				s.logger.Warn("signal not forwarded to exec child", "signal", unix.SignalName(ssig), "err", err)
				continue
			}
			s.logger.Info("signal forwarded to exec child", "signal", unix.SignalName(ssig), "pid", pid)
		}
	}
}

// startLocked starts a child; the caller holds ops.
func (s *supervisor) startLocked(env []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errSupervisorStopped
	}
	if s.cur != nil && !closedChan(s.cur.proc.done) {
		return fmt.Errorf("start exec child: pid %d is still running", s.cur.proc.pid)
	}
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Env = env
	if env == nil {
		cmd.Env = []string{} // nil would mean kvsync's environment
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := startProc(cmd, s.reaper)
	if err != nil {
		return fmt.Errorf("start exec child %s: %w", s.argv[0], err)
	}
	c := &supervisedChild{proc: p}
	s.cur = c
	s.logger.Info("exec child started", "pid", p.pid, "command", s.argv)
	s.watches.Go(func() { s.watch(c) })
	return nil
}

// watch reports the exit of c unless we ended it.
func (s *supervisor) watch(c *supervisedChild) {
	<-c.proc.done
	s.mu.Lock()
	ours := c.ours
	s.mu.Unlock()
	if ours {
		s.logger.Info("exec child stopped", "pid", c.proc.pid, "status", c.proc.describe())
		return
	}
	code := c.proc.exitCode()
	s.logger.Info("exec child exited", "pid", c.proc.pid, "status", c.proc.describe(), "exit_code", code)
	select {
	case s.exited <- code:
	default:
		s.logger.Warn("exec child exit code not collected; dropping it", "pid", c.proc.pid, "exit_code", code)
	}
}

// stopLocked stops the running child, if any; the caller holds ops.
func (s *supervisor) stopLocked(ctx context.Context) error {
	s.mu.Lock()
	c := s.cur
	if c != nil {
		c.ours = true
	}
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	pid := c.proc.pid
	if !closedChan(c.proc.done) {
		s.logger.Info("stopping exec child", "pid", pid, "signal", unix.SignalName(s.killSignal), "kill_timeout", s.killTimeout)
		if err := killGroup(pid, s.killSignal); err != nil {
			s.logger.Warn("exec child not signalled; killing it", "pid", pid, "err", err)
		}
		timer := time.NewTimer(s.killTimeout)
		defer timer.Stop()
		select {
		case <-c.proc.done:
		case <-timer.C:
			s.logger.Warn("exec child still running after kill_timeout; sending SIGKILL", "pid", pid, "kill_timeout", s.killTimeout)
		case <-ctx.Done():
			s.logger.Warn("exec child stop cut short; sending SIGKILL", "pid", pid, "err", ctx.Err())
		}
		if !closedChan(c.proc.done) {
			if err := killGroup(pid, syscall.SIGKILL); err != nil {
				return err
			}
			select {
			case <-c.proc.done:
			case <-time.After(killWait):
				return fmt.Errorf("pid %d still running %v after SIGKILL", pid, killWait)
			}
		}
	}
	// The leader is gone; its group may not be. A grandchild that ignored
	// kill_signal, or that the child did not wait for, must not outlive it.
	if err := killGroup(pid, syscall.SIGKILL); err != nil {
		return err
	}
	s.mu.Lock()
	if s.cur == c {
		s.cur = nil
	}
	s.mu.Unlock()
	return nil
}

// closedChan reports whether ch is closed.
func closedChan(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
