package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/internal/kvkey"
)

// FleetCommand reads the status bucket the agents report to:
// kvsync fleet status|wait.
type FleetCommand struct{ io ioStreams }

const fleetUsage = `Usage:
  kvsync fleet status [--bucket B] [--key K] [-l k=v,...] [--status-bucket S] [--json]
                      one line per live agent and a summary; with --key, how far
                      each agent that projects K is behind its current revision
  kvsync fleet wait   --bucket B --key K [--revision N] [-l k=v,...] [--min N] [--timeout D]
                      exit 0 once every live agent that projects K has applied
                      revision N (default: K's current revision) with a good write
                      and action; 1 on timeout, on a failure reported for N, or
                      when fewer than --min agents project K

Flags:
`

// fleetArgs is a parsed fleet command line.
type fleetArgs struct {
	sub          string
	bucket, key  string
	statusBucket string
	labels       string
	selector     map[string]string
	revision     uint64
	min          int
	timeout      time.Duration
	json         bool
}

// Run implements command.
func (c *FleetCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("fleet", c.io.err)
	fs.Usage = func() {
		fmt.Fprint(c.io.err, fleetUsage)
		fs.PrintDefaults()
	}
	var conn connFlags
	conn.register(fs)
	var a fleetArgs
	fs.StringVar(&a.bucket, "bucket", "", "the bucket of the key (wait: required; status: only agents that read it)")
	fs.StringVar(&a.key, "key", "", "the key (wait: required; status: only agents that project it)")
	fs.StringVar(&a.statusBucket, "status-bucket", agent.DefaultReportBucket, "the bucket the agents report to (report.bucket)")
	fs.StringVar(&a.labels, "l", "", "only agents with these labels: k=v,k2=v2")
	fs.StringVar(&a.labels, "labels", "", "same as -l")
	fs.Uint64Var(&a.revision, "revision", 0, "wait: the revision to wait for; default the key's current revision")
	fs.IntVar(&a.min, "min", 1, "wait: at least this many live agents must project the key")
	fs.DurationVar(&a.timeout, "timeout", 0, "wait: give up after this long (default 1m); status: time allowed to connect and read (default 10s)")
	fs.BoolVar(&a.json, "json", false, "status: JSON output")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (pos[0] != "status" && pos[0] != "wait") {
		return usagef("want one subcommand, status or wait\n%s", strings.TrimSuffix(strings.SplitN(fleetUsage, "\n\n", 2)[0], "\n"))
	}
	a.sub = pos[0]
	var bad error
	fs.Visit(func(f *flag.Flag) {
		if bad != nil {
			return
		}
		switch {
		case a.sub == "status" && (f.Name == "revision" || f.Name == "min"):
			bad = usagef("status does not take --%s", f.Name)
		case a.sub == "wait" && f.Name == "json":
			bad = usagef("wait does not take --json")
		}
	})
	if bad != nil {
		return bad
	}
	if a.selector, err = agent.ParseSelector(a.labels); err != nil {
		return usageError{err}
	}
	if err := kvkey.ValidBucket(a.statusBucket); err != nil {
		return usagef("--status-bucket: %v", err)
	}
	if a.bucket != "" {
		if err := kvkey.ValidBucket(a.bucket); err != nil {
			return usagef("--bucket: %v", err)
		}
	}
	if a.key != "" {
		if err := kvkey.Valid(a.key); err != nil {
			return usagef("--key: %v", err)
		}
		if a.bucket == "" {
			return usagef("--key needs --bucket")
		}
	}
	if a.timeout < 0 || a.min < 0 {
		return usagef("--timeout and --min must not be negative")
	}
	if a.sub == "wait" {
		if a.bucket == "" || a.key == "" {
			return usagef("wait needs --bucket B and --key K")
		}
		if a.timeout == 0 {
			a.timeout = time.Minute
		}
	} else if a.timeout == 0 {
		a.timeout = defaultTimeout
	}

	cctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	nc, js, err := connectCLI(cctx, &conn)
	if err != nil {
		return err
	}
	defer nc.Close()
	if a.sub == "wait" {
		return fleetWait(cctx, js, c.io, &a)
	}
	return c.status(cctx, js, &a)
}

// agentView is one agent's record as a reader sees it.
type agentView struct {
	key  string
	rec  *agent.Record
	seen time.Time // the server's timestamp of the record
	err  error     // the record could not be read
}

// openStatusBucket binds to the status bucket with a message for each way it
// can be wrong.
func openStatusBucket(ctx context.Context, js jetstream.JetStream, name string) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, serr := js.Stream(ctx, name); serr == nil {
			return nil, fmt.Errorf("status bucket %s: %s is a stream, not a KV bucket (report.bucket names a KV bucket; its stream is KV_%s)", name, name, name)
		}
		return nil, fmt.Errorf("status bucket %s not found: no agent has reported yet (is a report: block configured, with this bucket?)", name)
	}
	if errors.Is(err, jetstream.ErrBadBucket) {
		return nil, fmt.Errorf("status bucket %s: stream KV_%s is not a KV bucket (it keeps more than one message per key)", name, name)
	}
	if err != nil {
		return nil, bucketError(name, err)
	}
	return kv, nil
}

// initialGrace is how long a view waits, after the watcher's
// end-of-initial-values marker, for keys the stream listed but the watcher has
// not delivered yet.
const initialGrace = 2 * time.Second

// statusWatch is a watch of the status bucket that knows when its view is
// complete. The watcher's end-of-initial-values marker alone does not say it:
// a record rewritten while the watcher starts is delivered after the marker,
// and a wait that judged the fleet without it could succeed too early. So
// the keys the stream holds are listed before the watch starts, and the view
// is complete once each of them was delivered (or, if some never come — a
// marker expired meanwhile — initialGrace after the marker).
type statusWatch struct {
	w       jetstream.KeyWatcher
	pending map[string]bool // keys listed before the watch, not delivered yet
	marker  bool
	grace   <-chan time.Time
	views   map[string]*agentView
}

func watchStatus(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (*statusWatch, error) {
	bucket := kv.Bucket()
	stream, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, fmt.Errorf("status bucket %s: %w", bucket, err)
	}
	prefix := "$KV." + bucket + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("status bucket %s: %w", bucket, err)
	}
	sw := &statusWatch{pending: map[string]bool{}, views: map[string]*agentView{}}
	for subj := range info.State.Subjects {
		sw.pending[strings.TrimPrefix(subj, prefix)] = true
	}
	if sw.w, err = kv.WatchAll(ctx); err != nil {
		return nil, fmt.Errorf("watch status bucket %s: %w", bucket, err)
	}
	return sw, nil
}

// complete reports whether the view holds every record there was when the
// watch started (each in that version or a newer one).
func (sw *statusWatch) complete() bool { return len(sw.pending) == 0 }

// next waits for the next event of the watch and returns the key that
// changed, "" for the end-of-initial-values marker or the end of the grace.
func (sw *statusWatch) next(ctx context.Context) (string, error) {
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case <-sw.grace:
		sw.grace, sw.pending = nil, nil
		return "", nil
	case e, ok := <-sw.w.Updates():
		if !ok {
			return "", errors.New("the watch ended")
		}
		if e == nil {
			sw.marker = true
			if len(sw.pending) > 0 {
				sw.grace = time.After(initialGrace)
			}
			return "", nil
		}
		delete(sw.pending, e.Key())
		applyEntry(sw.views, e)
		return e.Key(), nil
	}
}

// readRecords reads every record of the status bucket once.
func readRecords(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (map[string]*agentView, error) {
	sw, err := watchStatus(ctx, js, kv)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sw.w.Stop() }()
	for !sw.complete() {
		if _, err := sw.next(ctx); err != nil {
			return nil, fmt.Errorf("read status bucket %s: %w", kv.Bucket(), err)
		}
	}
	return sw.views, nil
}

// applyEntry records one status bucket entry: a record, or the end of one
// (deleted on a clean shutdown, or expired).
func applyEntry(views map[string]*agentView, e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		delete(views, e.Key())
		return
	}
	v := &agentView{key: e.Key(), seen: e.Created()}
	v.rec, v.err = agent.DecodeRecord(e.Key(), e.Value())
	views[e.Key()] = v
}

// verdict is where one agent stands with bucket/key at a revision.
type verdict struct {
	v        *agentView
	state    agent.Progress
	reason   string
	applied  uint64 // the lowest applied revision of its projections of the key
	projects int    // how many of its projections project the key
	action   string // ok, error, pending, -
}

// judge says where v stands with bucket/key at rev. projects is 0 when the
// agent does not project the key.
func judge(v *agentView, bucket, key string, rev uint64) verdict {
	out := verdict{v: v, state: agent.Applied, action: "-"}
	first := true
	for i := range v.rec.Projections {
		p := &v.rec.Projections[i]
		if !p.Projects(bucket, key) {
			continue
		}
		out.projects++
		if first || p.Applied[bucket] < out.applied {
			out.applied = p.Applied[bucket]
		}
		first = false
		out.action = worseAction(out.action, actionWord(p))
		st, why := p.At(bucket, rev)
		if st == agent.Failing || st == agent.Behind && out.state == agent.Applied {
			if out.state != agent.Failing {
				out.state, out.reason = st, p.Name+": "+why
			}
		}
	}
	return out
}

func actionWord(p *agent.ProjectionRecord) string {
	switch {
	case p.ActionPending:
		return "pending"
	case p.Action == nil:
		return "-"
	case p.Action.Error != "":
		return "error"
	}
	return "ok"
}

func worseAction(a, b string) string {
	rank := map[string]int{"-": 0, "ok": 1, "pending": 2, "error": 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// summary is the one-line answer for a key: how many agents have it.
type summary struct {
	Bucket   string   `json:"bucket"`
	Key      string   `json:"key"`
	Revision uint64   `json:"revision"`
	Agents   int      `json:"agents"`
	Applied  int      `json:"applied"`
	Behind   []string `json:"behind,omitempty"`
	Failing  []string `json:"failing,omitempty"`
}

func (s summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d agents have %s/%s at revision ≥ %d", s.Applied, s.Agents, s.Bucket, s.Key, s.Revision)
	if len(s.Behind) > 0 {
		fmt.Fprintf(&b, "; %d behind: %s", len(s.Behind), strings.Join(s.Behind, ", "))
	}
	if len(s.Failing) > 0 {
		fmt.Fprintf(&b, "; %d failing: %s", len(s.Failing), strings.Join(s.Failing, ", "))
	}
	return b.String()
}

// tally judges every live agent matching sel that projects bucket/key.
func tally(views map[string]*agentView, sel map[string]string, bucket, key string, rev uint64) (summary, []verdict) {
	s := summary{Bucket: bucket, Key: key, Revision: rev}
	var vs []verdict
	for _, k := range slices.Sorted(maps.Keys(views)) {
		v := views[k]
		if v.err != nil || !agent.MatchLabels(sel, v.rec.Labels) {
			continue
		}
		vd := judge(v, bucket, key, rev)
		if vd.projects == 0 {
			continue
		}
		s.Agents++
		switch vd.state {
		case agent.Applied:
			s.Applied++
		case agent.Behind:
			s.Behind = append(s.Behind, fmt.Sprintf("%s (%s)", v.rec.ID, vd.reason))
		case agent.Failing:
			s.Failing = append(s.Failing, fmt.Sprintf("%s (%s)", v.rec.ID, vd.reason))
		}
		vs = append(vs, vd)
	}
	return s, vs
}

// keyRevision is the revision of bucket/key now.
func keyRevision(ctx context.Context, js jetstream.JetStream, bucket, key string) (uint64, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return 0, bucketError(bucket, err)
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, fmt.Errorf("%s/%s has no value (deleted or never put): give --revision N", bucket, key)
	}
	if err != nil {
		return 0, fmt.Errorf("get %s/%s: %w", bucket, key, err)
	}
	return e.Revision(), nil
}

// status prints the table and the summary.
func (c *FleetCommand) status(ctx context.Context, js jetstream.JetStream, a *fleetArgs) error {
	kv, err := openStatusBucket(ctx, js, a.statusBucket)
	if err != nil {
		return err
	}
	var rev uint64
	if a.key != "" {
		if rev, err = keyRevision(ctx, js, a.bucket, a.key); err != nil {
			return err
		}
	}
	views, err := readRecords(ctx, js, kv)
	if err != nil {
		return err
	}
	now := time.Now()
	type row struct {
		v *agentView
		d *verdict
	}
	var rows []row
	var bad []*agentView
	var sum *summary
	if a.key != "" {
		s, vds := tally(views, a.selector, a.bucket, a.key, rev)
		sum = &s
		for i := range vds {
			rows = append(rows, row{vds[i].v, &vds[i]})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(views)) {
		v := views[k]
		switch {
		case v.err != nil:
			bad = append(bad, v)
		case a.key != "": // rows from tally
		case !agent.MatchLabels(a.selector, v.rec.Labels):
		case a.bucket != "" && !readsBucket(v.rec, a.bucket):
		default:
			rows = append(rows, row{v: v})
		}
	}

	if a.json {
		type jsonAgent struct {
			*agent.Record
			Seen    time.Time `json:"seen"`
			State   string    `json:"state,omitempty"`
			Reason  string    `json:"reason,omitempty"`
			Behind  uint64    `json:"behind,omitempty"`
			Applied uint64    `json:"applied_revision,omitempty"`
		}
		type jsonBad struct {
			Key   string `json:"key"`
			Error string `json:"error"`
		}
		out := struct {
			Agents  []jsonAgent `json:"agents"`
			Invalid []jsonBad   `json:"invalid,omitempty"`
			Summary *summary    `json:"summary,omitempty"`
		}{Agents: []jsonAgent{}, Summary: sum}
		for _, r := range rows {
			ja := jsonAgent{Record: r.v.rec, Seen: r.v.seen}
			if r.d != nil {
				ja.State, ja.Reason, ja.Applied = r.d.state.String(), r.d.reason, r.d.applied
				if rev > r.d.applied {
					ja.Behind = rev - r.d.applied
				}
			}
			out.Agents = append(out.Agents, ja)
		}
		for _, b := range bad {
			out.Invalid = append(out.Invalid, jsonBad{b.key, b.err.Error()})
		}
		enc := json.NewEncoder(c.io.out)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}

	tw := tabwriter.NewWriter(c.io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tLABELS\tPROJECTIONS\tAPPLIED\tBEHIND\tACTION\tERROR\tSEEN")
	for _, r := range rows {
		rec := r.v.rec
		applied, behind, action, errText := appliedAll(rec), "-", "-", currentError(rec)
		if r.d != nil {
			applied = fmt.Sprint(r.d.applied)
			behind = "0"
			if rev > r.d.applied {
				behind = fmt.Sprint(rev - r.d.applied)
			}
			action = r.d.action
			if r.d.state != agent.Applied {
				errText = r.d.state.String() + ": " + r.d.reason
			}
		} else {
			for i := range rec.Projections {
				action = worseAction(action, actionWord(&rec.Projections[i]))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rec.ID, labelString(rec.Labels), projNames(rec), applied, behind, action,
			orDash(oneLine(errText, 80)), ago(now, r.v.seen))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, b := range bad {
		fmt.Fprintf(c.io.out, "invalid record %s: %v\n", b.key, b.err)
	}
	if sum != nil {
		fmt.Fprintln(c.io.out, sum.String())
	} else {
		fmt.Fprintf(c.io.out, "%d agents\n", len(rows))
	}
	return nil
}

func readsBucket(rec *agent.Record, bucket string) bool {
	for _, p := range rec.Projections {
		if _, ok := p.Reads[bucket]; ok {
			return true
		}
	}
	return false
}

// appliedAll is "bucket@rev" of every bucket, the lowest over projections.
func appliedAll(rec *agent.Record) string {
	low := map[string]uint64{}
	for _, p := range rec.Projections {
		for b := range p.Reads {
			r := p.Applied[b]
			if cur, ok := low[b]; !ok || r < cur {
				low[b] = r
			}
		}
	}
	var parts []string
	for _, b := range slices.Sorted(maps.Keys(low)) {
		parts = append(parts, fmt.Sprintf("%s@%d", b, low[b]))
	}
	return orDash(strings.Join(parts, ","))
}

// currentError is the first failure an agent reports now.
func currentError(rec *agent.Record) string {
	for _, p := range rec.Projections {
		switch {
		case p.Rejected != nil:
			return p.Name + ": rejected: " + p.Rejected.Error
		case p.WriteError != nil:
			return p.Name + ": " + p.WriteError.Error
		case p.Action != nil && p.Action.Error != "":
			return p.Name + ": action: " + p.Action.Error
		}
	}
	return ""
}

func projNames(rec *agent.Record) string {
	var names []string
	for _, p := range rec.Projections {
		names = append(names, p.Name)
	}
	return orDash(strings.Join(names, ","))
}

func labelString(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return orDash(strings.Join(parts, ","))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a table cell on one line and at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

// fleetWait watches the status bucket until every live agent matching the
// selector that projects the key has applied the revision (nil), one reports
// a failure for it, or ctx ends (an error naming the agents behind).
func fleetWait(ctx context.Context, js jetstream.JetStream, ios ioStreams, a *fleetArgs) error {
	kv, err := openStatusBucket(ctx, js, a.statusBucket)
	if err != nil {
		return err
	}
	rev := a.revision
	if rev == 0 {
		if rev, err = keyRevision(ctx, js, a.bucket, a.key); err != nil {
			return err
		}
	}
	// A watch, not a poll: every record arrives once as it is written, and
	// an expired or deleted one as a marker.
	sw, err := watchStatus(ctx, js, kv)
	if err != nil {
		return err
	}
	defer func() { _ = sw.w.Stop() }()
	views := sw.views
	warned := map[string]bool{}
	// Each record is judged when it arrives, and only that one: a rollout
	// over thousands of agents is thousands of updates.
	states := map[string]agent.Progress{} // key -> state, for agents that count
	count := map[agent.Progress]int{}
	judgeKey := func(key string) {
		if st, ok := states[key]; ok {
			count[st]--
			delete(states, key)
		}
		v := views[key]
		if v == nil || v.err != nil || !agent.MatchLabels(a.selector, v.rec.Labels) {
			return
		}
		if vd := judge(v, a.bucket, a.key, rev); vd.projects > 0 {
			states[key] = vd.state
			count[vd.state]++
		}
	}
	for {
		key, err := sw.next(ctx)
		if errors.Is(err, ctx.Err()) && ctx.Err() != nil {
			last, _ := tally(views, a.selector, a.bucket, a.key, rev)
			return waitFailed(last, a, fmt.Sprintf("timed out after %v", a.timeout))
		}
		if err != nil {
			return fmt.Errorf("watch status bucket %s: %w", a.statusBucket, err)
		}
		if key != "" {
			judgeKey(key)
			if v := views[key]; v != nil && v.err != nil && !warned[key] {
				warned[key] = true
				fmt.Fprintf(ios.err, "kvsync fleet wait: ignoring %v\n", v.err)
			}
		}
		if !sw.complete() {
			continue
		}
		switch {
		case count[agent.Failing] > 0:
			last, _ := tally(views, a.selector, a.bucket, a.key, rev)
			return waitFailed(last, a, "failure reported")
		case len(states) >= a.min && count[agent.Behind] == 0:
			last, _ := tally(views, a.selector, a.bucket, a.key, rev)
			fmt.Fprintln(ios.out, last.String())
			return nil
		}
	}
}

// waitFailed is fleet wait's exit 1: the summary and why.
func waitFailed(s summary, a *fleetArgs, why string) error {
	if s.Agents == 0 && s.Applied == 0 {
		sel := ""
		if len(a.selector) > 0 {
			sel = " with labels " + a.labels
		}
		return fmt.Errorf("%s: no live agent%s projects %s/%s (need --min %d)", why, sel, a.bucket, a.key, a.min)
	}
	if s.Agents < a.min {
		return fmt.Errorf("%s: %s; %d agents project it, --min is %d", why, s, s.Agents, a.min)
	}
	return fmt.Errorf("%s: %s", why, s)
}
