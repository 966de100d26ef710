package testutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsServerBin builds the nats-server of go.mod once per test binary. The
// test binary runs in its package's folder, inside the module, so go build
// takes the version go.mod pins.
var natsServerBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "kvsync-nats-server-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nats-server")
	build := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build nats-server: %v\n%s", err, out)
	}
	return bin, nil
})

// NATSServerBin returns the path of a nats-server binary of the version
// go.mod pins, built on the first call of the test binary.
func NATSServerBin(tb testing.TB) string {
	tb.Helper()
	bin, err := natsServerBin()
	if err != nil {
		tb.Fatal(err)
	}
	return bin
}

// NATSProc is a nats-server running as a child process, so that it can be
// SIGKILLed (no goodbye to its clients or peers) and started again on the
// same port from the same store.
type NATSProc struct {
	name  string   // server name, for a cluster node
	port  int      // client port
	store string   // store folder, when the test chose it
	args  []string // the server's command line
	js    bool     // Start waits for JetStream to answer, not only for a connection

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  *SyncBuffer   // stdout and stderr of the current run
}

// StartNATSProc starts a nats-server child with JetStream on a free loopback
// port, its store in tb.TempDir(), and waits until JetStream answers. It is
// killed when the test ends.
func StartNATSProc(tb testing.TB) *NATSProc {
	tb.Helper()
	port, store := FreePort(tb), tb.TempDir()
	n := &NATSProc{port: port, store: store, js: true,
		args: []string{"-js", "-sd", store, "-p", strconv.Itoa(port), "-a", "127.0.0.1"}}
	n.start(tb)
	return n
}

// StartNATSProcArgs starts a nats-server child with the command line args
// (a config file: "-c", path) that listens for clients on port, and waits
// until JetStream answers. It is killed when the test ends.
func StartNATSProcArgs(tb testing.TB, port int, args ...string) *NATSProc {
	tb.Helper()
	n := &NATSProc{port: port, args: args, js: true}
	n.start(tb)
	return n
}

func (n *NATSProc) start(tb testing.TB) {
	tb.Helper()
	tb.Cleanup(func() { n.Kill(tb) })
	n.Start(tb)
}

// URL is the client URL of the server.
func (n *NATSProc) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// Port is the client port of the server.
func (n *NATSProc) Port() int { return n.port }

// Name is the server name of a cluster node ("" for a server of
// StartNATSProc or StartNATSProcArgs).
func (n *NATSProc) Name() string { return n.name }

// Store is the folder of the server's JetStream store ("" for a server of
// StartNATSProcArgs: its command line names it). It is the same after a
// restart.
func (n *NATSProc) Store() string { return n.store }

// PID is the process id of the running server, 0 when it does not run (for
// a test that reads the server's /proc figures).
func (n *NATSProc) PID() int {
	if !n.Running() {
		return 0
	}
	return n.cmd.Process.Pid
}

// Log is what the current (or last) run of the server wrote.
func (n *NATSProc) Log() string { return n.log.String() }

// Running reports whether the process runs.
func (n *NATSProc) Running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Start runs the server again after Stop or Kill, on the same port and store,
// and waits until JetStream answers (a cluster node: until it accepts
// clients, as its JetStream may wait for a quorum). It fails the test if the
// server runs already or exits.
func (n *NATSProc) Start(tb testing.TB) {
	tb.Helper()
	n.launch(tb)
	n.wait(tb)
}

// launch starts the process without waiting for it.
func (n *NATSProc) launch(tb testing.TB) {
	tb.Helper()
	if n.Running() {
		tb.Fatalf("nats-server on port %d: already running", n.port)
	}
	n.log = &SyncBuffer{}
	n.cmd = exec.Command(NATSServerBin(tb), n.args...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		tb.Fatalf("start nats-server: %v", err)
	}
	cmd, done := n.cmd, make(chan struct{})
	n.done = done
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
}

// wait waits until the launched server is ready, and fails the test if it
// exits first.
func (n *NATSProc) wait(tb testing.TB) {
	tb.Helper()
	CheckFor(tb, 20*time.Second, func() error {
		if !n.Running() {
			tb.Fatalf("nats-server on port %d exited:\n%s", n.port, n.log.String())
		}
		return n.ready()
	})
}

// ready is nil once a client connects (and JetStream answers, if n.js).
func (n *NATSProc) ready() error {
	nc, err := nats.Connect(n.URL(), nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	if !n.js {
		return nil
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// Stop shuts the server down cleanly (SIGTERM: it closes its clients and
// flushes its store) and waits until the process is gone. Stopping a server
// that does not run does nothing.
func (n *NATSProc) Stop(tb testing.TB) {
	tb.Helper()
	n.signal(tb, syscall.SIGTERM)
}

// Kill SIGKILLs the server, the way a crash or an OOM kill ends it, and waits
// until the process is gone. Killing a server that does not run does nothing.
func (n *NATSProc) Kill(tb testing.TB) {
	tb.Helper()
	n.signal(tb, syscall.SIGKILL)
}

// Restart is Stop then Start.
func (n *NATSProc) Restart(tb testing.TB) {
	tb.Helper()
	n.Stop(tb)
	n.Start(tb)
}

func (n *NATSProc) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if !n.Running() {
		return
	}
	if err := n.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		tb.Fatalf("signal nats-server: %v", err)
	}
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
		tb.Fatalf("nats-server on port %d still running 30s after %v; killed", n.port, sig)
	}
}

// SyncBuffer is a bytes.Buffer safe for a writer (a process, a logger) and a
// reading test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
