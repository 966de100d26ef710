//go:build !linux

package process

import (
	"context"
	"log/slog"
	"os/exec"
)

// Reaper is the owner of every wait of the process where zombie reaping
// is implemented (Linux). Elsewhere it only starts children and waits for
// each with os/exec.
type Reaper struct {
	logger *slog.Logger
}

// NewReaper returns a reaper that reaps nothing on this system.
func NewReaper(logger *slog.Logger) *Reaper {
	return &Reaper{logger: logger}
}

// ReaperWanted reports whether kvsync has to reap zombies; reaping is only
// implemented on Linux.
func ReaperWanted() bool { return false }

// Run waits for ctx to end.
func (r *Reaper) Run(ctx context.Context) { <-ctx.Done() }

// start starts cmd and waits for it with os/exec.
func (r *Reaper) start(cmd *exec.Cmd) (*procChild, error) { return startWaited(cmd) }
