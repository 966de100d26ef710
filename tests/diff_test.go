package tests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/testutil"
)

// diffReport is the JSON `kvsync diff --json` prints.
type diffReport struct {
	InSync bool `json:"in_sync"`
	Files  []struct {
		Projection string `json:"projection"`
		Kind       string `json:"kind"`
		Path       string `json:"path"`
		Key        string `json:"key"`
		Status     string `json:"status"`
		Diff       string `json:"diff"`
		Error      string `json:"error"`
	} `json:"files"`
}

// writeDiffConfig writes a config with a files projection into <root>/conf, a
// template to <root>/app.conf and an env file <root>/flags.env, all relative
// to the config file.
func writeDiffConfig(t *testing.T, root, url string) string {
	t.Helper()
	cfg := `nats: {url: "` + url + `"}
http: {listen: ""}
files:
  - {name: conf, bucket: app, keys: ["conf.>"], strip_prefix: "conf.", layout: tree, dir: ./conf}
templates:
  - {name: app, bucket: app, dest: ./app.conf, text: "host={{ key \"host\" }}\n"}
env:
  - {name: flags, bucket: app, keys: ["flag.>"], strip_prefix: "flag.", prefix: "FLAG_", file: ./flags.env}
`
	path := filepath.Join(root, "kvsync.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDiff(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 5)
	ctx := context.Background()
	put := func(k, v string) {
		t.Helper()
		if _, err := kv.Put(ctx, k, []byte(v)); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	put("conf.a", "alpha\n")
	put("conf.sub.b", "beta\n")
	put("conf.c", "gamma\n")
	put("host", "db1")
	put("flag.dark", "on")
	root := t.TempDir()
	cfg := writeDiffConfig(t, root, s.ClientURL())
	conf := func(p string) string { return filepath.Join(root, "conf", filepath.FromSlash(p)) }

	// Nothing projected yet: everything is to be added.
	out, errs, code := runKvsync(t, "diff", "-c", cfg)
	if got, want := code, 1; got != want {
		t.Fatalf("diff before run: exit=%d, want %d; stderr:\n%s", got, want, errs)
	}
	for _, want := range []string{"added    " + conf("a"), conf("sub/b"), filepath.Join(root, "app.conf"),
		filepath.Join(root, "flags.env"), "+alpha", "+host=db1", "+FLAG_DARK='on'", "5 files differ"} {
		if !strings.Contains(out, want) {
			t.Fatalf("diff before run: output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "conf")); err == nil {
		t.Fatalf("diff created the projection folder")
	}

	// Projected: in sync.
	if _, errs, code := runKvsync(t, "run", "--once", "-c", cfg); code != 0 {
		t.Fatalf("run --once: exit=%d; stderr:\n%s", code, errs)
	}
	out, errs, code = runKvsync(t, "diff", "-c", cfg)
	if got, want := code, 0; got != want {
		t.Fatalf("diff after run: exit=%d, want %d; stdout:\n%s\nstderr:\n%s", got, want, out, errs)
	}
	if got, want := out, "in sync\n"; got != want {
		t.Fatalf("diff after run: output %q, want %q", got, want)
	}

	// The buckets move on, and someone writes into the folder.
	put("conf.a", "ALPHA\n")
	if err := kv.Delete(ctx, "conf.c"); err != nil {
		t.Fatal(err)
	}
	put("conf.d", "delta\n")
	put("host", "db2")
	for p, v := range map[string]string{"d": "by hand\n", "notes.txt": "by hand\n"} {
		if err := os.WriteFile(conf(p), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, errs, code = runKvsync(t, "diff", "-c", cfg)
	if got, want := code, 1; got != want {
		t.Fatalf("diff after changes: exit=%d, want %d; stderr:\n%s", got, want, errs)
	}
	for _, want := range []string{
		"changed  " + conf("a") + "  (files conf, app:conf.a)\n--- " + conf("a") + "\n+++ app:conf.a\n@@ -1 +1 @@\n-alpha\n+ALPHA\n",
		"missing  " + conf("c"), "key gone",
		"foreign  " + conf("d"), "would not be overwritten",
		"changed  " + filepath.Join(root, "app.conf"), "-host=db1\n+host=db2\n",
		"4 files differ",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("diff after changes: output lacks %q:\n%s", want, out)
		}
	}
	for _, unwanted := range []string{"notes.txt", "flags.env", conf("sub/b")} {
		if strings.Contains(out, unwanted) {
			t.Fatalf("diff after changes: output mentions %q:\n%s", unwanted, out)
		}
	}

	t.Run("all", func(t *testing.T) {
		out, _, code := runKvsync(t, "diff", "-c", cfg, "--all")
		if got, want := code, 1; got != want {
			t.Fatalf("exit=%d, want %d", got, want)
		}
		if want := "foreign  " + conf("notes.txt") + "  (files conf): not written by kvsync, no key maps here"; !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	})
	t.Run("quiet", func(t *testing.T) {
		out, _, code := runKvsync(t, "diff", "-q", "-c", cfg)
		if got, want := code, 1; got != want {
			t.Fatalf("exit=%d, want %d", got, want)
		}
		if strings.Contains(out, "@@") || !strings.Contains(out, "changed  "+conf("a")) {
			t.Fatalf("-q output should list files without diffs:\n%s", out)
		}
	})
	t.Run("json", func(t *testing.T) {
		out, _, code := runKvsync(t, "diff", "--json", "-c", cfg)
		if got, want := code, 1; got != want {
			t.Fatalf("exit=%d, want %d", got, want)
		}
		var rep diffReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
		if rep.InSync {
			t.Fatalf("in_sync=true, want false")
		}
		got := map[string]string{}
		for _, f := range rep.Files {
			got[f.Path] = f.Status + " " + f.Key
		}
		want := map[string]string{
			conf("a"):                       "changed conf.a",
			conf("c"):                       "missing conf.c",
			conf("d"):                       "foreign conf.d",
			filepath.Join(root, "app.conf"): "changed ",
		}
		if len(got) != len(want) {
			t.Fatalf("files %v, want %v", got, want)
		}
		for p, w := range want {
			if got[p] != w {
				t.Fatalf("files %v, want %v", got, want)
			}
		}
	})
	t.Run("template error", func(t *testing.T) {
		if err := kv.Delete(ctx, "host"); err != nil {
			t.Fatal(err)
		}
		out, _, code := runKvsync(t, "diff", "-c", cfg)
		if got, want := code, 1; got != want {
			t.Fatalf("exit=%d, want %d", got, want)
		}
		if want := "error    " + filepath.Join(root, "app.conf") + "  (template app): render: missing keys [app:host]"; !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	})
}

func TestDiffUsage(t *testing.T) {
	s := testutil.RunServer(t, nil)
	root := t.TempDir()
	good := writeDiffConfig(t, root, s.ClientURL())
	bad := filepath.Join(root, "bad.yaml")
	if err := os.WriteFile(bad, []byte("files:\n  - {bucket: app}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(t.TempDir(), "dead.yaml")
	if err := os.WriteFile(dead, []byte("nats: {url: \""+deadURL(t)+"\"}\nfiles:\n  - {bucket: app, dir: ./x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no config file", []string{"diff", "-c", filepath.Join(root, "nope.yaml")}, 2, "no config file"},
		{"invalid config", []string{"diff", "-c", bad}, 2, "files[0].dir"},
		{"stray argument", []string{"diff", "-c", good, "extra"}, 2, "no arguments"},
		{"unknown flag", []string{"diff", "--nope"}, 2, "not defined: -nope"},
		{"dead server", []string{"diff", "-c", dead}, 1, "kvsync diff:"},
		{"missing bucket", []string{"diff", "-c", good}, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errs, code := runKvsync(t, tc.args...)
			if got, want := code, tc.code; got != want {
				t.Fatalf("exit=%d, want %d; stdout:\n%s\nstderr:\n%s", got, want, out, errs)
			}
			if !strings.Contains(errs, tc.stderr) {
				t.Fatalf("stderr lacks %q:\n%s", tc.stderr, errs)
			}
		})
	}
}
