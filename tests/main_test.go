// Package tests drives the real kvsync binary end to end against real NATS
// servers. TestMain builds the binary once; the helpers here are shared by
// every test of the package.
package tests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// kvsyncBin is the binary TestMain built. It is set once, before any test runs.
var kvsyncBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kvsync-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	kvsyncBin = filepath.Join(dir, "kvsync")
	build := exec.Command("go", "build", "-o", kvsyncBin, "./cmd/kvsync")
	build.Dir = ".." // the module root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build kvsync: %v\n", err)
		return 1
	}
	return m.Run()
}

// testEnv is the environment every kvsync run starts from: the test process's
// own without NATS_* and KVSYNC_* variables, and with XDG_CONFIG_HOME and HOME
// in a fresh folder, so that neither the caller's shell nor a NATS CLI context
// selected on this machine leaks into a test.
func testEnv(t testing.TB) []string {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "NATS_"), strings.HasPrefix(name, "KVSYNC_"),
			name == "XDG_CONFIG_HOME", name == "HOME":
			continue
		}
		env = append(env, kv)
	}
	home := t.TempDir()
	return append(env, "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
}

// run is one kvsync invocation: arguments, extra environment, stdin.
type run struct {
	args  []string
	env   []string // KEY=VALUE, added to testEnv (later entries win)
	stdin []byte
	dir   string // working folder; a temp folder when empty
}

// runKvsync runs kvsync with args and returns its output and exit code.
func runKvsync(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runWith(t, run{args: args})
}

// runWith runs kvsync as r says. A run that takes over a minute is killed and
// fails the test.
func runWith(t testing.TB, r run) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kvsyncBin, r.args...)
	cmd.Env = append(testEnv(t), r.env...)
	cmd.Dir = r.dir
	if cmd.Dir == "" {
		cmd.Dir = t.TempDir()
	}
	cmd.Stdin = bytes.NewReader(r.stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kvsync %s: killed after a minute; stderr:\n%s", strings.Join(r.args, " "), errb.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("kvsync %s: %v", strings.Join(r.args, " "), err)
	}
	return out.String(), errb.String(), code
}

// mustKvsync runs kvsync and fails the test unless it exits 0. It returns stdout.
func mustKvsync(t testing.TB, args ...string) string {
	t.Helper()
	out, errs, code := runKvsync(t, args...)
	if code != 0 {
		t.Fatalf("kvsync %s: exit %d, stderr:\n%s", strings.Join(args, " "), code, errs)
	}
	return out
}

// jetStream connects the test itself to s, to set up and check state
// independently of the binary under test.
func jetStream(t testing.TB, s *server.Server, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	_, js := testutil.Connect(t, s.ClientURL(), opts...)
	return js
}

// createBucket creates a bucket with the given history and returns it.
func createBucket(t testing.TB, js jetstream.JetStream, name string, history uint8) jetstream.KeyValue {
	t.Helper()
	return testutil.CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: name, History: history})
}

// proc is a kvsync running in the background (`kv watch`, `run`).
type proc struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line; closed at EOF
	stderr *lockedBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, set before done closes
}

// startKvsync starts kvsync in the background. It is killed when the test
// ends if it is still running.
func startKvsync(t testing.TB, r run) *proc {
	t.Helper()
	cmd := exec.Command(kvsyncBin, r.args...)
	cmd.Env = append(testEnv(t), r.env...)
	cmd.Dir = r.dir
	if cmd.Dir == "" {
		cmd.Dir = t.TempDir()
	}
	cmd.Stdin = bytes.NewReader(r.stdin)
	p := &proc{cmd: cmd, lines: make(chan string, 1024), stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("stdout pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kvsync: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// line returns the next stdout line, failing the test after timeout or at EOF.
func (p *proc) line(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("kvsync exited before the next line; stderr:\n%s", p.stderr.String())
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("no line from kvsync within %v; stderr:\n%s", timeout, p.stderr.String())
	}
	return ""
}

// stop sends sig and returns the exit code, failing the test if the process
// has not exited within timeout.
func (p *proc) stop(t testing.TB, sig os.Signal, timeout time.Duration) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal kvsync: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("kvsync still running %v after %v; stderr:\n%s", timeout, sig, p.stderr.String())
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("wait kvsync: %v", p.err)
	return -1
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
