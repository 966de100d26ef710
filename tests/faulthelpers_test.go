package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// agentProc is a `kvsync run` child with its HTTP endpoints on a known address.
type agentProc struct {
	*proc
	cfg  string // config file path
	http string // host:port of /healthz /readyz /metrics /status
}

// writeAgentConfig writes the config of a `kvsync run` child: body is YAML for the
// projections; nats and http blocks are added.
func writeAgentConfig(t testing.TB, url, httpAddr, body string) string {
	t.Helper()
	cfg := fmt.Sprintf("nats: {url: %q}\nhttp: {listen: %q}\n%s", url, httpAddr, body)
	path := filepath.Join(t.TempDir(), "kvsync.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startAgent writes a config (see writeAgentConfig) and starts `kvsync run -c`
// on it. It is killed when the test ends.
func startAgent(t testing.TB, url, body string) *agentProc {
	t.Helper()
	for try := 1; ; try++ {
		addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
		a := runAgentConfig(t, writeAgentConfig(t, url, addr, body), addr)
		if try == 5 || !a.lostPort() {
			return a
		}
	}
}

// lostPort waits until the agent serves HTTP, exits, or 3 s have passed, and
// says whether it exited because its HTTP address was taken: the port was
// free when the test chose it, and another process (tests of other packages
// run beside these) can take it before the agent listens.
func (a *agentProc) lostPort() bool {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			return strings.Contains(a.stderr.String(), "address already in use")
		default:
		}
		if strings.Contains(a.stderr.String(), "serving http") {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// runAgentConfig starts `kvsync run -c cfg` whose HTTP listener is addr.
func runAgentConfig(t testing.TB, cfg, addr string) *agentProc {
	t.Helper()
	p := startKvsync(t, run{args: []string{"run", "-c", cfg}})
	go func() { // nothing is printed on stdout; drain it anyway
		for range p.lines {
		}
	}()
	return &agentProc{proc: p, cfg: cfg, http: addr}
}

// alive fails the test if the agent has exited.
func (a *agentProc) alive(t testing.TB) {
	t.Helper()
	select {
	case <-a.done:
		t.Fatalf("kvsync exited (%v); stderr:\n%s", a.err, a.stderr.String())
	default:
	}
}

// get fetches an HTTP endpoint of the agent.
func (a *agentProc) get(path string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + a.http + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitReady waits for /readyz to answer 200.
func (a *agentProc) waitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	a.waitReadyz(t, timeout, http.StatusOK)
}

// waitReadyz waits for /readyz to answer code.
func (a *agentProc) waitReadyz(t testing.TB, timeout time.Duration, code int) {
	t.Helper()
	testutil.CheckFor(t, timeout, func() error {
		a.alive(t)
		got, body, err := a.get("/readyz")
		if err != nil {
			return err
		}
		if got != code {
			return fmt.Errorf("/readyz = %d %q, want %d", got, strings.TrimSpace(body), code)
		}
		return nil
	})
}

// metric returns the sum of every sample of the metric name whose labels
// contain all of labels ("projection=\"x\"").
func (a *agentProc) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	code, body, err := a.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	return metricValue(body, name, labels...)
}

// metricValue sums the samples of name in a Prometheus text exposition.
func metricValue(body, name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // a longer name with the same prefix
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// bucketState reads every live key of kv with its value.
func bucketState(ctx context.Context, kv jetstream.KeyValue) (map[string][]byte, error) {
	out := map[string][]byte{}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	_ = lister.Stop() // the listing is complete once Keys is closed
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", k, err)
		}
		out[k] = e.Value()
	}
	return out, nil
}

// dirState reads every file under dir, by slash path relative to dir,
// skipping kvsync's .kvsync state folder, the ".."-prefixed internals of
// snapshot mode (its visible names are links, read through) and the names in
// skip.
func dirState(dir string, skip ...string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if strings.HasPrefix(d.Name(), "..") && rel != "." {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil // snapshot mode: the ..data link and its data folders
		}
		if d.IsDir() {
			if rel == ".kvsync" {
				return filepath.SkipDir
			}
			return nil
		}
		for _, s := range skip {
			if rel == s {
				return nil
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = b
		return nil
	})
	return out, err
}

// sameState returns an error describing how files differ from want.
func sameState(files, want map[string][]byte) error {
	var diffs []string
	for k, v := range want {
		got, ok := files[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing", k))
		case string(got) != string(v):
			diffs = append(diffs, fmt.Sprintf("%s: %q, want %q", k, clip(got), clip(v)))
		}
	}
	for k := range files {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: file of a deleted key", k))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	sort.Strings(diffs)
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("... %d more", len(diffs)-10))
	}
	return fmt.Errorf("%d differences: %s", len(diffs), strings.Join(diffs, "; "))
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// converges waits until the files under dir are exactly the bucket's live keys
// and values (flat layout, keys without "/" or ".kvsync" names). skip names
// foreign files the test placed there.
func converges(t testing.TB, timeout time.Duration, kv jetstream.KeyValue, dir string, skip ...string) {
	t.Helper()
	testutil.CheckFor(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		want, err := bucketState(ctx, kv)
		if err != nil {
			return err
		}
		files, err := dirState(dir, skip...)
		if err != nil {
			return err
		}
		return sameState(files, want)
	})
}

// tempFiles lists kvsync temp files (.kvsync-tmp-*) anywhere under dir,
// including its state folder.
func tempFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".kvsync-tmp-") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFile polls path until it holds want, every millisecond (the poll
// interval is part of the delay measured), and returns how long that took
// from start. It fails the test after timeout.
func waitFile(t testing.TB, path string, want []byte, start time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	var took time.Duration
	testutil.CheckForEvery(t, timeout, time.Millisecond, func() error {
		b, err := os.ReadFile(path)
		if err != nil || string(b) != string(want) {
			return fmt.Errorf("%s: %q (%v), want %q", path, clip(b), err, clip(want))
		}
		took = time.Since(start)
		return nil
	})
	return took
}

// putRetrying puts until the server accepts it (it may be electing a leader
// or recovering its store) and returns the revision and when the accepted
// attempt started.
func putRetrying(t testing.TB, kv jetstream.KeyValue, key string, value []byte, timeout time.Duration) (uint64, time.Time) {
	t.Helper()
	var rev uint64
	var start time.Time
	testutil.CheckFor(t, timeout, func() error {
		start = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		if rev, err = kv.Put(ctx, key, value); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		return nil
	})
	return rev, start
}

// churn puts and deletes keys key000..key(n-1) of kv until stop is closed,
// ignoring errors (the server may be down: that is the point), and counts in
// acked the operations the server acknowledged. Every fifth operation is a
// delete. It closes done when it returns.
func churn(kv jetstream.KeyValue, n int, valueSize int, stop <-chan struct{}, acked *atomic.Int64, done chan<- struct{}) {
	defer close(done)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		key := fmt.Sprintf("key%03d", (i*7)%n)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var err error
		if i%5 == 4 {
			err = kv.Delete(ctx, key)
		} else {
			_, err = kv.Put(ctx, key, churnValue(key, i, valueSize))
		}
		cancel()
		if err == nil {
			acked.Add(1)
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// churnValue is a value that names its key and sequence, padded to size.
func churnValue(key string, i, size int) []byte {
	v := fmt.Sprintf("%s#%d:", key, i)
	if len(v) < size {
		sum := sha256.Sum256([]byte(v))
		pad := hex.EncodeToString(sum[:])
		for len(v) < size {
			v += pad
		}
		v = v[:size]
	}
	return []byte(v)
}

// waitAcked waits until churn has had at least n operations acknowledged.
func waitAcked(t testing.TB, acked *atomic.Int64, n int64, timeout time.Duration) {
	t.Helper()
	testutil.CheckFor(t, timeout, func() error {
		if got := acked.Load(); got < n {
			return fmt.Errorf("%d operations acknowledged, want %d", got, n)
		}
		return nil
	})
}
