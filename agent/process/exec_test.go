//go:build linux

package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// The child processes of these tests are this test binary, re-executed with
// procHelperEnv naming what it should do (see TestAgentProcHelper).
const (
	procHelperEnv  = "KVSYNC_AGENT_TEST_HELPER"
	procHelperDir  = "KVSYNC_AGENT_TEST_DIR"
	procHelperCode = "KVSYNC_AGENT_TEST_CODE"
)

// TestAgentProcHelper is the body of the helper processes; run normally, it
// returns at once.
func TestAgentProcHelper(t *testing.T) {
	mode := os.Getenv(procHelperEnv)
	if mode == "" {
		return
	}
	os.Exit(runProcHelper(mode, os.Getenv(procHelperDir)))
}

// runProcHelper does what mode says. Files it writes in dir appear atomically.
func runProcHelper(mode, dir string) int {
	ready := func() { helperWrite(dir, fmt.Sprintf("ready.%d", os.Getpid()), "") }
	forever := func() int {
		for {
			time.Sleep(time.Hour)
		}
	}
	switch mode {
	case "env": // write the environment, then run until killed
		helperWrite(dir, fmt.Sprintf("env.%d", os.Getpid()), strings.Join(os.Environ(), "\n"))
		ready()
		return forever()
	case "marker": // write a file named after every SIGHUP/SIGUSR1 received
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1)
		ready()
		for sig := range sigs {
			helperWrite(dir, fmt.Sprintf("got.%s.%d", sigName(sig), os.Getpid()), "")
		}
		return 0
	case "ignore-term": // survive SIGTERM; exit on SIGUSR2
		signal.Ignore(syscall.SIGTERM)
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGUSR2)
		ready()
		<-sigs
		return 0
	case "grandchild": // start a sleep in the same process group
		cmd := exec.Command("sleep", "1000")
		if err := cmd.Start(); err != nil {
			return 90
		}
		helperWrite(dir, fmt.Sprintf("grandchild.%d", os.Getpid()), strconv.Itoa(cmd.Process.Pid))
		ready()
		return forever()
	case "exit":
		code, _ := strconv.Atoi(os.Getenv(procHelperCode))
		return code
	case "supervise": // a kvsync in miniature: supervise a "marker" child, relay signals
		return helperSupervise(dir)
	case "subreaper": // see reaper_linux_test.go
		return helperSubreaper(dir)
	case "orphaner": // leave an orphan behind for the subreaper, exit 7 on demand
		out, err := exec.Command("sh", "-c", `sleep 0.3 >/dev/null 2>&1 & echo $!`).Output()
		if err != nil {
			return 90
		}
		helperWrite(dir, "orphan", strings.TrimSpace(string(out)))
		ready()
		for {
			if _, err := os.Stat(filepath.Join(dir, "go")); err == nil {
				return 7
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return 99
}

func helperSupervise(dir string) int {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := newSupervisor(ExecConfig{Command: procHelperArgv(), KillTimeout: time.Second}, logger)
	if err != nil {
		return 90
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Catch the relayed signals from the start, so that one sent before
	// forwardSignals is listening is lost rather than fatal; the test resends.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	go s.forwardSignals(ctx)
	if err := s.Start(procHelperEnvFor("marker", dir)); err != nil {
		return 91
	}
	helperWrite(dir, "child.pid", strconv.Itoa(s.PID()))
	return <-s.Exited()
}

func sigName(sig os.Signal) string {
	switch sig {
	case syscall.SIGHUP:
		return "HUP"
	case syscall.SIGUSR1:
		return "USR1"
	}
	return "other"
}

// helperWrite writes dir/name by rename, so a reader never sees it half written.
func helperWrite(dir, name, content string) {
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		panic(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		panic(err)
	}
}

// procHelperArgv is the command line that re-executes this test binary as a helper.
func procHelperArgv() []string {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return []string{exe, "-test.run=^TestAgentProcHelper$"}
}

// procHelperEnvFor is this process's environment with the helper's settings
// replaced.
func procHelperEnvFor(mode, dir string, extra ...string) []string {
	var env []string
	gorace := "atexit_sleep_ms=0" // a race-enabled helper otherwise lingers 1 s after exit 0
	for _, kv := range os.Environ() {
		if v, ok := strings.CutPrefix(kv, "GORACE="); ok {
			gorace = v + " " + gorace
			continue
		}
		if strings.HasPrefix(kv, "KVSYNC_AGENT_TEST_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GORACE="+gorace, procHelperEnv+"="+mode, procHelperDir+"="+dir)
	return append(env, extra...)
}

// execPollFor calls fn until it returns true or timeout passes.
func execPollFor(t *testing.T, timeout time.Duration, what string, fn func() bool) {
	t.Helper()
	testutil.CheckForEvery(t, timeout, 5*time.Millisecond, testutil.True(what, fn))
}

// waitFile waits for dir/name to exist and returns its content.
func waitFile(t *testing.T, dir, name string) string {
	t.Helper()
	var b []byte
	execPollFor(t, 10*time.Second, "file "+name, func() bool {
		var err error
		b, err = os.ReadFile(filepath.Join(dir, name))
		return err == nil
	})
	return string(b)
}

// procState is the state letter of pid from /proc ("R", "S", "Z", ...), or ""
// if there is no such process.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2])
}

// procLive reports whether pid is a running (not zombie) process.
func procLive(pid int) bool {
	s := procState(pid)
	return s != "" && s != "Z" && s != "X"
}

// procStatField returns field n (1-based, as in proc(5)) of /proc/<pid>/stat.
func procStatField(pid, n int) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", false
	}
	f := strings.Fields(string(b[i+1:])) // fields 3...
	if n-3 < 0 || n-3 >= len(f) {
		return "", false
	}
	return f[n-3], true
}

// liveGroupMembers lists the running (not zombie) processes of process group pgid.
func liveGroupMembers(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, ok := procStatField(pid, 5); ok && g == strconv.Itoa(pgid) && procLive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// zombieChildren lists the zombie children of ppid.
func zombieChildren(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := procStatField(pid, 4); ok && p == strconv.Itoa(ppid) && procState(pid) == "Z" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// lockedBuffer is a log sink safe for the goroutines of the code under test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestLogger() (*slog.Logger, *lockedBuffer) {
	buf := &lockedBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// mustSupervisor returns a supervisor of a helper child that is stopped at
// the end of the test.
func mustSupervisor(t *testing.T, cfg ExecConfig, opts ...Option) (*supervisor, *lockedBuffer) {
	t.Helper()
	if cfg.Command == nil {
		cfg.Command = procHelperArgv()
	}
	logger, buf := newTestLogger()
	s, err := newSupervisor(cfg, logger, opts...)
	if err != nil {
		t.Fatalf("newSupervisor: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return s, buf
}

// mustStart starts the supervisor's child in mode and waits until it is ready.
func mustStart(t *testing.T, s *supervisor, mode, dir string, extra ...string) int {
	t.Helper()
	if err := s.Start(procHelperEnvFor(mode, dir, extra...)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := s.PID()
	if pid <= 0 {
		t.Fatalf("PID()=%d after Start, want > 0", pid)
	}
	waitFile(t, dir, fmt.Sprintf("ready.%d", pid))
	return pid
}

func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func TestSupervisorEnv(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustSupervisor(t, ExecConfig{})
	pid := mustStart(t, s, "env", dir, "FLAG_COLOR=blue", "FLAG_EMPTY=")
	env := strings.Split(waitFile(t, dir, fmt.Sprintf("env.%d", pid)), "\n")
	for _, want := range []string{"FLAG_COLOR=blue", "FLAG_EMPTY=", procHelperEnv + "=env"} {
		found := false
		for _, kv := range env {
			found = found || kv == want
		}
		if !found {
			t.Fatalf("child environment lacks %q; has %q", want, env)
		}
	}
	if got, want := len(env), len(procHelperEnvFor("env", dir))+2; got != want {
		t.Fatalf("child has %d variables, want exactly the %d passed", got, want)
	}
}

func TestSupervisorRestart(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustSupervisor(t, ExecConfig{})
	old := mustStart(t, s, "grandchild", dir)
	grandchild, err := strconv.Atoi(waitFile(t, dir, fmt.Sprintf("grandchild.%d", old)))
	if err != nil {
		t.Fatal(err)
	}
	if !procLive(grandchild) {
		t.Fatalf("grandchild %d is not running before the restart", grandchild)
	}

	if err := s.Restart(context.Background(), procHelperEnvFor("marker", dir)); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	cur := s.PID()
	if cur == 0 || cur == old {
		t.Fatalf("PID() after restart = %d, want a new pid (old %d)", cur, old)
	}
	if !processGone(old) {
		t.Fatalf("old child %d still exists after Restart returned", old)
	}
	// The grandchild is orphaned to init by the kill; it must not be running.
	execPollFor(t, 5*time.Second, "grandchild gone", func() bool { return !procLive(grandchild) })
	waitFile(t, dir, fmt.Sprintf("ready.%d", cur))
	select {
	case code := <-s.Exited():
		t.Fatalf("Exited delivered %d for a child that Restart stopped", code)
	default:
	}
}

func TestSupervisorStop(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mode       string
		killSignal string
		timeout    time.Duration
		wantKill   bool // SIGKILL needed after kill_timeout
	}{
		{"kill_signal ends it", "marker", "SIGTERM", 10 * time.Second, false},
		{"SIGKILL after kill_timeout", "ignore-term", "SIGTERM", 300 * time.Millisecond, true},
		{"kill_signal SIGUSR2 is what is sent", "ignore-term", "SIGUSR2", 10 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, logs := mustSupervisor(t, ExecConfig{KillSignal: tc.killSignal, KillTimeout: tc.timeout})
			pid := mustStart(t, s, tc.mode, dir)
			if err := s.Stop(context.Background()); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if !processGone(pid) {
				t.Fatalf("child %d still exists after Stop", pid)
			}
			if got, want := s.PID(), 0; got != want {
				t.Fatalf("PID() after Stop = %d, want %d", got, want)
			}
			escalated := strings.Contains(logs.String(), "sending SIGKILL")
			if got, want := escalated, tc.wantKill; got != want {
				t.Fatalf("escalated to SIGKILL = %v, want %v; log:\n%s", got, want, logs)
			}
			if err := s.Stop(context.Background()); err != nil {
				t.Fatalf("second Stop: %v", err)
			}
			if err := s.Start(procHelperEnvFor(tc.mode, dir)); !errors.Is(err, errSupervisorStopped) {
				t.Fatalf("Start after Stop = %v, want errSupervisorStopped", err)
			}
		})
	}
}

func TestSupervisorStopCtxEscalates(t *testing.T) {
	dir := t.TempDir()
	// kill_timeout far beyond the test's patience: only ctx can cut it short.
	s, _ := mustSupervisor(t, ExecConfig{KillTimeout: time.Hour})
	pid := mustStart(t, s, "ignore-term", dir)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !processGone(pid) {
		t.Fatalf("child %d still exists after Stop", pid)
	}
}

func TestSupervisorSignal(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustSupervisor(t, ExecConfig{})
	pid := mustStart(t, s, "marker", dir)
	if err := s.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	waitFile(t, dir, fmt.Sprintf("got.HUP.%d", pid))
	if got, want := s.PID(), pid; got != want {
		t.Fatalf("PID() after Signal = %d, want %d", got, want)
	}
	if !procLive(pid) {
		t.Fatalf("child %d not running after SIGHUP", pid)
	}
}

func TestSupervisorSignalNoChild(t *testing.T) {
	s, _ := mustSupervisor(t, ExecConfig{})
	if err := s.Signal(syscall.SIGHUP); !errors.Is(err, errNoChild) {
		t.Fatalf("Signal without child = %v, want errNoChild", err)
	}
}

func TestSupervisorExited(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  string
		code  string
		kill  bool // the test kills the child with SIGKILL
		wantC int
	}{
		{"exit 7", "exit", "7", false, 7},
		{"exit 0", "exit", "0", false, 0},
		{"killed by SIGKILL", "marker", "", true, 128 + 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := mustSupervisor(t, ExecConfig{})
			if err := s.Start(procHelperEnvFor(tc.mode, dir, procHelperCode+"="+tc.code)); err != nil {
				t.Fatalf("Start: %v", err)
			}
			if tc.kill {
				pid := s.PID()
				waitFile(t, dir, fmt.Sprintf("ready.%d", pid))
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case code := <-s.Exited():
				if got, want := code, tc.wantC; got != want {
					t.Fatalf("Exited() = %d, want %d", got, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Exited() delivered nothing")
			}
			execPollFor(t, 5*time.Second, "PID() = 0", func() bool { return s.PID() == 0 })
		})
	}
}

func TestSupervisorForwardInjected(t *testing.T) {
	dir := t.TempDir()
	s, logs := mustSupervisor(t, ExecConfig{})
	pid := mustStart(t, s, "marker", dir)
	sigs := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.forward(ctx, sigs)
	}()
	sigs <- syscall.SIGUSR1
	waitFile(t, dir, fmt.Sprintf("got.USR1.%d", pid))
	cancel()
	<-done
	if !strings.Contains(logs.String(), "signal=SIGUSR1") {
		t.Fatalf("forwarding not logged:\n%s", logs)
	}
}

// TestSupervisorForwardRealSignal sends real signals to a process that runs
// a supervisor (this binary as a helper), as an operator would to kvsync.
func TestSupervisorForwardRealSignal(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(procHelperArgv()[0], procHelperArgv()[1:]...)
	cmd.Env = procHelperEnvFor("supervise", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	child, err := strconv.Atoi(waitFile(t, dir, "child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	waitFile(t, dir, fmt.Sprintf("ready.%d", child))
	// forwardSignals may start listening a moment after the child started:
	// resend until the child saw one.
	execPollFor(t, 10*time.Second, "child got the relayed SIGUSR1", func() bool {
		if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			t.Fatalf("signal supervisor: %v", err)
		}
		_, err := os.Stat(filepath.Join(dir, fmt.Sprintf("got.USR1.%d", child)))
		return err == nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("supervisor exited with %v, want the child's exit code", err)
	}
	if got, want := ee.ExitCode(), 128+int(syscall.SIGTERM); got != want {
		t.Fatalf("supervisor exit code = %d, want %d (child killed by the relayed SIGTERM)", got, want)
	}
	if !processGone(child) && procLive(child) {
		t.Fatalf("child %d still running", child)
	}
}

// TestSupervisorRestartRaces restarts while the child exits by itself and
// from several goroutines at once.
func TestSupervisorRestartRaces(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustSupervisor(t, ExecConfig{KillTimeout: time.Second})
	for i := range 3 {
		// A child that exits at once races the Restart.
		if err := s.Start(procHelperEnvFor("exit", dir, procHelperCode+"=3")); err != nil {
			t.Fatalf("round %d: Start: %v", i, err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			wg.Go(func() {
				errs <- s.Restart(context.Background(), procHelperEnvFor("marker", dir))
			})
		}
		wg.Go(func() {
			for range 20 {
				_ = s.Signal(syscall.SIGWINCH) // ignored by default: harmless to any child
				_ = s.PID()
			}
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: Restart: %v", i, err)
			}
		}
		pid := s.PID()
		if pid == 0 {
			t.Fatalf("round %d: no child after concurrent restarts", i)
		}
		waitFile(t, dir, fmt.Sprintf("ready.%d", pid))
		if err := s.Restart(context.Background(), procHelperEnvFor("exit", dir, procHelperCode+"=3")); err != nil {
			t.Fatalf("round %d: Restart: %v", i, err)
		}
		// Wait for that child to exit by itself, then drain any report of it.
		select {
		case code := <-s.Exited():
			if got, want := code, 3; got != want {
				t.Fatalf("round %d: Exited() = %d, want %d", i, got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Exited() delivered nothing", i)
		}
		execPollFor(t, 5*time.Second, "child gone", func() bool { return s.PID() == 0 })
	}
}

func TestNewSupervisorErrors(t *testing.T) {
	logger, _ := newTestLogger()
	for _, tc := range []struct {
		name string
		cfg  ExecConfig
		want string
	}{
		{"no command", ExecConfig{}, "exec.command"},
		{"empty program", ExecConfig{Command: []string{""}}, "exec.command"},
		{"bad kill signal", ExecConfig{Command: []string{"x"}, KillSignal: "SIGNOPE"}, "exec.kill_signal"},
		{"negative kill timeout", ExecConfig{Command: []string{"x"}, KillTimeout: -time.Second}, "exec.kill_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newSupervisor(tc.cfg, logger)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("newSupervisor error = %v, want one naming %s", err, tc.want)
			}
		})
	}
}

func TestSupervisorStartMissingProgram(t *testing.T) {
	s, _ := mustSupervisor(t, ExecConfig{Command: []string{filepath.Join(t.TempDir(), "nope")}})
	err := s.Start(nil)
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("Start = %v, want an error naming the program", err)
	}
	if got, want := s.PID(), 0; got != want {
		t.Fatalf("PID() = %d, want %d", got, want)
	}
}
