//go:build linux

package process

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// startMarker starts a "marker" helper (it records SIGHUP and SIGUSR1 in
// files) as a plain child of the test, running argv0 as its program, and
// waits until it listens for signals.
func startMarker(t *testing.T, argv0, dir string) int {
	t.Helper()
	cmd := exec.Command(argv0, procHelperArgv()[1:]...)
	cmd.Env = procHelperEnvFor("marker", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitFile(t, dir, fmt.Sprintf("ready.%d", cmd.Process.Pid))
	return cmd.Process.Pid
}

func mustActionRunner(t *testing.T, a Action, restart func(context.Context) error) (*ActionRunner, *lockedBuffer) {
	t.Helper()
	logger, logs := newTestLogger()
	r, err := NewActionRunner(a, "proj", logger.With("projection", "proj"), restart)
	if err != nil {
		t.Fatalf("NewActionRunner: %v", err)
	}
	return r, logs
}

func TestActionSignalPIDFile(t *testing.T) {
	dir := t.TempDir()
	pid := startMarker(t, procHelperArgv()[0], dir)
	pidfile := filepath.Join(dir, "app.pid")
	if err := os.WriteFile(pidfile, []byte(" "+strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, logs := mustActionRunner(t, Action{Signal: "SIGHUP", PIDFile: pidfile}, nil)
	res := r.Run(context.Background(), "key app.x rev 3")
	if res.Err != nil {
		t.Fatalf("Run: %v", res.Err)
	}
	waitFile(t, dir, fmt.Sprintf("got.HUP.%d", pid))
	if got, want := res.Detail, fmt.Sprintf("SIGHUP to pid %d (pidfile %s)", pid, pidfile); got != want {
		t.Fatalf("Detail = %q, want %q", got, want)
	}
	if got, want := res.Kind, "signal"; got != want {
		t.Fatalf("Kind = %q, want %q", got, want)
	}
	log := logs.String()
	for _, want := range []string{"level=INFO", `trigger="key app.x rev 3"`, fmt.Sprintf("pid %d", pid), "projection=proj"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}
}

func TestActionSignalPIDFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		content *string // nil: no file
	}{
		{"missing", nil},
		{"garbage", ptr("nginx\n")},
		{"empty", ptr("")},
		{"zero", ptr("0")},
		{"negative", ptr("-1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pidfile := filepath.Join(dir, tc.name+".pid")
			if tc.content != nil {
				if err := os.WriteFile(pidfile, []byte(*tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			r, logs := mustActionRunner(t, Action{Signal: "SIGHUP", PIDFile: pidfile}, nil)
			res := r.Run(context.Background(), "test")
			if res.Err == nil || !strings.Contains(res.Err.Error(), pidfile) {
				t.Fatalf("Err = %v, want an error naming %s", res.Err, pidfile)
			}
			if !strings.Contains(logs.String(), "level=ERROR") {
				t.Fatalf("failure not logged at ERROR:\n%s", logs)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestActionSignalProcess(t *testing.T) {
	dir := t.TempDir()
	// A name no other process on the machine has: a link to this binary.
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "kvsact" + hex.EncodeToString(b)
	link := filepath.Join(dir, name)
	if err := os.Symlink(procHelperArgv()[0], link); err != nil {
		t.Fatal(err)
	}
	pid := startMarker(t, link, dir)
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != name {
		t.Fatalf("helper comm = %q, want %q", comm, name)
	}

	r, _ := mustActionRunner(t, Action{Signal: "SIGUSR1", Process: name}, nil)
	res := r.Run(context.Background(), "test")
	if res.Err != nil {
		t.Fatalf("Run: %v", res.Err)
	}
	waitFile(t, dir, fmt.Sprintf("got.USR1.%d", pid))
	if got, want := res.Detail, fmt.Sprintf("SIGUSR1 to pid %d (process %s)", pid, name); got != want {
		t.Fatalf("Detail = %q, want %q", got, want)
	}

	r, _ = mustActionRunner(t, Action{Signal: "SIGUSR1", Process: name + "x"}, nil)
	if res := r.Run(context.Background(), "test"); res.Err == nil || !strings.Contains(res.Err.Error(), name+"x") {
		t.Fatalf("Run for a missing process: Err = %v, want an error naming it", res.Err)
	}
}

func TestFindProcesses(t *testing.T) {
	root := t.TempDir()
	procs := []struct {
		pid     string
		comm    string
		cmdline string
	}{
		{"10", "nginx", "nginx: master process\x00"},
		{"11", "nginx", "nginx: worker process\x00"},
		{"12", "bash", "/usr/bin/bash\x00-c\x00nginx\x00"},
		{"13", "python3", "/usr/bin/python3\x00app.py\x00"},
		{"14", "averyveryverylo", "/opt/launcher\x00"},
		{"15", "kthreadd", ""},
		{"16", "x", "/usr/local/bin/envoy\x00--config\x00"},
		{"17", "nginx", "nginx\x00"},   // a zombie (stat below)
		{"self", "nginx", "nginx\x00"}, // not a pid
		{strconv.Itoa(os.Getpid()), "nginx", "nginx\x00"},
	}
	for _, p := range procs {
		d := filepath.Join(root, p.pid)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "comm"), []byte(p.comm+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "cmdline"), []byte(p.cmdline), 0o644); err != nil {
			t.Fatal(err)
		}
		state := "S"
		if p.pid == "17" {
			state = "Z"
		}
		stat := p.pid + " (" + p.comm + ") " + state + " 1 17 17 0 -1"
		if err := os.WriteFile(filepath.Join(d, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		want string
	}{
		{"nginx", "10,11"},
		{"bash", "12"},
		{"python3", "13"},
		{"app.py", ""},
		{"averyveryverylongname", "14"},
		{"kthreadd", "15"},
		{"envoy", "16"},
		{"nope", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pids, err := findProcesses(root, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, p := range pids {
				s = append(s, strconv.Itoa(p))
			}
			if got, want := strings.Join(s, ","), tc.want; got != want {
				t.Fatalf("findProcesses(%q) = %s, want %s", tc.name, got, want)
			}
		})
	}
	if _, err := findProcesses(filepath.Join(root, "nope"), "nginx"); err == nil {
		t.Fatal("findProcesses on a missing root: no error")
	}
}

func TestActionCommand(t *testing.T) {
	for _, tc := range []struct {
		name       string
		argv       []string
		wantErr    string // "" for success
		wantDetail string
		wantLog    []string
		dontLog    string
	}{
		{
			name:       "ok",
			argv:       []string{"sh", "-c", "echo reloaded"},
			wantDetail: `sh -c "echo reloaded": exit 0`,
			wantLog:    []string{"level=INFO", "output=reloaded"},
		},
		{
			name:       "exit status and both streams",
			argv:       []string{"sh", "-c", "echo to-out; echo to-err >&2; exit 3"},
			wantErr:    "exit 3",
			wantDetail: `sh -c "echo to-out; echo to-err >&2; exit 3": exit 3`,
			wantLog:    []string{"level=ERROR", `output="to-out\nto-err"`},
		},
		{
			name:       "killed by a signal",
			argv:       []string{"sh", "-c", "kill -TERM $$"},
			wantErr:    "killed by SIGTERM",
			wantDetail: `sh -c "kill -TERM $$": killed by SIGTERM`,
		},
		{
			name:       "output tail only",
			argv:       []string{"sh", "-c", "i=0; while [ $i -lt 2000 ]; do printf xxxxx; i=$((i+1)); done; echo; echo END"},
			wantDetail: `sh -c "i=0; while [ $i -lt 2000 ]; do printf xxxxx; i=$((i+1)); done; echo; echo END": exit 0`,
			wantLog:    []string{`output="...xxx`, `xxx\nEND"`},
			dontLog:    strings.Repeat("x", OutputTail),
		},
		{
			name:    "no such program",
			argv:    []string{"/nonexistent/kvsync-test-program"},
			wantErr: "/nonexistent/kvsync-test-program",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, logs := mustActionRunner(t, Action{Command: tc.argv}, nil)
			res := r.Run(context.Background(), "test")
			switch {
			case tc.wantErr == "" && res.Err != nil:
				t.Fatalf("Run: %v", res.Err)
			case tc.wantErr != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tc.wantErr)):
				t.Fatalf("Err = %v, want one containing %q", res.Err, tc.wantErr)
			}
			if tc.wantDetail != "" {
				if got, want := res.Detail, tc.wantDetail; got != want {
					t.Fatalf("Detail = %q, want %q", got, want)
				}
			}
			log := logs.String()
			for _, want := range tc.wantLog {
				if !strings.Contains(log, want) {
					t.Fatalf("log lacks %q:\n%s", want, log)
				}
			}
			if tc.dontLog != "" && strings.Contains(log, tc.dontLog) {
				t.Fatalf("log holds more than the output tail (%d bytes of log)", len(log))
			}
		})
	}
}

func TestActionCommandTimeout(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pgid")
	// The shell leads the command's process group; it and both sleeps must die.
	script := fmt.Sprintf("echo $$ > %s.tmp && mv %s.tmp %s; sleep 60 & sleep 60", pidfile, pidfile, pidfile)
	r, _ := mustActionRunner(t, Action{Command: []string{"sh", "-c", script}, Timeout: 200 * time.Millisecond}, nil)
	res := r.Run(context.Background(), "test")
	if res.Err == nil || !strings.Contains(res.Err.Error(), "timed out after 200ms") {
		t.Fatalf("Err = %v, want a timeout", res.Err)
	}
	pgid, err := strconv.Atoi(strings.TrimSpace(waitFile(t, dir, "pgid")))
	if err != nil {
		t.Fatal(err)
	}
	execPollFor(t, 5*time.Second, "process group gone", func() bool { return len(liveGroupMembers(pgid)) == 0 })
}

func TestActionCommandCancel(t *testing.T) {
	dir := t.TempDir()
	r, logs := mustActionRunner(t, Action{Command: []string{"sh", "-c", "touch " + filepath.Join(dir, "started") + "; exec sleep 60"}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFile(t, dir, "started")
		cancel()
	}()
	res := r.Run(ctx, "test")
	if !errors.Is(res.Err, context.Canceled) {
		t.Fatalf("Err = %v, want context.Canceled", res.Err)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("abort not logged at WARN:\n%s", logs)
	}
}

func TestActionHTTP(t *testing.T) {
	for _, tc := range []struct {
		name         string
		statuses     []int // answered in turn; the last one repeats
		retries      int
		wantErr      bool
		wantAttempts int32
		wantDetail   string
	}{
		{"200 at once", []int{200}, 0, false, 1, "POST %s/-/reload: 200"},
		{"204", []int{204}, 0, false, 1, "POST %s/-/reload: 204"},
		{"500 twice then 200", []int{500, 500, 200}, 0, false, 3, "POST %s/-/reload: 200"},
		{"always 500, default retries", []int{500}, 0, true, 4, "POST %s/-/reload: 500"},
		{"always 503, 1 retry", []int{503}, 1, true, 2, "POST %s/-/reload: 503"},
		{"404 is not retried", []int{404}, 0, true, 1, "POST %s/-/reload: 404"},
		{"429 is retried", []int{429, 200}, 0, false, 2, "POST %s/-/reload: 200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var attempts atomic.Int32
			var mu sync.Mutex
			var gotMethod, gotHeader, gotBody string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				n := int(attempts.Add(1))
				b, _ := io.ReadAll(req.Body)
				mu.Lock()
				gotMethod, gotHeader, gotBody = req.Method, req.Header.Get("X-Token"), string(b)
				mu.Unlock()
				w.WriteHeader(tc.statuses[min(n, len(tc.statuses))-1])
				_, _ = io.WriteString(w, "reload says hi")
			}))
			defer srv.Close()
			r, logs := mustActionRunner(t, Action{HTTP: &HTTPAction{
				URL:     srv.URL + "/-/reload",
				Headers: map[string]string{"X-Token": "t0k"},
				Body:    `{"why":"kvsync"}`,
				Retries: tc.retries,
			}}, nil)
			res := r.Run(context.Background(), "test")
			if got, want := res.Err != nil, tc.wantErr; got != want {
				t.Fatalf("Err = %v, want error: %v", res.Err, want)
			}
			if got, want := attempts.Load(), tc.wantAttempts; got != want {
				t.Fatalf("attempts = %d, want %d", got, want)
			}
			if got, want := res.Detail, fmt.Sprintf(tc.wantDetail, srv.URL); got != want {
				t.Fatalf("Detail = %q, want %q", got, want)
			}
			mu.Lock()
			defer mu.Unlock()
			if gotMethod != "POST" || gotHeader != "t0k" || gotBody != `{"why":"kvsync"}` {
				t.Fatalf("request = %s, X-Token %q, body %q", gotMethod, gotHeader, gotBody)
			}
			if tc.wantErr {
				if !strings.Contains(res.Err.Error(), fmt.Sprintf("after %d attempts", tc.wantAttempts)) || !strings.Contains(res.Err.Error(), "reload says hi") {
					t.Fatalf("Err = %v, want the attempts and the response quoted", res.Err)
				}
				if !strings.Contains(logs.String(), "level=ERROR") {
					t.Fatalf("final failure not logged at ERROR:\n%s", logs)
				}
			}
		})
	}
}

func TestActionHTTPMethodAndCancel(t *testing.T) {
	var attempts atomic.Int32
	var method atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		attempts.Add(1)
		method.Store(req.Method)
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer srv.Close()
	r, _ := mustActionRunner(t, Action{HTTP: &HTTPAction{URL: srv.URL, Method: "put", Retries: 1000}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		execPollFor(t, 10*time.Second, "second attempt", func() bool { return attempts.Load() >= 2 })
		cancel()
	}()
	res := r.Run(ctx, "test")
	if !errors.Is(res.Err, context.Canceled) {
		t.Fatalf("Err = %v, want context.Canceled", res.Err)
	}
	if got, want := method.Load(), "PUT"; got != want {
		t.Fatalf("method = %v, want %v", got, want)
	}
}

func TestActionHTTPUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	r, _ := mustActionRunner(t, Action{HTTP: &HTTPAction{URL: url, Retries: 1}}, nil)
	res := r.Run(context.Background(), "test")
	if res.Err == nil || !strings.Contains(res.Err.Error(), "after 2 attempts") {
		t.Fatalf("Err = %v, want a failure after 2 attempts", res.Err)
	}
	if got, want := res.Detail, "POST "+url+": no response"; got != want {
		t.Fatalf("Detail = %q, want %q", got, want)
	}
}

func TestActionSplay(t *testing.T) {
	var calls atomic.Int32
	restart := func(context.Context) error { calls.Add(1); return nil }

	r, _ := mustActionRunner(t, Action{Restart: true, Splay: 20 * time.Millisecond}, restart)
	if res := r.Run(context.Background(), "test"); res.Err != nil {
		t.Fatalf("Run with splay: %v", res.Err)
	}
	if got, want := calls.Load(), int32(1); got != want {
		t.Fatalf("restart calls = %d, want %d", got, want)
	}

	r, _ = mustActionRunner(t, Action{Restart: true, Splay: time.Hour}, restart)
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	res := r.Run(ctx, "test")
	if !errors.Is(res.Err, context.Canceled) {
		t.Fatalf("Err = %v, want context.Canceled", res.Err)
	}
	if got, want := calls.Load(), int32(1); got != want {
		t.Fatalf("restart calls = %d after an aborted splay, want %d", got, want)
	}
}

func TestActionRestart(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		restart func(context.Context) error
		wantErr error
	}{
		{"ok", func(context.Context) error { return nil }, nil},
		{"error", func(context.Context) error { return boom }, boom},
		{"panic", func(context.Context) error { panic("oops") }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := mustActionRunner(t, Action{Restart: true}, tc.restart)
			res := r.Run(context.Background(), "test")
			if tc.name == "panic" {
				if res.Err == nil || !strings.Contains(res.Err.Error(), "oops") {
					t.Fatalf("Err = %v, want the panic as an error", res.Err)
				}
				return
			}
			if got, want := res.Err, tc.wantErr; !errors.Is(got, want) {
				t.Fatalf("Err = %v, want %v", got, want)
			}
			if got, want := res.Kind, "restart"; got != want {
				t.Fatalf("Kind = %q, want %q", got, want)
			}
		})
	}
}

// TestActionRestartSupervisor wires a restart action to a real supervisor,
// as the agent does.
func TestActionRestartSupervisor(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustSupervisor(t, ExecConfig{})
	old := mustStart(t, s, "marker", dir)
	r, _ := mustActionRunner(t, Action{Restart: true}, func(ctx context.Context) error {
		return s.Restart(ctx, procHelperEnvFor("marker", dir))
	})
	if res := r.Run(context.Background(), "test"); res.Err != nil {
		t.Fatalf("Run: %v", res.Err)
	}
	if cur := s.PID(); cur == 0 || cur == old {
		t.Fatalf("PID() = %d after restart action, want a new pid (old %d)", cur, old)
	}
	if !processGone(old) {
		t.Fatalf("old child %d still exists", old)
	}
}

func TestNewActionRunnerErrors(t *testing.T) {
	logger, _ := newTestLogger()
	for _, tc := range []struct {
		name    string
		a       Action
		restart func(context.Context) error
	}{
		{"nothing", Action{}, nil},
		{"bad signal", Action{Signal: "SIGNOPE", PIDFile: "/x"}, nil},
		{"signal without target", Action{Signal: "SIGHUP"}, nil},
		{"signal with both targets", Action{Signal: "SIGHUP", PIDFile: "/x", Process: "y"}, nil},
		{"empty program", Action{Command: []string{""}}, nil},
		{"bad url", Action{HTTP: &HTTPAction{URL: "ftp://x"}}, nil},
		{"restart without exec", Action{Restart: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewActionRunner(tc.a, "proj", logger, tc.restart); err == nil {
				t.Fatal("NewActionRunner: no error")
			}
		})
	}
}

func TestTailBuffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   string
	}{
		{"empty", nil, ""},
		{"fits", []string{"ab", "cd"}, "abcd"},
		{"exactly full", []string{"abcd", "ef"}, "abcdef"},
		{"overflow across writes", []string{"abcd", "efgh"}, "...cdefgh"},
		{"one big write", []string{"abcdefghij"}, "...efghij"},
		{"big write after small", []string{"a", "bcdefg"}, "...bcdefg"},
		{"trailing newline trimmed", []string{"ok\n"}, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &tailBuffer{max: 6}
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if got, want := b.String(), tc.want; got != want {
				t.Fatalf("String() = %q, want %q", got, want)
			}
		})
	}
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"nginx", "-s", "reload"}, "nginx -s reload"},
		{[]string{"sh", "-c", "echo hi"}, `sh -c "echo hi"`},
		{[]string{"x", ""}, `x ""`},
	} {
		if got := CommandLine(tc.argv); got != tc.want {
			t.Fatalf("CommandLine(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// The pidfile of a process that is gone: the kill fails with ESRCH, named.
func TestActionSignalStalePID(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(dir, "stale.pid")
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := mustActionRunner(t, Action{Signal: "HUP", PIDFile: pidfile}, nil)
	res := r.Run(context.Background(), "test")
	if !errors.Is(res.Err, syscall.ESRCH) || !strings.Contains(res.Err.Error(), pidfile) {
		t.Fatalf("Err = %v, want ESRCH naming %s", res.Err, pidfile)
	}
}

// A command that leaves a daemon holding its output pipe still returns, with
// the output so far, and the daemon is left alone.
func TestActionCommandLeavesDaemon(t *testing.T) {
	r, logs := mustActionRunner(t, Action{Command: []string{"sh", "-c", "sleep 1000 & echo $!"}}, nil)
	done := make(chan ActionResult, 1)
	go func() { done <- r.Run(context.Background(), "test") }()
	var res ActionResult
	select {
	case res = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return while a daemon holds the output pipe")
	}
	if res.Err != nil {
		t.Fatalf("Run: %v", res.Err)
	}
	var daemon int
	for _, f := range strings.Fields(logs.String()) {
		if v, ok := strings.CutPrefix(f, "output="); ok {
			daemon, _ = strconv.Atoi(v)
		}
	}
	if daemon <= 0 {
		t.Fatalf("no daemon pid in the logged output:\n%s", logs)
	}
	t.Cleanup(func() { _ = syscall.Kill(daemon, syscall.SIGKILL) })
	if !procLive(daemon) {
		t.Fatalf("daemon %d was killed", daemon)
	}
}

// A webhook that does not answer is cut by the per-attempt timeout (here
// the action's timeout: next to http:) and retried.
func TestActionHTTPTimeout(t *testing.T) {
	var attempts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		attempts.Add(1)
		<-req.Context().Done()
	}))
	defer srv.Close()
	r, _ := mustActionRunner(t, Action{Timeout: 100 * time.Millisecond, HTTP: &HTTPAction{URL: srv.URL, Retries: 1}}, nil)
	res := r.Run(context.Background(), "test")
	if !errors.Is(res.Err, context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want context.DeadlineExceeded", res.Err)
	}
	// The server may see the last request a moment after the client gave up.
	execPollFor(t, 5*time.Second, "2 attempts", func() bool { return attempts.Load() == 2 })
}
