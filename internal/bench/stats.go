package bench

import (
	"bufio"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Summary is the distribution of a set of durations.
type Summary struct {
	N    int           `json:"n"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
	Mean time.Duration `json:"mean_ns"`
}

// summarize returns the distribution of ds (nearest-rank percentiles), or
// nil when ds is empty. It sorts ds.
func summarize(ds []time.Duration) *Summary {
	if len(ds) == 0 {
		return nil
	}
	slices.Sort(ds)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(ds)))) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	return &Summary{
		N: len(ds), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99),
		Max: ds[len(ds)-1], Mean: sum / time.Duration(len(ds)),
	}
}

// bucket is one cumulative bucket of a Prometheus histogram.
type bucket struct {
	le    float64 // upper bound, seconds
	count float64 // observations <= le
}

// histogram reads the buckets of the histogram name for the series whose
// labels include every pair of match, from the Prometheus text format.
func histogram(r io.Reader, name string, match map[string]string) []bucket {
	var out []bucket
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prefix := name + "_bucket{"
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		labels := parseLabels(line[len(prefix):end])
		ok := true
		for k, v := range match {
			if labels[k] != v {
				ok = false
			}
		}
		if !ok {
			continue
		}
		count, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			continue
		}
		le, err := strconv.ParseFloat(labels["le"], 64) // "+Inf" parses as +Inf
		if err != nil {
			continue
		}
		out = append(out, bucket{le: le, count: count})
	}
	slices.SortFunc(out, func(a, b bucket) int {
		switch {
		case a.le < b.le:
			return -1
		case a.le > b.le:
			return 1
		}
		return 0
	})
	return out
}

// parseLabels parses `a="x",b="y"` (no escaped quotes in our labels).
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			break
		}
		k := s[:eq]
		rest := s[eq+2:]
		q := strings.IndexByte(rest, '"')
		if q < 0 {
			break
		}
		out[k] = rest[:q]
		s = strings.TrimPrefix(rest[q+1:], ",")
	}
	return out
}

// histSummary estimates the distribution from cumulative buckets the way
// Prometheus' histogram_quantile does: linear interpolation inside the
// bucket that holds the quantile. Max is the upper bound of the highest
// non-empty bucket. It returns nil without observations.
func histSummary(bs []bucket) *Summary {
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return nil
	}
	total := bs[len(bs)-1].count
	q := func(p float64) time.Duration {
		rank := p * total
		lower, prev := 0.0, 0.0
		for _, b := range bs {
			if b.count >= rank {
				if math.IsInf(b.le, 1) {
					return secs(lower)
				}
				in := b.count - prev
				if in == 0 {
					return secs(b.le)
				}
				return secs(lower + (b.le-lower)*(rank-prev)/in)
			}
			lower, prev = b.le, b.count
		}
		return secs(lower)
	}
	s := &Summary{N: int(total), P50: q(0.5), P90: q(0.9), P99: q(0.99)}
	prev := 0.0
	for _, b := range bs {
		if b.count > prev {
			s.Max = secs(b.le)
			if math.IsInf(b.le, 1) {
				s.Max = secs(bs[max(len(bs)-2, 0)].le)
			}
		}
		prev = b.count
	}
	return s
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
