package agent

import (
	"testing"
	"time"
)

// FuzzValidateConfig builds configs from fuzzed strings and numbers and runs
// them through Default and Validate, which must never panic, must be
// deterministic, and must leave a config that validates once more to the same
// answer (Default is idempotent).
func FuzzValidateConfig(f *testing.F) {
	f.Add("app", ">", "/etc/app", "flat", "file", "0644", "nginx", "{{ key \"k\" }}", "/etc/nginx.conf", "FLAG_", "SIGHUP", "info", int64(0), int64(5), 1)
	f.Add("", "", "", "", "", "", "", "", "", "", "", "", int64(-1), int64(-1), -1)
	f.Add("a.b", "a.*.>", "/", "tree", "snapshot", "9999", "x", "", "", "1BAD", "KILL", "debug", int64(1<<40), int64(0), 65)
	f.Add("KV_x", "*", "rel/dir", "bogus", "bogus", "0o755", "dup", "{{", "rel/dest", "_", "SIGNOPE", "json", int64(time.Second), int64(time.Hour), 0)
	f.Fuzz(func(t *testing.T, bucket, filter, dir, layout, atomic, mode, name, text, dest, prefix, signal, level string, d1, d2 int64, n int) {
		build := func() *Config {
			c := Default()
			c.Log.Level = level
			c.Wait = WaitConfig{Min: time.Duration(d1), Max: time.Duration(d2)}
			c.Buckets = []BucketConfig{{Name: bucket, History: n, TTL: time.Duration(d1), MaxBytes: d2, Replicas: n, Storage: atomic}}
			c.Files = []FilesConfig{
				{Name: name, Bucket: bucket, Keys: []string{filter}, Dir: dir, Layout: layout, Atomic: atomic, Mode: mode, DirMode: mode,
					Push:     PushConfig{Enabled: n%2 == 0, Conflict: layout},
					OnChange: &Action{Signal: signal, Process: name, Timeout: time.Duration(d1), Splay: time.Duration(d2)}},
				{Bucket: bucket, Dir: dest, Wait: &WaitConfig{Min: time.Duration(d2), Max: time.Duration(d1)}},
			}
			c.Templates = []TemplateConfig{{Name: name, Text: text, Dest: dest, Bucket: bucket, Mode: mode, MaxOutputSize: d1,
				OnChange: &Action{Command: []string{text}, HTTP: &HTTPAction{URL: dest, Retries: n}}}}
			c.Env = []EnvConfig{{Bucket: bucket, Keys: []string{filter, ">"}, Prefix: prefix, File: dir, OnChange: &Action{Restart: true}}}
			if n%3 == 0 {
				c.Exec = &ExecConfig{Command: []string{text}, OnChange: layout, Signal: signal, KillSignal: signal, KillTimeout: time.Duration(d1)}
			}
			return &c
		}
		c := build()
		c.Default()
		err1 := c.Validate()
		c.Default()
		err2 := c.Validate()
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("Validate after a second Default: %v, first: %v", err2, err1)
		}
		again := build()
		again.Default()
		if err3 := again.Validate(); (err1 == nil) != (err3 == nil) || (err1 != nil && err1.Error() != err3.Error()) {
			t.Fatalf("Validate is not deterministic: %v, then %v", err1, err3)
		}
	})
}
