//go:build !linux

package agent

import (
	"context"
	"log/slog"
	"os/exec"
)

// procReaper is the owner of every wait of the process where zombie reaping
// is implemented (Linux). Elsewhere it only starts children and waits for
// each with os/exec.
type procReaper struct {
	logger *slog.Logger
}

// newProcReaper returns a reaper that reaps nothing on this system.
func newProcReaper(logger *slog.Logger) *procReaper {
	return &procReaper{logger: logger}
}

// reaperWanted reports whether kvsync has to reap zombies; reaping is only
// implemented on Linux.
func reaperWanted() bool { return false }

// run waits for ctx to end.
func (r *procReaper) run(ctx context.Context) { <-ctx.Done() }

// start starts cmd and waits for it with os/exec.
func (r *procReaper) start(cmd *exec.Cmd) (*procChild, error) { return startWaited(cmd) }
