package main

import (
	"slices"
	"testing"
	"time"
)

func TestLoadConfigSafeApply(t *testing.T) {
	for _, tt := range []struct{ name, body string }{
		{"k.yaml", `
nats: {url: nats://h:1}
actions:
  reload: {command: [nginx, -s, reload], timeout: 10s}
templates:
  - name: a
    text: x
    dest: /tmp/a
    on_change: reload
    check: {command: [nginx, -t, -c, "{{.Path}}"], timeout: 5s}
    rollback: true
  - {name: b, text: x, dest: /tmp/b, on_change: {command: ["true"]}}
env:
  - {bucket: flags}
exec:
  command: [app]
  on_exit: restart-on-failure
  restart_backoff: {min: 2s, max: 1m}
  env: {pristine: true, allow: ["PATH"], deny: ["AWS_*"], set: {MODE: prod}}
`},
		{"k.toml", `
[nats]
url = "nats://h:1"
[actions.reload]
command = ["nginx", "-s", "reload"]
timeout = "10s"
[[templates]]
name = "a"
text = "x"
dest = "/tmp/a"
on_change = "reload"
rollback = true
[templates.check]
command = ["nginx", "-t", "-c", "{{.Path}}"]
timeout = "5s"
[[templates]]
name = "b"
text = "x"
dest = "/tmp/b"
[templates.on_change]
command = ["true"]
[[env]]
bucket = "flags"
[exec]
command = ["app"]
on_exit = "restart-on-failure"
[exec.restart_backoff]
min = "2s"
max = "1m"
[exec.env]
pristine = true
allow = ["PATH"]
deny = ["AWS_*"]
[exec.env.set]
MODE = "prod"
`},
		{"k.json", `{"nats": {"url": "nats://h:1"},
 "actions": {"reload": {"command": ["nginx", "-s", "reload"], "timeout": "10s"}},
 "templates": [
  {"name": "a", "text": "x", "dest": "/tmp/a", "on_change": "reload", "rollback": true,
   "check": {"command": ["nginx", "-t", "-c", "{{.Path}}"], "timeout": "5s"}},
  {"name": "b", "text": "x", "dest": "/tmp/b", "on_change": {"command": ["true"]}}],
 "env": [{"bucket": "flags"}],
 "exec": {"command": ["app"], "on_exit": "restart-on-failure", "restart_backoff": {"min": "2s", "max": "1m"},
  "env": {"pristine": true, "allow": ["PATH"], "deny": ["AWS_*"], "set": {"MODE": "prod"}}}}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadConfig(writeConfig(t, tt.name, tt.body))
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if a := cfg.Actions["reload"]; !slices.Equal(a.Command, []string{"nginx", "-s", "reload"}) || a.Timeout != 10*time.Second {
				t.Errorf("actions.reload = %+v", a)
			}
			a := cfg.Templates[0]
			if a.OnChange == nil || a.OnChange.Ref != "reload" || !a.Rollback {
				t.Errorf("templates[0] on_change %+v, rollback %v", a.OnChange, a.Rollback)
			}
			if a.Check == nil || a.Check.Command[3] != "{{.Path}}" || a.Check.Timeout != 5*time.Second {
				t.Errorf("templates[0].check = %+v", a.Check)
			}
			if b := cfg.Templates[1].OnChange; b == nil || b.Ref != "" || !slices.Equal(b.Command, []string{"true"}) {
				t.Errorf("templates[1].on_change = %+v", b)
			}
			x := cfg.Exec
			if x.OnExit != "restart-on-failure" || x.RestartBackoff.Min != 2*time.Second || x.RestartBackoff.Max != time.Minute {
				t.Errorf("exec = %+v", x)
			}
			if !x.Env.Pristine || !slices.Equal(x.Env.Allow, []string{"PATH"}) || !slices.Equal(x.Env.Deny, []string{"AWS_*"}) || x.Env.Set["MODE"] != "prod" {
				t.Errorf("exec.env = %+v", x.Env)
			}
		})
	}
}
