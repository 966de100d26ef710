package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, name, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfigFormats(t *testing.T) {
	for _, tt := range []struct{ name, body string }{
		{"k.yaml", "nats: {url: nats://h:1}\nfiles:\n  - {bucket: app, dir: out, fsync: false}\nwait: {min: 250ms}\n"},
		{"k.toml", "[nats]\nurl = \"nats://h:1\"\n[wait]\nmin = \"250ms\"\n[[files]]\nbucket = \"app\"\ndir = \"out\"\nfsync = false\n"},
		{"k.json", `{"nats": {"url": "nats://h:1"}, "wait": {"min": "250ms"}, "files": [{"bucket": "app", "dir": "out", "fsync": false}]}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.name, tt.body)
			cfg, err := loadConfig(path)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if got, want := cfg.NATS.URL, "nats://h:1"; got != want {
				t.Errorf("nats.url=%q, want %q", got, want)
			}
			if got, want := cfg.Wait.Min, 250*time.Millisecond; got != want {
				t.Errorf("wait.min=%v, want %v", got, want)
			}
			f := cfg.Files[0]
			// Defaults filled, relative dir resolved against the config's folder.
			if got, want := f.Dir, filepath.Join(filepath.Dir(path), "out"); got != want {
				t.Errorf("dir=%q, want %q", got, want)
			}
			if f.Name != "files-0" || f.Layout != "flat" || f.Mode != "0644" || len(f.Keys) != 1 || f.Keys[0] != ">" {
				t.Errorf("defaults not filled: %+v", f)
			}
			if *f.Fsync {
				t.Errorf("fsync=true, want the false given")
			}
		})
	}
}

func TestLoadConfigEnvOverrides(t *testing.T) {
	path := writeConfig(t, "k.yaml", "nats: {url: nats://file:1}\nfiles: [{bucket: app, dir: /tmp/x}]\nlog: {level: info}\n")
	t.Setenv("NATS_URL", "nats://natsurl:1")
	t.Setenv("KVSYNC_LOG_LEVEL", "debug")
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.NATS.URL, "nats://natsurl:1"; got != want {
		t.Errorf("NATS_URL: url=%q, want %q", got, want)
	}
	if got, want := cfg.Log.Level, "debug"; got != want {
		t.Errorf("KVSYNC_LOG_LEVEL: level=%q, want %q", got, want)
	}
	t.Setenv("KVSYNC_NATS_URL", "nats://kvsync:1")
	cfg, err = loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.NATS.URL, "nats://kvsync:1"; got != want {
		t.Errorf("KVSYNC_NATS_URL must win over NATS_URL: url=%q, want %q", got, want)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		want       []string
	}{
		{"unknown key", "files: [{bucket: app, dir: /x, strip_prefx: a}]\n", []string{"strip_prefx"}},
		{"unknown top-level key", "file: [{bucket: app, dir: /x}]\n", []string{"file"}},
		{"bad duration", "files: [{bucket: app, dir: /x}]\nwait: {min: soon}\n", []string{"min"}},
		{"every problem at once", "files:\n  - {bucket: 'a b', dir: /x, mode: '999'}\n  - {bucket: app, dir: /x}\ntemplates:\n  - {text: hi}\n",
			[]string{"files[0].bucket", "files[0].mode", "files[1].dir", "templates[0].dest"}},
		{"no projection", "nats: {url: nats://h:1}\n", []string{"no projection"}},
		{"bad yaml", "files: [\n", []string{"parse"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(writeConfig(t, "k.yaml", tt.body))
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is not a usage error (exit 2)", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
	if _, err := loadConfig(filepath.Join(t.TempDir(), "none.yaml")); !errors.Is(err, errNoConfigFile) {
		t.Fatalf("missing file: %v, want errNoConfigFile", err)
	}
}

func TestLoadConfigExpandsVariables(t *testing.T) {
	t.Setenv("MYHOST", "web-1")
	t.Setenv("POD_NAME", "pod-7")
	path := writeConfig(t, "k.yaml", `nats: {url: "nats://h:${NATS_PORT:-4222}"}
agent: {id: "${POD_NAME}", labels: {host: "${MYHOST}"}}
files: [{bucket: app, dir: "/srv/o-${MYHOST}", on_change: {command: [sh, -c, "echo $${X}"]}}]
templates: [{text: "{{ key \"a\" }} ${SHELL_VAR}", bucket: app, dest: "/srv/t-${MYHOST}.conf"}]
`)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	for _, tt := range []struct{ name, got, want string }{
		{"nats.url", cfg.NATS.URL, "nats://h:4222"},
		{"agent.id", cfg.Agent.ID, "pod-7"},
		{"agent.labels.host", cfg.Agent.Labels["host"], "web-1"},
		{"files[0].dir", cfg.Files[0].Dir, "/srv/o-web-1"},
		{"files[0].on_change.command[2]", cfg.Files[0].OnChange.Command[2], "echo ${X}"},
		{"templates[0].dest", cfg.Templates[0].Dest, "/srv/t-web-1.conf"},
		{"templates[0].text", cfg.Templates[0].Text, "{{ key \"a\" }} ${SHELL_VAR}"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s=%q, want %q", tt.name, tt.got, tt.want)
		}
	}

	// Loading again (what SIGHUP does) expands with the environment of then.
	t.Setenv("MYHOST", "web-2")
	cfg, err = loadConfig(path)
	if err != nil {
		t.Fatalf("loadConfig again: %v", err)
	}
	if got, want := cfg.Files[0].Dir, "/srv/o-web-2"; got != want {
		t.Errorf("files[0].dir after a reload=%q, want %q", got, want)
	}
}

func TestLoadConfigUnsetVariable(t *testing.T) {
	path := writeConfig(t, "k.yaml", `nats: {url: nats://h:1}
files: [{bucket: app, dir: "/srv/o-${KVSYNC_TEST_UNSET_HOST}"}]
templates: [{text: x, dest: /tmp/a}, {text: x, dest: "/tmp/${KVSYNC_TEST_UNSET_HOST}"}]
agent: {labels: {"Not Valid": x}}
`)
	_, err := loadConfig(path)
	var ue usageError
	if !errors.As(err, &ue) {
		t.Fatalf("loadConfig err=%v, want a usage error", err)
	}
	for _, want := range []string{
		"files[0].dir: ${KVSYNC_TEST_UNSET_HOST} is not set",
		"templates[1].dest: ${KVSYNC_TEST_UNSET_HOST} is not set",
		`agent.labels.Not Valid: label key "Not Valid"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

func TestLoadConfigEnvOverridesAreLiteral(t *testing.T) {
	path := writeConfig(t, "k.yaml", "nats: {url: nats://h:1, user: u}\nfiles: [{bucket: app, dir: /tmp/x}]\n")
	t.Setenv("NATS_PASSWORD", "pa$$${word}$")
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.NATS.Password, "pa$$${word}$"; got != want {
		t.Errorf("nats.password=%q, want %q as given", got, want)
	}
}
