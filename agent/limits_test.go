package agent

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
	"github.com/nats-io/nats.go/jetstream"
)

// TestReconnectDelayJitter: agents reconnecting after one server restart
// spread their attempts over [base/2, base].
func TestReconnectDelayJitter(t *testing.T) {
	for _, tc := range []struct {
		attempts int
		base     time.Duration
	}{{1, 100 * time.Millisecond}, {3, 400 * time.Millisecond}, {50, 600 * time.Millisecond}} {
		agent := uint64(0)
		testutil.Spread(t, "reconnect", 1000, tc.base/2, tc.base, func() time.Duration {
			agent++
			return reconnectDelayWith(tc.attempts, testutil.Seeded(agent))
		})
	}
}

// TestMirrorStatus: the mirror part of /status from a stream's info.
func TestMirrorStatus(t *testing.T) {
	if m := mirrorStatus(&jetstream.StreamInfo{}); m != nil {
		t.Fatalf("not a mirror: %+v, want nil", m)
	}
	for _, tc := range []struct {
		src                  jetstream.StreamSource
		origin, domain, pref string
	}{
		{jetstream.StreamSource{Name: "KV_app"}, "app", "", ""},
		{jetstream.StreamSource{Name: "KV_app", External: &jetstream.ExternalStream{APIPrefix: "$JS.hub.API"}}, "app", "hub", ""},
		{jetstream.StreamSource{Name: "KV_app", External: &jetstream.ExternalStream{APIPrefix: "$JS.a.b.API"}}, "app", "", "$JS.a.b.API"},
		{jetstream.StreamSource{Name: "KV_app", External: &jetstream.ExternalStream{APIPrefix: "other.API"}}, "app", "", "other.API"},
	} {
		info := &jetstream.StreamInfo{
			Config: jetstream.StreamConfig{Mirror: &tc.src},
			Mirror: &jetstream.StreamSourceInfo{Lag: 7, Active: 1500 * time.Millisecond,
				Error: &jetstream.APIError{Code: 503, Description: "no route"}},
		}
		m := mirrorStatus(info)
		if m.Origin != tc.origin || m.Domain != tc.domain || m.APIPrefix != tc.pref {
			t.Errorf("%+v: origin %q domain %q prefix %q, want %q %q %q", tc.src, m.Origin, m.Domain, m.APIPrefix, tc.origin, tc.domain, tc.pref)
		}
		if m.Lag != 7 || m.LastContact != "1.5s" || !strings.Contains(m.Error, "no route") {
			t.Errorf("lag %d, last contact %q, error %q", m.Lag, m.LastContact, m.Error)
		}
	}
	never := mirrorStatus(&jetstream.StreamInfo{
		Config: jetstream.StreamConfig{Mirror: &jetstream.StreamSource{Name: "KV_app"}},
		Mirror: &jetstream.StreamSourceInfo{Active: -1},
	})
	if never.LastContact != "" {
		t.Errorf("never in contact: last contact %q, want none", never.LastContact)
	}
}

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
	refuse := consumerLimit{bucket: "app", err: errors.New("refused: raise it")}
	count := func(level string) int { return strings.Count(logs.String(), "level="+level+" msg=\"consumer limit") }
	for range 3 {
		o.noteConsumerLimit(refuse)
		if _, ok := o.limited.why["app"]; !ok {
			t.Fatalf("refusal not recorded")
		}
		o.noteConsumerLimit(consumerLimit{bucket: "app"})
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
