package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
	"github.com/kvsync/kvsync/projector"
)

// diffBucket creates a bucket holding kv.
func diffBucket(t *testing.T, js jetstream.JetStream, name string, kv map[string]string) jetstream.KeyValue {
	t.Helper()
	ctx := context.Background()
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 5})
	if err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	for k, v := range kv {
		if _, err := b.Put(ctx, k, []byte(v)); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	return b
}

// project writes files into dir the way the agent does (manifest included).
func project(t *testing.T, dir string, snapshot bool, files map[string]string) {
	t.Helper()
	d, err := projector.Open(projector.Options{Dir: dir, UID: -1, GID: -1, Snapshot: snapshot})
	if err != nil {
		t.Fatalf("open projection: %v", err)
	}
	defer d.Close()
	var changes []projector.Change
	for p, v := range files {
		changes = append(changes, projector.Change{Path: p, Data: []byte(v)})
	}
	res, err := d.Apply(changes)
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("apply: %v %v", err, res.Errors)
	}
}

// writeFiles writes files by hand, as someone other than kvsync would.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, v := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// treeState records every entry under dir (type, mode, content hash or link
// target), to check that Diff wrote nothing.
func treeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		desc := fi.Mode().String() + " " + fi.ModTime().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[p] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// summary is the comparable part of a FileDiff.
type summary struct {
	Projection, Path, Key string
	Status                DiffStatus
}

func summarize(dir string, ds []FileDiff) []summary {
	out := make([]summary, 0, len(ds))
	for _, d := range ds {
		p := d.Path
		if rel, err := filepath.Rel(dir, p); err == nil && !strings.HasPrefix(rel, "..") {
			p = filepath.ToSlash(rel)
		}
		out = append(out, summary{d.Projection, p, d.Key, d.Status})
	}
	return out
}

func mustDiff(t *testing.T, cfg *Config, js jetstream.JetStream) []FileDiff {
	t.Helper()
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	ds, err := Diff(context.Background(), cfg, js)
	if err != nil {
		t.Fatalf("Diff: %v", err)
	}
	return ds
}

func find(t *testing.T, ds []FileDiff, path string) FileDiff {
	t.Helper()
	for _, d := range ds {
		if d.Path == path {
			return d
		}
	}
	t.Fatalf("no diff for %s in %+v", path, ds)
	return FileDiff{}
}

func TestDiffFiles(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snapshot bool
	}{
		{"file mode", false},
		{"snapshot mode", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, js := testutil.Connect(t, testutil.RunServer(t, nil).ClientURL())
			diffBucket(t, js, "app", map[string]string{
				"same.conf":    "same\n",
				"changed.conf": "one\ntwo 2\nthree\n",
				"new.conf":     "new\n",
				"foreign.conf": "from the bucket\n",
				"sub/deep":     "deep\n",
				"lost.conf":    "lost\n",
				"other.key":    "not matched by keys\n",
			})
			dir := t.TempDir()
			project(t, dir, tc.snapshot, map[string]string{
				"same.conf":    "same\n",
				"changed.conf": "one\ntwo\nthree\n",
				"gone.conf":    "gone\n",
				"sub/deep":     "deep\n",
				"lost.conf":    "lost\n",
			})
			if err := os.Remove(filepath.Join(dir, "lost.conf")); err != nil {
				t.Fatal(err)
			}
			writeFiles(t, dir, map[string]string{
				"foreign.conf": "by hand\n",
				"notes.txt":    "by hand\n",
			})
			cfg := Default()
			cfg.Files = []FilesConfig{{Name: "conf", Bucket: "app", Keys: []string{"*.conf", "sub/deep"}, Dir: dir}}
			if tc.snapshot {
				cfg.Files[0].Atomic = AtomicSnapshot
			}
			before := treeState(t, dir)
			ds := mustDiff(t, &cfg, js)
			if got, want := summarize(dir, ds), []summary{
				{"conf", "changed.conf", "changed.conf", DiffChanged},
				{"conf", "foreign.conf", "foreign.conf", DiffForeign},
				{"conf", "gone.conf", "gone.conf", DiffMissing},
				{"conf", "lost.conf", "lost.conf", DiffAdded},
				{"conf", "new.conf", "new.conf", DiffAdded},
				{"conf", "notes.txt", "", DiffForeign},
			}; !slices.Equal(got, want) {
				t.Fatalf("Diff:\n got %+v\nwant %+v", got, want)
			}
			if got, want := find(t, ds, filepath.Join(dir, "changed.conf")).Patch,
				"--- "+filepath.Join(dir, "changed.conf")+"\n+++ app:changed.conf\n@@ -1,3 +1,3 @@\n one\n-two\n+two 2\n three\n"; got != want {
				t.Fatalf("changed patch:\n%s\nwant:\n%s", got, want)
			}
			if got, want := find(t, ds, filepath.Join(dir, "new.conf")).Patch,
				"--- /dev/null\n+++ app:new.conf\n@@ -0,0 +1 @@\n+new\n"; got != want {
				t.Fatalf("added patch:\n%s\nwant:\n%s", got, want)
			}
			if got, want := find(t, ds, filepath.Join(dir, "gone.conf")).Patch,
				"--- "+filepath.Join(dir, "gone.conf")+"\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n"; got != want {
				t.Fatalf("missing patch:\n%s\nwant:\n%s", got, want)
			}
			for _, d := range ds {
				if got, want := d.Differs(), d.Key != ""; got != want {
					t.Fatalf("%s: Differs()=%v, want %v", d.Path, got, want)
				}
			}
			if after := treeState(t, dir); !mapsEqual(before, after) {
				t.Fatalf("Diff changed the folder:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestDiffFilesInSync(t *testing.T) {
	for _, tc := range []struct {
		name     string
		layout   string
		strip    string
		keys     map[string]string
		snapshot bool
		files    map[string]string
	}{
		{"flat", LayoutFlat, "", map[string]string{"a": "1", "b/c": "2"}, false, map[string]string{"a": "1", "b/c": "2"}},
		{"tree with strip", LayoutTree, "cfg.", map[string]string{"cfg.a.b": "1", "cfg.c": "2"}, false, map[string]string{"a/b": "1", "c": "2"}},
		{"snapshot", LayoutFlat, "", map[string]string{"a": "1", "d/e": "2"}, true, map[string]string{"a": "1", "d/e": "2"}},
		{"empty bucket, empty folder", LayoutFlat, "", nil, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, js := testutil.Connect(t, testutil.RunServer(t, nil).ClientURL())
			diffBucket(t, js, "app", tc.keys)
			dir := t.TempDir()
			if tc.files != nil {
				project(t, dir, tc.snapshot, tc.files)
			}
			cfg := Default()
			cfg.Files = []FilesConfig{{Name: "f", Bucket: "app", Dir: dir, Layout: tc.layout, StripPrefix: tc.strip}}
			if tc.snapshot {
				cfg.Files[0].Atomic = AtomicSnapshot
			}
			if ds := mustDiff(t, &cfg, js); len(ds) != 0 {
				t.Fatalf("Diff = %+v, want nothing", ds)
			}
		})
	}
}

func TestDiffFilesEdgeCases(t *testing.T) {
	_, js := testutil.Connect(t, testutil.RunServer(t, nil).ClientURL())
	diffBucket(t, js, "app", map[string]string{"a": "1", "blob": "\x00\x01\x02", "link/x": "x"})

	t.Run("folder not there", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "not-yet")
		cfg := Default()
		cfg.Files = []FilesConfig{{Name: "f", Bucket: "app", Dir: dir, Keys: []string{"a"}}}
		ds := mustDiff(t, &cfg, js)
		if got, want := summarize(dir, ds), []summary{{"f", "a", "a", DiffAdded}}; !slices.Equal(got, want) {
			t.Fatalf("Diff = %+v, want %+v", got, want)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Diff created %s: %v", dir, err)
		}
	})
	t.Run("binary", func(t *testing.T) {
		dir := t.TempDir()
		project(t, dir, false, map[string]string{"blob": "\x00\x01"})
		cfg := Default()
		cfg.Files = []FilesConfig{{Name: "f", Bucket: "app", Dir: dir, Keys: []string{"blob"}}}
		d := find(t, mustDiff(t, &cfg, js), filepath.Join(dir, "blob"))
		if got, want := d.Status, DiffChanged; got != want {
			t.Fatalf("Status=%v, want %v", got, want)
		}
		if !d.Binary || d.Patch != "" {
			t.Fatalf("Binary=%v Patch=%q, want binary without patch", d.Binary, d.Patch)
		}
	})
	t.Run("symlinked parent", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Symlink(t.TempDir(), filepath.Join(dir, "link")); err != nil {
			t.Fatal(err)
		}
		cfg := Default()
		cfg.Files = []FilesConfig{{Name: "f", Bucket: "app", Dir: dir, Keys: []string{"link/x"}}}
		ds := mustDiff(t, &cfg, js)
		if got, want := summarize(dir, ds), []summary{{"f", "link", "", DiffForeign}, {"f", "link/x", "link/x", DiffForeign}}; !slices.Equal(got, want) {
			t.Fatalf("Diff = %+v, want %+v", got, want)
		}
	})
	t.Run("missing bucket", func(t *testing.T) {
		cfg := Default()
		cfg.Files = []FilesConfig{{Name: "f", Bucket: "nope", Dir: t.TempDir()}}
		ds := mustDiff(t, &cfg, js)
		if len(ds) != 1 || ds[0].Status != DiffError || !errors.Is(ds[0].Err, jetstream.ErrBucketNotFound) {
			t.Fatalf("Diff = %+v, want one error wrapping ErrBucketNotFound", ds)
		}
	})
	t.Run("atomic mode switched", func(t *testing.T) {
		dir := t.TempDir()
		project(t, dir, true, map[string]string{"a": "1"})
		cfg := Default()
		cfg.Files = []FilesConfig{{Name: "f", Bucket: "app", Dir: dir, Keys: []string{"a"}}}
		ds := mustDiff(t, &cfg, js)
		if len(ds) != 1 || ds[0].Status != DiffError || !strings.Contains(ds[0].Err.Error(), "snapshot") {
			t.Fatalf("Diff = %+v, want one error naming snapshot mode", ds)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cfg := Default()
		cfg.Files = []FilesConfig{{Name: "f", Bucket: "app", Dir: t.TempDir()}}
		cfg.Default()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Diff(ctx, &cfg, js); !errors.Is(err, context.Canceled) {
			t.Fatalf("Diff err=%v, want context.Canceled", err)
		}
	})
}

func TestDiffTemplatesAndEnv(t *testing.T) {
	_, js := testutil.Connect(t, testutil.RunServer(t, nil).ClientURL())
	diffBucket(t, js, "app", map[string]string{"host": "db1", "port": "5432"})
	diffBucket(t, js, "flags", map[string]string{"flags.dark-mode": "on", "flags.beta": "off"})
	diffBucket(t, js, "empty", nil)
	dir := t.TempDir()
	path := func(n string) string { return filepath.Join(dir, n) }
	writeFiles(t, dir, map[string]string{
		"same.conf":    "db1:5432\n",
		"changed.conf": "db0:5432\n",
		"broken.conf":  "keep me\n",
		"same.env":     "FLAG_BETA='off'\nFLAG_DARK_MODE='on'\n",
		"changed.env":  "FLAG_BETA='off'\n",
	})
	tmpl := `{{ key "host" }}:{{ key "port" }}` + "\n"
	cfg := Default()
	cfg.Templates = []TemplateConfig{
		{Name: "same", Text: tmpl, Dest: path("same.conf"), Bucket: "app"},
		{Name: "changed", Text: tmpl, Dest: path("changed.conf"), Bucket: "app"},
		{Name: "added", Text: tmpl, Dest: path("added.conf"), Bucket: "app"},
		{Name: "broken", Text: `{{ key "nope" }}`, Dest: path("broken.conf"), Bucket: "app"},
	}
	cfg.Env = []EnvConfig{
		{Name: "same-env", Bucket: "flags", StripPrefix: "flags.", Prefix: "FLAG_", File: path("same.env")},
		{Name: "changed-env", Bucket: "flags", StripPrefix: "flags.", Prefix: "FLAG_", File: path("changed.env")},
		{Name: "added-env", Bucket: "flags", StripPrefix: "flags.", Prefix: "FLAG_", File: path("added.env")},
		{Name: "none", Bucket: "empty", File: path("none.env")}, // no vars: the agent writes no file
		{Name: "no-file", Bucket: "flags"}, // nothing on disk to compare
	}
	cfg.Exec = &ExecConfig{Command: []string{"true"}}
	before := treeState(t, dir)
	ds := mustDiff(t, &cfg, js)
	if got, want := summarize(dir, ds), []summary{
		{"changed", "changed.conf", "", DiffChanged},
		{"added", "added.conf", "", DiffAdded},
		{"broken", "broken.conf", "", DiffError},
		{"changed-env", "changed.env", "", DiffChanged},
		{"added-env", "added.env", "", DiffAdded},
	}; !slices.Equal(got, want) {
		t.Fatalf("Diff:\n got %+v\nwant %+v", got, want)
	}
	if got, want := find(t, ds, path("changed.conf")).Patch,
		"--- "+path("changed.conf")+"\n+++ template changed\n@@ -1 +1 @@\n-db0:5432\n+db1:5432\n"; got != want {
		t.Fatalf("template patch:\n%s\nwant:\n%s", got, want)
	}
	if got, want := find(t, ds, path("changed.env")).Patch,
		"--- "+path("changed.env")+"\n+++ env changed-env\n@@ -1 +1,2 @@\n FLAG_BETA='off'\n+FLAG_DARK_MODE='on'\n"; got != want {
		t.Fatalf("env patch:\n%s\nwant:\n%s", got, want)
	}
	if err := find(t, ds, path("broken.conf")).Err; err == nil || !strings.Contains(err.Error(), "app:nope") {
		t.Fatalf("broken template err=%v, want one naming app:nope", err)
	}
	if after := treeState(t, dir); !mapsEqual(before, after) {
		t.Fatalf("Diff changed the folder:\nbefore %v\nafter  %v", before, after)
	}
}

func TestUnifiedDiff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		a, b   string
		patch  string
		binary bool
	}{
		{"equal", "x\n", "x\n", "", false},
		{"empty to one line", "", "x\n", "--- a\n+++ b\n@@ -0,0 +1 @@\n+x\n", false},
		{"one line to empty", "x\n", "", "--- a\n+++ b\n@@ -1 +0,0 @@\n-x\n", false},
		{"newline added at end", "x", "x\n", "--- a\n+++ b\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+x\n", false},
		{"context is three lines", "1\n2\n3\n4\n5\n6\n7\n8\n9\n", "1\n2\n3\n4\nFIVE\n6\n7\n8\n9\n",
			"--- a\n+++ b\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+FIVE\n 6\n 7\n 8\n", false},
		{"two hunks", "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n", "ONE\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\nTWELVE\n",
			"--- a\n+++ b\n@@ -1,4 +1,4 @@\n-1\n+ONE\n 2\n 3\n 4\n@@ -9,4 +9,4 @@\n 9\n 10\n 11\n-12\n+TWELVE\n", false},
		{"close changes share a hunk", "1\n2\n3\n4\n5\n6\n7\n8\n", "ONE\n2\n3\n4\n5\n6\n7\nEIGHT\n",
			"--- a\n+++ b\n@@ -1,8 +1,8 @@\n-1\n+ONE\n 2\n 3\n 4\n 5\n 6\n 7\n-8\n+EIGHT\n", false},
		{"insertion in the middle", "a\nc\n", "a\nb\nc\n", "--- a\n+++ b\n@@ -1,2 +1,3 @@\n a\n+b\n c\n", false},
		{"NUL byte", "a\x00", "b", "", true},
		{"invalid UTF-8", "a\n", "\xff\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			patch, binary := unifiedDiff("a", "b", []byte(tc.a), []byte(tc.b))
			if got, want := binary, tc.binary; got != want {
				t.Fatalf("binary=%v, want %v", got, want)
			}
			if got, want := patch, tc.patch; got != want {
				t.Fatalf("patch:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestDiffLinesShortest checks the edit script on random inputs: it must turn
// a into b, and be as short as the longest common subsequence allows.
func TestDiffLinesShortest(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	gen := func() []string {
		out := make([]string, r.IntN(12))
		for i := range out {
			out[i] = string(rune('a'+r.IntN(4))) + "\n"
		}
		return out
	}
	for i := range 2000 {
		a, b := gen(), gen()
		edits := diffLines(a, b)
		var gotA, gotB []string
		changes := 0
		for _, e := range edits {
			if e.op != '+' {
				gotA = append(gotA, e.line)
			}
			if e.op != '-' {
				gotB = append(gotB, e.line)
			}
			if e.op != ' ' {
				changes++
			}
		}
		if !slices.Equal(gotA, a) || !slices.Equal(gotB, b) {
			t.Fatalf("case %d: script %v does not turn %q into %q", i, edits, a, b)
		}
		if got, want := changes, len(a)+len(b)-2*lcs(a, b); got != want {
			t.Fatalf("case %d: %d changes from %q to %q, want %d", i, got, a, b, want)
		}
	}
}

// lcs is the length of the longest common subsequence, by dynamic programming.
func lcs(a, b []string) int {
	dp := make([][]int, len(a)+1)
	for i := range dp {
		dp[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				dp[i][j] = dp[i+1][j+1] + 1
			} else {
				dp[i][j] = max(dp[i+1][j], dp[i][j+1])
			}
		}
	}
	return dp[0][0]
}

// TestDiffLinesLimit checks that inputs past maxEditDistance still give a
// correct, if not shortest, script.
func TestDiffLinesLimit(t *testing.T) {
	var a, b []string
	for i := range 3 * maxEditDistance {
		a = append(a, fmt.Sprintf("a%d\n", i))
		b = append(b, fmt.Sprintf("b%d\n", i))
	}
	a[0], b[0] = "same\n", "same\n"
	var gotA, gotB []string
	for _, e := range diffLines(a, b) {
		if e.op != '+' {
			gotA = append(gotA, e.line)
		}
		if e.op != '-' {
			gotB = append(gotB, e.line)
		}
	}
	if !slices.Equal(gotA, a) || !slices.Equal(gotB, b) {
		t.Fatalf("script does not turn a into b")
	}
}
