package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

func testKV(t *testing.T, s *server.Server, cfg jetstream.KeyValueConfig) (*nats.Conn, jetstream.KeyValue) {
	t.Helper()
	nc, js := testutil.Connect(t, s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	return nc, testutil.CreateBucket(t, js, cfg)
}

// syncBuffer is a log sink tests can read while the agent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runningAgent is an agent started in the background.
type runningAgent struct {
	*Agent
	url  string // its HTTP base URL
	logs *syncBuffer
	stop func() error
}

// startAgent validates cfg, starts the agent and stops it at cleanup.
func startAgent(t *testing.T, cfg *Config, opts Options) *runningAgent {
	t.Helper()
	cfg.Default()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Listener = ln
	a, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("agent did not stop within 20s")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent Run: %v", err)
		}
		if t.Failed() && !testing.Verbose() {
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			t.Logf("agent log (last %d lines):\n%s", min(len(lines), 60), strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	})
	return &runningAgent{Agent: a, url: "http://" + ln.Addr().String(), logs: logs, stop: stop}
}

// testWriter sends log lines to t.Log, and only while the test runs.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func fileIs(path, want string) func() error {
	return func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(b) != want {
			return fmt.Errorf("%s holds %q, want %q", path, b, want)
		}
		return nil
	}
}

func fileGone(path string) func() error {
	return func() error {
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s still there (err %v)", path, err)
		}
		return nil
	}
}

func filesCfg(url, bucket, dir string) *Config {
	cfg := Default()
	cfg.NATS.URL = url
	cfg.HTTP.Listen = ""
	f := false
	cfg.Files = []FilesConfig{{Name: "files", Bucket: bucket, Dir: dir, Fsync: &f}}
	return &cfg
}

func put(t *testing.T, kv jetstream.KeyValue, key, val string) uint64 {
	t.Helper()
	rev, err := kv.PutString(context.Background(), key, val)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return rev
}

func httpGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestInitialSyncAndUpdates(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", History: 5})
	put(t, kv, "a", "1")
	put(t, kv, "dir/b.conf", "2")
	put(t, kv, "gone", "x")
	if err := kv.Delete(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ag := startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})

	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
	testutil.CheckFor(t, time.Second, fileIs(filepath.Join(dir, "dir/b.conf"), "2"))
	if err := fileGone(filepath.Join(dir, "gone"))(); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, time.Second, func() error {
		if code, body, err := httpGet(ag.url + "/readyz"); err != nil || code != 200 {
			return fmt.Errorf("readyz %d %q %v", code, body, err)
		}
		return nil
	})

	// update, delete, purge
	put(t, kv, "a", "11")
	testutil.CheckFor(t, 2*time.Second, fileIs(filepath.Join(dir, "a"), "11"))
	if err := kv.Delete(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 2*time.Second, fileGone(filepath.Join(dir, "a")))
	if err := kv.Purge(context.Background(), "dir/b.conf"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 2*time.Second, fileGone(filepath.Join(dir, "dir/b.conf")))
	// the folder kvsync created is pruned
	testutil.CheckFor(t, 2*time.Second, fileGone(filepath.Join(dir, "dir")))

	// /status names the projection and its counts
	_, body, err := httpGet(ag.url + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("status: %v: %s", err, body)
	}
	if got, want := len(st.Projections), 1; got != want || st.Projections[0].Name != "files" || !st.Ready {
		t.Fatalf("status = %+v", st)
	}
	_, metrics, err := httpGet(ag.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"kvsync_writes_total", "kvsync_propagation_seconds_bucket", "kvsync_connected 1", "kvsync_last_revision"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics lack %s", m)
		}
	}
}

func TestReadyOnlyAfterInitialSync(t *testing.T) {
	s := testutil.RunServer(t, nil)
	dir := t.TempDir()
	// The bucket does not exist yet: the agent cannot be ready.
	ag := startAgent(t, filesCfg(s.ClientURL(), "later", dir), Options{})
	time.Sleep(300 * time.Millisecond)
	if code, _, err := httpGet(ag.url + "/readyz"); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("readyz before the bucket exists: %d %v, want 503", code, err)
	}
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "later"})
	put(t, kv, "k", "v")
	testutil.CheckFor(t, 15*time.Second, fileIs(filepath.Join(dir, "k"), "v"))
	testutil.CheckFor(t, 2*time.Second, func() error {
		if code, _, _ := httpGet(ag.url + "/readyz"); code != 200 {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
}

func TestPerKeyTTLExpiryRemovesFile(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "ttl", LimitMarkerTTL: time.Second})
	dir := t.TempDir()
	startAgent(t, filesCfg(s.ClientURL(), "ttl", dir), Options{})
	if _, err := kv.Create(context.Background(), "short", []byte("v"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	put(t, kv, "long", "stays")
	testutil.CheckFor(t, 3*time.Second, fileIs(filepath.Join(dir, "short"), "v"))
	testutil.CheckFor(t, 10*time.Second, fileGone(filepath.Join(dir, "short")))
	if err := fileIs(filepath.Join(dir, "long"), "stays")(); err != nil {
		t.Fatal(err)
	}
}

func TestForeignFileSurvives(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	dir := t.TempDir()
	foreign := filepath.Join(dir, "mine")
	if err := os.WriteFile(foreign, []byte("operator's"), 0o600); err != nil {
		t.Fatal(err)
	}
	put(t, kv, "mine", "from kv")
	put(t, kv, "other", "o")
	ag := startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "other"), "o"))
	put(t, kv, "mine", "again") // a put of the same name
	put(t, kv, "other", "o2")
	testutil.CheckFor(t, 2*time.Second, fileIs(filepath.Join(dir, "other"), "o2"))
	if err := fileIs(foreign, "operator's")(); err != nil {
		t.Fatalf("foreign file touched: %v", err)
	}
	if err := kv.Delete(context.Background(), "mine"); err != nil {
		t.Fatal(err)
	}
	put(t, kv, "other", "o3")
	testutil.CheckFor(t, 2*time.Second, fileIs(filepath.Join(dir, "other"), "o3"))
	if err := fileIs(foreign, "operator's")(); err != nil {
		t.Fatalf("foreign file removed by a delete: %v", err)
	}
	// The refusal is visible once the owner publishes the batch's status.
	testutil.CheckFor(t, 2*time.Second, func() error {
		st := ag.Status()
		if len(st.Projections) != 1 || !strings.Contains(st.Projections[0].LastError, "mine") {
			return fmt.Errorf("status does not report the foreign file: %+v", st.Projections)
		}
		return nil
	})
}

func TestDeleteWhileStoppedIsReconciled(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "keep", "1")
	put(t, kv, "drop", "2")
	dir := t.TempDir()
	ag := startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "drop"), "2"))
	if err := ag.stop(); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(context.Background(), "drop"); err != nil {
		t.Fatal(err)
	}
	put(t, kv, "keep", "1b")
	startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "keep"), "1b"))
	testutil.CheckFor(t, time.Second, fileGone(filepath.Join(dir, "drop")))
}

func TestHostileKeysPublishedRaw(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	root := t.TempDir()
	dir := filepath.Join(root, "proj")
	outside := filepath.Join(root, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	// A symlinked parent: a key under it must not be followed out.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	ag := startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, func() error {
		if !ag.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	hostile := []string{
		"..", "...", "a/../../outside/x", "/etc/x", "..data", "..data/x", ".kvsync/manifest",
		"link/x", "a//b", strings.Repeat("s", 300), strings.Repeat("k/", 600) + "k",
		"ünïcode", "ctl\x01x", "back\\slash", "sp ace", "a/./b",
	}
	js, _ := jetstream.New(nc)
	for _, k := range hostile {
		// Raw publish, as a client that does not validate keys would.
		if _, err := js.Publish(context.Background(), "$KV.app."+k, []byte("evil")); err != nil {
			t.Logf("server refused %q: %v", k, err)
		}
	}
	put(t, kv, "good", "still flowing")
	testutil.CheckFor(t, 3*time.Second, fileIs(filepath.Join(dir, "good"), "still flowing"))
	// Nothing landed outside, nothing through the link.
	entries, _ := os.ReadDir(outside)
	if len(entries) != 0 {
		t.Fatalf("written outside the dir: %v", entries)
	}
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() && !strings.Contains(p, ".kvsync") && filepath.Base(p) != "good" {
			return fmt.Errorf("unexpected file %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, metrics, _ := httpGet(ag.url + "/metrics")
	if !strings.Contains(metrics, `kvsync_rejected_keys_total{projection="files",reason="path"}`) {
		t.Fatalf("rejected keys not counted:\n%s", metrics)
	}
	if !strings.Contains(ag.logs.String(), "key rejected") {
		t.Fatal("no WARN for rejected keys")
	}
}

func TestServerRestartResumes(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", History: 2})
	put(t, kv, "a", "1")
	put(t, kv, "b", "2")
	dir := t.TempDir()
	startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "b"), "2"))

	s = testutil.RestartServer(t, s, nil)
	_, kv2 := reopenKV(t, s, "app")
	start := time.Now()
	put(t, kv2, "a", "after restart")
	// Polled every 5 ms: the interval is part of the delay measured.
	testutil.CheckForEvery(t, 5*time.Second, 5*time.Millisecond, fileIs(filepath.Join(dir, "a"), "after restart"))
	took := time.Since(start)
	t.Logf("first put after restart on disk after %v", took)
	// The requirement: within 1 s (a plain WatchAll stalls ~18 s).
	if took > time.Second {
		t.Fatalf("first put after restart took %v, want < 1s", took)
	}
}

func reopenKV(t *testing.T, s *server.Server, bucket string) (*nats.Conn, jetstream.KeyValue) {
	t.Helper()
	nc, js := testutil.Connect(t, s.ClientURL())
	var kv jetstream.KeyValue
	testutil.CheckFor(t, 5*time.Second, func() error {
		var err error
		kv, err = js.KeyValue(context.Background(), bucket)
		return err
	})
	return nc, kv
}

func TestDeleteWithoutMarkerIsReconciledAfterReconnect(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", History: 1})
	put(t, kv, "x", "1")
	put(t, kv, "y", "2")
	dir := t.TempDir()
	startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "y"), "2"))
	// Remove x from the stream without a marker, as compaction or a raw
	// stream purge does: no watch event tells the agent.
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), "KV_app")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background(), jetstream.WithPurgeSubject("$KV.app.x")); err != nil {
		t.Fatal(err)
	}
	put(t, kv, "y", "3")
	testutil.CheckFor(t, 2*time.Second, fileIs(filepath.Join(dir, "y"), "3"))
	if err := fileIs(filepath.Join(dir, "x"), "1")(); err != nil {
		t.Fatalf("x changed without an event: %v", err)
	}
	// After a reconnect the agent lists the keys and drops x.
	testutil.RestartServer(t, s, nil)
	testutil.CheckFor(t, 10*time.Second, fileGone(filepath.Join(dir, "x")))
	if err := fileIs(filepath.Join(dir, "y"), "3")(); err != nil {
		t.Fatal(err)
	}
}

func TestOnceWritesEverything(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	for i := 0; i < 50; i++ {
		put(t, kv, fmt.Sprintf("k%02d", i), fmt.Sprint(i))
	}
	dir := t.TempDir()
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.Templates = []TemplateConfig{{Name: "t", Bucket: "app", Text: `{{ key "k07" }}`, Dest: filepath.Join(dir, "..", "t.out")}}
	cfg.Default()
	a, err := New(cfg, Options{Once: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatalf("once: %v", err)
	}
	for i := 0; i < 50; i++ {
		if err := fileIs(filepath.Join(dir, fmt.Sprintf("k%02d", i)), fmt.Sprint(i))(); err != nil {
			t.Fatal(err)
		}
	}
	if err := fileIs(filepath.Join(dir, "..", "t.out"), "7")(); err != nil {
		t.Fatal(err)
	}

	// A missing key makes once fail with the key named.
	cfg.Templates[0].Text = `{{ key "nope" }}`
	a, _ = New(cfg, Options{Once: true})
	err = a.Run(ctx)
	if !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("once with a missing key: %v, want ErrIncomplete naming nope", err)
	}
	if err := fileIs(filepath.Join(dir, "..", "t.out"), "7")(); err != nil {
		t.Fatalf("last good file not kept: %v", err)
	}
}

func TestSnapshotProjection(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "1")
	put(t, kv, "b", "1")
	dir := t.TempDir()
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.Files[0].Atomic = AtomicSnapshot
	startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "b"), "1"))
	fi, err := os.Lstat(filepath.Join(dir, "..data"))
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("..data is not a symlink: %v %v", fi, err)
	}
	put(t, kv, "a", "2")
	testutil.CheckFor(t, 2*time.Second, fileIs(filepath.Join(dir, "a"), "2"))
}

func TestTreeLayoutAndStripPrefix(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "svc.db.host", "h")
	put(t, kv, "other.x", "no")
	dir := t.TempDir()
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.Files[0].Keys = []string{"svc.>"}
	cfg.Files[0].StripPrefix = "svc."
	cfg.Files[0].Layout = LayoutTree
	startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "db", "host"), "h"))
	if err := fileGone(filepath.Join(dir, "other.x"))(); err != nil {
		t.Fatal(err)
	}
}

func TestBucketDeletedKeepsFiles(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "1")
	dir := t.TempDir()
	ag := startAgent(t, filesCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
	js, _ := jetstream.New(nc)
	if err := js.DeleteKeyValue(context.Background(), "app"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 20*time.Second, func() error {
		if code, _, _ := httpGet(ag.url + "/readyz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("readyz %d, want 503", code)
		}
		return nil
	})
	if err := fileIs(filepath.Join(dir, "a"), "1")(); err != nil {
		t.Fatalf("file not kept: %v", err)
	}
	if !strings.Contains(ag.logs.String(), "bucket is missing") {
		t.Fatal("no error logged for the missing bucket")
	}
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "app"})
	if err != nil {
		t.Fatal(err)
	}
	put(t, kv, "b", "new")
	testutil.CheckFor(t, 20*time.Second, fileIs(filepath.Join(dir, "b"), "new"))
	// The recreated bucket has no "a": a complete listing removes it.
	testutil.CheckFor(t, 5*time.Second, fileGone(filepath.Join(dir, "a")))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if code, _, _ := httpGet(ag.url + "/readyz"); code != 200 {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
}

func TestBucketTTLWithoutMarkersRemovesFiles(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "ttl", TTL: 2 * time.Second})
	dir := t.TempDir()
	startAgent(t, filesCfg(s.ClientURL(), "ttl", dir), Options{})
	put(t, kv, "short", "lived")
	testutil.CheckFor(t, 3*time.Second, fileIs(filepath.Join(dir, "short"), "lived"))
	// The server drops the key after 2 s and sends no event.
	testutil.CheckFor(t, 10*time.Second, fileGone(filepath.Join(dir, "short")))
}

func TestReloadKeepsOldConfigOnError(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "1")
	dirA, dirB := t.TempDir(), t.TempDir()
	reloads := make(chan struct{})
	next := make(chan *Config, 1)
	reload := func() (*Config, error) {
		c := <-next
		if c == nil {
			return nil, errors.New("config: files[0].dir: required")
		}
		return c, nil
	}
	ag := startAgent(t, filesCfg(s.ClientURL(), "app", dirA), Options{Reloads: reloads, Reload: reload})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dirA, "a"), "1"))

	next <- nil // a bad config: the running one stays
	reloads <- struct{}{}
	testutil.CheckFor(t, 2*time.Second, func() error {
		if !strings.Contains(ag.logs.String(), "keeping the running config") {
			return errors.New("bad reload not logged")
		}
		return nil
	})
	put(t, kv, "a", "2")
	testutil.CheckFor(t, 2*time.Second, fileIs(filepath.Join(dirA, "a"), "2"))

	good := filesCfg(s.ClientURL(), "app", dirB)
	good.Default()
	next <- good
	reloads <- struct{}{}
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dirB, "a"), "2"))
	put(t, kv, "a", "3")
	testutil.CheckFor(t, 2*time.Second, fileIs(filepath.Join(dirB, "a"), "3"))
	if err := fileIs(filepath.Join(dirA, "a"), "2")(); err != nil {
		t.Fatalf("the old projection still runs after reload: %v", err)
	}
}

func TestFilesOwnerAndModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "sub/f", "v")
	dir := t.TempDir()
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.Files[0].User, cfg.Files[0].Group = "65534", "65534"
	cfg.Files[0].Mode, cfg.Files[0].DirMode = "0640", "0750"
	startAgent(t, cfg, Options{})
	path := filepath.Join(dir, "sub", "f")
	testutil.CheckFor(t, 5*time.Second, fileIs(path, "v"))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65534 {
		t.Errorf("owner %d:%d, want 65534:65534", st.Uid, st.Gid)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o640); got != want {
		t.Errorf("mode %v, want %v", got, want)
	}
	di, err := os.Stat(filepath.Join(dir, "sub"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := di.Mode().Perm(), os.FileMode(0o750); got != want {
		t.Errorf("folder mode %v, want %v", got, want)
	}
}
