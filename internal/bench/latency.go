package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
)

// latCase is one kind of projection whose put → file latency is measured.
type latCase struct {
	name string
	// keys are put before the agent starts.
	keys int
	key  func(i int) string
	val  func(i int) []byte
	// project adds the projection to cfg and returns the file it writes.
	project func(cfg *agent.Config, bucket, dir string) string
	// sample returns the i-th put and how to recognise its bytes in the file.
	sample func(i int) (key string, val []byte, seen func([]byte) bool)
	// filter is what the raw watcher follows.
	filter string
	// hist names the projection whose propagation histogram is read
	// ("" when the projection kind records none).
	hist string
}

// sizeLabel writes 1000 as 1k.
func sizeLabel(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

func (e *env) latencyCases() []latCase {
	small := orDefault(e.o.Keys, 1000)
	cases := []latCase{{
		name: "files",
		keys: 1,
		key:  func(int) string { return "lat" },
		val:  func(int) []byte { return pad("init", 100) },
		project: func(cfg *agent.Config, bucket, dir string) string {
			fsync := e.o.Fsync
			cfg.Files = append(cfg.Files, agent.FilesConfig{Name: "files", Bucket: bucket, Keys: []string{"lat"}, Dir: dir, Fsync: &fsync})
			return filepath.Join(dir, "lat")
		},
		sample: func(i int) (string, []byte, func([]byte) bool) {
			v := pad(fmt.Sprintf("s%08d-", i), 100)
			return "lat", v, func(b []byte) bool { return bytes.Equal(b, v) }
		},
		filter: "lat",
		hist:   "files",
	}}
	for _, n := range []int{small, 10 * small} {
		cases = append(cases, latCase{
			name: "template-" + sizeLabel(n),
			keys: n,
			key:  func(i int) string { return fmt.Sprintf("k.%06d", i) },
			val:  func(int) []byte { return []byte("init") },
			project: func(cfg *agent.Config, bucket, dir string) string {
				dest := filepath.Join(dir, "out.conf")
				cfg.Templates = append(cfg.Templates, agent.TemplateConfig{
					Name: "template", Bucket: bucket, Dest: dest,
					Text: "{{ range keys \"k.>\" }}{{ .Key }}={{ .Value }}\n{{ end }}",
				})
				return dest
			},
			sample: func(i int) (string, []byte, func([]byte) bool) {
				k := fmt.Sprintf("k.%06d", (i*7919)%n)
				v := fmt.Sprintf("s%08d", i)
				line := []byte(k + "=" + v + "\n")
				return k, []byte(v), func(b []byte) bool { return bytes.Contains(b, line) }
			},
			filter: "k.>",
		})
	}
	const envKeys = 100
	cases = append(cases, latCase{
		name: "env",
		keys: envKeys,
		key:  func(i int) string { return fmt.Sprintf("e.K%03d", i) },
		val:  func(int) []byte { return []byte("init") },
		project: func(cfg *agent.Config, bucket, dir string) string {
			file := filepath.Join(dir, "app.env")
			cfg.Env = append(cfg.Env, agent.EnvConfig{Name: "env", Bucket: bucket, Keys: []string{"e.>"}, StripPrefix: "e.", Prefix: "APP_", File: file})
			return file
		},
		sample: func(i int) (string, []byte, func([]byte) bool) {
			j := (i * 37) % envKeys
			v := fmt.Sprintf("s%08d", i)
			line := []byte(fmt.Sprintf("APP_K%03d='%s'\n", j, v))
			return fmt.Sprintf("e.K%03d", j), []byte(v), func(b []byte) bool { return bytes.Contains(b, line) }
		},
		filter: "e.>",
	})
	return cases
}

// latency measures every case at every pacing, each pacing with a fresh agent.
func (e *env) latency(ctx context.Context) ([]Result, error) {
	var out []Result
	for _, c := range e.latencyCases() {
		res, err := e.latencyCase(ctx, c)
		out = append(out, res...)
		if err != nil {
			return out, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return out, nil
}

func (e *env) latencyCase(ctx context.Context, c latCase) ([]Result, error) {
	kv, drop, err := e.bucket(ctx, c.name)
	if err != nil {
		return nil, err
	}
	defer drop()
	if err := e.fill(ctx, kv, c.keys, c.key, c.val); err != nil {
		return nil, err
	}
	var out []Result
	for _, pacing := range e.o.Pacings {
		r, err := e.latencyRun(ctx, kv, c, pacing)
		if err != nil {
			return out, fmt.Errorf("pacing %v: %w", pacing, err)
		}
		out = append(out, r)
	}
	if c.name == "files" {
		for _, pacing := range e.o.Pacings {
			r, err := e.diskLatency(pacing)
			if err != nil {
				return out, fmt.Errorf("disk alone, pacing %v: %w", pacing, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// diskLatency is the files case's disk alone: the same number of samples,
// each one 100-byte file replaced by a plain temp file and rename (with
// fsync of the file and the folder when the run fsyncs), at the same pacing.
func (e *env) diskLatency(pacing time.Duration) (Result, error) {
	count := orDefault(e.o.Count, 500)
	dir := e.path("latency", "disk-"+pacing.String())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Result{}, err
	}
	step := e.prog.start(fmt.Sprintf("latency: files, disk alone pacing=%v", pacing), count)
	defer step.done()
	ds := make([]time.Duration, 0, count)
	for i := 0; i < count; i++ {
		start := time.Now()
		if err := replace(dir, "fan", pad(fmt.Sprintf("s%08d-", i), 100), e.o.Fsync); err != nil {
			return Result{}, err
		}
		ds = append(ds, time.Since(start))
		step.set(i + 1)
		time.Sleep(pacing)
	}
	how := "temp file, rename"
	if e.o.Fsync {
		how = "temp file, fsync, rename, folder fsync"
	}
	return Result{
		Scenario: Latency, Case: "files, disk alone", Pacing: pacing.String(), Latency: summarize(ds),
		Note: fmt.Sprintf("a plain replace of one 100 B file in the bench process on the same disk (%s), timed around the calls", how),
	}, nil
}

// expect is what the file must hold for the pending sample.
type expect struct{ seen func([]byte) bool }

// rawHit is the moment the raw watcher received a revision.
type rawHit struct {
	rev uint64
	at  time.Time
}

// latencyRun is one case at one pacing: count samples, each a put followed
// by waiting until both the raw watcher and the file have it.
func (e *env) latencyRun(ctx context.Context, kv jetstream.KeyValue, c latCase, pacing time.Duration) (Result, error) {
	res := Result{Scenario: Latency, Case: c.name, Pacing: pacing.String()}
	count := orDefault(e.o.Count, 500)
	warm := min(10, count/10)
	dir := e.path("latency", fmt.Sprintf("%s-%s", c.name, pacing))
	cfg := e.baseConfig()
	target := c.project(cfg, kv.Bucket(), dir)

	var pending atomic.Pointer[expect]
	fileHits := make(chan time.Time, 1)
	stopFiles, err := watchFiles([]string{filepath.Dir(target)}, []string{target}, func(path string, _ bool) {
		at := time.Now()
		if path != target {
			return
		}
		want := pending.Load()
		if want == nil {
			return
		}
		if b, err := os.ReadFile(target); err == nil && want.seen(b) && pending.CompareAndSwap(want, nil) {
			fileHits <- at
		}
	})
	if err != nil {
		return res, err
	}
	defer stopFiles()

	rawHits, stopRaw, err := rawWatch(ctx, kv, c.filter)
	if err != nil {
		return res, err
	}
	defer stopRaw()

	r, err := e.startAgent(ctx, cfg)
	if err != nil {
		return res, err
	}
	defer func() { _ = r.stop() }()
	if err := r.waitReady(ctx, time.Minute); err != nil {
		return res, err
	}

	step := e.prog.start(fmt.Sprintf("latency %s pacing=%v", c.name, pacing), count+warm)
	defer step.done()
	// Values never repeat within a run: a put of the bytes a file already
	// holds rewrites nothing, and no event would come.
	base := e.seq
	e.seq += count + warm
	var lat, raw []time.Duration
	for i := 0; i < count+warm; i++ {
		key, val, seen := c.sample(base + i)
		pending.Store(&expect{seen: seen})
		t0 := time.Now()
		rev, err := kv.Put(ctx, key, val)
		if err != nil {
			return res, fmt.Errorf("put %s: %w", key, err)
		}
		rawAt, err := awaitRaw(ctx, rawHits, rev)
		if err != nil {
			return res, err
		}
		var fileAt time.Time
		select {
		case fileAt = <-fileHits:
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(10 * time.Second):
			return res, fmt.Errorf("sample %d: %s did not get revision %d of %s within 10s", i, target, rev, key)
		}
		if i >= warm {
			lat = append(lat, fileAt.Sub(t0))
			raw = append(raw, rawAt.Sub(t0))
		}
		step.set(i + 1)
		if pacing > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(pacing):
			}
		}
	}
	res.Latency, res.Raw = summarize(lat), summarize(raw)
	if c.hist != "" {
		// The agent observes a write after its rename, when the bench may
		// have seen the file already: wait (briefly) for the last samples.
		_ = poll(ctx, 2*time.Second, 5*time.Millisecond, func() error {
			res.Histogram = r.propagation(c.hist)
			if res.Histogram == nil || res.Histogram.N < count+warm {
				return fmt.Errorf("histogram not complete")
			}
			return nil
		})
	}
	res.Keys = c.keys
	return res, r.stop()
}

// awaitRaw returns when the raw watcher received rev.
func awaitRaw(ctx context.Context, hits <-chan rawHit, rev uint64) (time.Time, error) {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case h := <-hits:
			if h.rev >= rev {
				return h.at, nil
			}
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-timeout:
			return time.Time{}, errors.New("raw watcher did not receive the put within 10s")
		}
	}
}

// rawWatch starts the reference: a plain KV watcher of filter that reports
// when each put reached it. stop ends it.
func rawWatch(ctx context.Context, kv jetstream.KeyValue, filter string) (<-chan rawHit, func(), error) {
	wctx, cancel := context.WithCancel(ctx)
	watch, err := kv.Watch(wctx, filter, jetstream.UpdatesOnly())
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("raw watcher: %w", err)
	}
	hits := make(chan rawHit, 1024)
	go func() {
		for en := range watch.Updates() {
			if en != nil {
				hits <- rawHit{rev: en.Revision(), at: time.Now()}
			}
		}
	}()
	return hits, func() {
		_ = watch.Stop()
		cancel()
	}, nil
}
