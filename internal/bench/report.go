package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteJSON writes the report as indented JSON. Durations are nanoseconds,
// sizes bytes.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteTable writes the report as two tables for people: latencies (kvsync
// beside the raw watcher and the agent's own histogram) and costs (wall time,
// throughput, memory, CPU, actions), then the notes.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "kvsync bench: %s %s/%s, %d CPUs, server %s, fsync %v\n\n", m.GoVersion, m.OS, m.Arch, m.CPUs, m.Server, m.Fsync)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	lat := false
	for _, res := range r.Results {
		if res.Latency == nil && res.All == nil {
			continue
		}
		if !lat {
			fmt.Fprintln(tw, "SCENARIO\tCASE\tPACING\tN\tP50\tP90\tP99\tMAX\tRAW P50\tRAW P90\tRAW P99\tRAW MAX\tHIST P50\tHIST P99\t")
			lat = true
		}
		if res.Latency != nil {
			row(tw, res.Scenario, res.Case, res.Pacing, res.Latency, res.Raw, res.Histogram)
		}
		if res.All != nil {
			row(tw, res.Scenario, res.Case+" (all)", res.Pacing, res.All, nil, nil)
		}
	}
	if lat {
		fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t\t\t\t\t\t\t")
	}
	cost := false
	for _, res := range r.Results {
		if (res.Latency != nil || res.All != nil) && res.RSS == 0 {
			continue
		}
		if !cost {
			fmt.Fprintln(tw, "SCENARIO\tCASE\tWALL\tTHROUGHPUT\tRSS\tPEAK RSS\tCPU\tACTIONS\t")
			cost = true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", res.Scenario, res.Case, dur(res.Wall),
			rate(res.Throughput, res.Unit), mib(res.RSS), mib(res.PeakRSS), dur(res.CPU), actions(res))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	fmt.Fprintln(w)
	noted := map[string]bool{}
	for _, res := range r.Results {
		if res.Note != "" && !noted[res.Scenario+res.Note] {
			noted[res.Scenario+res.Note] = true
			fmt.Fprintf(w, "%s %s: %s\n", res.Scenario, res.Case, res.Note)
		}
	}
	_, err := fmt.Fprintln(w, "Latency: put -> bytes in the file (inotify event, content confirmed); RAW: put -> a plain JetStream KV watcher got it; HIST: the agent's kvsync_propagation_seconds (server timestamp -> bytes on disk, interpolated in its buckets).")
	return err
}

func row(w io.Writer, scenario, c, pacing string, s, raw, hist *Summary) {
	fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t", scenario, c, pacing, s.N, dur(s.P50), dur(s.P90), dur(s.P99), dur(s.Max))
	if raw != nil {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t", dur(raw.P50), dur(raw.P90), dur(raw.P99), dur(raw.Max))
	} else {
		fmt.Fprint(w, "-\t-\t-\t-\t")
	}
	if hist != nil {
		fmt.Fprintf(w, "%s\t%s\t\n", dur(hist.P50), dur(hist.P99))
	} else {
		fmt.Fprint(w, "-\t-\t\n")
	}
}

// dur prints a duration with three significant digits.
func dur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func rate(v float64, unit string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f %s", v, unit)
}

func actions(r Result) string {
	if r.Scenario != Burst {
		return "-"
	}
	return fmt.Sprint(r.Actions)
}
