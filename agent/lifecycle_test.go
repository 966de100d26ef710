package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// goroutines returns every goroutine of the process by id, with its stack.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
		out[id] = g
	}
	return out
}

// started returns the goroutines running now that were not in before, other
// than the test's own: its NATS server, the test's code, and os/signal's
// loop, which the first signal.Notify of the process starts for good.
func started(before map[string]string) []string {
	var out []string
	for id, g := range goroutines() {
		if _, ok := before[id]; ok {
			continue
		}
		if strings.Contains(g, "nats-server/v2/") || strings.Contains(g, "_test.go:") ||
			strings.Contains(g, "os/signal.loop") {
			continue
		}
		out = append(out, g)
	}
	return out
}

// waiting reports whether goroutine g runs kvsync code and waits for
// something (a channel, a lock, I/O, a timer). One that is runnable is on its
// way out; one that waits was left behind.
func waiting(g string) bool {
	head, _, _ := strings.Cut(g, "\n")
	state := head[strings.Index(head, "[")+1:]
	state, _, _ = strings.Cut(strings.TrimSuffix(state, "]:"), ",")
	return strings.Contains(g, "github.com/kvsync/kvsync/") && state != "runnable" && state != "running"
}

// TestRunLeavesNoGoroutine runs an agent with every part that starts
// goroutines (a files projection with push-back, a template with a command
// action, an env projection feeding an exec child, the fleet record, the
// HTTP endpoints), stops it, and checks that when Run returns no goroutine
// of the agent waits on anything, and that every goroutine it started is
// soon gone (the NATS client's own end as the connection closes). With the
// server gone before the stop, best-effort requests on the way out (consumer
// deletes) wait for their timeouts instead of being answered at once; the
// connection is then the caller's (Options.Conn), so that it stays open
// after Run and does not cut them short.
func TestRunLeavesNoGoroutine(t *testing.T) {
	for _, tc := range []struct {
		name       string
		serverGone bool // the server is shut down before the stop
		shared     bool // the agent uses the test's connection
	}{
		{"stop", false, false},
		{"server_gone", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testutil.RunServer(t, nil)
			nc, app := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", History: 8})
			js, _ := jetstream.New(nc)
			flags, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "flags"})
			if err != nil {
				t.Fatal(err)
			}
			put(t, app, "a", "1")
			put(t, flags, "x", "1")

			root := t.TempDir()
			dir, dest, pid := filepath.Join(root, "files"), filepath.Join(root, "t.out"), filepath.Join(root, "child.pid")
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cfg := filesCfg(s.ClientURL(), "app", dir)
			cfg.Files[0].Push = PushConfig{Enabled: true}
			cfg.Templates = []TemplateConfig{{Name: "t", Bucket: "app", Text: `{{ key "a" }}`, Dest: dest,
				OnChange: &Action{Command: []string{"true"}}}}
			cfg.Env = []EnvConfig{{Name: "flags", Bucket: "flags", Prefix: "F_"}}
			cfg.Exec = &ExecConfig{Command: []string{"/bin/sh", "-c", `echo $$ > "$0"; exec sleep 60`, pid}, KillTimeout: 2 * time.Second}
			opts := Options{Listener: ln}
			if tc.shared {
				opts.Conn = nc
			} else {
				// Purged on a clean stop; with the server gone it would
				// wait for its timeout before the consumer deletes did.
				cfg.Report = &ReportConfig{Interval: time.Hour}
			}
			cfg.Default()
			logs := &syncBuffer{}
			logger := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
			opts.Logger = logger
			a, err := New(cfg, opts)
			if err != nil {
				t.Fatal(err)
			}

			before := goroutines()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()

			testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
			testutil.CheckFor(t, 10*time.Second, fileIs(dest, "1"))
			testutil.CheckFor(t, 10*time.Second, func() error {
				if _, err := os.Stat(pid); err != nil {
					return err
				}
				if !a.Ready() {
					return errors.New("not ready")
				}
				return nil
			})
			// A local edit goes back to the bucket (push-back).
			if err := os.WriteFile(filepath.Join(dir, "b"), []byte("local"), 0o644); err != nil {
				t.Fatal(err)
			}
			testutil.CheckFor(t, 10*time.Second, func() error {
				e, err := app.Get(context.Background(), "b")
				if err != nil {
					return err
				}
				if string(e.Value()) != "local" {
					return fmt.Errorf("b is %q", e.Value())
				}
				return nil
			})
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := c.Get("http://" + ln.Addr().String() + "/status")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if !tc.shared {
				nc.Close() // its goroutines are the test's
			}
			if tc.serverGone {
				s.Shutdown()
				s.WaitForShutdown()
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return within 30s")
			}
			var left []string
			for _, g := range started(before) {
				if waiting(g) {
					left = append(left, g)
				}
			}
			if len(left) > 0 {
				t.Fatalf("%d goroutines of the agent still wait after Run returned:\n\n%s", len(left), strings.Join(left, "\n\n"))
			}
			nc.Close() // the agent does not close a connection it was given
			testutil.CheckFor(t, 10*time.Second, func() error {
				if left := started(before); len(left) > 0 {
					return fmt.Errorf("%d goroutines left:\n\n%s", len(left), strings.Join(left, "\n\n"))
				}
				return nil
			})
		})
	}
}

// TestGroupStopsInOrder: the first actor to return stops the others one at
// a time in the order they were added, each after the one before returned,
// and run returns the first error.
func TestGroupStopsInOrder(t *testing.T) {
	var events []string // appended by the group's goroutine and the actors, in turn
	var mu sync.Mutex
	note := func(s string) {
		mu.Lock()
		events = append(events, s)
		mu.Unlock()
	}
	boom := errors.New("boom")
	g := group{logger: slog.New(slog.DiscardHandler)}
	fail := make(chan struct{})
	for _, name := range []string{"a", "b", "c", "d"} {
		stop := make(chan struct{})
		g.add(name, func() error {
			if name == "c" {
				<-fail
				note("c returned")
				return boom
			}
			<-stop
			note(name + " returned")
			if name == "d" {
				return errors.New("later error")
			}
			return nil
		}, func(err error) {
			if !errors.Is(err, boom) {
				t.Errorf("%s interrupted with %v, want boom", name, err)
			}
			note(name + " interrupted")
			close(stop)
		})
	}
	close(fail)
	if err := g.run(); !errors.Is(err, boom) {
		t.Fatalf("run: %v, want boom", err)
	}
	want := []string{"c returned", "a interrupted", "a returned", "b interrupted", "b returned", "d interrupted", "d returned"}
	if got := strings.Join(events, ", "); got != strings.Join(want, ", ") {
		t.Fatalf("events: %s\nwant:   %s", got, strings.Join(want, ", "))
	}
}

// TestListenAddressInUse: an HTTP address that cannot be bound fails Run at
// once with an error naming it, before NATS is dialled (the server never
// saw a connection) and before anything is written.
func TestListenAddressInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	s := testutil.RunServer(t, nil)

	dir := filepath.Join(t.TempDir(), "files")
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.HTTP.Listen = busy.Addr().String()
	cfg.Default()
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	vz, err := s.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	conns := vz.TotalConnections
	err = a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "http listen "+busy.Addr().String()) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Run: %v, want an address-in-use error naming %s", err, busy.Addr())
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: %v, want nothing written", dir, err)
	}
	if vz, err = s.Varz(nil); err != nil {
		t.Fatal(err)
	}
	if n := vz.TotalConnections - conns; n != 0 {
		t.Fatalf("the server saw %d connections from the agent, want none", n)
	}
}

// TestServeFailureStopsAgent: when the HTTP listener fails while the agent
// runs, Run stops everything and returns an error naming the address.
func TestServeFailureStopsAgent(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "1")
	dir := t.TempDir()
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.Exec = &ExecConfig{Command: []string{"sleep", "60"}, KillTimeout: 2 * time.Second}
	cfg.Env = []EnvConfig{{Name: "env", Bucket: "app", Prefix: "F_"}}
	cfg.Default()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	a, err := New(cfg, Options{Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
	var pid int
	testutil.CheckFor(t, 10*time.Second, func() error {
		c := a.Status().Child
		if c == nil || c.PID == 0 {
			return errors.New("child not started")
		}
		pid = c.PID
		return nil
	})
	if code, _, err := httpGet("http://" + addr + "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("GET /healthz: %d %v", code, err)
	}

	ln.Close() // the listener fails under the server
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s")
	}
	if err == nil || !strings.Contains(err.Error(), "serve http on "+addr) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Run: %v, want a serve error naming %s", err, addr)
	}
	// Run stopped the child on its way out.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("child %d after Run returned: %v, want it gone", pid, err)
	}
}
