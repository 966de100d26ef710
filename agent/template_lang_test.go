package agent

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// TestReadyzWaitsForFirstRender: /readyz is not ready while a template has
// never rendered, and says why; once it has, a later failure keeps the last
// good file and readiness, and shows in /status and the render_ok metric.
func TestReadyzWaitsForFirstRender(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "j", `{"v": 1}`)
	dir := t.TempDir()
	cfg := templateCfg(s.ClientURL(), dir)
	cfg.Templates[0].Text = `a={{ key "a" }} v={{ (key "j" | fromJSON).v }}` + "\n"
	ag := startAgent(t, cfg, Options{})
	dest := filepath.Join(dir, "sub", "app.conf")
	okSeries := `kvsync_template_render_ok{projection="conf"}`

	testutil.CheckFor(t, 5*time.Second, func() error {
		code, body, err := httpGet(ag.url + "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "- template conf: never rendered: ") || !strings.Contains(body, "missing keys [app:a]") {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		if strings.Contains(body, "initial sync") {
			return fmt.Errorf("/readyz still waits for the initial sync: %q", body)
		}
		return nil
	})
	if st := ag.Status(); st.Ready || ag.Ready() || !strings.Contains(st.Projections[0].NotReady, "missing keys") {
		t.Fatalf("status ready=%v Ready()=%v not_ready=%q; want not ready, with the reason", st.Ready, ag.Ready(), st.Projections[0].NotReady)
	}
	if _, body, _ := httpGet(ag.url + "/metrics"); !strings.Contains(body, okSeries+" 0") {
		t.Fatalf("/metrics has no %s 0", okSeries)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Fatalf("%s written before a good render (err %v)", dest, err)
	}

	put(t, kv, "a", "1")
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "a=1 v=1\n"))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if code, body, _ := httpGet(ag.url + "/readyz"); code != 200 {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		return nil
	})
	if got := metricValue(t, ag, okSeries); got != 1 {
		t.Fatalf("%s = %v after a good render, want 1", okSeries, got)
	}

	// Rendered once, fails later: still ready, last good file, error shown.
	put(t, kv, "j", "not json")
	testutil.CheckFor(t, 5*time.Second, func() error {
		if got := metricValue(t, ag, okSeries); got != 0 {
			return fmt.Errorf("%s = %v, want 0", okSeries, got)
		}
		return nil
	})
	st := ag.Status()
	if !st.Ready || !strings.Contains(st.Projections[0].LastError, "decode JSON") || st.Projections[0].NotReady != "" {
		t.Fatalf("after a failed render: ready=%v last_error=%q not_ready=%q", st.Ready, st.Projections[0].LastError, st.Projections[0].NotReady)
	}
	if code, body, _ := httpGet(ag.url + "/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %q after a later failure, want 200", code, body)
	}
	if _, body, _ := httpGet(ag.url + "/status"); !strings.Contains(body, `"last_error": "render conf: keeping the last good file`) {
		t.Fatalf("/status does not show the render error:\n%s", body)
	}
	if err := fileIs(dest, "a=1 v=1\n")(); err != nil {
		t.Fatalf("last good file not kept: %v", err)
	}

	put(t, kv, "j", `{"v": 2}`)
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "a=1 v=2\n"))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if got := metricValue(t, ag, okSeries); got != 1 {
			return fmt.Errorf("%s = %v, want 1", okSeries, got)
		}
		return nil
	})
}

// TestTemplateLanguageOptions: custom delimiters leave {{ }} text alone, and
// `file` reads from file_root, through a real server and agent.
func TestTemplateLanguageOptions(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "name", "shop")
	put(t, kv, "up.a", "10.0.0.1:80")
	put(t, kv, "up.b", "10.0.0.2:80")
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	if err := os.MkdirAll(files, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "header"), []byte("# managed"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := templateCfg(s.ClientURL(), dir)
	cfg.Templates[0].OnChange = nil
	cfg.Templates[0].LeftDelimiter, cfg.Templates[0].RightDelimiter = "[[", "]]"
	cfg.Templates[0].FileRoot = files
	cfg.Templates[0].FunctionDenylist = []string{"env", "expandenv"}
	cfg.Templates[0].Text = "[[ file \"header\" ]]\nname: {{ .Values.name | default \"[[ key \"name\" ]]\" }}\n" +
		"[[ range keys \"up.>\" ]]server [[ .Value ]]; # {{ [[ .Key ]] }}\n[[ end ]]"
	startAgent(t, cfg, Options{})
	dest := filepath.Join(dir, "sub", "app.conf")
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "# managed\nname: {{ .Values.name | default \"shop\" }}\n"+
		"server 10.0.0.1:80; # {{ up.a }}\nserver 10.0.0.2:80; # {{ up.b }}\n"))
	put(t, kv, "up.c", "10.0.0.3:80")
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "# managed\nname: {{ .Values.name | default \"shop\" }}\n"+
		"server 10.0.0.1:80; # {{ up.a }}\nserver 10.0.0.2:80; # {{ up.b }}\nserver 10.0.0.3:80; # {{ up.c }}\n"))
}

func TestValidateTemplateLanguage(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notDir := write("plain", "x")
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	big := write("big.tmpl", strings.Repeat("x", maxSource+1))
	for _, tt := range []struct {
		name string
		tc   TemplateConfig
		want []string // each must be one line of the error
		not  []string // must not appear
	}{
		{
			name: "the issue's broken template",
			tc:   TemplateConfig{Name: "nginx", Source: write("nginx.conf.tmpl", "events {}\n\n{{ if }}{{ nosuchfn }}\n")},
			want: []string{"templates[0] (nginx): nginx.conf.tmpl:3: missing value for if"},
		},
		{
			name: "every unknown and denylisted function, with its line",
			tc: TemplateConfig{Name: "nginx", Source: write("many.tmpl", "a\n{{ nosuchfn }}\n{{ env \"HOME\" }}\n{{ service \"web\" }}"),
				FunctionDenylist: []string{"env"}},
			want: []string{
				`templates[0] (nginx): many.tmpl:2: function "nosuchfn" not defined`,
				`templates[0] (nginx): many.tmpl:3: function "env" is denied by function_denylist`,
				`templates[0] (nginx): many.tmpl:4: function "service" not defined (a consul-template function`,
			},
		},
		{
			name: "inline text is named by the template",
			tc:   TemplateConfig{Name: "motd", Text: "hi\n{{ keys \"a.>.b\" }}"},
			want: []string{"templates[0] (motd): motd:2:"},
		},
		{
			name: "file without file_root",
			tc:   TemplateConfig{Name: "t", Text: `{{ file "x" }}`},
			want: []string{`templates[0] (t): t:1: function "file" needs file_root`},
		},
		{
			name: "file with file_root",
			tc:   TemplateConfig{Name: "t", Text: `{{ file "x" }}`, FileRoot: dir},
		},
		{
			name: "denylist names that are not functions",
			tc:   TemplateConfig{Name: "t", Text: `x`, FunctionDenylist: []string{"env", "nosuch", ""}},
			want: []string{`templates[0].function_denylist[1]: "nosuch" is not a template function`, `templates[0].function_denylist[2]: "" is not a template function`},
			not:  []string{"function_denylist[0]", "(t)"},
		},
		{
			name: "file_root missing",
			tc:   TemplateConfig{Name: "t", Text: `x`, FileRoot: filepath.Join(dir, "none")},
			want: []string{"templates[0].file_root: stat "},
		},
		{
			name: "file_root not a folder",
			tc:   TemplateConfig{Name: "t", Text: `x`, FileRoot: notDir},
			want: []string{"templates[0].file_root: " + notDir + " is not a folder"},
		},
		{
			name: "delimiters with white space",
			tc:   TemplateConfig{Name: "t", Text: `x`, LeftDelimiter: "[ [", RightDelimiter: "]]"},
			want: []string{`templates[0].left_delimiter: "[ [" holds white space`},
			not:  []string{"right_delimiter"},
		},
		{
			name: "delimiters parse the template",
			tc:   TemplateConfig{Name: "t", Text: "{{ nosuch }}\n[[ nosuch2 ]]", LeftDelimiter: "[[", RightDelimiter: "]]"},
			want: []string{`templates[0] (t): t:2: function "nosuch2" not defined`},
			not:  []string{`"nosuch"`},
		},
		{
			name: "a device as source",
			tc:   TemplateConfig{Name: "t", Source: "/dev/zero"},
			want: []string{"templates[0] (t): read template: /dev/zero is not a regular file"},
		},
		{
			name: "a FIFO as source",
			tc:   TemplateConfig{Name: "t", Source: fifo},
			want: []string{"templates[0] (t): read template: " + fifo + " is not a regular file"},
		},
		{
			name: "a source over 16 MiB",
			tc:   TemplateConfig{Name: "t", Source: big},
			want: []string{"templates[0] (t): read template: " + big + " is larger than 16 MiB"},
		},
		{
			name: "a missing source is reported once",
			tc:   TemplateConfig{Name: "t", Source: filepath.Join(dir, "nope.tmpl")},
			want: []string{"templates[0].source: stat "},
			not:  []string{"(t)"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Default()
			tt.tc.Dest = filepath.Join(dir, "out")
			cfg.Templates = []TemplateConfig{tt.tc}
			cfg.Default()
			err := cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			for _, w := range tt.want {
				// Each problem starts a line of its own.
				if !strings.Contains("\n"+err.Error(), "\n"+w) {
					t.Errorf("Validate does not report %q:\n%v", w, err)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(err.Error(), n) {
					t.Errorf("Validate reports %q:\n%v", n, err)
				}
			}
		})
	}
}

// TestReadyzKeptAcrossReload: a template that rendered before a config
// reload and fails after it still has its last good file: the agent is ready.
// A template new with the reload holds readiness back until it renders.
func TestReadyzKeptAcrossReload(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "1")
	dir := t.TempDir()
	reloads := make(chan struct{})
	next := make(chan *Config, 1)
	cfg := templateCfg(s.ClientURL(), dir)
	cfg.Templates[0].OnChange = nil
	ag := startAgent(t, cfg, Options{Reloads: reloads, Reload: func() (*Config, error) { return <-next, nil }})
	dest := filepath.Join(dir, "sub", "app.conf")
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "a=1\n"))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if !ag.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	if err := kv.Delete(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}

	again := templateCfg(s.ClientURL(), dir)
	again.Templates[0].OnChange = nil
	again.Templates = append(again.Templates, TemplateConfig{Name: "new", Bucket: "app", Dest: filepath.Join(dir, "new.conf"), Text: `{{ key "b" }}`})
	again.Default()
	next <- again
	reloads <- struct{}{}
	testutil.CheckFor(t, 5*time.Second, func() error {
		code, body, err := httpGet(ag.url + "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "- template new: never rendered: ") ||
			strings.Contains(body, "template conf:") || strings.Contains(body, "initial sync") {
			return fmt.Errorf("/readyz = %d %q, want only the new template holding it back", code, body)
		}
		return nil
	})
	st := ag.Status()
	if len(st.Projections) != 2 || !strings.Contains(st.Projections[0].LastError, "missing keys [app:a]") {
		t.Fatalf("after reload: %+v", st.Projections)
	}
	if err := fileIs(dest, "a=1\n")(); err != nil {
		t.Fatalf("last good file not kept across the reload: %v", err)
	}
	put(t, kv, "b", "x")
	testutil.CheckFor(t, 5*time.Second, func() error {
		if code, body, _ := httpGet(ag.url + "/readyz"); code != 200 {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		return nil
	})
}

// TestReadyzWaitsForFirstCheckedRender: a template whose first output fails
// its check has not rendered: /readyz says so until an output passes.
func TestReadyzWaitsForFirstCheckedRender(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "bad")
	dir := t.TempDir()
	cfg := templateCfg(s.ClientURL(), dir)
	cfg.Templates[0].OnChange = nil
	cfg.Templates[0].Check = &CheckConfig{Command: []string{"grep", "-q", "good", "{{.Path}}"}}
	ag := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, func() error {
		code, body, err := httpGet(ag.url + "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "- template conf: never rendered: ") || !strings.Contains(body, "check failed") {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		return nil
	})
	put(t, kv, "a", "good")
	testutil.CheckFor(t, 5*time.Second, fileIs(filepath.Join(dir, "sub", "app.conf"), "a=good\n"))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if code, body, _ := httpGet(ag.url + "/readyz"); code != 200 {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		return nil
	})
}
