package watch

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/internal/testutil"
)

// put puts val at key and returns its revision.
func put(t *testing.T, kv jetstream.KeyValue, key, val string) uint64 {
	t.Helper()
	rev, err := kv.PutString(context.Background(), key, val)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return rev
}

// TestRepublishLastSeq: the periodic check's direct get reads the stream's
// last sequence; on an empty stream it cannot answer, and stream info does.
func TestRepublishLastSeq(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, js := testutil.Connect(t, s.ClientURL())
	kv := testutil.CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")})
	opts := Options{Mode: ModeRepublish, CheckInterval: time.Second}
	w := newRepublishWatcher(js, "app", []string{">"}, newInbox(), slog.New(slog.DiscardHandler), opts)
	if _, ok := w.lastSeq(context.Background()); ok {
		t.Fatal("lastSeq answered on an empty stream")
	}
	put(t, kv, "a", "1")
	rev := put(t, kv, "b", "2")
	if got, ok := w.lastSeq(context.Background()); !ok || got != rev {
		t.Fatalf("lastSeq = %d, %v; want %d, true", got, ok, rev)
	}
	other := newRepublishWatcher(js, "nope", []string{">"}, newInbox(), slog.New(slog.DiscardHandler), opts)
	if _, ok := other.lastSeq(context.Background()); ok {
		t.Fatal("lastSeq answered for a missing stream")
	}
}
