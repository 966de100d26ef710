package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/templates"
)

// examplesDir is examples/ seen from this package's folder, where go test runs.
const examplesDir = "../../examples"

// isKubernetesManifest reports whether a YAML file is a Kubernetes object
// (deployment.yaml and the like) rather than a kvsync config: it has a
// top-level apiVersion or kind key. kvsync configs have neither.
func isKubernetesManifest(data []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "apiVersion:") || strings.HasPrefix(line, "kind:") {
			return true
		}
	}
	return false
}

// exampleConfigs returns every kvsync config under examples/, as paths relative
// to the repository root (the way the example READMEs spell them), grouped by
// example folder.
func exampleConfigs(t *testing.T) map[string][]string {
	t.Helper()
	byExample := map[string][]string{}
	entries, err := os.ReadDir(examplesDir)
	if err != nil {
		t.Fatalf("read %s: %v", examplesDir, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			byExample[e.Name()] = nil
		}
	}
	err = filepath.WalkDir(examplesDir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// Folders an example writes when it runs (.kvsync/, out/) hold no configs.
			if strings.HasPrefix(d.Name(), ".") && path != examplesDir {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if isKubernetesManifest(data) {
			return nil
		}
		rel, err := filepath.Rel(examplesDir, path)
		if err != nil {
			return err
		}
		example := strings.Split(filepath.ToSlash(rel), "/")[0]
		byExample[example] = append(byExample[example], filepath.ToSlash(filepath.Join("examples", rel)))
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", examplesDir, err)
	}
	return byExample
}

// TestSystemdSample loads the sample /etc/kvsync/kvsync.yaml that ships
// beside the systemd unit.
func TestSystemdSample(t *testing.T) {
	for _, o := range envOverrides {
		t.Setenv(o.env, "")
	}
	const path = "../../systemd/kvsync.yaml"
	if _, err := loadConfig(path); err != nil {
		t.Fatalf("loadConfig(%s): %v", path, err)
	}
}

func TestIsKubernetesManifest(t *testing.T) {
	tests := []struct {
		name, data string
		want       bool
	}{
		{"deployment", "# comment\napiVersion: apps/v1\nkind: Deployment\n", true},
		{"kind only", "kind: ConfigMap\n", true},
		{"kvsync config", "nats:\n  url: nats://127.0.0.1:4222\nfiles:\n  - {bucket: app, dir: ./out}\n", false},
		{"nested kind is not top-level", "files:\n  - name: x\n    kind: y\n", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := isKubernetesManifest([]byte(tt.data)), tt.want; got != want {
				t.Fatalf("isKubernetesManifest(%q)=%v, want %v", tt.data, got, want)
			}
		})
	}
}

// TestExamples loads every example config the way its README runs it: from
// the repository root, with the path relative to it. A broken example (bad
// key, missing template source, invalid value) fails here.
func TestExamples(t *testing.T) {
	byExample := exampleConfigs(t)
	if len(byExample) == 0 {
		t.Fatalf("no example folders under %s", examplesDir)
	}
	for example, configs := range byExample {
		if len(configs) == 0 {
			t.Errorf("examples/%s: no kvsync config (*.yaml)", example)
		}
		if _, err := os.Stat(filepath.Join(examplesDir, example, "README.md")); err != nil {
			t.Errorf("examples/%s: %v", example, err)
		}
	}

	// The environment overrides the file: keep the developer's NATS_URL and
	// friends out of the test.
	for _, o := range envOverrides {
		t.Setenv(o.env, "")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatalf("abs: %v", err)
	}
	t.Chdir(root)

	for example, configs := range byExample {
		for _, path := range configs {
			t.Run(path, func(t *testing.T) {
				cfg, err := loadConfig(path)
				if err != nil {
					t.Fatalf("loadConfig(%s): %v", path, err)
				}
				if example == "kubernetes-sidecar" {
					return // container paths, by design
				}
				// Runnable examples write inside their own folder only.
				dir := filepath.Join(root, "examples", example)
				var written []string
				for _, f := range cfg.Files {
					written = append(written, f.Dir)
				}
				for _, tp := range cfg.Templates {
					written = append(written, tp.Dest)
				}
				for _, e := range cfg.Env {
					if e.File != "" {
						written = append(written, e.File)
					}
				}
				if cfg.Embedded != nil {
					written = append(written, cfg.Embedded.StoreDir)
				}
				for _, p := range written {
					if got, want := inside(dir, p), true; got != want {
						t.Errorf("%s: %s is inside %s: %v, want %v", path, p, dir, got, want)
					}
				}
			})
		}
	}
}

// inside reports whether p, absolute or relative to dir, lies within dir.
func inside(dir, p string) bool {
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

func TestInside(t *testing.T) {
	tests := []struct {
		dir, p string
		want   bool
	}{
		{"/ex/a", "./out/files", true},
		{"/ex/a", "out", true},
		{"/ex/a", ".", true},
		{"/ex/a", "/ex/a/out/app.conf", true},
		{"/ex/a", "/ex/a", true},
		{"/ex/a", "../b/out", false},
		{"/ex/a", "..", false},
		{"/ex/a", "/etc/app/conf.d", false},
		{"/ex/a", "/ex/ab/out", false},
		{"/ex/a", "..data/x", true},
	}
	for _, tt := range tests {
		t.Run(tt.p, func(t *testing.T) {
			if got, want := inside(tt.dir, tt.p), tt.want; got != want {
				t.Fatalf("inside(%q, %q)=%v, want %v", tt.dir, tt.p, got, want)
			}
		})
	}
}

// kvMap is a templates.Source over fixed values: bucket -> key -> value.
type kvMap map[string]map[string]string

func (m kvMap) Get(bucket, key string) (templates.Entry, bool) {
	v, ok := m[bucket][key]
	return templates.Entry{Bucket: bucket, Key: key, Value: []byte(v), Revision: 1, Op: templates.OpPut}, ok
}

func (m kvMap) List(bucket, filter string) []templates.Entry {
	var es []templates.Entry
	for k := range m[bucket] {
		if kvkey.Match(filter, k) {
			e, _ := m.Get(bucket, k)
			es = append(es, e)
		}
	}
	sort.Slice(es, func(i, j int) bool { return es[i].Key < es[j].Key })
	return es
}

func (m kvMap) History(ctx context.Context, bucket, key string) ([]templates.Entry, error) {
	e, ok := m.Get(bucket, key)
	if !ok {
		return nil, nil
	}
	return []templates.Entry{e}, nil
}

// TestExampleTemplates renders the example templates against the values their
// READMEs put, and compares with the output the READMEs promise.
func TestExampleTemplates(t *testing.T) {
	for _, o := range envOverrides {
		t.Setenv(o.env, "")
	}
	tests := []struct {
		config, template string
		kv               kvMap
		want             string
	}{
		{
			config:   "../../examples/quickstart/kvsync.yaml",
			template: "app-conf",
			kv:       kvMap{"app": {"greeting": "hello", "settings.workers": "4", "other": "x"}},
			want: "# Rendered by kvsync from bucket \"app\". Do not edit: the next change overwrites it.\n" +
				"greeting = hello\n" +
				"workers = 4   # revision 1\n",
		},
		{
			config:   "../../examples/quickstart/kvsync.yaml",
			template: "app-conf",
			kv:       kvMap{},
			want: "# Rendered by kvsync from bucket \"app\". Do not edit: the next change overwrites it.\n" +
				"greeting = (no greeting yet)\n",
		},
		{
			config:   "../../examples/nginx-reload/kvsync.yaml",
			template: "upstreams",
			kv: kvMap{"edge": {
				"nginx.upstreams.web.1": "10.0.0.1:8080",
				"nginx.upstreams.web.2": "10.0.0.2:8080",
				"nginx.upstreams.api.a": "10.0.1.1:9000",
				"nginx.upstreams.bad":   "ignored: no pool",
				"unrelated":             "x",
			}},
			want: `# Rendered by kvsync from bucket "edge", keys nginx.upstreams.>. Do not edit.

upstream api {
    server 10.0.1.1:9000;
}

upstream web {
    server 10.0.0.1:8080;
    server 10.0.0.2:8080;
}
`,
		},
		{
			config:   "../../examples/nginx-reload/kvsync.yaml",
			template: "upstreams",
			kv:       kvMap{},
			want:     "# Rendered by kvsync from bucket \"edge\", keys nginx.upstreams.>. Do not edit.\n",
		},
		{
			config:   "../../examples/feature-flags/kvsync.yaml",
			template: "flags-json",
			kv: kvMap{"flags": {
				"flags.new_checkout": "true",
				"flags.dark-mode":    "on",
				"flags.checkout.v2":  "off",
			}},
			want: `{"checkout":{"v2":"off"},"dark-mode":"on","new_checkout":"true"}` + "\n",
		},
		{
			config:   "../../examples/kubernetes-sidecar/kvsync.yaml",
			template: "prometheus-yml",
			kv: kvMap{"monitoring": {
				"prometheus.scrape_interval": "15s",
				"prometheus.targets.api":     "10.0.0.1:8080,10.0.0.2:8080",
			}},
			want: `# Rendered by kvsync from bucket "monitoring". Do not edit.
global:
  scrape_interval: 15s
rule_files:
  - /shared/rules/*.yml
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
  - job_name: kvsync
    static_configs:
      - targets: ["localhost:9333"]
  - job_name: "api"
    static_configs:
      - targets: ["10.0.0.1:8080","10.0.0.2:8080"]
`,
		},
		{
			config:   "../../systemd/kvsync.yaml",
			template: "app-properties",
			kv:       kvMap{"app": {"props.a": "1", "props.b.c": "2", "conf.x": "3"}},
			want:     "# Rendered by kvsync from bucket \"app\". Do not edit.\na=1\nb.c=2\n",
		},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(filepath.Dir(tt.config))+"/"+tt.template, func(t *testing.T) {
			cfg, err := loadConfig(tt.config)
			if err != nil {
				t.Fatalf("loadConfig(%s): %v", tt.config, err)
			}
			tc := findTemplate(t, cfg, tt.template)
			text := tc.Text
			if tc.Source != "" {
				b, err := os.ReadFile(tc.Source)
				if err != nil {
					t.Fatalf("read %s: %v", tc.Source, err)
				}
				text = string(b)
			}
			tmpl, err := templates.Parse(tc.Name, text, templates.Options{DefaultBucket: tc.Bucket, MaxOutput: tc.MaxOutputSize})
			if err != nil {
				t.Fatalf("parse %s: %v", tc.Name, err)
			}
			res, err := tmpl.Render(context.Background(), tt.kv)
			if err != nil {
				t.Fatalf("render %s: %v", tc.Name, err)
			}
			if got, want := string(res.Output), tt.want; got != want {
				t.Fatalf("render %s:\n%s\nwant:\n%s", tc.Name, got, want)
			}
		})
	}
}

func findTemplate(t *testing.T, cfg *agent.Config, name string) agent.TemplateConfig {
	t.Helper()
	for _, tc := range cfg.Templates {
		if tc.Name == name {
			return tc
		}
	}
	t.Fatalf("no template %q", name)
	return agent.TemplateConfig{}
}
