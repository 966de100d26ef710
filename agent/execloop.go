package agent

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// execLoop owns the supervised child for the agent's whole life (it survives
// config reloads). The owner hands it the environment; it starts the child
// after the initial sync and restarts or signals it when the environment
// changes, once per batch.
type execLoop struct {
	cfg    ExecConfig
	sup    *supervisor
	logger *slog.Logger

	mu       sync.Mutex
	env      []string
	have     bool
	started  bool
	restarts int
	kick     chan struct{}
}

func newExecLoop(cfg ExecConfig, logger *slog.Logger, reaper *procReaper) (*execLoop, error) {
	l := &execLoop{cfg: cfg, logger: logger.With("exec", cfg.Command[0]), kick: make(chan struct{}, 1)}
	var opts []procOption
	if reaper != nil {
		opts = append(opts, enableReaper(reaper))
	}
	sup, err := newSupervisor(cfg, l.logger, opts...)
	if err != nil {
		return nil, err
	}
	l.sup = sup
	return l, nil
}

// update hands over the latest environment. The first call starts the child.
func (l *execLoop) update(env []string) {
	l.mu.Lock()
	l.env, l.have = env, true
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *execLoop) exited() <-chan int { return l.sup.Exited() }

// restart is the {restart: true} action.
func (l *execLoop) restart(ctx context.Context) error {
	l.mu.Lock()
	env, started := l.env, l.started
	l.mu.Unlock()
	if !started {
		return nil // it starts with the current files anyway
	}
	if err := l.sup.Restart(ctx, env); err != nil {
		return err
	}
	l.mu.Lock()
	l.restarts++
	l.mu.Unlock()
	return nil
}

func (l *execLoop) status() *ChildStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return &ChildStatus{PID: l.sup.PID(), Command: strings.Join(l.cfg.Command, " "), Restarts: l.restarts}
}

// run starts, restarts and finally stops the child. On return the child is gone.
func (l *execLoop) run(ctx context.Context) {
	fctx, fcancel := context.WithCancel(context.Background())
	defer fcancel()
	go l.sup.forwardSignals(fctx)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), l.cfg.KillTimeout+5*time.Second)
		defer cancel()
		if err := l.sup.Stop(sctx); err != nil {
			l.logger.Error("stop child", "err", err)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
		}
		l.mu.Lock()
		env, started := l.env, l.started
		l.mu.Unlock()
		if !started {
			if err := l.sup.Start(env); err != nil {
				l.logger.Error("start child", "err", err)
				continue
			}
			l.mu.Lock()
			l.started = true
			l.mu.Unlock()
			l.logger.Info("child started", "pid", l.sup.PID())
			continue
		}
		switch l.cfg.OnChange {
		case ExecRestart:
			old := l.sup.PID()
			if err := l.sup.Restart(ctx, env); err != nil {
				l.logger.Error("restart child", "err", err)
				continue
			}
			l.mu.Lock()
			l.restarts++
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
