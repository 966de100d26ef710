package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// The permission blocks of docs/PERMISSIONS.md are tested as they are
// written: the test reads the page's `conf` block, loads it into a real
// server, and runs the real agent and CLI as each of its users. A user that
// lacks a subject the code needs shows up as a refusal here.

// docConf returns the `conf` block of docs/PERMISSIONS.md, and the sh block.
func docBlocks(t testing.TB) (conf, sh string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "PERMISSIONS.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)```(conf|sh)\n(.*?)```")
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		switch m[1] {
		case "conf":
			if conf != "" {
				t.Fatal("docs/PERMISSIONS.md has more than one conf block")
			}
			conf = m[2]
		case "sh":
			sh = m[2]
		}
	}
	if conf == "" || sh == "" {
		t.Fatal("docs/PERMISSIONS.md: no conf or no sh block")
	}
	return conf, sh
}

// permServer is a server running the doc's accounts block, with one more user
// (admin, no limits) in the same account for the test's own setup.
type permServer struct {
	srv   *server.Server
	admin jetstream.JetStream
	nc    *nats.Conn
}

// passwordVars are the password variables of the doc's block, set to the
// user name without its "kvsync-" prefix plus "-pw".
var passwordRe = regexp.MustCompile(`user:\s*(\S+)\s*\n\s*password:\s*\$(\w+)`)

// startPermServer runs a server on conf (an accounts block). Passwords of the
// block's users are "<user>-pw".
func startPermServer(t testing.TB, conf string) *permServer {
	t.Helper()
	users := passwordRe.FindAllStringSubmatch(conf, -1)
	if len(users) == 0 {
		t.Fatal("no user with a password variable in the conf block")
	}
	for _, u := range users {
		t.Setenv(u[2], u[1]+"-pw")
	}
	path := filepath.Join(t.TempDir(), "server.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("the doc's conf block does not load: %v", err)
	}
	var acc *server.Account
	for _, a := range opts.Accounts {
		if a.Name == "APP" {
			acc = a
		}
	}
	if acc == nil {
		t.Fatal("the conf block has no account APP")
	}
	opts.Users = append(opts.Users, &server.User{Username: "admin", Password: "admin-pw", Account: acc})
	// The block's options, on loopback, a random port, JetStream with a temp
	// store and limits, no logs, no signal handlers.
	s := testutil.RunServer(t, func(o *server.Options) {
		store := o.StoreDir
		*o = *opts
		o.Host, o.Port = "127.0.0.1", -1
		o.JetStream, o.StoreDir = true, store
		o.JetStreamMaxMemory, o.JetStreamMaxStore = 64<<20, 256<<20
		o.NoLog, o.NoSigs = true, true
	})
	nc, js := testutil.Connect(t, s.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	return &permServer{srv: s, admin: js, nc: nc}
}

// url is the client URL with user's credentials.
func (p *permServer) url(user string) string {
	u, _ := url.Parse(p.srv.ClientURL())
	u.User = url.UserPassword(user, user+"-pw")
	return u.String()
}

// permStatus is the connection part of GET /status.
type permStatus struct {
	Ready      bool `json:"ready"`
	Connection struct {
		State   string `json:"state"`
		Refused []struct {
			Op      string `json:"op"`
			Subject string `json:"subject"`
			Grant   string `json:"grant"`
			Count   int    `json:"count"`
		} `json:"refused"`
	} `json:"connection"`
}

func (a *agentProc) permStatus(t testing.TB) permStatus {
	t.Helper()
	_, body, err := a.get("/status")
	if err != nil {
		t.Fatal(err)
	}
	var st permStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	return st
}

// noRefusals fails the test if the agent reports any refused permission.
func (a *agentProc) noRefusals(t testing.TB, user string) {
	t.Helper()
	if st := a.permStatus(t); len(st.Connection.Refused) > 0 {
		t.Fatalf("user %s: the server refused %+v: docs/PERMISSIONS.md must grant it", user, st.Connection.Refused)
	}
}

// fillApp creates bucket app (history 5) with n values of size bytes; 1,500
// keys of a few KiB is the shape that found the doc's watch-only user wanting.
func fillApp(t testing.TB, js jetstream.JetStream, n, size int) jetstream.KeyValue {
	t.Helper()
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "app", History: 5})
	if err != nil {
		t.Fatal(err)
	}
	val := []byte(strings.Repeat("v", size))
	futs := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		f, err := js.PublishAsync(fmt.Sprintf("$KV.app.big.%04d", i), val)
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatal("no ack")
		}
	}
	return kv
}

// TestPermissionsDocAgent: with each agent user of the doc, the real agent
// finishes the initial sync of 1,500 values of 8 KiB (the shape that once lost a key) in a bucket with
// history, follows a change, and the server refuses nothing. The push-back
// user pushes a local edit; the watch-only user's push is refused, clearly.
func TestPermissionsDocAgent(t *testing.T) {
	conf, _ := docBlocks(t)
	ps := startPermServer(t, conf)
	kv := fillApp(t, ps.admin, 1500, 8<<10)
	for _, user := range []string{"kvsync-watch", "kvsync-push", "kvsync-report"} {
		t.Run(user, func(t *testing.T) {
			dir := t.TempDir()
			push := user == "kvsync-push"
			a := startAgent(t, ps.url(user), fmt.Sprintf("files:\n  - {name: app, bucket: app, dir: %q, fsync: false, push: {enabled: %v}}\n", dir, push))
			a.waitReady(t, 30*time.Second)
			converges(t, 10*time.Second, kv, dir)
			if _, err := kv.Put(context.Background(), "big.0001", []byte("changed")); err != nil {
				t.Fatal(err)
			}
			waitFile(t, filepath.Join(dir, "big.0001"), []byte("changed"), time.Now(), 10*time.Second)
			if push {
				if err := os.WriteFile(filepath.Join(dir, "local.new"), []byte("from disk"), 0o644); err != nil {
					t.Fatal(err)
				}
				testutil.CheckFor(t, 10*time.Second, func() error {
					e, err := kv.Get(context.Background(), "local.new")
					if err != nil {
						return err
					}
					if string(e.Value()) != "from disk" {
						return fmt.Errorf("local.new = %q", e.Value())
					}
					return nil
				})
				if err := kv.Delete(context.Background(), "local.new"); err != nil {
					t.Fatal(err)
				}
			}
			a.noRefusals(t, user)
			if got := a.metric(t, "kvsync_nats_permission_denied_total"); got != 0 {
				t.Fatalf("kvsync_nats_permission_denied_total = %v, want 0", got)
			}
		})
	}
	// The same block serves a watcher built on a push consumer with flow
	// control (nats.go's own WatchAll): it reads the whole bucket too.
	t.Run("kvsync-watch/push-consumer", func(t *testing.T) {
		var mu sync.Mutex
		var refused []string
		nc, err := nats.Connect(ps.url("kvsync-watch"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			defer mu.Unlock()
			refused = append(refused, err.Error())
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		wkv, err := js.KeyValue(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		w, err := wkv.WatchAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		n := 0
		for e := range w.Updates() {
			if e == nil {
				break
			}
			if strings.HasPrefix(e.Key(), "big.") {
				n++
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if n != 1500 || len(refused) > 0 {
			t.Fatalf("push watcher as kvsync-watch: %d big.* entries before the end marker, want 1500; refused: %v", n, refused)
		}
	})
}

// TestPermissionsDocMissing: the doc's watch-only user without one of its
// lines. The agent says what is refused and what to grant: an ERROR log,
// /status, the metric, and a /readyz body with the reason.
func TestPermissionsDocMissing(t *testing.T) {
	conf, _ := docBlocks(t)
	// Consumer creation: needed whether the watcher pulls or is pushed to.
	const drop = `              "$JS.API.CONSUMER.CREATE.KV_app.>",` + "\n"
	watch := conf[strings.Index(conf, "user: kvsync-watch"):]
	watch = watch[:strings.Index(watch, "user: kvsync-push")]
	if !strings.Contains(watch, drop) {
		t.Fatalf("the watch-only user does not grant %q", strings.TrimSpace(drop))
	}
	conf = strings.Replace(conf, watch, strings.Replace(watch, drop, "", 1), 1)
	ps := startPermServer(t, conf)
	fillApp(t, ps.admin, 10, 100)

	a := startAgent(t, ps.url("kvsync-watch"), fmt.Sprintf("files:\n  - {name: app, bucket: app, dir: %q}\n", t.TempDir()))
	const grant = "$JS.API.CONSUMER.CREATE.KV_app.>"
	testutil.CheckFor(t, 20*time.Second, func() error {
		a.alive(t)
		code, body, err := a.get("/readyz")
		if err != nil {
			return err
		}
		if code != 503 || !strings.Contains(body, `allow publish on "`+grant+`"`) {
			return fmt.Errorf("/readyz = %d %q, want 503 naming %s", code, body, grant)
		}
		t.Logf("/readyz:\n%s", body)
		return nil
	})
	st := a.permStatus(t)
	if len(st.Connection.Refused) == 0 || st.Connection.Refused[0].Grant != grant || st.Connection.Refused[0].Op != "publish" ||
		!strings.HasPrefix(st.Connection.Refused[0].Subject, "$JS.API.CONSUMER.CREATE.KV_app.") {
		t.Fatalf("/status connection.refused = %+v, want publish %s", st.Connection.Refused, grant)
	}
	if got := a.metric(t, "kvsync_nats_permission_denied_total", `op="publish"`, `grant="`+grant+`"`); got < 1 {
		t.Fatalf("kvsync_nats_permission_denied_total = %v, want >= 1", got)
	}
	logs := a.stderr.String()
	if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "grant="+grant) {
		t.Fatalf("no ERROR naming the grant in the log:\n%s", logs)
	}
}

// TestPermissionsDocCLI: every kv and bucket command with the doc's CLI user;
// the watch-only user's writes fail at once, saying which permission is
// missing; the nsc lines grant what the watch-only user has.
func TestPermissionsDocCLI(t *testing.T) {
	conf, sh := docBlocks(t)
	ps := startPermServer(t, conf)
	cli := ps.url("kvsync-cli")
	ok := func(args ...string) string {
		t.Helper()
		return mustKvsync(t, append(args, "-s", cli)...)
	}
	ok("bucket", "add", "app", "--history", "5")
	ok("bucket", "info", "app")
	if out := ok("bucket", "ls"); !strings.Contains(out, "app") {
		t.Fatalf("bucket ls = %q", out)
	}
	rev := strings.TrimSpace(ok("kv", "put", "app", "k", "v1"))
	ok("kv", "update", "app", "k", "v2", "--revision", rev)
	ok("kv", "create", "app", "n", "new")
	if out := ok("kv", "get", "app", "k"); out != "v2" {
		t.Fatalf("kv get = %q", out)
	}
	ok("kv", "get", "app", "k", "--revision", rev)
	ok("kv", "revert", "app", "k", "--to", rev)
	if out := ok("kv", "keys", "app"); out != "k\nn\n" {
		t.Fatalf("kv keys = %q", out)
	}
	if out := ok("kv", "history", "app", "k"); strings.Count(out, "PUT") != 3 {
		t.Fatalf("kv history = %q", out)
	}
	ok("kv", "del", "app", "n")
	ok("kv", "purge", "app", "n")
	ok("kv", "purge", "app", "--all")
	w := startKvsync(t, run{args: []string{"kv", "watch", "app", "-s", cli}})
	ok("kv", "put", "app", "w", "seen")
	for seen := false; !seen; {
		select {
		case line := <-w.lines:
			seen = strings.HasSuffix(line, "PUT w seen")
		case <-time.After(10 * time.Second):
			t.Fatalf("kv watch did not print the put; stderr:\n%s", w.stderr.String())
		}
	}
	ok("bucket", "rm", "app")

	// The watch-only user may read but not write, and is told so at once.
	ok("bucket", "add", "app")
	ok("kv", "put", "app", "w", "x")
	watch := ps.url("kvsync-watch")
	if out := mustKvsync(t, "kv", "get", "app", "w", "-s", watch); out != "x" {
		t.Fatalf("kv get as the watch-only user = %q", out)
	}
	_, errs, code := runKvsync(t, "kv", "put", "app", "k", "v", "-s", watch, "--timeout", "30s")
	if code != 1 || !strings.Contains(errs, `permission denied for publish to "$KV.app.k"`) || !strings.Contains(errs, `allow publish on "$KV.app.>"`) {
		t.Fatalf("kv put as the watch-only user: exit %d, stderr %q; want 1 and permission denied for publish to $KV.app.k", code, errs)
	}
	// A watch the server refuses ends at once, saying why (the fleet user
	// may read app but not make consumers on it).
	_, errs, code = runKvsync(t, "kv", "watch", "app", "-s", ps.url("kvsync-fleet"), "--timeout", "30s")
	if code != 1 || !strings.Contains(errs, `permission denied for publish to "$JS.API.CONSUMER.CREATE.KV_app`) {
		t.Fatalf("kv watch as the fleet user: exit %d, stderr %q; want 1 and permission denied for the consumer", code, errs)
	}
	_, errs, code = runKvsync(t, "bucket", "add", "other", "-s", watch, "--timeout", "30s")
	if code != 1 || !strings.Contains(errs, `permission denied for publish to "$JS.API.STREAM.`) {
		t.Fatalf("bucket add as the watch-only user: exit %d, stderr %q", code, errs)
	}

	// The nsc lines grant the same subjects as the conf block's watch user.
	sub := func(s, flag string) []string {
		var out []string
		for _, m := range regexp.MustCompile(flag+` '([^']*)'`).FindAllStringSubmatch(s, -1) {
			out = append(out, strings.Split(m[1], ",")...)
		}
		slices.Sort(out)
		return out
	}
	user := conf[strings.Index(conf, "user: kvsync-watch"):]
	user = user[:strings.Index(user, "user: kvsync-push")]
	allowed := func(dir string) []string {
		m := regexp.MustCompile(`(?s)` + dir + `:\s*{\s*allow:\s*\[([^\]]*)\]`).FindStringSubmatch(user)
		if m == nil {
			t.Fatalf("kvsync-watch has no %s allow list", dir)
		}
		var out []string
		for _, q := range regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(m[1], -1) {
			out = append(out, q[1])
		}
		slices.Sort(out)
		return out
	}
	if got, pubs := sub(sh, "--allow-pub"), allowed("publish"); !slices.Equal(got, pubs) {
		t.Fatalf("nsc --allow-pub = %v, the conf block's kvsync-watch publishes %v", got, pubs)
	}
	subs := allowed("subscribe")
	if got := sub(sh, "--allow-sub"); !slices.Equal(got, subs) {
		t.Fatalf("nsc --allow-sub = %v, the conf block's kvsync-watch subscribes %v", got, subs)
	}
}

// TestPermissionsDocFleet: the fleet status users of the doc, through the
// calls the fleet status code makes: the reporter opens or creates
// kvsync_status, writes and deletes its record; the reader watches and lists
// that bucket and reads a key of app. The server refuses nothing.
func TestPermissionsDocFleet(t *testing.T) {
	conf, _ := docBlocks(t)
	ps := startPermServer(t, conf)
	fillApp(t, ps.admin, 3, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	connect := func(user string) (jetstream.JetStream, *[]string) {
		var refused []string
		var mu sync.Mutex
		nc, err := nats.Connect(ps.url(user), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			defer mu.Unlock()
			refused = append(refused, err.Error())
		}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			if len(refused) > 0 {
				t.Errorf("user %s: the server refused %v", user, refused)
			}
		})
		return js, &refused
	}

	rep, _ := connect("kvsync-report")
	if _, err := rep.KeyValue(ctx, "kvsync_status"); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("open kvsync_status before it exists: %v", err)
	}
	st, err := rep.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "kvsync_status", History: 1, LimitMarkerTTL: 90 * time.Second})
	if err != nil {
		t.Fatalf("create kvsync_status as kvsync-report: %v", err)
	}
	if _, err := st.Status(ctx); err != nil {
		t.Fatalf("status of kvsync_status as kvsync-report: %v", err)
	}
	// The record goes out with a per-message TTL, published on the key's
	// subject (a KV put would drop the TTL).
	msg := &nats.Msg{Subject: "$KV.kvsync_status.host-1", Data: []byte(`{"id":"host-1"}`)}
	if _, err := rep.PublishMsg(ctx, msg, jetstream.WithMsgTTL(90*time.Second), jetstream.WithExpectStream("KV_kvsync_status")); err != nil {
		t.Fatalf("put the record as kvsync-report: %v", err)
	}
	if _, err := rep.KeyValue(ctx, "kvsync_status"); err != nil {
		t.Fatalf("open kvsync_status as kvsync-report: %v", err)
	}

	fl, _ := connect("kvsync-fleet")
	fst, err := fl.KeyValue(ctx, "kvsync_status")
	if err != nil {
		t.Fatal(err)
	}
	w, err := fst.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	got := map[string]string{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		got[e.Key()] = string(e.Value())
	}
	if got["host-1"] != `{"id":"host-1"}` {
		t.Fatalf("fleet watch of kvsync_status = %v", got)
	}
	if _, err := fst.Keys(ctx); err != nil {
		t.Fatal(err)
	}
	app, err := fl.KeyValue(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.Get(ctx, "big.0001"); err != nil {
		t.Fatal(err)
	}
	// A clean shutdown deletes the record (a purge marker that expires);
	// the reader sees it.
	if err := st.Purge(ctx, "host-1", jetstream.PurgeTTL(90*time.Second)); err != nil {
		t.Fatalf("delete the record as kvsync-report: %v", err)
	}
	select {
	case e := <-w.Updates():
		if e == nil || e.Key() != "host-1" || e.Operation() != jetstream.KeyValuePurge {
			t.Fatalf("after the delete the watch got %v", e)
		}
	case <-ctx.Done():
		t.Fatal("the fleet reader did not see the delete")
	}
}
