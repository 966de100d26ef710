package process

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reaper is the single owner of every wait of the process once zombie
// reaping is on (kvsync is PID 1 or a child subreaper). Orphans re-parented
// to kvsync must be reaped with wait4(-1), and a wait4(-1) would also take
// the exit status of children that os/exec is waiting for. So with a reaper,
// the children kvsync starts itself (the exec child, command actions) are not
// waited by os/exec: startProc registers them here, and the reaper hands the
// status of each such pid to the procChild that started it. Everything else
// it reaps is an orphan and only logged.
//
// Invariant: a pid is registered while mu is held from before fork until
// after registration, and the reap loop looks a pid up under mu after
// wait4 returned it; so a child that exits at once is never mistaken for an
// orphan.
//
// While the reaper runs, nothing else in the process may start children with
// os/exec and wait for them: their status would be taken by the reaper.
type Reaper struct {
	logger *slog.Logger

	mu      sync.Mutex
	waiting map[int]*procChild
	started bool // run was called
	stopped bool // run returned; children are waited one by one again
}

// NewReaper returns a reaper. It reaps nothing until Run is called; the
// children started through it meanwhile are reaped by Run's first sweep.
func NewReaper(logger *slog.Logger) *Reaper {
	return &Reaper{logger: logger, waiting: map[int]*procChild{}}
}

// ReaperWanted reports whether kvsync has to reap zombies: it is PID 1 (a
// container's init) or it was made a child subreaper (PR_SET_CHILD_SUBREAPER),
// so orphaned grandchildren are re-parented to it.
func ReaperWanted() bool {
	if os.Getpid() == 1 {
		return true
	}
	sub, err := isChildSubreaper()
	return err == nil && sub
}

// isChildSubreaper asks the kernel whether the calling process is a child
// subreaper.
func isChildSubreaper() (bool, error) {
	var v int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0, 0, 0); err != nil {
		return false, err
	}
	return v != 0, nil
}

// Run reaps on every SIGCHLD until ctx is done. Then it hands the children
// still running to a wait of their own, so that a supervisor stopped after
// the reaper still learns of its child's exit. Run is meant to be called
// once; a second call returns at once.
func (r *Reaper) Run(ctx context.Context) {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return
	}
	r.started = true
	r.mu.Unlock()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		// Sweep first: SIGCHLD is not queued, one signal may stand for
		// many exits, and some may have happened before Notify.
		r.reap()
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.stopped = true
			pending := r.waiting
			r.waiting = nil
			r.mu.Unlock()
			for pid, c := range pending {
				go waitPID(pid, c)
			}
			return
		case <-sigs:
		}
	}
}

// reap collects every exited child without blocking.
func (r *Reaper) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children at all; 0: none exited yet
		}
		r.mu.Lock()
		c := r.waiting[pid]
		delete(r.waiting, pid)
		r.mu.Unlock()
		if c != nil {
			c.finish(ws, nil)
			continue
		}
		r.logger.Debug("reaped orphan", "pid", pid, "exit_code", procExitCode(ws))
	}
}

// start starts cmd and registers its pid, so that its status reaches the
// returned procChild rather than being reaped as an orphan's.
func (r *Reaper) start(cmd *exec.Cmd) (*procChild, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return startWaited(cmd)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := newProcChild(cmd.Process.Pid)
	r.waiting[c.pid] = c
	// Nothing will call cmd.Wait: free the process handle (pidfd) now.
	// Signals go by pid (and process group) from here on.
	_ = cmd.Process.Release()
	return c, nil
}

// waitPID waits for one child by pid, for children started before the
// reaper stopped.
func waitPID(pid int, c *procChild) {
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		c.finish(ws, err)
		return
	}
}
