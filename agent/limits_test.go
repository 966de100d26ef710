package agent

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/agent/watch"
)

// TestNotReadyBody: /readyz names a bucket refused for the consumer limit
// with its fix, once, before buckets and projections that are not done.
func TestNotReadyBody(t *testing.T) {
	body := notReady(&Status{
		Buckets: []BucketStatus{
			{Name: "a", Missing: true},
			{Name: "b", ConsumerLimit: true, Error: "refused: raise it"},
		},
		Projections: []ProjectionStatus{{Name: "p", Kind: "files", Synced: true}, {Name: "q", Kind: "files"}},
	})
	want := []string{"- bucket b: refused: raise it", "- bucket a: not found", "- files q: not written yet"}
	last := -1
	for _, w := range want {
		i := strings.Index(body, w)
		if i < 0 || i < last {
			t.Fatalf("body=%q, want %q in this order: %q", body, w, want)
		}
		last = i
	}
	if strings.Count(body, "bucket b") != 1 || strings.Contains(body, "files p") {
		t.Fatalf("body=%q: bucket b said twice, or a synced projection named", body)
	}
}

// TestConsumerLimitLoggedOnce: an agent refused, admitted and refused again
// (slots changing hands in a fleet larger than the limit) says it at ERROR
// once, and again only after limitLogEvery; /status follows every change.
func TestConsumerLimitLoggedOnce(t *testing.T) {
	logs := &syncBuffer{}
	o := &owner{a: &Agent{metrics: newMetrics()}, logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	refuse := watch.ConsumerLimit{Bucket: "app", Err: errors.New("refused: raise it")}
	count := func(level string) int { return strings.Count(logs.String(), "level="+level+" msg=\"consumer limit") }
	for range 3 {
		o.noteConsumerLimit(refuse)
		if _, ok := o.limited.why["app"]; !ok {
			t.Fatalf("refusal not recorded")
		}
		o.noteConsumerLimit(watch.ConsumerLimit{Bucket: "app"})
		if _, ok := o.limited.why["app"]; ok {
			t.Fatalf("end of refusal not recorded")
		}
	}
	if got, want := count("ERROR"), 1; got != want {
		t.Fatalf("%d ERROR lines, want %d:\n%s", got, want, logs)
	}
	if got, want := count("INFO"), 1; got != want {
		t.Fatalf("%d INFO lines, want %d:\n%s", got, want, logs)
	}
	if got, want := count("DEBUG"), 4; got != want {
		t.Fatalf("%d DEBUG lines, want %d:\n%s", got, want, logs)
	}
	o.limited.said["app"] = time.Now().Add(-limitLogEvery - time.Second)
	o.noteConsumerLimit(refuse)
	if got, want := count("ERROR"), 2; got != want {
		t.Fatalf("after %v: %d ERROR lines, want %d:\n%s", limitLogEvery, got, want, logs)
	}
}
