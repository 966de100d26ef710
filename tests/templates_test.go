package tests

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// TestValidateParsesTemplates: `kvsync validate` parses every template and
// reports each problem with the template's name and line, exit 2.
func TestValidateParsesTemplates(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"nginx.conf.tmpl": "events {}\n{{ if }}{{ nosuchfn }}\n",
		"app.tmpl":        "a\n{{ nosuchfn }}\n{{ env \"HOME\" }} {{ expandenv \"$HOME\" }}\n",
		"good.tmpl":       "[[ keyOrDefault \"a\" \"x\" ]] {{ not a template }} [[ file \"f\" ]]\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(`
templates:
  - {name: nginx, bucket: app, source: nginx.conf.tmpl, dest: ./out/nginx.conf}
  - {name: app, bucket: app, source: app.tmpl, dest: ./out/app.conf, function_denylist: [env, expandenv, nosuch]}
  - {name: motd, bucket: app, text: "hi\n{{ file \"x\" }}", dest: ./out/motd}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runKvsync(t, "validate", "-c", bad)
	if code != 2 {
		t.Fatalf("validate: exit %d, want 2; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		"templates[0] (nginx): nginx.conf.tmpl:2: missing value for if",
		`templates[1].function_denylist[2]: "nosuch" is not a template function`,
		`templates[2] (motd): motd:2: function "file" needs file_root`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("validate does not report %q; stderr:\n%s", want, stderr)
		}
	}
	// The denylist is checked once its names are: fix the bad name and the
	// template's own problems show.
	fixed := strings.Replace(readFile(t, bad), ", nosuch]", "]", 1)
	if err := os.WriteFile(bad, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = runKvsync(t, "validate", "-c", bad)
	for _, want := range []string{
		`templates[1] (app): app.tmpl:2: function "nosuchfn" not defined`,
		`templates[1] (app): app.tmpl:3: function "env" is denied by function_denylist`,
		`templates[1] (app): app.tmpl:3: function "expandenv" is denied by function_denylist`,
	} {
		if code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("validate (exit %d) does not report %q; stderr:\n%s", code, want, stderr)
		}
	}

	if err := os.MkdirAll(filepath.Join(dir, "files"), 0o755); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(`
templates:
  - name: helm
    bucket: app
    source: good.tmpl
    dest: ./out/values.yaml
    left_delimiter: "[["
    right_delimiter: "]]"
    file_root: ./files
    function_denylist: [env, expandenv, getHostByName]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, stderr, code := runKvsync(t, "validate", "-c", good); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("validate good: exit %d %q %q", code, out, stderr)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRunDelimitersAndReadyz: the real binary against a real server renders a
// [[ ]] template full of {{ }} text, and /readyz waits for its first render.
func TestRunDelimitersAndReadyz(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	if _, err := kv.PutString(context.Background(), "image", "web:1.2"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dest := filepath.Join(dir, "values.yaml")
	ag := startAgent(t, s.ClientURL(), fmt.Sprintf(`
templates:
  - name: helm
    bucket: app
    dest: %q
    left_delimiter: "[["
    right_delimiter: "]]"
    text: |
      image: [[ key "image" ]]
      replicas: [[ key "replicas" ]]
      name: {{ .Release.Name }}-{{ .Chart.Name | trunc 63 }}
`, dest))
	testutil.CheckFor(t, 10*time.Second, func() error {
		ag.alive(t)
		code, body, err := ag.get("/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "- template helm: never rendered: ") || !strings.Contains(body, "app:replicas") {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		return nil
	})
	if _, err := kv.PutString(context.Background(), "replicas", "3"); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, dest, "image: web:1.2\nreplicas: 3\nname: {{ .Release.Name }}-{{ .Chart.Name | trunc 63 }}\n", 10*time.Second)
	ag.waitReady(t, 10*time.Second)
}

// TestRenderWithFileRoot: `kvsync render` reads `file` from file_root and
// refuses a path that leads out of it.
func TestRenderWithFileRoot(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	if _, err := kv.PutString(context.Background(), "name", "world"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	if err := os.MkdirAll(files, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "greeting"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("TOP SECRET"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../secret", filepath.Join(files, "link")); err != nil {
		t.Fatal(err)
	}
	cfg := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf(`
templates:
  - {name: ok, bucket: app, file_root: %q, text: '[[ file "greeting" ]] [[ key "name" ]] {{x}}', left_delimiter: "[[", right_delimiter: "]]", dest: %q}
  - {name: escape, bucket: app, file_root: %q, text: '{{ file "link" }}', dest: %q}
`, files, filepath.Join(dir, "ok.txt"), files, filepath.Join(dir, "escape.txt")))
	out, stderr, code := runWith(t, run{args: []string{"render", "-c", cfg, "ok"}})
	if code != 0 || out != "hello world {{x}}" {
		t.Fatalf("render ok: exit %d, out %q, stderr %s", code, out, stderr)
	}
	out, stderr, code = runWith(t, run{args: []string{"render", "-c", cfg, "escape"}})
	if code != 1 || strings.Contains(out+stderr, "SECRET") || !strings.Contains(stderr, `file "link"`) {
		t.Fatalf("render escape: exit %d, out %q, stderr %s", code, out, stderr)
	}
}

// waitNeverRendered waits until the agent finished its initial sync and
// /readyz answers 503 only because the template name has never rendered.
func (a *agentProc) waitNeverRendered(t testing.TB, timeout time.Duration, name string) {
	t.Helper()
	testutil.CheckFor(t, timeout, func() error {
		a.alive(t)
		code, body, err := a.get("/readyz")
		if err != nil {
			return err
		}
		var reasons []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "- ") {
				reasons = append(reasons, l)
			}
		}
		if code != http.StatusServiceUnavailable || len(reasons) != 1 || !strings.HasPrefix(reasons[0], "- template "+name+": never rendered: ") {
			return fmt.Errorf("/readyz = %d %q, want 503 for template %s alone", code, body, name)
		}
		return nil
	})
}
