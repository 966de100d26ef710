package watch

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"
)

// TestBoundedGivesUpOnNews: a watcher request that the server does not answer
// (as during a leader election) is given up as soon as the stream reports
// news or the connection comes back, not when its timeout expires; news is
// passed on so the watcher retries at once; a timeout still ends it.
func TestBoundedGivesUpOnNews(t *testing.T) {
	w := newWatcher(nil, "app", nil, &events{}, slog.New(slog.DiscardHandler), Options{})
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
