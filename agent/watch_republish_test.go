package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/agent/watch"
	"github.com/kvsync/kvsync/internal/testutil"
)

// republishCfg is filesCfg in the republish watch mode.
func republishCfg(url, bucket, dir string) *Config {
	cfg := filesCfg(url, bucket, dir)
	cfg.Watch.Mode = WatchRepublish
	return cfg
}

// consumers is how many consumers the bucket's stream has.
func consumers(t *testing.T, js jetstream.JetStream, bucket string) int {
	t.Helper()
	st, err := js.Stream(context.Background(), "KV_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.Consumers
}

// noConsumers waits until the bucket's stream has no consumer left: the
// short-lived ones of the initial sync and catch-ups are gone.
func noConsumers(t *testing.T, js jetstream.JetStream, bucket string) {
	t.Helper()
	testutil.CheckFor(t, 15*time.Second, func() error {
		if n := consumers(t, js, bucket); n != 0 {
			return fmt.Errorf("%d consumers on KV_%s", n, bucket)
		}
		return nil
	})
}

// dirMatches returns a check that dir holds exactly the keys of kv, with
// their values (keys are plain file names here).
func dirMatches(kv jetstream.KeyValue, dir string) func() error {
	return func() error {
		ctx := context.Background()
		want := map[string]string{}
		lister, err := kv.ListKeys(ctx)
		if err != nil {
			return err
		}
		for k := range lister.Keys() {
			e, err := kv.Get(ctx, k)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			want[k] = string(e.Value())
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, e := range ents {
			if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				return err
			}
			got[e.Name()] = string(b)
		}
		for k, v := range want {
			if got[k] != v {
				return fmt.Errorf("%s: file holds %q, bucket %q", k, got[k], v)
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				return fmt.Errorf("%s: file left, key gone", k)
			}
		}
		return nil
	}
}

func TestRepublishWatchFollowsBucket(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", History: 3, RePublish: natsconn.RePublish("app")})
	js, _ := jetstream.New(nc)
	put(t, kv, "a", "1")
	put(t, kv, "b", "2")
	put(t, kv, "gone", "x")
	if err := kv.Delete(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ag := startAgent(t, republishCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, dirMatches(kv, dir))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if code, _, _ := httpGet(ag.url + "/readyz"); code != http.StatusOK {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
	// The initial sync's consumer is gone: the agent costs the server a
	// subscription only.
	noConsumers(t, js, "app")

	put(t, kv, "c", "3")
	put(t, kv, "a", "1b")
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "c"), "3"))
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "1b"))
	if err := kv.Delete(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, fileGone(filepath.Join(dir, "b")))
	if err := kv.Purge(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, fileGone(filepath.Join(dir, "c")))
	testutil.CheckFor(t, 5*time.Second, dirMatches(kv, dir))
	if n := consumers(t, js, "app"); n != 0 {
		t.Fatalf("%d consumers while following live updates, want 0", n)
	}
}

func TestRepublishWatchTTLExpiry(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "ttl", LimitMarkerTTL: time.Second, RePublish: natsconn.RePublish("ttl")})
	dir := t.TempDir()
	startAgent(t, republishCfg(s.ClientURL(), "ttl", dir), Options{})
	put(t, kv, "stays", "1")
	if _, err := kv.Create(context.Background(), "short", []byte("lived"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "short"), "lived"))
	// The expiry marker is republished like any entry.
	testutil.CheckFor(t, 10*time.Second, fileGone(filepath.Join(dir, "short")))
	if err := fileIs(filepath.Join(dir, "stays"), "1")(); err != nil {
		t.Fatal(err)
	}
}

// TestRepublishWatchConvergesDespiteDrops: the subscription's channel holds
// one copy, so the client drops most republished copies of a stream of puts
// and deletes. The files still end up exactly as the bucket, and the log
// shows the watcher noticed.
func TestRepublishWatchConvergesDespiteDrops(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", History: 1, RePublish: natsconn.RePublish("app")})
	js, _ := jetstream.New(nc)
	for i := range 20 {
		put(t, kv, fmt.Sprintf("k%02d", i), "init")
	}
	dir := t.TempDir()
	cfg := republishCfg(s.ClientURL(), "app", dir)
	cfg.Default()
	logs := &syncBuffer{}
	o, stop := runOwner(t, cfg, logs, func(o *watch.Options) { o.Buffer = 1 })
	defer stop()
	testutil.CheckFor(t, 5*time.Second, dirMatches(kv, dir))

	ctx := context.Background()
	for i := range 2000 {
		k := fmt.Sprintf("k%02d", i%23)
		var err error
		if i%7 == 3 {
			err = kv.Delete(ctx, k)
		} else {
			_, err = kv.PutString(ctx, k, fmt.Sprintf("v%d", i))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// The bound: a copy dropped by the client is found at the next copy or
	// a second after the drop; nothing else is needed here.
	testutil.CheckFor(t, 10*time.Second, dirMatches(kv, dir))
	if !strings.Contains(logs.String(), "missed republished entries") && !strings.Contains(logs.String(), "client dropped") {
		t.Fatalf("no copy was dropped: the test proves nothing; log:\n%s", logs)
	}
	t.Logf("gaps seen: %d, catch-ups after client drops: %d, listings: %d",
		strings.Count(logs.String(), "missed republished entries"), strings.Count(logs.String(), "client dropped"), strings.Count(logs.String(), "reconciled"))
	noConsumers(t, js, "app")
	_ = o
}

// runOwner runs an owner for cfg whose watchers' options are adjusted by
// tune before they are made, logging to logs. stop ends it.
func runOwner(t *testing.T, cfg *Config, logs *syncBuffer, tune func(*watch.Options)) (*owner, func()) {
	t.Helper()
	nc, err := nats.Connect(cfg.NATS.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	o, err := newOwner(cfg, a, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// The watchers are started here, tuned; the owner starts none of its own
	// for a bucket it finds watched.
	for b, f := range o.bucketFilters() {
		opts := o.watchOptions(b)
		if tune != nil {
			tune(&opts)
		}
		w := o.newBucketWatcher(b, f, opts)
		o.watched[b] = w
		o.st.bucket(b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = w.Run(ctx)
		}()
	}
	reconnects := make(chan struct{}, 1)
	nc.SetReconnectHandler(func(*nats.Conn) {
		select {
		case reconnects <- struct{}{}:
		default:
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = o.run(ctx, reconnects)
	}()
	return o, func() { cancel(); wg.Wait() }
}

func TestRepublishWatchServerRestart(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", History: 2, RePublish: natsconn.RePublish("app")})
	put(t, kv, "a", "1")
	put(t, kv, "x", "doomed")
	dir := t.TempDir()
	startAgent(t, republishCfg(s.ClientURL(), "app", dir), Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "x"), "doomed"))
	// Remove x without a marker, as compaction or a raw purge does.
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), "KV_app")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background(), jetstream.WithPurgeSubject("$KV.app.x")); err != nil {
		t.Fatal(err)
	}

	s = testutil.RestartServer(t, s, nil)
	_, kv2 := reopenKV(t, s, "app")
	put(t, kv2, "a", "after restart")
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "after restart"))
	// The reconnect lists the keys: x goes.
	testutil.CheckFor(t, 10*time.Second, fileGone(filepath.Join(dir, "x")))
	testutil.CheckFor(t, 5*time.Second, dirMatches(kv2, dir))
	// The republish mode follows the bucket without a consumer.
	noConsumers(t, js, "app")
}

// TestWatchModeAuto: auto follows a bucket that republishes without a
// consumer and one that does not with a consumer.
func TestWatchModeAuto(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, rkv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "rep", RePublish: natsconn.RePublish("rep")})
	js, _ := jetstream.New(nc)
	// Republishing elsewhere is not what the agent listens to.
	other, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "other", RePublish: &jetstream.RePublish{Source: "$KV.other.>", Destination: "elsewhere.>"}})
	if err != nil {
		t.Fatal(err)
	}
	put(t, rkv, "r", "1")
	put(t, other, "o", "1")
	rdir, odir := t.TempDir(), t.TempDir()
	cfg := filesCfg(s.ClientURL(), "rep", rdir)
	f := false
	cfg.Files = append(cfg.Files, FilesConfig{Name: "other", Bucket: "other", Dir: odir, Fsync: &f})
	ag := startAgent(t, cfg, Options{})
	if cfg.Watch.Mode != WatchAuto {
		t.Fatalf("default watch mode %q, want auto", cfg.Watch.Mode)
	}
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(rdir, "r"), "1"))
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(odir, "o"), "1"))
	put(t, rkv, "r", "2")
	put(t, other, "o", "2")
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(rdir, "r"), "2"))
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(odir, "o"), "2"))
	noConsumers(t, js, "rep")
	if n := consumers(t, js, "other"); n != 1 {
		t.Fatalf("bucket other has %d consumers, want the agent's one", n)
	}
	if !strings.Contains(ag.logs.String(), "bucket does not republish to $KVR.other.>: following it with a consumer") {
		t.Fatal("the fallback to a consumer was not logged")
	}
}

// TestWatchModeRepublishNeedsRepublish: the republish mode on a bucket that
// does not republish keeps the files, says what to change and is not ready;
// once the bucket republishes, the agent follows it.
func TestWatchModeRepublishNeedsRepublish(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	js, _ := jetstream.New(nc)
	put(t, kv, "a", "1")
	dir := t.TempDir()
	cfg := republishCfg(s.ClientURL(), "app", dir)
	cfg.Watch.CheckInterval = 200 * time.Millisecond
	ag := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, func() error {
		if !strings.Contains(ag.logs.String(), "does not republish to $KVR.app.>") {
			return errors.New("no error naming the missing republish")
		}
		return nil
	})
	if code, _, _ := httpGet(ag.url + "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz %d, want 503", code)
	}
	if err := fileGone(filepath.Join(dir, "a"))(); err != nil {
		t.Fatal(err)
	}
	if n := consumers(t, js, "app"); n != 0 {
		t.Fatalf("%d consumers, want none in the republish mode", n)
	}

	st, err := js.Stream(context.Background(), "KV_app")
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	sc.RePublish = natsconn.RePublish("app")
	if _, err := js.UpdateStream(context.Background(), sc); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
	put(t, kv, "b", "2")
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "b"), "2"))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if code, _, _ := httpGet(ag.url + "/readyz"); code != http.StatusOK {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
}

// TestRepublishWatchIgnoresForgedHeaders: an entry published raw with its own
// Nats-Sequence header does not move the watcher's position.
func TestRepublishWatchIgnoresForgedHeaders(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")})
	dir := t.TempDir()
	startAgent(t, republishCfg(s.ClientURL(), "app", dir), Options{})
	put(t, kv, "a", "1")
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
	m := nats.NewMsg("$KV.app.forged")
	m.Header.Set(jetstream.SequenceHeader, "999999")
	m.Header.Set(jetstream.StreamHeader, "KV_app")
	m.Data = []byte("raw")
	if _, err := nc.RequestMsg(m, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "forged"), "raw"))
	put(t, kv, "a", "2")
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "2"))
}

// tailDeafServer runs a server with the users admin, deaf (which may not
// receive the republished copies of key "tail" of bucket app: the server
// never delivers them, and the client counts no drop) and others, each with
// its name as password.
func tailDeafServer(t *testing.T, deaf string, others ...string) *server.Server {
	return testutil.RunServer(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "admin"},
			{Username: deaf, Password: deaf, Permissions: &server.Permissions{
				Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$KVR.app.tail"}},
			}},
		}
		for _, u := range others {
			o.Users = append(o.Users, &server.User{Username: u, Password: u})
		}
	})
}

// TestRepublishWatchCheckFindsSilentLoss: the agent's user may not receive
// the republished copies of key "tail", so the server never delivers them
// and the client counts no drop: a copy lost on the way, with nothing after
// it. The periodic check finds it within the check interval.
func TestRepublishWatchCheckFindsSilentLoss(t *testing.T) {
	s := tailDeafServer(t, "agent")
	_, js := testutil.Connect(t, s.ClientURL(), nats.UserInfo("admin", "admin"))
	kv := testutil.CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")})
	put(t, kv, "a", "1")
	dir := t.TempDir()
	cfg := republishCfg(s.ClientURL(), "app", dir)
	cfg.NATS.User, cfg.NATS.Password = "agent", "agent"
	cfg.Watch.CheckInterval = 300 * time.Millisecond
	ag := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "1"))

	put(t, kv, "tail", "late")
	// The bound: the check interval (300 ms here) and a second, plus one
	// catch-up.
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "tail"), "late"))
	if !strings.Contains(ag.logs.String(), "catching up") {
		t.Fatal("the entry arrived without a catch-up: the copy was not lost, the test proves nothing")
	}
}

// TestRepublishCheckShared: the periodic check is shared. An agent whose
// own check interval is ten minutes, and which never receives the copy of
// the last entry, still gets it within a few seconds, through the answers
// to another agent's checks. And ten agents checking every 300 ms ask the
// stream about twice per interval, not ten times.
func TestRepublishCheckShared(t *testing.T) {
	s := tailDeafServer(t, "deaf", "agent")
	nc, js := testutil.Connect(t, s.ClientURL(), nats.UserInfo("admin", "admin"))
	kv := testutil.CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")})
	put(t, kv, "a", "1")

	deafDir := t.TempDir()
	deaf := republishCfg(s.ClientURL(), "app", deafDir)
	deaf.NATS.User, deaf.NATS.Password = "deaf", "deaf"
	deaf.Watch.CheckInterval = 10 * time.Minute
	deafAgent := startAgent(t, deaf, Options{})

	const agents = 10
	const every = 300 * time.Millisecond
	var dirs []string
	for range agents {
		dir := t.TempDir()
		cfg := republishCfg(s.ClientURL(), "app", dir)
		cfg.NATS.User, cfg.NATS.Password = "agent", "agent"
		cfg.Watch.CheckInterval = every
		startAgent(t, cfg, Options{})
		dirs = append(dirs, dir)
	}
	for _, dir := range append(dirs, deafDir) {
		testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
	}

	// Count the questions: a plain subscriber sees every direct get.
	var mu sync.Mutex
	var asked []time.Time
	sub, err := nc.Subscribe("$JS.API.DIRECT.GET.KV_app", func(*nats.Msg) {
		mu.Lock()
		asked = append(asked, time.Now())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const window = 3 * time.Second
	time.Sleep(window)
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(asked)
	mu.Unlock()
	// Unshared, ten agents asking at a random point of each 300 ms interval
	// (150 to 300 ms apart) would ask about 130 times in 3 s; shared, the
	// fleet asks about every 150 ms: about 20.
	if unshared := agents * int(window/every); n == 0 || n > unshared/2 {
		t.Fatalf("%d questions in %v from %d agents checking every %v: want some, and at most %d", n, window, agents, every, unshared/2)
	}

	put(t, kv, "tail", "late")
	for _, dir := range append(dirs, deafDir) {
		testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "tail"), "late"))
	}
	if !strings.Contains(deafAgent.logs.String(), "check: entries missing") {
		t.Fatal("the deaf agent got the entry without the shared check: the test proves nothing")
	}
}

// TestRepublishCheckNoticesRecreatedBucket: a bucket deleted and made again
// with fewer entries, seen by an agent that gets no stream advisories: the
// new bucket's copies and the check's answers are behind what the agent saw,
// and the agent looks at the stream info and starts over.
func TestRepublishCheckNoticesRecreatedBucket(t *testing.T) {
	s := testutil.RunServer(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "admin"},
			{Username: "agent", Password: "agent", Permissions: &server.Permissions{
				Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.EVENT.>"}},
			}},
		}
	})
	_, js := testutil.Connect(t, s.ClientURL(), nats.UserInfo("admin", "admin"))
	cfgKV := jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")}
	kv := testutil.CreateBucket(t, js, cfgKV)
	for _, k := range []string{"a", "b", "c"} {
		put(t, kv, k, "old")
	}
	dir := t.TempDir()
	cfg := republishCfg(s.ClientURL(), "app", dir)
	cfg.NATS.User, cfg.NATS.Password = "agent", "agent"
	cfg.Watch.CheckInterval = 300 * time.Millisecond
	startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "c"), "old"))

	if err := js.DeleteKeyValue(context.Background(), "app"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, func() (err error) {
		kv, err = js.CreateKeyValue(context.Background(), cfgKV)
		return err
	})
	put(t, kv, "x", "new") // sequence 1: behind the 3 the agent saw
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "x"), "new"))
	for _, k := range []string{"a", "b", "c"} {
		testutil.CheckFor(t, 5*time.Second, fileGone(filepath.Join(dir, k)))
	}
}

// TestRepublishWatchPermissions: the republish mode works with the
// documented permissions of a watch-only user and no more.
func TestRepublishWatchPermissions(t *testing.T) {
	users := func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "admin"},
			{Username: "watch", Password: "watch", Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: []string{
					"$JS.API.INFO",
					"$JS.API.STREAM.INFO.KV_app",
					"$JS.API.CONSUMER.CREATE.KV_app.>",
					"$JS.API.CONSUMER.DELETE.KV_app.>",
					"$JS.API.CONSUMER.MSG.NEXT.KV_app.>",
					"$JS.API.DIRECT.GET.KV_app",
				}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", "$KVR.app.>", "$JS.EVENT.ADVISORY.STREAM.*.KV_app"}},
			}},
		}
	}
	s := testutil.RunServer(t, users)
	_, js := testutil.Connect(t, s.ClientURL(), nats.UserInfo("admin", "admin"))
	kv := testutil.CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")})
	put(t, kv, "a", "1")
	put(t, kv, "gone", "x")
	dir := t.TempDir()
	cfg := republishCfg(s.ClientURL(), "app", dir)
	cfg.NATS.User, cfg.NATS.Password = "watch", "watch"
	startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, dirMatches(kv, dir))
	put(t, kv, "a", "2")
	if err := kv.Delete(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, dirMatches(kv, dir))
	// A reconnect: a catch-up and a key listing, which drops a key removed
	// without a marker.
	st, err := js.Stream(context.Background(), "KV_app")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background(), jetstream.WithPurgeSubject("$KV.app.a")); err != nil {
		t.Fatal(err)
	}
	_ = testutil.RestartServer(t, s, users) // stopped by its cleanup
	testutil.CheckFor(t, 10*time.Second, func() error {
		_, err := kv.PutString(context.Background(), "b", "3")
		return err
	})
	testutil.CheckFor(t, 10*time.Second, dirMatches(kv, dir))
	// a was purged without a marker: only the key listing after the
	// reconnect removes its file.
	if err := fileGone(filepath.Join(dir, "a"))(); err != nil {
		t.Fatalf("no key listing after the reconnect: %v", err)
	}
	noConsumers(t, js, "app")
}

// TestRepublishWatchBucketDeletedAndRecreated: a deleted bucket keeps the
// files and turns /readyz red; the recreated one is followed from its start.
func TestRepublishWatchBucketDeletedAndRecreated(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")})
	put(t, kv, "a", "1")
	dir := t.TempDir()
	cfg := republishCfg(s.ClientURL(), "app", dir)
	// The server's delete advisory is sent on a best-effort path (it is
	// sometimes lost as the stream stops): the check interval bounds it.
	cfg.Watch.CheckInterval = 500 * time.Millisecond
	ag := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "a"), "1"))
	js, _ := jetstream.New(nc)
	if err := js.DeleteKeyValue(context.Background(), "app"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		if code, _, _ := httpGet(ag.url + "/readyz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("readyz %d, want 503", code)
		}
		return nil
	})
	if err := fileIs(filepath.Join(dir, "a"), "1")(); err != nil {
		t.Fatalf("file not kept: %v", err)
	}
	// Right after a delete the server can refuse to create the stream's
	// store again for a moment.
	testutil.CheckFor(t, 5*time.Second, func() (err error) {
		kv, err = js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "app", RePublish: natsconn.RePublish("app")})
		return err
	})
	put(t, kv, "b", "new")
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "b"), "new"))
	// The new bucket has no "a": its complete view removes it.
	testutil.CheckFor(t, 5*time.Second, fileGone(filepath.Join(dir, "a")))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if code, _, _ := httpGet(ag.url + "/readyz"); code != http.StatusOK {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
	put(t, kv, "b", "newer")
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "b"), "newer"))
}
