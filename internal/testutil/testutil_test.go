package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// fatalTB records Fatalf instead of failing the test that runs it.
type fatalTB struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.msg = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

// runTB runs fn with a fatalTB on its own goroutine (Fatalf ends it) and
// returns the message of the Fatalf it made, "" when none.
func runTB(t *testing.T, fn func(tb testing.TB)) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.msg
}

func TestCheckForReturnsOnceFnSucceeds(t *testing.T) {
	calls := 0
	msg := runTB(t, func(tb testing.TB) {
		CheckFor(tb, time.Minute, func() error {
			if calls++; calls < 3 {
				return fmt.Errorf("call %d", calls)
			}
			return nil
		})
	})
	if msg != "" || calls != 3 {
		t.Fatalf("CheckFor: fatal %q after %d calls, want none after 3", msg, calls)
	}
}

func TestCheckForFailsWithTheLastError(t *testing.T) {
	calls := 0
	msg := runTB(t, func(tb testing.TB) {
		CheckFor(tb, 50*time.Millisecond, func() error {
			calls++
			return fmt.Errorf("not yet (call %d)", calls)
		})
	})
	if want := fmt.Sprintf("after 50ms: not yet (call %d)", calls); msg != want || calls < 2 {
		t.Fatalf("CheckFor: fatal %q after %d calls, want %q after 2 or more", msg, calls, want)
	}
}

func TestCheckForEveryPollsAtItsInterval(t *testing.T) {
	calls := 0
	msg := runTB(t, func(tb testing.TB) {
		CheckForEvery(tb, 100*time.Millisecond, 40*time.Millisecond, func() error {
			calls++
			return fmt.Errorf("call %d", calls)
		})
	})
	// Calls at 0, 40, 80 and 120 ms: the last one after the timeout fails.
	if want := "after 100ms: call "; !strings.HasPrefix(msg, want) || calls < 2 || calls > 5 {
		t.Fatalf("CheckForEvery: fatal %q after %d calls, want %q... after about 4", msg, calls, want)
	}
}

func TestPollReturnsTheLastErrorWrapped(t *testing.T) {
	errNotYet := errors.New("not yet")
	err := Poll(30*time.Millisecond, func() error { return errNotYet })
	if !errors.Is(err, errNotYet) || err.Error() != "after 30ms: not yet" {
		t.Fatalf("Poll = %v, want after 30ms: not yet, wrapping fn's error", err)
	}
	calls := 0
	if err := Poll(time.Minute, func() error {
		if calls++; calls < 3 {
			return errNotYet
		}
		return nil
	}); err != nil || calls != 3 {
		t.Fatalf("Poll = %v after %d calls, want nil after 3", err, calls)
	}
}

func TestTrue(t *testing.T) {
	ok := false
	check := True("ok is set", func() bool { return ok })
	if err := check(); err == nil || err.Error() != "ok is set" {
		t.Fatalf("True with a false condition = %v, want the error ok is set", err)
	}
	ok = true
	if err := check(); err != nil {
		t.Fatalf("True with a true condition = %v, want nil", err)
	}
}

func TestFreePortIsFree(t *testing.T) {
	port := FreePort(t)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("listen on FreePort's %d: %v", port, err)
	}
	l.Close()
}

func TestRunServerRestartKeepsBuckets(t *testing.T) {
	edit := func(o *server.Options) { o.ServerName = "restarted" }
	s := RunServer(t, edit)
	if got, want := s.Name(), "restarted"; got != want {
		t.Fatalf("Name()=%q, want %q: edit not applied", got, want)
	}
	_, js := ConnectRetrying(t, s.ClientURL())
	kv := CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "app"})
	if _, err := kv.PutString(context.Background(), "k", "v1"); err != nil {
		t.Fatal(err)
	}
	url := s.ClientURL()

	s2 := RestartServer(t, s, edit)
	if s.Running() {
		t.Fatal("the old server still runs")
	}
	if got := s2.ClientURL(); got != url || s2.Name() != "restarted" {
		t.Fatalf("restarted server at %s named %q, want %s named restarted", got, s2.Name(), url)
	}
	// The retrying client comes back by itself; the store is the same.
	CheckFor(t, 10*time.Second, func() error {
		e, err := kv.Get(context.Background(), "k")
		if err != nil {
			return err
		}
		if string(e.Value()) != "v1" {
			return fmt.Errorf("k=%q, want v1", e.Value())
		}
		return nil
	})
}

func TestCreateBucketFailsOnOtherSettings(t *testing.T) {
	_, js := Connect(t, RunServer(t, nil).ClientURL())
	CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "app", History: 1})
	msg := runTB(t, func(tb testing.TB) {
		CreateBucket(tb, js, jetstream.KeyValueConfig{Bucket: "app", History: 5})
	})
	if !strings.Contains(msg, "create bucket app:") {
		t.Fatalf("CreateBucket over a bucket with other settings: fatal %q, want create bucket app: ...", msg)
	}
}

// valueIs is nil once key holds want.
func valueIs(kv jetstream.KeyValue, key, want string) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		e, err := kv.Get(ctx, key)
		if err != nil {
			return err
		}
		if string(e.Value()) != want {
			return fmt.Errorf("%s=%q, want %q", key, e.Value(), want)
		}
		return nil
	}
}

func TestNATSProcKillAndRestart(t *testing.T) {
	n := StartNATSProc(t)
	_, js := ConnectRetrying(t, n.URL())
	kv := CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "app"})
	if _, err := kv.PutString(context.Background(), "k", "v1"); err != nil {
		t.Fatal(err)
	}
	// The store is the server's: the bucket's stream is in it.
	if _, err := os.Stat(filepath.Join(n.Store(), "jetstream", "$G", "streams", "KV_app")); err != nil {
		t.Fatalf("Store() %q does not hold the bucket: %v", n.Store(), err)
	}

	if pid := n.PID(); pid <= 0 {
		t.Fatalf("PID() = %d of a running server", pid)
	}
	n.Kill(t)
	if n.Running() || n.PID() != 0 {
		t.Fatalf("Running() or PID() %d after Kill", n.PID())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err := kv.Get(ctx, "k")
	cancel()
	if err == nil {
		t.Fatal("Get answered while the server was killed")
	}
	n.Start(t)
	CheckFor(t, 10*time.Second, valueIs(kv, "k", "v1"))

	if _, err := kv.PutString(context.Background(), "k", "v2"); err != nil {
		t.Fatal(err)
	}
	n.Restart(t)
	if !n.Running() {
		t.Fatal("not Running() after Restart")
	}
	CheckFor(t, 10*time.Second, valueIs(kv, "k", "v2"))
	if !strings.Contains(n.Log(), "Server is ready") {
		t.Fatalf("Log() of the running server:\n%s", n.Log())
	}
	n.Stop(t)
	n.Stop(t) // stopping a stopped server does nothing
}

func TestNATSProcStartFailsWhenTheServerExits(t *testing.T) {
	msg := runTB(t, func(tb testing.TB) {
		StartNATSProcArgs(tb, FreePort(t), "-c", "/nonexistent/nats.conf")
	})
	if !strings.Contains(msg, "exited") {
		t.Fatalf("StartNATSProcArgs with a missing config: fatal %q, want the server's exit", msg)
	}
}

func TestClusterSurvivesAKilledNode(t *testing.T) {
	c := StartCluster(t)
	_, js := ConnectRetrying(t, c.URL())
	var kv jetstream.KeyValue
	CheckFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "app", Replicas: 3})
		return err
	})
	leader := c.MetaLeader(t)
	victim := c.Node(leader)
	if victim == nil {
		t.Fatalf("meta leader %q is none of the nodes", leader)
	}
	victim.Kill(t)
	CheckFor(t, 30*time.Second, func() error {
		if l := c.MetaLeader(t); l == leader {
			return errors.New("meta leader still the killed node")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := kv.PutString(ctx, "k", "two of three")
		return err
	})
	victim.Start(t)
	CheckFor(t, 10*time.Second, valueIs(kv, "k", "two of three"))
}
