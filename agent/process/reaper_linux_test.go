package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperSubreaper is a kvsync in miniature run as a child subreaper: it
// reaps with a Reaper, runs a command action and an exec child through
// it, and exits with the child's code.
func helperSubreaper(dir string) int {
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return 80
	}
	defer logf.Close()
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 81
	}
	if !ReaperWanted() {
		return 82
	}
	r := NewReaper(logger)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reaperDone := make(chan struct{})
	go func() {
		defer close(reaperDone)
		r.Run(ctx)
	}()

	// The exit status of a command action reaches the action, not the reaper's log.
	ar, err := NewActionRunner(Action{Command: []string{"sh", "-c", "echo hi; exit 3"}}, "t", logger, nil, WithReaper(r))
	if err != nil {
		return 83
	}
	if res := ar.Run(ctx, "test"); res.Err == nil || !strings.HasSuffix(res.Detail, ": exit 3") {
		helperWrite(dir, "action", fmt.Sprintf("%s: %v", res.Detail, res.Err))
		return 84
	}

	s, err := newSupervisor(ExecConfig{Command: procHelperArgv(), KillTimeout: time.Second}, logger, WithReaper(r))
	if err != nil {
		return 85
	}
	if err := s.Start(procHelperEnvFor("orphaner", dir)); err != nil {
		return 86
	}
	helperWrite(dir, "child.pid", strconv.Itoa(s.PID()))
	code := <-s.Exited()

	// A child still running when the reaper stops is waited on its own.
	if err := s.Start(procHelperEnvFor("marker", dir)); err != nil {
		return 87
	}
	cancel()
	<-reaperDone
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer stopCancel()
	if err := s.Stop(stopCtx); err != nil {
		return 88
	}
	return code
}

func TestReaperSubreaper(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(procHelperArgv()[0], procHelperArgv()[1:]...)
	cmd.Env = procHelperEnvFor("subreaper", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	helper := cmd.Process.Pid
	child, err := strconv.Atoi(waitFile(t, dir, "child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	waitFile(t, dir, fmt.Sprintf("ready.%d", child))
	orphan, err := strconv.Atoi(waitFile(t, dir, "orphan"))
	if err != nil {
		t.Fatal(err)
	}
	// The orphan's parent shell is gone: the subreaper adopted it. When the
	// orphan exits, nothing but the reaper collects it.
	execPollFor(t, 10*time.Second, fmt.Sprintf("orphan %d reaped", orphan), func() bool {
		return procState(orphan) == ""
	})
	if z := zombieChildren(helper); len(z) > 0 {
		t.Fatalf("zombie children of the subreaper: %v", z)
	}

	helperWrite(dir, "go", "")
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		t.Fatalf("subreaper exited with %v, want the child's code 7; log:\n%s", err, log)
	}
	if got, want := ee.ExitCode(), 7; got != want {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		action, _ := os.ReadFile(filepath.Join(dir, "action"))
		t.Fatalf("subreaper exit code = %d, want %d; action: %s; log:\n%s", got, want, action, log)
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "log")); !strings.Contains(string(log), fmt.Sprintf("msg=\"reaped orphan\" pid=%d", orphan)) {
		t.Fatalf("the subreaper's log does not show orphan %d reaped:\n%s", orphan, log)
	}
}
