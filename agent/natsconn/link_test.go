package natsconn

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvsync/kvsync/internal/testutil"
)

// TestLinkIdleNotStale: an idle connection (no message for longer than the
// stale threshold) to a healthy server is not reported stale: on a connection
// of its own making (Connect) the link sees the client's PONGs on the socket;
// on any other it asks for a PONG of its own, since the client does not count
// its PONGs.
func TestLinkIdleNotStale(t *testing.T) {
	for _, tc := range []struct {
		name string
		dial func(t *testing.T, url string) *nats.Conn
		wire bool
	}{
		{"plain connection", func(t *testing.T, url string) *nats.Conn { nc, _ := testutil.Connect(t, url); return nc }, false},
		{"Connect", func(t *testing.T, url string) *nats.Conn {
			nc, err := ConnectOnce(context.Background(), NATSConfig{URL: url, PingInterval: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			return nc
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testutil.RunServer(t, nil)
			nc := tc.dial(t, s.ClientURL())
			defer nc.Close()
			if got := wireOf(nc) != nil; got != tc.wire {
				t.Fatalf("connection has a wire: %v, want %v", got, tc.wire)
			}
			ping := DefaultPingInterval
			if tc.wire {
				ping = nc.Opts.PingInterval
			}
			var l Link
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.Run(ctx, nc, slog.New(slog.NewTextHandler(io.Discard, nil)))
			}()
			defer func() { cancel(); wg.Wait() }()
			deadline := time.Now().Add(staleAfter(ping) + 2*ping)
			for time.Now().Before(deadline) {
				if since, stale := l.StaleSince(); stale {
					t.Fatalf("an idle link to a healthy server is reported stale since %v", since)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if age := time.Since(l.LastHeard()); age > staleAfter(ping) {
				t.Errorf("last heard %v ago, want within %v", age, staleAfter(ping))
			}

			// The server gone: the link goes stale or the connection reports it lost.
			s.Shutdown()
			testutil.CheckFor(t, 2*staleAfter(ping), func() error {
				if _, stale := l.StaleSince(); stale || !nc.IsConnected() {
					return nil
				}
				return context.DeadlineExceeded
			})
		})
	}
}
