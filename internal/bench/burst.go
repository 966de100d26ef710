package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kvsync/kvsync/agent"
)

// burstWait is the quiescence of the burst scenario's projection.
const burstWait = 50 * time.Millisecond

// burst: 10 puts for each of Keys keys (1,000), back to back, into an
// in-process agent, twice: without quiescence, the time from the last put's
// ack until every file holds its final value; with wait.min 50ms and an
// on_change command, the same time and the number of action runs (the
// contract: one).
func (e *env) burst(ctx context.Context) ([]Result, error) {
	var out []Result
	for _, wait := range []time.Duration{0, burstWait} {
		res, err := e.burstRun(ctx, wait)
		if err != nil {
			return nil, err
		}
		out = append(out, res)
	}

	// The disk alone: one pass over as many files, right after the agents.
	keys := orDefault(e.o.Keys, 1000)
	step := e.prog.start(fmt.Sprintf("burst: %d files replaced by a plain loop (the disk alone)", keys), 0)
	wall, err := diskRewrite(e.path("burst", "disk"), keys, e.o.Fsync)
	step.done()
	if err != nil {
		return nil, fmt.Errorf("disk alone: %w", err)
	}
	how := "temp file and rename each"
	if e.o.Fsync {
		how += ", then one syncfs"
	}
	return append(out, Result{
		Scenario: Burst, Case: fmt.Sprintf("%d files rewritten once, disk alone", keys), Keys: keys,
		Wall: wall, Throughput: float64(keys) / wall.Seconds(), Unit: "files/s",
		Note: fmt.Sprintf("a plain loop in the bench process on the same disk, right after the agents: %d existing 100 B files replaced once (%s), as one kvsync batch writes them; no NATS, no manifest", keys, how),
	}), nil
}

func (e *env) burstRun(ctx context.Context, wait time.Duration) (Result, error) {
	keys := orDefault(e.o.Keys, 1000)
	puts := 10 * keys
	res := Result{Scenario: Burst, Case: fmt.Sprintf("%d puts over %d keys, no wait", puts, keys), Keys: keys}
	name := "nowait"
	if wait > 0 {
		res.Case = fmt.Sprintf("%d puts over %d keys, wait.min %v", puts, keys, wait)
		name = "wait"
	}
	kv, drop, err := e.bucket(ctx, "burst")
	if err != nil {
		return res, err
	}
	defer drop()

	dir, marks := e.path("burst", name, "files"), e.path("burst", name, "actions")
	key := func(i int) string { return fmt.Sprintf("k.%06d", i%keys) }
	val := func(i int) []byte { return pad(fmt.Sprintf("p%07d-", i), 100) }
	final := map[string][]byte{}
	for i := puts - keys; i < puts; i++ {
		final[filepath.Join(dir, key(i))] = val(i)
	}

	settled := make(chan time.Time, 1)
	done := map[string]bool{} // touched by the watcher goroutine only
	paths := make([]string, 0, len(final))
	for p := range final {
		paths = append(paths, p)
	}
	stopFiles, err := watchFiles([]string{dir}, paths, func(path string, _ bool) {
		at := time.Now()
		want, ok := final[path]
		if !ok || done[path] {
			return
		}
		if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, want) {
			done[path] = true
			if len(done) == len(final) {
				settled <- at
			}
		}
	})
	if err != nil {
		return res, err
	}
	defer stopFiles()

	cfg := e.baseConfig()
	fsync := e.o.Fsync
	cfg.Files = []agent.FilesConfig{{
		Name: "files", Bucket: kv.Bucket(), Keys: []string{">"}, Dir: dir, Fsync: &fsync,
		Wait: &agent.WaitConfig{Min: wait},
	}}
	if wait > 0 {
		cfg.Files[0].OnChange = &agent.Action{Command: []string{"/bin/sh", "-c", `echo run >> "$0"`, marks}}
	}
	r, err := e.startAgent(ctx, cfg)
	if err != nil {
		return res, err
	}
	defer func() { _ = r.stop() }()
	if err := r.waitReady(ctx, time.Minute); err != nil {
		return res, err
	}

	step := e.prog.start(fmt.Sprintf("burst of %d puts over %d keys", puts, keys), puts)
	start := time.Now()
	for i := 0; i < puts; i++ {
		if _, err := kv.Put(ctx, key(i), val(i)); err != nil {
			step.done()
			return res, fmt.Errorf("put %s: %w", key(i), err)
		}
		if i%500 == 499 {
			step.set(i + 1)
		}
	}
	lastPut := time.Now()
	step.done()
	var at time.Time
	select {
	case at = <-settled:
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(2 * time.Minute):
		return res, fmt.Errorf("files did not all hold their final value within 2m of the last put")
	}
	res.Wall = at.Sub(lastPut)
	res.Throughput, res.Unit = float64(puts)/lastPut.Sub(start).Seconds(), "puts/s"

	note := func() {
		writes := counter(r.metrics(), "kvsync_writes_total", "files")
		res.Note = fmt.Sprintf("in-process agent; wall = last put acked -> every file final (includes wait.min %v); %v file writes for %d keys", wait, writes, keys)
	}
	if wait == 0 {
		// The agent counts a write after its rename and folder sync, when
		// the bench may have seen the file already.
		_ = poll(ctx, 2*time.Second, 5*time.Millisecond, func() error {
			if counter(r.metrics(), "kvsync_writes_total", "files") < float64(keys) {
				return fmt.Errorf("writes not counted yet")
			}
			return nil
		})
		note()
		return res, r.stop()
	}
	// The action runs after the files are written: wait for the first run,
	// then long enough for a second one to show if the burst was split.
	if err := poll(ctx, 30*time.Second, 5*time.Millisecond, func() error {
		if n, _ := countLines(marks); n == 0 {
			return fmt.Errorf("on_change did not run")
		}
		return nil
	}); err != nil {
		return res, err
	}
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(10*wait + 500*time.Millisecond):
	}
	if res.Actions, err = countLines(marks); err != nil {
		return res, err
	}
	note()
	res.Note += "; actions must be 1"
	return res, r.stop()
}

// countLines counts the lines of a file; a missing file has none.
func countLines(path string) (int, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return bytes.Count(b, []byte("\n")), nil
}

// counter reads the value of a counter of one projection from a metrics page.
func counter(page, name, projection string) float64 {
	sc := bufio.NewScanner(strings.NewReader(page))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if parseLabels(line[len(name)+1 : end])["projection"] != projection {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(strings.TrimSpace(line[end+1:]), &v); err == nil {
			return v
		}
	}
	return 0
}
