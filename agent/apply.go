package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/kvsync/kvsync/agent/process"
	"github.com/kvsync/kvsync/projector"
)

// defaultCheckTimeout is the timeout Config.Default gives a check that has
// none. A check of a config that skipped Default runs with the default
// timeout of command actions, 30 s too.
const defaultCheckTimeout = 30 * time.Second

// errCheck marks a failed check: the last good version is kept and no action
// runs. Only a new change can help, so it is not retried.
var errCheck = errors.New("check failed")

// CheckStatus is the last check of a projection's staged output.
type CheckStatus struct {
	At      time.Time `json:"at"`
	Command string    `json:"command"`
	Path    string    `json:"path"` // the staged file or folder that was checked
	OK      bool      `json:"ok"`
	Detail  string    `json:"detail"`           // how it ended: "exit 0", "exit 1", "timed out after 10s"
	Output  string    `json:"output,omitempty"` // the last 4 KiB of its output
	Error   string    `json:"error,omitempty"`
}

// RollbackStatus is a revision that went live, made its action fail, and was
// replaced by the previous bytes again. It stays until a newer one goes live.
type RollbackStatus struct {
	Revision uint64    `json:"revision"`
	At       time.Time `json:"at"`
	Reason   string    `json:"reason"`
}

// checker runs a projection's check command on a staged output.
type checker struct {
	cfg    CheckConfig
	logger *slog.Logger
	reaper *process.Reaper
}

// newChecker prepares the check c (nil: none) of the projection owner, whose
// logger says its name.
func newChecker(c *CheckConfig, owner string, logger *slog.Logger, reaper *process.Reaper) *checker {
	if c == nil {
		return nil
	}
	return &checker{cfg: *c, logger: logger, reaper: reaper}
}

// checkArgs is argv with every "{{.Path}}" (also written "{{ .Path }}")
// replaced by path.
func checkArgs(argv []string, path string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		a = strings.ReplaceAll(a, "{{.Path}}", path)
		out[i] = strings.ReplaceAll(a, "{{ .Path }}", path)
	}
	return out
}

// run checks the staged file or folder at path: the command runs without a
// shell, in a process group of its own that is killed on timeout, with its
// output kept to the last 4 KiB. A non-zero exit, a timeout or a command
// that cannot start is an error wrapping errCheck.
func (c *checker) run(ctx context.Context, path string) (CheckStatus, error) {
	argv := checkArgs(c.cfg.Command, path)
	timeout := c.cfg.Timeout
	if timeout <= 0 {
		timeout = defaultCheckTimeout
	}
	st := CheckStatus{At: time.Now(), Command: process.CommandLine(argv), Path: path}
	detail, output, err := process.RunCheck(ctx, argv, timeout, c.logger, c.reaper)
	st.Detail, st.Output = strings.TrimPrefix(detail, st.Command+": "), output
	took := time.Since(st.At)
	if err != nil {
		st.Error = err.Error()
		attrs := []any{"command", st.Command, "path", path, "took", took, "err", err}
		if output != "" {
			attrs = append(attrs, "output", output)
		}
		c.logger.Error("check failed: keeping the last good version", attrs...)
		return st, fmt.Errorf("%w: %w", errCheck, err)
	}
	st.OK = true
	c.logger.Info("check passed", "command", st.Command, "path", path, "took", took)
	return st, nil
}

// rollbacker is a projection that can put back the bytes it had before its
// last changed update (with rollback: true).
type rollbacker interface {
	// rollback restores the previous output of the last update and marks the
	// rejected output, so that it is not written again until the input
	// changes. It reports whether anything was restored.
	rollback() (bool, error)
}

// actionSlot is one action and the batch of projections waiting for its next
// run: a projection's own on_change, or a named action that several share.
// The owner adds a whole flush's worth of members at once, so a named action
// runs once for every projection written in one batch.
type actionSlot struct {
	label  string // the projection's name, or "actions.NAME"
	named  bool   // an entry of actions:, shared by the projections naming it
	runner actionRunner
	wake   chan struct{} // cap 1

	mu      sync.Mutex
	pending []batchMember
	why     []string
}

// batchMember is a projection whose write triggered an action run.
type batchMember struct {
	m     *projMeta
	seq   uint64 // m.seq after the write: a rollback is for this write only
	rerun bool   // the run after a rollback: its failure rolls nothing back
}

func newActionSlot(label string, named bool, r actionRunner) *actionSlot {
	return &actionSlot{label: label, named: named, runner: r, wake: make(chan struct{}, 1)}
}

// add queues members (replacing older entries of the same projection) and
// wakes the action loop.
func (s *actionSlot) add(members []batchMember, why string) {
	s.mu.Lock()
	for _, nm := range members {
		found := false
		for i, om := range s.pending {
			if om.m == nm.m {
				s.pending[i], found = nm, true
			}
		}
		if !found {
			s.pending = append(s.pending, nm)
		}
	}
	if why != "" {
		s.why = append(s.why, why)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // a run is pending already: it takes these members too
	}
}

// take returns and clears the pending batch and what triggered it.
func (s *actionSlot) take() ([]batchMember, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	members, why := s.pending, s.why
	s.pending, s.why = nil, nil
	switch {
	case len(why) == 0:
		return members, ""
	case len(why) <= 3:
		return members, strings.Join(why, "; ")
	default:
		return members, fmt.Sprintf("%s; and %d more", strings.Join(why[:3], "; "), len(why)-3)
	}
}

// noter is a projection that records a rollback where other tools see it
// (kvsync diff reads the notes of a files projection).
type noter interface {
	noteRollback(st *RollbackStatus)
}

// writeChecked stages data for the single file path, checks it (with
// check:) and puts it in place. It returns what it replaced, nil when the file
// held data already. A failed check leaves the file as it was; its error says
// what is kept (keeping).
func writeChecked(o *owner, m *projMeta, path string, data []byte, fopts projector.FileOptions, keeping string) (*fileUndo, error) {
	st, err := projector.Stage(path, data, fopts)
	if err != nil {
		o.a.metrics.errors.WithLabelValues(m.name, "write").Inc()
		return nil, err
	}
	if st == nil {
		return nil, nil // unchanged
	}
	if err := checkStaged(o, m, st.Path()); err != nil {
		if derr := st.Discard(); derr != nil {
			m.logger.Warn("discard staged file", "err", derr)
		}
		return nil, fmt.Errorf("%s: keeping %s: %w", m.name, keeping, err)
	}
	old, existed := st.Previous()
	if err := st.Commit(); err != nil {
		o.a.metrics.errors.WithLabelValues(m.name, "write").Inc()
		return nil, err
	}
	return &fileUndo{old: old, existed: existed, sum: sha256.Sum256(data)}, nil
}

// checkStaged runs m's check, if it has one, on the staged path and records
// the result in m's status and the metrics. The error wraps errCheck.
func checkStaged(o *owner, m *projMeta, path string) error {
	if m.check == nil {
		return nil
	}
	ctx := o.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	st, err := m.check.run(ctx, path)
	m.status.LastCheck = &st
	result := "ok"
	if err != nil {
		result = "failed"
		o.a.metrics.errors.WithLabelValues(m.name, "check").Inc()
	}
	o.a.metrics.checks.WithLabelValues(m.name, result).Inc()
	return err
}

// restoreFile puts back what a write replaced: the old bytes (atomically,
// as any write) or no file.
func restoreFile(path string, u *fileUndo, o projector.FileOptions) error {
	if !u.existed {
		return projector.RemoveFile(path, o.Fsync)
	}
	o.Backup = false
	if _, err := projector.WriteFile(path, u.old, o); err != nil {
		return err
	}
	return nil
}
