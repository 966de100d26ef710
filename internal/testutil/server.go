package testutil

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// options are the options RunServer starts from: the test defaults of
// nats-server (no logs, no signal handlers), a random loopback port,
// JetStream with its store in a temp folder, and limits that keep a runaway
// test from filling memory or disk.
func options(tb testing.TB) server.Options {
	opts := natstest.DefaultTestOptions
	opts.Port = server.RANDOM_PORT
	opts.JetStream = true
	opts.StoreDir = tb.TempDir()
	opts.JetStreamMaxMemory = 64 << 20
	opts.JetStreamMaxStore = 256 << 20
	return opts
}

// RunServer runs a JetStream server in the test process on a random loopback
// port, with its file store in tb.TempDir(). edit, when not nil, changes the
// options before the server starts (auth, TLS, limits, a fixed port). The
// server is shut down when the test ends.
func RunServer(tb testing.TB, edit func(*server.Options)) *server.Server {
	tb.Helper()
	opts := options(tb)
	if edit != nil {
		edit(&opts)
	}
	return run(tb, &opts)
}

// RestartServer shuts s down, waits until it is gone, and starts a new server
// on the same port and store: streams, buckets and their contents are kept,
// connected clients see a disconnect. edit is applied as RunServer applies it
// (pass the hook s was started with to get the same options back); the port
// and store are s's whatever edit sets. The new server is shut down when the
// test ends.
func RestartServer(tb testing.TB, s *server.Server, edit func(*server.Options)) *server.Server {
	tb.Helper()
	opts := options(tb)
	if edit != nil {
		edit(&opts)
	}
	opts.Port = s.Addr().(*net.TCPAddr).Port
	opts.StoreDir = filepath.Dir(s.StoreDir()) // StoreDir ends in /jetstream
	s.Shutdown()
	s.WaitForShutdown()
	return run(tb, &opts)
}

func run(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("nats-server options: %v", err)
	}
	go s.Start()
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatalf("nats-server on port %d not ready for connections after 10s", opts.Port)
	}
	return s
}

// Connect connects the test itself to url, to set up and check state
// independently of the code under test. opts are added to the defaults of
// nats.go. The connection is closed when the test ends.
func Connect(tb testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatalf("connect %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// ConnectRetrying is Connect with a client that connects and reconnects
// forever, every 50 ms, so that it survives the restarts and outages the test
// causes. A request made while the server is away fails (or times out) as
// usual; retry it with CheckFor.
func ConnectRetrying(tb testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	retry := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond),
		nats.RetryOnFailedConnect(true), nats.ReconnectJitter(0, 0)}
	return Connect(tb, url, append(retry, opts...)...)
}

// CreateBucket creates the bucket cfg describes and returns it. It fails the
// test if the bucket cannot be created, or exists with other settings.
func CreateBucket(tb testing.TB, js jetstream.JetStream, cfg jetstream.KeyValueConfig) jetstream.KeyValue {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, cfg)
	if err != nil {
		tb.Fatalf("create bucket %s: %v", cfg.Bucket, err)
	}
	return kv
}
