package agent

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// TestLinkIdleNotStale: an idle connection (no message for longer than the
// stale threshold) to a healthy server is not reported stale: the link asks
// for a PONG of its own, since the client does not count its PONGs.
func TestLinkIdleNotStale(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, _ := testutil.Connect(t, s.ClientURL())
	defer nc.Close()
	var l link
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.run(ctx, nc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() { cancel(); wg.Wait() }()
	deadline := time.Now().Add(staleAfter + 2*pingInterval)
	for time.Now().Before(deadline) {
		if since, stale := l.staleSince(); stale {
			t.Fatalf("an idle link to a healthy server is reported stale since %v", since)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if age := time.Since(l.lastHeard()); age > staleAfter {
		t.Errorf("last heard %v ago, want within %v", age, staleAfter)
	}

	// The server gone: the link goes stale or the connection reports it lost.
	s.Shutdown()
	testutil.CheckFor(t, 2*staleAfter, func() error {
		if _, stale := l.staleSince(); stale || !nc.IsConnected() {
			return nil
		}
		return context.DeadlineExceeded
	})
}
