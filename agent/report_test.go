package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

func TestProjectionRecordAt(t *testing.T) {
	revs := func(r uint64) map[string]uint64 { return map[string]uint64{"app": r} }
	for _, tt := range []struct {
		name string
		p    ProjectionRecord
		rev  uint64
		want Progress
		why  string
	}{
		{"applied, no action", ProjectionRecord{Applied: revs(5)}, 5, Applied, ""},
		{"newer applied", ProjectionRecord{Applied: revs(9)}, 5, Applied, ""},
		{"behind", ProjectionRecord{Applied: revs(4)}, 5, Behind, "at revision 4"},
		{"behind, waiting", ProjectionRecord{Applied: revs(4), WaitingOn: []string{"app:x"}}, 5, Behind, "waiting on app:x"},
		{"write failed for it", ProjectionRecord{Applied: revs(4), WriteError: &Outcome{Revs: revs(5), Error: "disk full"}}, 5, Failing, "disk full"},
		{"write failed before it", ProjectionRecord{Applied: revs(3), WriteError: &Outcome{Revs: revs(4), Error: "disk full"}}, 5, Behind, "at revision 3"},
		{"action pending", ProjectionRecord{Applied: revs(5), ActionPending: true, Action: &Outcome{Revs: revs(4)}}, 5, Behind, "action pending"},
		{"first action pending", ProjectionRecord{Applied: revs(5), ActionPending: true}, 5, Behind, "action pending"},
		{"action done", ProjectionRecord{Applied: revs(5), Action: &Outcome{Revs: revs(5)}}, 5, Applied, ""},
		{"action done, next pending", ProjectionRecord{Applied: revs(6), ActionPending: true, Action: &Outcome{Revs: revs(5)}}, 5, Applied, ""},
		{"action failed", ProjectionRecord{Applied: revs(5), Action: &Outcome{Revs: revs(5), Error: "exit 1"}}, 5, Failing, "action: exit 1"},
		{"no byte change after a failed action", ProjectionRecord{Applied: revs(5), Action: &Outcome{Revs: revs(4), Error: "exit 1"}}, 5, Failing, "action: exit 1"},
		{"no byte change after a good action", ProjectionRecord{Applied: revs(5), Action: &Outcome{Revs: revs(4)}}, 5, Applied, ""},
		{"rejected", ProjectionRecord{Applied: revs(5), Rejected: &Outcome{Revs: revs(5), Error: "check: nginx -t"}}, 5, Failing, "rejected: check: nginx -t"},
		{"other bucket", ProjectionRecord{Applied: map[string]uint64{"other": 99}}, 5, Behind, "at revision 0"},
	} {
		got, why := tt.p.At("app", tt.rev)
		if got != tt.want || !strings.Contains(why, tt.why) {
			t.Errorf("%s: At=%v %q, want %v %q", tt.name, got, why, tt.want, tt.why)
		}
	}
	p := ProjectionRecord{Reads: map[string][]string{"app": {"conf.>", "x"}, "b": {"bad..filter"}}}
	for _, tt := range []struct {
		bucket, key string
		want        bool
	}{{"app", "conf.nginx", true}, {"app", "x", true}, {"app", "y", false}, {"other", "x", false}, {"b", "bad..filter", false}} {
		if got := p.Projects(tt.bucket, tt.key); got != tt.want {
			t.Errorf("Projects(%s, %s)=%v, want %v", tt.bucket, tt.key, got, tt.want)
		}
	}
}

func TestDecodeRecord(t *testing.T) {
	for _, bad := range []string{"", "\x00\xff", "[]", "{}", `{"id": 5}`, `{"id": "a", "projections": [{}]}`, `{"id": "a", "interval": "x"}`} {
		if _, err := DecodeRecord("k", []byte(bad)); err == nil || !strings.Contains(err.Error(), "record k") {
			t.Errorf("DecodeRecord(%q)=%v, want an error naming the record", bad, err)
		}
	}
	r, err := DecodeRecord("k", []byte(`{"id": "a", "interval": 1.5, "projections": [{"name": "b"}, {"name": "a"}]}`))
	if err != nil || r.Projections[0].Name != "a" || time.Duration(r.Interval) != 1500*time.Millisecond {
		t.Errorf("DecodeRecord=%+v, %v", r, err)
	}
}

func proj(r *Record, name string) *ProjectionRecord {
	for i := range r.Projections {
		if r.Projections[i].Name == name {
			return &r.Projections[i]
		}
	}
	return &ProjectionRecord{}
}

// statusSeq is the last sequence of the status bucket's stream: how many
// records were written so far.
func statusSeq(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), "KV_"+DefaultReportBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// readRecord returns the agent's record, or an error while it is not there.
func readRecord(js jetstream.JetStream, id string) (*Record, int, error) {
	kv, err := js.KeyValue(context.Background(), DefaultReportBucket)
	if err != nil {
		return nil, 0, err
	}
	e, err := kv.Get(context.Background(), id)
	if err != nil {
		return nil, 0, err
	}
	r, err := DecodeRecord(id, e.Value())
	return r, len(e.Value()), err
}

// TestReportRecord: ten projections report in one small record; a burst of
// puts is a few writes; a change that does not touch the record writes
// nothing; the record carries a TTL and is deleted on a clean stop.
func TestReportRecord(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	js, _ := jetstream.New(nc)
	root := t.TempDir()
	cfg := filesCfg(s.ClientURL(), "app", filepath.Join(root, "f0"))
	cfg.Files[0].Keys = []string{"conf.f0.>"}
	cfg.Agent = AgentConfig{ID: "web-1", Labels: map[string]string{"role": "web", "region": "eu-west"}}
	cfg.Report = &ReportConfig{Interval: time.Hour}
	for i := 1; i < 5; i++ {
		f := false
		cfg.Files = append(cfg.Files, FilesConfig{Name: fmt.Sprintf("files-%d", i), Bucket: "app", Keys: []string{fmt.Sprintf("conf.f%d.>", i)}, Dir: filepath.Join(root, fmt.Sprintf("f%d", i)), Fsync: &f})
	}
	for i := range 4 {
		cfg.Templates = append(cfg.Templates, TemplateConfig{Name: fmt.Sprintf("tmpl-%d", i), Bucket: "app",
			Text: fmt.Sprintf(`{{ keyOr "conf.t%d" "none" }} {{ range keys "conf.shared.>" }}{{ .Key }}{{ end }}`, i), Dest: filepath.Join(root, fmt.Sprintf("t%d.conf", i))})
	}
	cfg.Env = []EnvConfig{{Name: "env", Bucket: "app", Keys: []string{"conf.env.>"}, File: filepath.Join(root, "app.env")}}
	a := startAgent(t, cfg, Options{Version: "v1.2.3"})

	var last uint64
	for i := range 5 {
		put(t, kv, fmt.Sprintf("conf.f%d.a", i), "x")
	}
	for i := range 4 {
		put(t, kv, fmt.Sprintf("conf.t%d", i), "x")
	}
	put(t, kv, "conf.shared.a", "x")
	last = put(t, kv, "conf.env.A", "x")
	var size int
	testutil.CheckFor(t, 10*time.Second, func() error {
		r, n, err := readRecord(js, "web-1")
		if err != nil {
			return err
		}
		size = n
		if len(r.Projections) != 10 || r.Version != "v1.2.3" || r.Labels["region"] != "eu-west" || !r.Ready {
			return fmt.Errorf("record %+v", r)
		}
		for _, p := range r.Projections {
			if st, why := p.At("app", last); st != Applied && p.Kind != "template" || p.Applied["app"] < 1 {
				return fmt.Errorf("projection %s: %v %s", p.Name, st, why)
			}
		}
		return nil
	})
	t.Logf("record of 10 projections: %d bytes", size)
	if size > 4096 {
		t.Errorf("record of 10 projections is %d bytes, want at most 4 KiB", size)
	}
	r, _, _ := readRecord(js, "web-1")
	for _, p := range r.Projections {
		if p.Kind == "template" && !p.Projects("app", "conf.shared.b") {
			t.Errorf("template %s does not say it reads conf.shared.>: %v", p.Name, p.Reads)
		}
	}
	if st := a.Status(); st.ID != "web-1" || st.Report == nil || st.Report.Key != "web-1" || st.Report.Error != "" {
		t.Errorf("/status: id %q, report %+v", st.ID, st.Report)
	}

	// A burst: at most one write per reportGap while it lasts.
	before := statusSeq(t, js)
	start := time.Now()
	for i := range 200 {
		last = put(t, kv, "conf.f0.burst", fmt.Sprint(i))
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		r, _, err := readRecord(js, "web-1")
		if err != nil {
			return err
		}
		if got := proj(r, "files").Applied["app"]; got < last {
			return fmt.Errorf("applied %d, want %d", got, last)
		}
		return nil
	})
	writes, bound := statusSeq(t, js)-before, uint64(time.Since(start)/reportGap)+2
	t.Logf("burst of 200 puts: %d record writes in %v", writes, time.Since(start))
	if writes > bound {
		t.Errorf("%d record writes for a burst of 200 puts over %v, want at most %d", writes, time.Since(start), bound)
	}

	// Nothing the record shows changed: no write. Then one change: one write.
	// The record showing the burst's last revision was the last write:
	// the record holds no clock, so nothing else is due until the refresh.
	before = statusSeq(t, js)
	put(t, kv, "unrelated.key", "x")
	last = put(t, kv, "conf.f1.a", "y")
	testutil.CheckFor(t, 10*time.Second, func() error {
		r, _, err := readRecord(js, "web-1")
		if err != nil {
			return err
		}
		if got := proj(r, "files-1").Applied["app"]; got < last {
			return fmt.Errorf("applied %d, want %d", got, last)
		}
		return nil
	})
	if n := statusSeq(t, js) - before; n != 1 {
		t.Errorf("%d record writes for one change and one unrelated key, want 1", n)
	}

	// The record expires by itself: it carries a TTL of 3 intervals.
	stream, _ := js.Stream(context.Background(), "KV_"+DefaultReportBucket)
	msg, err := stream.GetLastMsgForSubject(context.Background(), "$KV."+DefaultReportBucket+".web-1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := msg.Header.Get("Nats-TTL"), "3h0m0s"; got != want && got != "10800" && got != "10800s" {
		t.Errorf("Nats-TTL=%q, want 3 intervals (%s)", got, want)
	}

	// A clean stop deletes it.
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readRecord(js, "web-1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("record after a clean stop: %v, want it deleted", err)
	}
}

// TestReportRefresh: with nothing changing, the record is written again
// every interval (its TTL renewed), and the bytes stay the same.
func TestReportRefresh(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	js, _ := jetstream.New(nc)
	cfg := filesCfg(s.ClientURL(), "app", t.TempDir())
	cfg.Agent.ID = "refresher"
	cfg.Report = &ReportConfig{Interval: time.Second}
	startAgent(t, cfg, Options{})
	put(t, kv, "k", "v")
	var first []byte
	var seq uint64
	testutil.CheckFor(t, 10*time.Second, func() error {
		st, err := js.KeyValue(context.Background(), DefaultReportBucket)
		if err != nil {
			return err
		}
		e, err := st.Get(context.Background(), "refresher")
		if err != nil {
			return err
		}
		r, _ := DecodeRecord("refresher", e.Value())
		if r == nil || !r.Ready || r.Projections[0].Applied["app"] < 1 {
			return errors.New("not applied yet")
		}
		if first == nil {
			first, seq = e.Value(), e.Revision()
		}
		if e.Revision() < seq+2 {
			return fmt.Errorf("revision %d, want two refreshes after %d", e.Revision(), seq)
		}
		if string(e.Value()) != string(first) {
			first, seq = e.Value(), e.Revision() // it changed: count again
			return errors.New("record changed")
		}
		return nil
	})
	var rec map[string]any
	if err := json.Unmarshal(first, &rec); err != nil || rec["interval"] != 1.0 {
		t.Errorf("record interval: %v (%v)", rec["interval"], err)
	}
}

// TestReportReload: a reload keeps the record; a new agent.id moves it; a
// config without report: deletes it.
func TestReportReload(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	js, _ := jetstream.New(nc)
	dir := t.TempDir()
	reloads := make(chan struct{})
	next := make(chan *Config, 1)
	cfgFor := func(id string, report bool) *Config {
		c := filesCfg(s.ClientURL(), "app", dir)
		c.Agent.ID = id
		if report {
			c.Report = &ReportConfig{Interval: time.Hour}
		}
		c.Default()
		return c
	}
	startAgent(t, cfgFor("first", true), Options{Reloads: reloads, Reload: func() (*Config, error) { return <-next, nil }})
	rev := put(t, kv, "k", "v")
	applied := func(id string, rev uint64) func() error {
		return func() error {
			r, _, err := readRecord(js, id)
			if err != nil {
				return err
			}
			if got := proj(r, "files").Applied["app"]; got < rev {
				return fmt.Errorf("%s applied %d, want %d", id, got, rev)
			}
			return nil
		}
	}
	testutil.CheckFor(t, 10*time.Second, applied("first", rev))

	next <- cfgFor("second", true)
	reloads <- struct{}{}
	testutil.CheckFor(t, 10*time.Second, applied("second", rev))
	if _, _, err := readRecord(js, "first"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("record of the old id after the reload: %v, want it deleted", err)
	}

	next <- cfgFor("second", false)
	reloads <- struct{}{}
	testutil.CheckFor(t, 10*time.Second, func() error {
		if _, _, err := readRecord(js, "second"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("record after report: was removed: %v", err)
		}
		return nil
	})
}
