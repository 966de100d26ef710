package main

import (
	"context"
	"errors"

	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/agent/natsconn"
)

// RunCommand runs the agent.
type RunCommand struct{ io ioStreams }

// handlesSignals: run decides itself what SIGINT/SIGTERM/SIGHUP do.
func (c *RunCommand) handlesSignals() {}

// Run implements command.
func (c *RunCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("run", c.io.err)
	path := configFlag(fs)
	once := fs.Bool("once", false, "render everything once, run no actions, exit (init container)")
	dryRun := fs.Bool("dry-run", false, "log what would be written; write nothing, run no actions")
	var conn connFlags
	conn.register(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	load := func() (*agent.Config, error) {
		cfg, err := loadConfig(*path)
		if err != nil {
			return nil, err
		}
		conn.apply(&cfg.NATS)
		return cfg, nil
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	return runAgent(ctx, c.io, cfg, load, agent.Options{Once: *once, DryRun: *dryRun})
}

// runAgent starts the embedded server if configured, wires signals and runs
// the agent until it stops. It maps the agent's result to kvsync's exit codes.
func runAgent(ctx context.Context, ios ioStreams, cfg *agent.Config, load func() (*agent.Config, error), opts agent.Options) error {
	logger := newLogger(cfg.Log, ios.err)
	slog.SetDefault(logger)
	opts.Logger = logger
	opts.Version, _, _, _ = buildInfo()

	if cfg.Embedded != nil {
		srv, err := natsconn.StartEmbedded(*cfg.Embedded)
		if err != nil {
			return err
		}
		defer func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		}()
		cfg.NATS.URL = srv.ClientURL()
		cfg.NATS.Context = ""
		logger.Info("embedded NATS server with JetStream", "url", srv.ClientURL(), "store_dir", cfg.Embedded.StoreDir)
		inner := load
		load = func() (*agent.Config, error) {
			next, err := inner()
			if err == nil {
				next.NATS.URL, next.NATS.Context = srv.ClientURL(), ""
			}
			return next, err
		}
	}

	// SIGHUP reloads the config. SIGINT and SIGTERM stop the agent, except
	// with an exec child: then they are forwarded to the child, and kvsync
	// exits with the child's exit code once it is gone.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloads := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reloads <- struct{}{}:
				default:
				}
			}
		}
	}()
	opts.Reloads, opts.Reload = reloads, load
	if cfg.Exec == nil || opts.Once || opts.DryRun {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(stop)
		go func() {
			select {
			case <-ctx.Done():
			case sig := <-stop:
				logger.Info("stopping", "signal", sig.String())
				cancel()
			}
		}()
	}

	a, err := agent.New(cfg, opts)
	if err != nil {
		return usageError{err}
	}
	err = a.Run(ctx)
	var ce *agent.ChildExit
	switch {
	case errors.As(err, &ce):
		logger.Info("child exited; exiting with its code", "code", ce.Code)
		return exitError{code: ce.Code}
	case err != nil:
		return err
	case opts.Once:
		logger.Info("once: every projection written")
	}
	return nil
}

// newLogger builds the slog logger of the log: block.
func newLogger(c agent.LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	switch strings.ToLower(c.Level) {
	case "debug":
		level = slog.LevelDebug
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	o := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}
