package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// edgeSite is examples/edge-site run as its README says: hub and leaf as
// separate nats-server processes from the example's own config files, on
// free ports and temp stores (the only things changed).
type edgeSite struct {
	dir       string // the copied example folder
	hub, leaf *testutil.NATSProc
}

// startEdgeSite copies examples/edge-site, rewrites the ports and store
// folders of hub.conf, leaf.conf and kvsync.yaml, and starts hub and leaf.
func startEdgeSite(t *testing.T) *edgeSite {
	t.Helper()
	e := &edgeSite{dir: copyExample(t, "edge-site")}
	hubPort, leafPort, linkPort := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	subst := strings.NewReplacer(
		"127.0.0.1:4222", fmt.Sprintf("127.0.0.1:%d", hubPort),
		"127.0.0.1:4223", fmt.Sprintf("127.0.0.1:%d", leafPort),
		"127.0.0.1:7422", fmt.Sprintf("127.0.0.1:%d", linkPort),
		"127.0.0.1:9336", fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		"./data/hub", filepath.Join(t.TempDir(), "hub"),
		"./data/edge", filepath.Join(t.TempDir(), "edge"),
	)
	for _, name := range []string{"hub.conf", "leaf.conf", "kvsync.yaml"} {
		path := filepath.Join(e.dir, name)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out := subst.Replace(string(b))
		if out == string(b) {
			t.Fatalf("%s: nothing to substitute: the test no longer matches the example", name)
		}
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start := func(port int, conf string) *testutil.NATSProc {
		return testutil.StartNATSProcArgs(t, port, "-c", filepath.Join(e.dir, conf))
	}
	e.hub = start(hubPort, "hub.conf")
	e.leaf = start(leafPort, "leaf.conf")
	return e
}

// linked waits until the leaf reaches the hub's JetStream (up) or no longer
// does (down).
func (e *edgeSite) linked(t *testing.T, up bool, timeout time.Duration) {
	t.Helper()
	nc, err := nats.Connect(e.leaf.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.NewWithDomain(nc, "hub")
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		if got := err == nil; got != up {
			return fmt.Errorf("leaf reaches the hub: %v, want %v (%v)", got, up, err)
		}
		return nil
	})
}

// edgeStatus is the part of GET /status that shows a mirror.
type edgeStatus struct {
	Ready   bool `json:"ready"`
	Buckets []struct {
		Name   string `json:"name"`
		Mirror *struct {
			Origin      string    `json:"origin"`
			Domain      string    `json:"domain"`
			Lag         uint64    `json:"lag"`
			LastContact string    `json:"last_contact"`
			Error       string    `json:"error"`
			AsOf        time.Time `json:"as_of"`
		} `json:"mirror"`
	} `json:"buckets"`
}

// TestEdgeSite: an agent on a leaf node follows a mirror of the hub's bucket.
// Hub puts reach its files; its writes (`kv put` on the leaf, push-back) reach
// the hub's bucket; with the hub killed it stays up, ready, files intact; after
// the hub's restart new puts reach it again, once the mirror resumes.
func TestEdgeSite(t *testing.T) {
	e := startEdgeSite(t)
	hubURL, leafURL := e.hub.URL(), e.leaf.URL()
	mustKvsync(t, "bucket", "add", "app", "--history", "5", "-s", hubURL)
	mustKvsync(t, "kv", "put", "app", "greeting", "hello", "-s", hubURL)
	start := time.Now()
	// A mirror made before the link is up starts only after a long retry
	// backoff of the server: wait for the link first.
	e.linked(t, true, 15*time.Second)
	out := mustKvsync(t, "bucket", "add", "app", "--mirror", "app", "--mirror-domain", "hub", "--history", "5", "-s", leafURL)
	if want := "bucket app created (a mirror of app in domain hub)\n"; out != want {
		t.Fatalf("bucket add --mirror=%q, want %q", out, want)
	}

	cfg := filepath.Join(e.dir, "kvsync.yaml")
	a := runAgentConfig(t, cfg, agentListen(t, cfg))
	files := filepath.Join(e.dir, "out", "files")
	waitFile(t, filepath.Join(files, "greeting"), []byte("hello"), start, 20*time.Second)
	a.waitReady(t, 10*time.Second)
	// A live put at the hub reaches the site's file (on a loaded machine
	// this is where time goes: the figure is logged, not asserted).
	put := time.Now()
	mustKvsync(t, "kv", "put", "app", "live", "now", "-s", hubURL)
	t.Logf("hub put (a kvsync process) -> file at the site: %v", waitFile(t, filepath.Join(files, "live"), []byte("now"), put, 10*time.Second))

	st := edgeAgentStatus(t, a)
	if len(st.Buckets) != 1 || st.Buckets[0].Mirror == nil {
		t.Fatalf("/status buckets=%+v, want app as a mirror", st.Buckets)
	}
	if m := st.Buckets[0].Mirror; m.Origin != "app" || m.Domain != "hub" || m.LastContact == "" || m.Error != "" {
		t.Fatalf("/status mirror=%+v, want origin app in domain hub, in contact", m)
	}

	// Writes at the edge go to the hub's bucket.
	hnc, hjs := testutil.ConnectRetrying(t, hubURL)
	_ = hnc
	hub, err := hjs.KeyValue(context.Background(), "app")
	if err != nil {
		t.Fatal(err)
	}
	atHub := func(key, want string) {
		t.Helper()
		testutil.CheckFor(t, 10*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			en, err := hub.Get(ctx, key)
			if err != nil {
				return err
			}
			if string(en.Value()) != want {
				return fmt.Errorf("hub %s=%q, want %q", key, en.Value(), want)
			}
			return nil
		})
	}
	mustKvsync(t, "kv", "put", "app", "from-leaf", "cli", "-s", leafURL)
	atHub("from-leaf", "cli")
	waitFile(t, filepath.Join(files, "from-leaf"), []byte("cli"), time.Now(), 10*time.Second)
	// Push-back: a new file and an edit (compare-and-set on the revision the
	// agent got through the mirror).
	if err := os.WriteFile(filepath.Join(files, "local"), []byte("made at the edge"), 0o644); err != nil {
		t.Fatal(err)
	}
	atHub("local", "made at the edge")
	if err := os.WriteFile(filepath.Join(files, "greeting"), []byte("edited at the edge"), 0o644); err != nil {
		t.Fatal(err)
	}
	atHub("greeting", "edited at the edge")
	waitFile(t, filepath.Join(files, "greeting"), []byte("edited at the edge"), time.Now(), 5*time.Second)
	if a.metric(t, "kvsync_push_conflicts_total") != 0 {
		t.Fatalf("push-back through the mirror made conflicts:\n%s", a.stderr.String())
	}

	// The hub dies: the site keeps serving.
	before, err := dirState(files)
	if err != nil {
		t.Fatal(err)
	}
	e.hub.Kill(t)
	e.linked(t, false, 10*time.Second)
	a.waitReady(t, 5*time.Second)
	a.alive(t)
	after, err := dirState(files)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameState(after, before); err != nil {
		t.Fatalf("files changed with the hub down: %v", err)
	}

	// The hub is back: a new put reaches the site once the mirror resumes,
	// which the leaf's server does on its own retry backoff (about 15 s).
	restarted := time.Now()
	e.hub.Start(t)
	rev, _ := putRetrying(t, hub, "greeting", []byte("after the restart"), 10*time.Second)
	waitFile(t, filepath.Join(files, "greeting"), []byte("after the restart"), time.Now(), 30*time.Second)
	t.Logf("hub restarted: the put reached the site's file %v later", time.Since(restarted).Round(100*time.Millisecond))
	a.alive(t)
	testutil.CheckFor(t, 5*time.Second, func() error {
		st := edgeAgentStatus(t, a)
		if m := st.Buckets[0].Mirror; m == nil || m.Lag != 0 || m.Error != "" {
			return fmt.Errorf("/status mirror=%+v, want caught up (lag 0) after revision %d", m, rev)
		}
		return nil
	})
}

// agentListen is the http.listen address of a kvsync config file.
func agentListen(t *testing.T, cfg string) string {
	t.Helper()
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "listen:"); ok {
			return strings.TrimSpace(strings.SplitN(v, "#", 2)[0])
		}
	}
	t.Fatalf("%s: no http listen address", cfg)
	return ""
}

func edgeAgentStatus(t *testing.T, a *agentProc) edgeStatus {
	t.Helper()
	_, body, err := a.get("/status")
	if err != nil {
		t.Fatal(err)
	}
	var st edgeStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	return st
}
