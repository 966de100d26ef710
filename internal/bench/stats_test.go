package bench

import (
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		out := make([]time.Duration, len(n))
		for i, v := range n {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	for _, tt := range []struct {
		name                string
		in                  []time.Duration
		p50, p90, p99, maxd time.Duration
	}{
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{"unsorted ten", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 5 * time.Millisecond, 9 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := summarize(tt.in)
			if got, want := s.N, len(tt.in); got != want {
				t.Fatalf("N=%d, want %d", got, want)
			}
			if s.P50 != tt.p50 || s.P90 != tt.p90 || s.P99 != tt.p99 || s.Max != tt.maxd {
				t.Fatalf("summary %+v, want p50 %v p90 %v p99 %v max %v", s, tt.p50, tt.p90, tt.p99, tt.maxd)
			}
		})
	}
	if s := summarize(nil); s != nil {
		t.Fatalf("summarize(nil)=%+v, want nil", s)
	}
}

const page = `# HELP kvsync_propagation_seconds Time from the server timestamp of an entry to its bytes on disk.
# TYPE kvsync_propagation_seconds histogram
kvsync_propagation_seconds_bucket{projection="other",le="0.001"} 100
kvsync_propagation_seconds_bucket{projection="files",le="0.001"} 0
kvsync_propagation_seconds_bucket{projection="files",le="0.002"} 50
kvsync_propagation_seconds_bucket{projection="files",le="0.004"} 100
kvsync_propagation_seconds_bucket{projection="files",le="+Inf"} 100
kvsync_propagation_seconds_sum{projection="files"} 0.2
kvsync_propagation_seconds_count{projection="files"} 100
kvsync_writes_total{projection="files"} 42
`

func TestHistogram(t *testing.T) {
	bs := histogram(strings.NewReader(page), "kvsync_propagation_seconds", map[string]string{"projection": "files"})
	if got, want := len(bs), 4; got != want {
		t.Fatalf("%d buckets, want %d: %+v", got, want, bs)
	}
	s := histSummary(bs)
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{
		{"p50", s.P50, 2 * time.Millisecond},    // the 50th observation closes the (1ms, 2ms] bucket
		{"p90", s.P90, 3600 * time.Microsecond}, // 40 of 50 into (2ms, 4ms]
		{"max", s.Max, 4 * time.Millisecond},
	} {
		if d := c.got - c.want; d < -time.Microsecond || d > time.Microsecond {
			t.Fatalf("%s=%v, want %v", c.name, c.got, c.want)
		}
	}
	if got, want := s.N, 100; got != want {
		t.Fatalf("N=%d, want %d", got, want)
	}
	if s := histSummary(histogram(strings.NewReader(page), "kvsync_propagation_seconds", map[string]string{"projection": "none"})); s != nil {
		t.Fatalf("no series: %+v, want nil", s)
	}
	if got, want := counter(page, "kvsync_writes_total", "files"), 42.0; got != want {
		t.Fatalf("counter=%v, want %v", got, want)
	}
}

func TestExpand(t *testing.T) {
	for _, tt := range []struct {
		in   []string
		want string
		err  bool
	}{
		// All is every scenario but the storm, which restarts a server of
		// the bench's own: asked for by name only.
		{nil, "latency,initial-sync,once,burst,idle,fanout", false},
		{[]string{All}, "latency,initial-sync,once,burst,idle,fanout", false},
		{[]string{Burst, Latency}, "burst,latency", false},
		{[]string{Storm}, "storm", false},
		{[]string{"nope"}, "", true},
	} {
		got, err := expand(tt.in)
		if (err != nil) != tt.err {
			t.Fatalf("expand(%v) error %v, want error %v", tt.in, err, tt.err)
		}
		if err == nil && strings.Join(got, ",") != tt.want {
			t.Fatalf("expand(%v)=%v, want %s", tt.in, got, tt.want)
		}
	}
}
