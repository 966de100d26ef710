package watch

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestBoundedGivesUpOnNews: a watcher request that the server does not answer
// (as during a leader election) is given up as soon as the stream reports
// news or the connection comes back, not when its timeout expires; news is
// passed on so the watcher retries at once; a timeout still ends it.
func TestBoundedGivesUpOnNews(t *testing.T) {
	w := newWatcher(nil, "app", nil, newInbox(), slog.New(slog.DiscardHandler), Options{})
	unanswered := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }

	for _, tc := range []struct {
		name   string
		signal chan struct{}
		want   error
	}{
		{"stream news", w.nudge, errNudged},
		{"reconnect", w.resumed, errResumed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			go func() {
				time.Sleep(20 * time.Millisecond)
				tc.signal <- struct{}{}
			}()
			err := w.bounded(context.Background(), time.Hour, unanswered)
			if !errors.Is(err, tc.want) || !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want %v wrapping context.Canceled", err, tc.want)
			}
			select {
			case <-w.nudge:
				if tc.want != errNudged {
					t.Fatalf("a reconnect was passed on as stream news")
				}
			default:
				if tc.want == errNudged {
					t.Fatalf("the stream news was not passed on")
				}
			}
		})
	}

	t.Run("timeout", func(t *testing.T) {
		err := w.bounded(context.Background(), 10*time.Millisecond, unanswered)
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errNudged) || errors.Is(err, errResumed) {
			t.Fatalf("err = %v, want a plain deadline", err)
		}
	})
	// The answer and the news arrive together: the request is not given up
	// (its answer counts), and the news is still there for the watcher.
	// Before this was kept, a reconnect that came as a request was answered
	// was lost: the watcher neither re-made its consumer nor listed the keys.
	for _, tc := range []struct {
		name   string
		signal chan struct{}
	}{
		{"stream news with the answer", w.nudge},
		{"reconnect with the answer", w.resumed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := w.bounded(context.Background(), time.Hour, func(ctx context.Context) error {
				tc.signal <- struct{}{}
				<-ctx.Done() // bounded took the news
				return nil   // and the answer was there already
			})
			if err != nil {
				t.Fatalf("err = %v, want the answer", err)
			}
			select {
			case <-tc.signal:
			default:
				t.Fatalf("the news was lost")
			}
			select {
			case <-w.nudge:
				t.Fatalf("news passed on twice, or as the other kind")
			case <-w.resumed:
				t.Fatalf("news passed on twice, or as the other kind")
			default:
			}
		})
	}
	t.Run("answered", func(t *testing.T) {
		if err := w.bounded(context.Background(), time.Hour, func(context.Context) error { return nil }); err != nil {
			t.Fatalf("err = %v", err)
		}
		select {
		case <-w.nudge:
			t.Fatalf("a nudge appeared from nowhere")
		case <-w.resumed:
			t.Fatalf("a resume appeared from nowhere")
		default:
		}
	})
}

// TestAPITimeout: the first request is bounded at 500 ms and each failure in a
// row doubles it, up to 5 s.
func TestAPITimeout(t *testing.T) {
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for fails, w := range want {
		if got := apiTimeout(fails); got != w {
			t.Errorf("apiTimeout(%d) = %v, want %v", fails, got, w)
		}
	}
	if got := apiTimeout(1000); got != 5*time.Second {
		t.Errorf("apiTimeout(1000) = %v, want 5s", got)
	}
}

// TestSubjects: key filters become stream subject filters the server takes:
// one covered by another goes, and two that overlap without one covering
// the other make the whole bucket (filtered on the client).
func TestSubjects(t *testing.T) {
	for _, tc := range []struct {
		filters []string
		want    []string
	}{
		{[]string{">"}, []string{"$KV.b.>"}},
		{[]string{"a.*", "a.b"}, []string{"$KV.b.a.*"}},
		{[]string{"a.>", "b"}, []string{"$KV.b.a.>", "$KV.b.b"}},
		{[]string{"x", "x"}, []string{"$KV.b.x"}},
		{[]string{"a.*.c", "a.b.*"}, []string{"$KV.b.>"}},
	} {
		if got := subjects("b", tc.filters); !slices.Equal(got, tc.want) {
			t.Errorf("subjects(%q) = %q, want %q", tc.filters, got, tc.want)
		}
	}
	for _, tc := range []struct {
		g, f string
		want bool
	}{
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{"*", "a", true},
		{"a.*", "a.>", false},
		{"a", "a.b", false},
		{"a.b", "a.*", false},
	} {
		if got := covers(tc.g, tc.f); got != tc.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tc.g, tc.f, got, tc.want)
		}
	}
	if !overlap("a.*", "*.b") || overlap("a.b", "a.c") || overlap("a.*", "a.b.c") || !overlap("a.>", "a.b.c") {
		t.Error("overlap is wrong")
	}
}

// TestParseEntry: the operation comes from the KV-Operation header, else
// from the server's marker reason; only a put keeps its value, a copy of
// it; a subject outside the bucket is no entry.
func TestParseEntry(t *testing.T) {
	const prefix = "$KV.b."
	ts := time.Unix(100, 0)
	data := []byte("v")
	for _, tc := range []struct {
		h     nats.Header
		op    Op
		value bool
	}{
		{nil, OpPut, true},
		{nats.Header{"X-App": {"y"}}, OpPut, true},
		{nats.Header{"KV-Operation": {"DEL"}}, OpDelete, false},
		{nats.Header{"KV-Operation": {"PURGE"}}, OpPurge, false},
		{nats.Header{jetstream.MarkerReasonHeader: {"MaxAge"}}, OpPurge, false},
		{nats.Header{jetstream.MarkerReasonHeader: {"Remove"}}, OpDelete, false},
	} {
		ev, ok := parseEntry(prefix+"k.x", tc.h, data, prefix, "b", 7, ts)
		if !ok || ev.Bucket != "b" || ev.Key != "k.x" || ev.Op != tc.op || ev.Revision != 7 || !ev.Created.Equal(ts) {
			t.Errorf("header %v: %+v, %v", tc.h, ev, ok)
		}
		if tc.value != (ev.Value != nil) {
			t.Errorf("header %v: value %q", tc.h, ev.Value)
		}
		if len(tc.h) > 0 && tc.value && &ev.Value[0] == &data[0] {
			t.Errorf("header %v: the value is not a copy", tc.h)
		}
	}
	if _, ok := parseEntry("$KV.other.k", nil, data, prefix, "b", 1, ts); ok {
		t.Error("a subject of another bucket parsed")
	}
}
