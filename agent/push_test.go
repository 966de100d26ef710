package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
	"github.com/kvsync/kvsync/projector"
)

// pushEnv is a server, a bucket "app" and an agent pushing dir back.
type pushEnv struct {
	s   *server.Server
	kv  jetstream.KeyValue
	dir string
	cfg *Config
	ag  *runningAgent
}

// startPush starts a server with bucket app (history 64), puts initial, and
// starts an agent projecting app into a fresh folder with push-back on;
// edit changes the config before the start.
func startPush(t *testing.T, initial map[string]string, bcfg jetstream.KeyValueConfig, edit func(*FilesConfig)) *pushEnv {
	t.Helper()
	s := testutil.RunServer(t, nil)
	bcfg.Bucket, bcfg.History = "app", 64
	_, kv := testKV(t, s, bcfg)
	for k, v := range initial {
		put(t, kv, k, v)
	}
	dir := t.TempDir()
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.Files[0].Push = PushConfig{Enabled: true}
	if edit != nil {
		edit(&cfg.Files[0])
	}
	ag := startAgent(t, cfg, Options{})
	for k, v := range initial {
		testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, filepath.FromSlash(k)), v))
	}
	return &pushEnv{s: s, kv: kv, dir: dir, cfg: cfg, ag: ag}
}

func (e *pushEnv) path(rel string) string { return filepath.Join(e.dir, filepath.FromSlash(rel)) }

func (e *pushEnv) write(t *testing.T, rel, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(e.path(rel)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.path(rel), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replace saves like most editors: a temp file, renamed over the target.
func (e *pushEnv) replace(t *testing.T, rel, data string) {
	t.Helper()
	tmp := e.path(rel) + "~"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, e.path(rel)); err != nil {
		t.Fatal(err)
	}
}

// valueIs polls for the bucket holding want at key.
func (e *pushEnv) valueIs(key, want string) func() error {
	return func() error {
		ent, err := e.kv.Get(context.Background(), key)
		if err != nil {
			return fmt.Errorf("get %s: %w", key, err)
		}
		if got := string(ent.Value()); got != want {
			return fmt.Errorf("bucket holds %q at %s, want %q", got, key, want)
		}
		return nil
	}
}

// history returns the values of every revision of key, oldest first.
func (e *pushEnv) history(t *testing.T, key string) []string {
	t.Helper()
	hist, err := e.kv.History(context.Background(), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("history %s: %v", key, err)
	}
	var out []string
	for _, h := range hist {
		if h.Operation() == jetstream.KeyValuePut {
			out = append(out, string(h.Value()))
		} else {
			out = append(out, "<"+h.Operation().String()+">")
		}
	}
	return out
}

// conflicts returns the contents of the conflict files saved for rel.
func (e *pushEnv) conflicts(t *testing.T, rel string) []string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(e.dir, ".kvsync", "conflicts", filepath.FromSlash(rel)) + ".*")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

var barriers atomic.Int64

// barrier creates a new local file and waits until the bucket has it. Jobs
// run in order and a later event settles later, so every local change made
// before the barrier has been pushed (or judged not to need it) by then.
func (e *pushEnv) barrier(t *testing.T) {
	t.Helper()
	n := barriers.Add(1)
	key := fmt.Sprintf("zz-barrier-%d", n)
	e.write(t, key, key)
	testutil.CheckFor(t, 10*time.Second, e.valueIs(key, key))
}

func (e *pushEnv) lastError() string {
	st := e.ag.Status()
	if len(st.Projections) == 0 {
		return ""
	}
	return st.Projections[0].LastError
}

// logged reports whether one line of logs holds every part.
func logged(logs string, parts ...string) bool {
	for _, line := range strings.Split(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func TestEditorTempNames(t *testing.T) {
	for _, tc := range []struct {
		rel  string
		skip bool
	}{
		{"app.conf", false},
		{"sub/app.conf", false},
		{"4913", true},
		{"sub/4913", true},
		{".app.conf.swp", true},
		{".app.conf.swo", true},
		{".app.conf.swx", true},
		{"app.conf~", true},
		{".#app.conf", true},
		{"#app.conf#", true},
		{"app.conf___jb_tmp___", true},
		{".kvsync-tmp-abc", true},
		{"sub/.kvsync-tmp-abc", true},
		{".kvsync/manifest", true},
		{"..data/app.conf", true},
		{"x.sw", false},
		{"#notes", false},
		{"8080", false},
	} {
		if got, want := skipPath(tc.rel), tc.skip; got != want {
			t.Fatalf("skipPath(%q)=%v, want %v", tc.rel, got, want)
		}
	}
}

// TestPushPathKeyRoundTrip checks that the key a local file is pushed to is the
// key kvsync projects to that file.
func TestPushPathKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		key, strip string
		layout     projector.Layout
		rel        string
	}{
		{"app.conf", "", projector.Flat, "app.conf"},
		{"a/b/c.conf", "", projector.Flat, "a/b/c.conf"},
		{"cfg/a/b", "cfg/", projector.Flat, "a/b"},
		{"cfg.a.b", "cfg.", projector.Tree, "a/b"},
		{"a.b.c", "", projector.Tree, "a/b/c"},
		{"x_y-z=1", "", projector.Tree, "x_y-z=1"},
	} {
		rel, err := projector.KeyPath(tc.key, tc.strip, tc.layout)
		if err != nil {
			t.Fatalf("KeyPath(%q): %v", tc.key, err)
		}
		if got, want := rel, tc.rel; got != want {
			t.Fatalf("KeyPath(%q)=%q, want %q", tc.key, got, want)
		}
		key, err := projector.PathKey(rel, tc.strip, tc.layout)
		if err != nil {
			t.Fatalf("PathKey(%q): %v", rel, err)
		}
		if got, want := key, tc.key; got != want {
			t.Fatalf("PathKey(KeyPath(%q))=%q", tc.key, got)
		}
	}
}

func TestPushEditorSavePatterns(t *testing.T) {
	e := startPush(t, nil, jetstream.KeyValueConfig{}, nil)
	for _, tc := range []struct {
		name string
		save func(t *testing.T, rel string) string // returns the content now in rel
	}{
		{"in-place", func(t *testing.T, rel string) string {
			e.write(t, rel, "in place\n")
			return "in place\n"
		}},
		{"two-writes", func(t *testing.T, rel string) string { // truncate, then write in pieces
			f, err := os.OpenFile(e.path(rel), os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"first half, ", "second half\n"} {
				if _, err := f.WriteString(s); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			return "first half, second half\n"
		}},
		{"append", func(t *testing.T, rel string) string {
			f, err := os.OpenFile(e.path(rel), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("more\n"); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			return "v1\nmore\n"
		}},
		{"vim", func(t *testing.T, rel string) string {
			swp := filepath.Join(e.dir, "."+rel+".swp")
			e.write(t, "."+rel+".swp", "swap")
			e.write(t, "4913", "")
			if err := os.Remove(e.path("4913")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(e.path(rel), e.path(rel+"~")); err != nil {
				t.Fatal(err)
			}
			e.write(t, rel, "vim\n")
			if err := os.Remove(e.path(rel + "~")); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(swp); err != nil {
				t.Fatal(err)
			}
			return "vim\n"
		}},
		{"sed", func(t *testing.T, rel string) string {
			e.write(t, "sedX1b2c3", "sed\n")
			if err := os.Rename(e.path("sedX1b2c3"), e.path(rel)); err != nil {
				t.Fatal(err)
			}
			return "sed\n"
		}},
		{"emacs", func(t *testing.T, rel string) string {
			if err := os.Symlink("user@host.123:456", e.path(".#"+rel)); err != nil {
				t.Fatal(err)
			}
			e.write(t, "#"+rel+"#", "autosave")
			if err := os.Rename(e.path(rel), e.path(rel+"~")); err != nil {
				t.Fatal(err)
			}
			e.write(t, rel, "emacs\n")
			for _, n := range []string{".#" + rel, "#" + rel + "#"} {
				if err := os.Remove(e.path(n)); err != nil {
					t.Fatal(err)
				}
			}
			return "emacs\n"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rel := "ed-" + tc.name + ".conf"
			put(t, e.kv, rel, "v1\n")
			testutil.CheckFor(t, 5*time.Second, fileIs(e.path(rel), "v1\n"))
			want := tc.save(t, rel)
			saved, err := os.Stat(e.path(rel))
			if err != nil {
				t.Fatal(err)
			}
			testutil.CheckFor(t, 5*time.Second, e.valueIs(rel, want))
			e.barrier(t)
			// The pushed value coming back is not written again: the file is
			// still the one the editor saved.
			now, err := os.Stat(e.path(rel))
			if err != nil {
				t.Fatal(err)
			}
			if !os.SameFile(saved, now) {
				t.Fatalf("%s was replaced after the push", rel)
			}
			if got, want := e.history(t, rel), []string{"v1\n", want}; !slices.Equal(got, want) {
				t.Fatalf("history of %s = %q, want %q", rel, got, want)
			}
			if got := e.conflicts(t, rel); len(got) != 0 {
				t.Fatalf("conflict files for %s: %q", rel, got)
			}
		})
	}
	lister, err := e.kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for k := range lister.Keys() {
		if !strings.HasPrefix(k, "ed-") && !strings.HasPrefix(k, "zz-barrier-") || strings.HasSuffix(k, "~") {
			t.Fatalf("editor temp file pushed as key %q", k)
		}
	}
	if got := e.lastError(); got != "" {
		t.Fatalf("last error %q, want none", got)
	}
}

func TestPushNewFilesAndFolders(t *testing.T) {
	e := startPush(t, map[string]string{"old.conf": "old"}, jetstream.KeyValueConfig{}, nil)
	e.write(t, "new.conf", "local")
	testutil.CheckFor(t, 5*time.Second, e.valueIs("new.conf", "local"))
	e.write(t, "sub/deeper/x.conf", "deep")
	testutil.CheckFor(t, 5*time.Second, e.valueIs("sub/deeper/x.conf", "deep"))

	// The pushed files are kvsync's now: a remote change replaces them.
	put(t, e.kv, "new.conf", "remote")
	testutil.CheckFor(t, 5*time.Second, fileIs(e.path("new.conf"), "remote"))
	put(t, e.kv, "sub/deeper/x.conf", "remote deep")
	testutil.CheckFor(t, 5*time.Second, fileIs(e.path("sub/deeper/x.conf"), "remote deep"))
	e.barrier(t)
	if got, want := e.history(t, "new.conf"), []string{"local", "remote"}; !slices.Equal(got, want) {
		t.Fatalf("history = %q, want %q", got, want)
	}
	if got := metricValue(t, e.ag, `kvsync_pushes_total{op="create",projection="files"}`); got < 2 {
		t.Fatalf("creates counted: %v, want >= 2", got)
	}
	if got := metricValue(t, e.ag, `kvsync_errors_total{kind="foreign",projection="files"}`); got != 0 {
		t.Fatalf("foreign-file errors: %v, want 0", got)
	}
}

func TestPushDelete(t *testing.T) {
	for _, tc := range []struct {
		name   string
		delete bool
	}{
		{"push.delete on", true},
		{"push.delete off", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startPush(t, map[string]string{"gone.conf": "x", "sub/f": "y"}, jetstream.KeyValueConfig{}, func(f *FilesConfig) {
				f.Push.Delete = tc.delete
			})
			if err := os.Remove(e.path("gone.conf")); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(e.path("sub")); err != nil {
				t.Fatal(err)
			}
			if tc.delete {
				for _, k := range []string{"gone.conf", "sub/f"} {
					testutil.CheckFor(t, 5*time.Second, func() error {
						_, err := e.kv.Get(context.Background(), k)
						if !errors.Is(err, jetstream.ErrKeyNotFound) {
							return fmt.Errorf("get %s: %v, want not found", k, err)
						}
						return nil
					})
				}
				return
			}
			e.barrier(t)
			if err := e.valueIs("gone.conf", "x")(); err != nil {
				t.Fatal(err)
			}
			if err := e.valueIs("sub/f", "y")(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPushTreeLayout(t *testing.T) {
	e := startPush(t, nil, jetstream.KeyValueConfig{}, func(f *FilesConfig) {
		f.Layout, f.StripPrefix, f.Keys = LayoutTree, "cfg.", []string{"cfg.>"}
	})
	put(t, e.kv, "cfg.a.b", "v1")
	testutil.CheckFor(t, 5*time.Second, fileIs(e.path("a/b"), "v1"))
	e.replace(t, "a/b", "v2")
	testutil.CheckFor(t, 5*time.Second, e.valueIs("cfg.a.b", "v2"))
	e.write(t, "a/c", "new")
	testutil.CheckFor(t, 5*time.Second, e.valueIs("cfg.a.c", "new"))
}

// TestPushNoEcho: kvsync's own writes, even in a burst, add no revision.
func TestPushNoEcho(t *testing.T) {
	e := startPush(t, nil, jetstream.KeyValueConfig{}, nil)
	const n = 40
	for i := range n {
		put(t, e.kv, "burst.conf", fmt.Sprintf("remote %d", i))
	}
	testutil.CheckFor(t, 5*time.Second, fileIs(e.path("burst.conf"), fmt.Sprintf("remote %d", n-1)))
	e.barrier(t)
	if got, want := len(e.history(t, "burst.conf")), n; got != want {
		t.Fatalf("history has %d revisions, want %d (the remote puts only)", got, want)
	}
	if got := metricValue(t, e.ag, `kvsync_pushes_total{op="update",projection="files"}`); got != 0 {
		t.Fatalf("updates pushed: %v, want 0", got)
	}
}

func TestPushConflict(t *testing.T) {
	for _, tc := range []struct {
		policy string
		owned  bool // the local file is one kvsync wrote (else a new local file)
	}{
		{ConflictKeepRemote, true},
		{ConflictKeepLocal, true},
		{ConflictKeepRemote, false},
		{ConflictKeepLocal, false},
	} {
		t.Run(fmt.Sprintf("%s owned=%v", tc.policy, tc.owned), func(t *testing.T) {
			initial := map[string]string{}
			rel := "c.conf"
			if tc.owned {
				rel = "sub/c.conf" // conflict files keep the sub-folders
				initial[rel] = "base"
			}
			e := startPush(t, initial, jetstream.KeyValueConfig{}, func(f *FilesConfig) {
				f.Push.Conflict = tc.policy
				f.Push.Debounce = 500 * time.Millisecond // the remote put comes first
			})
			e.replace(t, rel, "local")
			put(t, e.kv, rel, "remote")
			switch tc.policy {
			case ConflictKeepRemote:
				testutil.CheckFor(t, 10*time.Second, func() error {
					if got := e.conflicts(t, rel); !slices.Equal(got, []string{"local"}) {
						return fmt.Errorf("conflict files hold %q", got)
					}
					return fileIs(e.path(rel), "remote")()
				})
				e.barrier(t)
				if err := e.valueIs(rel, "remote")(); err != nil {
					t.Fatal(err)
				}
			case ConflictKeepLocal:
				testutil.CheckFor(t, 10*time.Second, e.valueIs(rel, "local"))
				testutil.CheckFor(t, 5*time.Second, fileIs(e.path(rel), "local"))
				if got := e.conflicts(t, rel); len(got) != 0 {
					t.Fatalf("conflict files: %q", got)
				}
			}
			if got := metricValue(t, e.ag, fmt.Sprintf(`kvsync_push_conflicts_total{policy=%q,projection="files"}`, tc.policy)); got != 1 {
				t.Fatalf("conflicts counted: %v, want 1", got)
			}
			if !logged(e.ag.logs.String(), "level=WARN", "push conflict") {
				t.Fatalf("no WARN log of the conflict")
			}
			// Still in step afterwards: a remote change lands, a local one is pushed.
			put(t, e.kv, rel, "remote 2")
			testutil.CheckFor(t, 5*time.Second, fileIs(e.path(rel), "remote 2"))
			e.write(t, rel, "local 2")
			testutil.CheckFor(t, 5*time.Second, e.valueIs(rel, "local 2"))
		})
	}
}

func TestPushRefused(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(outside, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := startPush(t, map[string]string{"ok.small": "s"}, jetstream.KeyValueConfig{MaxValueSize: 1024}, func(f *FilesConfig) {
		f.Keys = []string{"ok.>"}
	})
	for _, tc := range []struct {
		rel  string
		make func(t *testing.T, rel string)
		why  string
	}{
		{"ok.big", func(t *testing.T, rel string) { e.write(t, rel, strings.Repeat("x", 2000)) }, "max value size"},
		{"ok.edge", func(t *testing.T, rel string) { e.write(t, rel, strings.Repeat("x", 1024-100)) }, "max value size"},
		{"ok.small", func(t *testing.T, rel string) { e.write(t, rel, strings.Repeat("y", 1500)) }, "max value size"},
		{"ok.bad name", func(t *testing.T, rel string) { e.write(t, rel, "v") }, "not a valid key"},
		{"other.conf", func(t *testing.T, rel string) { e.write(t, rel, "v") }, "outside the projection's keys"},
		{"ok.link", func(t *testing.T, rel string) {
			if err := os.Symlink(outside, e.path(rel)); err != nil {
				t.Fatal(err)
			}
		}, "symlink"},
		{"ok.fifo", func(t *testing.T, rel string) {
			if err := syscall.Mkfifo(e.path(rel), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	} {
		t.Run(tc.rel, func(t *testing.T) {
			before := metricValue(t, e.ag, `kvsync_errors_total{kind="push",projection="files"}`)
			tc.make(t, tc.rel)
			testutil.CheckFor(t, 5*time.Second, func() error {
				if le := e.lastError(); !strings.Contains(le, tc.rel) || !strings.Contains(le, tc.why) {
					return fmt.Errorf("last error %q", le)
				}
				return nil
			})
			if got := metricValue(t, e.ag, `kvsync_errors_total{kind="push",projection="files"}`); got != before+1 {
				t.Fatalf("push errors %v, want %v", got, before+1)
			}
			if !logged(e.ag.logs.String(), "level=ERROR", "local change not pushed", fmt.Sprintf("path=%q", tc.rel)) &&
				!logged(e.ag.logs.String(), "level=ERROR", "local change not pushed", "path="+tc.rel+" ") {
				t.Fatalf("no ERROR log for %s", tc.rel)
			}
			if _, err := os.Lstat(e.path(tc.rel)); err != nil {
				t.Fatalf("local file not kept: %v", err)
			}
		})
	}
	for _, k := range []string{"ok.big", "ok.edge", "ok.link", "ok.fifo"} {
		if _, err := e.kv.Get(context.Background(), k); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("get %s: %v, want not found", k, err)
		}
	}
	if err := e.valueIs("ok.small", "s")(); err != nil {
		t.Fatal(err)
	}
}

// TestPushWhileDisconnected: an edit made while the server is down is pushed,
// guarded, once it is back.
func TestPushWhileDisconnected(t *testing.T) {
	e := startPush(t, map[string]string{"d.conf": "v1"}, jetstream.KeyValueConfig{}, nil)
	port := e.s.Addr().(*net.TCPAddr).Port
	store := filepath.Dir(e.s.StoreDir())
	e.s.Shutdown()
	e.s.WaitForShutdown()

	e.replace(t, "d.conf", "edited offline")
	testutil.CheckFor(t, 15*time.Second, func() error {
		if !strings.Contains(e.ag.logs.String(), "push postponed") {
			return errors.New("no postponed push logged yet")
		}
		return nil
	})

	s := testutil.RunServer(t, func(o *server.Options) { o.Port, o.StoreDir = port, store })
	_, kv := reopenKV(t, s, "app")
	e.kv = kv
	testutil.CheckFor(t, 20*time.Second, e.valueIs("d.conf", "edited offline"))
	if got, want := e.history(t, "d.conf"), []string{"v1", "edited offline"}; !slices.Equal(got, want) {
		t.Fatalf("history = %q, want %q", got, want)
	}
	if got := e.conflicts(t, "d.conf"); len(got) != 0 {
		t.Fatalf("conflict files: %q", got)
	}
}

// TestPushStress races a remote put against a local edit of the same key,
// round after round: every local edit ends in the bucket's history or in a
// conflict file, and the file ends equal to the bucket.
func TestPushStress(t *testing.T) {
	const rounds = 25
	for _, policy := range []string{ConflictKeepRemote, ConflictKeepLocal} {
		t.Run(policy, func(t *testing.T) {
			e := startPush(t, map[string]string{"s.conf": "start"}, jetstream.KeyValueConfig{}, func(f *FilesConfig) {
				f.Push.Conflict = policy
			})
			saved := func(local string) bool {
				return slices.Contains(e.history(t, "s.conf"), local) || slices.Contains(e.conflicts(t, "s.conf"), local)
			}
			for i := range rounds {
				local, remote := fmt.Sprintf("local %d", i), fmt.Sprintf("remote %d", i)
				if i%2 == 0 {
					e.replace(t, "s.conf", local)
				} else {
					e.write(t, "s.conf", local)
				}
				put(t, e.kv, "s.conf", remote)
				testutil.CheckFor(t, 20*time.Second, func() error {
					if !saved(local) {
						return fmt.Errorf("round %d: %q neither in the history nor in a conflict file", i, local)
					}
					ent, err := e.kv.Get(context.Background(), "s.conf")
					if err != nil {
						return err
					}
					return fileIs(e.path("s.conf"), string(ent.Value()))()
				})
			}
			for i := range rounds {
				if local := fmt.Sprintf("local %d", i); !saved(local) {
					t.Fatalf("%q lost", local)
				}
			}
			e.barrier(t)
			ent, err := e.kv.Get(context.Background(), "s.conf")
			if err != nil {
				t.Fatal(err)
			}
			testutil.CheckFor(t, 5*time.Second, fileIs(e.path("s.conf"), string(ent.Value())))
			testutil.CheckFor(t, 5*time.Second, func() error {
				if left, _ := filepath.Glob(filepath.Join(e.dir, ".kvsync-tmp-*")); len(left) != 0 {
					return fmt.Errorf("temp files left: %q", left)
				}
				return nil
			})
		})
	}
}

// TestPushEditsWhileStopped: edits made while kvsync was not running are
// pushed at the next start, guarded by what the bucket held when kvsync wrote
// the file; if the bucket moved on meanwhile, that is a conflict.
func TestPushEditsWhileStopped(t *testing.T) {
	for _, tc := range []struct {
		name          string
		remoteChanged bool
	}{
		{"bucket unchanged", false},
		{"bucket changed too", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startPush(t, map[string]string{"w.conf": "v1"}, jetstream.KeyValueConfig{}, nil)
			if err := e.ag.stop(); err != nil {
				t.Fatal(err)
			}
			e.replace(t, "w.conf", "edited while stopped")
			e.write(t, "fresh.conf", "made while stopped")
			if tc.remoteChanged {
				put(t, e.kv, "w.conf", "remote while stopped")
			}
			e.ag = startAgent(t, e.cfg, Options{})
			testutil.CheckFor(t, 5*time.Second, e.valueIs("fresh.conf", "made while stopped"))
			if !tc.remoteChanged {
				testutil.CheckFor(t, 5*time.Second, e.valueIs("w.conf", "edited while stopped"))
				testutil.CheckFor(t, 5*time.Second, fileIs(e.path("w.conf"), "edited while stopped"))
				return
			}
			testutil.CheckFor(t, 5*time.Second, func() error {
				if got := e.conflicts(t, "w.conf"); !slices.Equal(got, []string{"edited while stopped"}) {
					return fmt.Errorf("conflict files hold %q", got)
				}
				return fileIs(e.path("w.conf"), "remote while stopped")()
			})
			if err := e.valueIs("w.conf", "remote while stopped")(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
