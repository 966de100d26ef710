package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// Record is an agent's entry in the status bucket (the report: block): who
// it is and, per projection, what it applied. The key is the agent's id. The
// record holds no clock reading of its own, so it is only sent again when
// something in it changed or to refresh its TTL; the server's timestamp of
// the entry says when it was last written.
type Record struct {
	ID          string             `json:"id"`
	Labels      map[string]string  `json:"labels,omitempty"`
	Version     string             `json:"version,omitempty"`
	Started     time.Time          `json:"started"`
	Interval    Seconds            `json:"interval"`
	Ready       bool               `json:"ready"`
	Projections []ProjectionRecord `json:"projections"`
}

// Seconds is a duration written as a number of seconds in JSON.
type Seconds time.Duration

// MarshalJSON implements json.Marshaler.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(s).Seconds())
}

// UnmarshalJSON implements json.Unmarshaler.
func (s *Seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = Seconds(time.Duration(f * float64(time.Second)))
	return nil
}

// ProjectionRecord is one projection of a Record. Revisions are per bucket:
// the revisions of two buckets are not comparable.
type ProjectionRecord struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Reads are the keys or filters the projection projects, by bucket: a
	// files or env projection's keys: filters; the keys and filters a
	// template read in its last render.
	Reads map[string][]string `json:"reads,omitempty"`
	// Applied is, by bucket, the highest revision the projection has
	// written successfully (an unchanged output counts: it is up to date).
	Applied map[string]uint64 `json:"applied,omitempty"`
	// WriteError is set while the last update failed (render or write).
	WriteError *Outcome `json:"write_error,omitempty"`
	// Action is the last finished run of the on_change action.
	Action *Outcome `json:"action,omitempty"`
	// ActionPending: an action run was asked for and has not finished.
	ActionPending bool `json:"action_pending,omitempty"`
	// Rejected is set while the output of these revisions was rolled back
	// after its action failed (until a newer version goes live). A check
	// that refused an output is a WriteError.
	Rejected  *Outcome `json:"rejected,omitempty"`
	WaitingOn []string `json:"waiting_on,omitempty"`
	LastError string   `json:"last_error,omitempty"`
}

// Outcome is the result of one step for the revisions it covered.
type Outcome struct {
	Revs  map[string]uint64 `json:"revs,omitempty"`
	Error string            `json:"error,omitempty"`
	At    *time.Time        `json:"at,omitempty"`
}

// Progress is where a projection stands with a revision of a key.
type Progress int

// Progress values.
const (
	Behind  Progress = iota // not applied yet (or its action not done)
	Applied                 // written, and its action (if any) succeeded
	Failing                 // the write, the action or a check failed for it
)

func (p Progress) String() string {
	return [...]string{"behind", "applied", "failing"}[p]
}

// Projects reports whether the projection projects bucket/key: the key
// matches one of its filters, or a template read it.
func (p *ProjectionRecord) Projects(bucket, key string) bool {
	for _, f := range p.Reads[bucket] {
		if kvkey.ValidFilter(f) == nil && kvkey.Match(f, key) {
			return true
		}
	}
	return false
}

// At says where the projection stands with revision rev of bucket, and why
// when it is not applied.
func (p *ProjectionRecord) At(bucket string, rev uint64) (Progress, string) {
	covers := func(o *Outcome) bool { return o != nil && o.Revs[bucket] >= rev }
	switch {
	case covers(p.Rejected):
		return Failing, "rejected: " + p.Rejected.Error
	case p.Applied[bucket] < rev:
		if covers(p.WriteError) {
			return Failing, p.WriteError.Error
		}
		if len(p.WaitingOn) > 0 {
			return Behind, fmt.Sprintf("at revision %d, waiting on %s", p.Applied[bucket], strings.Join(p.WaitingOn, ", "))
		}
		return Behind, fmt.Sprintf("at revision %d", p.Applied[bucket])
	case p.Action == nil && !p.ActionPending:
		return Applied, ""
	case covers(p.Action):
		if p.Action.Error != "" {
			return Failing, "action: " + p.Action.Error
		}
		return Applied, ""
	case p.ActionPending:
		return Behind, "action pending"
	case p.Action.Error != "":
		// The output of rev needed no action, but the last one failed:
		// what runs is not what was written.
		return Failing, "action: " + p.Action.Error
	}
	return Applied, ""
}

// repState is what the owner keeps per projection for the record.
type repState struct {
	applied  map[string]uint64
	writeErr *Outcome
	action   *Outcome
	fired    map[uint64]map[string]uint64 // by write (projMeta.seq), the revisions of writes whose action has not run yet
}

// revsOf returns, for every bucket the projection reads, the last revision
// the owner has seen of it.
func (o *owner) revsOf(m *projMeta) map[string]uint64 {
	revs := make(map[string]uint64, len(m.status.Buckets))
	for _, b := range m.status.Buckets {
		if bs := o.st.buckets[b]; bs != nil {
			revs[b] = bs.lastRev
		}
	}
	return revs
}

// noteUpdate records the result of an update of m for the record.
func (o *owner) noteUpdate(m *projMeta, err error) {
	revs := o.revsOf(m)
	if err != nil {
		now := time.Now()
		m.rep.writeErr = &Outcome{Revs: revs, Error: err.Error(), At: &now}
		return
	}
	m.rep.writeErr = nil
	if m.rep.applied == nil {
		m.rep.applied = map[string]uint64{}
	}
	for b, r := range revs {
		m.rep.applied[b] = max(m.rep.applied[b], r)
	}
}

// noteFired records that write m.seq of m asked for an action run.
func (o *owner) noteFired(m *projMeta) {
	if m.rep.fired == nil {
		m.rep.fired = map[uint64]map[string]uint64{}
	}
	m.rep.fired[m.seq] = o.revsOf(m)
}

// noteAction records a finished action run for one of the projections it
// ran for. The run covered write bm.seq and every earlier write of the
// projection (a newer write replaces an older one waiting for the action).
// The run after a rollback, which puts the old version back in service, is
// not recorded: the record keeps the failure and reports the rejection.
func (o *owner) noteAction(bm batchMember, r ActionResult) {
	m := bm.m
	if bm.rerun {
		return
	}
	revs := m.rep.fired[bm.seq]
	for seq := range m.rep.fired {
		if seq <= bm.seq {
			delete(m.rep.fired, seq)
		}
	}
	at := r.Start
	out := &Outcome{Revs: revs, At: &at}
	if r.Err != nil {
		out.Error = r.Err.Error()
	}
	m.rep.action = out
}

// record builds the agent's record from the owner's state. It shares the
// /status snapshot's data; every map and slice in it is fresh or never
// modified again, so the reporter may read it on its own goroutine.
func (o *owner) record(s *Status) *Record {
	r := &Record{
		ID: o.cfg.Agent.ID, Labels: o.cfg.Agent.Labels, Version: o.a.opts.Version,
		Started: o.a.started, Ready: s.Ready,
		Projections: make([]ProjectionRecord, 0, len(o.projs)),
	}
	if o.cfg.Report != nil {
		r.Interval = Seconds(o.cfg.Report.Interval)
	}
	for i, p := range o.projs {
		m := p.meta()
		ps := &s.Projections[i]
		pr := ProjectionRecord{
			Name: m.name, Kind: m.kind, Reads: reads(p),
			Applied:       maps.Clone(m.rep.applied),
			WriteError:    m.rep.writeErr,
			Action:        m.rep.action,
			ActionPending: len(m.rep.fired) > 0,
			WaitingOn:     ps.WaitingOn,
			LastError:     ps.LastError,
		}
		if rb := ps.RolledBack; rb != nil && m.rep.action != nil {
			// Rolled back after its action failed: rejected until a newer
			// version goes live.
			pr.Rejected = &Outcome{Revs: m.rep.action.Revs, Error: "rolled back: " + rb.Reason, At: &rb.At}
		}
		r.Projections = append(r.Projections, pr)
	}
	return r
}

// reads is what p projects, by bucket.
func reads(p projection) map[string][]string {
	switch p := p.(type) {
	case *filesProjection:
		return map[string][]string{p.cfg.Bucket: p.cfg.Keys}
	case *envProjection:
		return map[string][]string{p.cfg.Bucket: p.cfg.Keys}
	case *templateProjection:
		out := map[string][]string{}
		for _, refs := range [][]string{p.deps.Keys(), p.deps.Filters()} {
			for _, ref := range refs {
				b, k, _ := strings.Cut(ref, ":")
				out[b] = append(out[b], k)
			}
		}
		return out
	}
	return nil
}

// ReportStatus is the reporter's part of /status.
type ReportStatus struct {
	Bucket    string     `json:"bucket"`
	Key       string     `json:"key"`
	LastWrite *time.Time `json:"last_write,omitempty"`
	Error     string     `json:"error,omitempty"`
}

// Reporter timing.
const (
	// reportGap is the least time between two writes of the record: a
	// burst of changes is one write, and never more than a few per second.
	reportGap = 250 * time.Millisecond
	// reportTimeout bounds one request to the server.
	reportTimeout = 5 * time.Second
)

// reporter keeps the agent's record in the status bucket. The owner offers
// records; the reporter writes the latest one when it differs from the last
// written (at most one write per reportGap), rewrites it every interval so
// that its per-key TTL (3 intervals) does not run out, and deletes it when
// the agent stops.
type reporter struct {
	js     jetstream.JetStream
	logger *slog.Logger

	mu     sync.Mutex
	latest *reportJob
	status ReportStatus
	wake   chan struct{}
}

// reportJob is one record with where it goes.
type reportJob struct {
	rec      *Record
	bucket   string
	interval time.Duration
}

// newReporter returns a reporter; js must be set before run.
func newReporter(logger *slog.Logger) *reporter {
	return &reporter{logger: logger.With("component", "report"), wake: make(chan struct{}, 1)}
}

// offer hands the reporter a new record; a nil cfg turns reporting off (the
// record written last is deleted). It never blocks.
func (r *reporter) offer(rec *Record, cfg *ReportConfig) {
	job := &reportJob{}
	if cfg != nil {
		job = &reportJob{rec: rec, bucket: cfg.Bucket, interval: cfg.Interval}
	}
	r.mu.Lock()
	if cfg == nil && (r.latest == nil || r.latest.rec == nil) {
		r.mu.Unlock()
		return // off, and nothing was reported
	}
	r.latest = job
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Status returns the reporter's state for /status.
func (r *reporter) Status() *ReportStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	return &s
}

// run writes records until ctx is done, then deletes the last one written
// (a clean shutdown), within reportTimeout.
func (r *reporter) run(ctx context.Context) {
	var (
		kv        jetstream.KeyValue
		kvBucket  string
		written   []byte // the last record written
		wBucket   string // where it went
		wKey      string
		wTTL      time.Duration
		lastWrite time.Time
		lastErr   string
		retryAt   time.Time
	)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	write := func(job *reportJob, key string, data []byte) error {
		if kv == nil || kvBucket != job.bucket {
			kvBucket = job.bucket
			var err error
			if kv, err = r.bucket(ctx, job.bucket, job.interval); err != nil {
				kv = nil
				return err
			}
		}
		if wKey != "" && (wKey != key || wBucket != job.bucket) {
			r.remove(wBucket, wKey, wTTL) // the id or the bucket changed on a reload
			wKey = ""
		}
		return r.put(ctx, job.bucket, key, data, 3*job.interval)
	}
	// A request the server refused for want of a permission only times out;
	// the reason is the connection's last error.
	explain := func(err error, bucket string) error {
		if le := r.js.Conn().LastError(); errors.Is(le, nats.ErrPermissionViolation) && strings.Contains(le.Error(), bucket) {
			return fmt.Errorf("%w (%v)", err, le)
		}
		return err
	}
	for {
		r.mu.Lock()
		job := r.latest
		r.mu.Unlock()
		next := time.Hour
		switch {
		case job == nil:
		case job.rec == nil: // reporting was turned off by a reload
			if wKey != "" {
				r.remove(wBucket, wKey, wTTL)
				wKey, written = "", nil
			}
			r.mu.Lock()
			r.status = ReportStatus{}
			r.mu.Unlock()
		default:
			data, err := json.Marshal(job.rec)
			if err != nil {
				r.logger.Error("encode record", "err", err) // plain data: cannot happen
				return
			}
			key := job.rec.ID
			var due time.Time
			switch {
			case lastErr != "":
				due = retryAt
			case !bytes.Equal(data, written) || job.bucket != wBucket || key != wKey:
				due = lastWrite.Add(reportGap)
			default:
				due = lastWrite.Add(job.interval) // the refresh
			}
			if wait := time.Until(due); wait > 0 {
				next = wait
				break
			}
			err = write(job, key, data)
			lastWrite = time.Now()
			if ctx.Err() != nil {
				break
			}
			if err != nil {
				err = explain(err, job.bucket)
				if msg := err.Error(); msg != lastErr {
					// Once per distinct error: an agent that may not
					// write the bucket keeps projecting and says why
					// here and in /status.
					r.logger.Error("cannot report to the status bucket; projecting goes on", "bucket", job.bucket, "err", err)
					lastErr = msg
				}
				r.mu.Lock()
				r.status = ReportStatus{Bucket: job.bucket, Key: key, Error: lastErr}
				r.mu.Unlock()
				retryAt = lastWrite.Add(min(job.interval, 5*time.Second))
				next = time.Until(retryAt)
				break
			}
			if lastErr != "" {
				r.logger.Info("reporting to the status bucket again", "bucket", job.bucket, "key", key)
			}
			lastErr = ""
			written, wBucket, wKey, wTTL = data, job.bucket, key, 3*job.interval
			now := lastWrite
			r.mu.Lock()
			r.status = ReportStatus{Bucket: job.bucket, Key: key, LastWrite: &now}
			r.mu.Unlock()
			next = job.interval
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			if wKey != "" {
				r.remove(wBucket, wKey, wTTL)
			}
			return
		case <-r.wake:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// bucket binds to the status bucket, creating it when missing with limit
// markers on (the per-key TTL needs them).
func (r *reporter) bucket(ctx context.Context, name string, interval time.Duration) (jetstream.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	kv, err := r.js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = r.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, History: 1, LimitMarkerTTL: 3 * interval,
			Description: "kvsync fleet status: one key per agent",
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = r.js.KeyValue(ctx, name)
		}
		if err == nil {
			r.logger.Info("created the status bucket", "bucket", name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("status bucket %s: %w", name, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("status bucket %s: %w", name, err)
	}
	if st.LimitMarkerTTL() == 0 {
		return nil, fmt.Errorf("status bucket %s has no limit markers, so records cannot expire: recreate it (kvsync creates it with limit_marker_ttl)", name)
	}
	return kv, nil
}

// put writes the record with a per-message TTL. A KV Put would drop the
// key's TTL, so the record is published on the bucket's subject directly.
func (r *reporter) put(ctx context.Context, bucket, key string, data []byte, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: "$KV." + bucket + "." + key, Data: data}
	if _, err := r.js.PublishMsg(ctx, msg, jetstream.WithMsgTTL(ttl), jetstream.WithExpectStream("KV_"+bucket)); err != nil {
		return fmt.Errorf("write %s to status bucket %s: %w", key, bucket, err)
	}
	return nil
}

// remove deletes the record (a purge marker that itself expires after ttl).
func (r *reporter) remove(bucket, key string, ttl time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), reportTimeout)
	defer cancel()
	kv, err := r.js.KeyValue(ctx, bucket)
	if err == nil {
		err = kv.Purge(ctx, key, jetstream.PurgeTTL(ttl))
	}
	if err != nil {
		r.logger.Warn("delete the record from the status bucket", "bucket", bucket, "key", key, "err", err)
		return
	}
	r.logger.Info("record deleted from the status bucket", "bucket", bucket, "key", key)
}

// DecodeRecord parses a record read from the status bucket and checks the
// fields a reader relies on.
func DecodeRecord(key string, data []byte) (*Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("record %s: not a kvsync record: %w", key, err)
	}
	if r.ID == "" {
		return nil, fmt.Errorf("record %s: not a kvsync record: no id", key)
	}
	for _, p := range r.Projections {
		if p.Name == "" {
			return nil, fmt.Errorf("record %s: a projection without a name", key)
		}
	}
	slices.SortFunc(r.Projections, func(a, b ProjectionRecord) int { return strings.Compare(a.Name, b.Name) })
	return &r, nil
}
