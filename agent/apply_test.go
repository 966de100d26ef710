package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/process"
	"github.com/kvsync/kvsync/agent/watch"
	"github.com/kvsync/kvsync/internal/testutil"
)

// countLines counts the lines of a file the test's commands append to; a missing
// file has none.
func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func linesAre(t *testing.T, path string, want int) func() error {
	return func() error {
		if n := countLines(t, path); n != want {
			return fmt.Errorf("%s has %d lines, want %d", path, n, want)
		}
		return nil
	}
}

// projStatus returns the status of the named projection.
func projStatus(a *Agent, name string) ProjectionStatus {
	for _, p := range a.Status().Projections {
		if p.Name == name {
			return p
		}
	}
	return ProjectionStatus{}
}

// appendCmd is a command that appends a line to path.
func appendCmd(path string) []string {
	return []string{"sh", "-c", `echo run >> "$0"`, path}
}

// keyTemplateCfg is one template rendering key v of bucket into dest.
func keyTemplateCfg(url, bucket, dest string) *Config {
	cfg := Default()
	cfg.NATS.URL = url
	cfg.HTTP.Listen = ""
	cfg.Templates = []TemplateConfig{{Name: "t", Bucket: bucket, Text: `{{ key "v" }}`, Dest: dest}}
	return &cfg
}

func TestCheckFailureKeepsLastGoodFileAndRunsNoAction(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	dir := t.TempDir()
	dest, runs, seen := filepath.Join(dir, "conf", "app.conf"), filepath.Join(dir, "runs"), filepath.Join(dir, "seen")
	cfg := keyTemplateCfg(s.ClientURL(), "app", dest)
	// The check records the folder of the staged file, prints a line and
	// passes only for a file that says "good".
	cfg.Templates[0].Check = &CheckConfig{Command: []string{"sh", "-c",
		`dirname "$1" > "$0"; echo "checking $1"; grep -q good "$1" || { echo "syntax error in line 1" >&2; exit 1; }`,
		seen, "{{.Path}}"}}
	cfg.Templates[0].OnChange = &Action{Command: appendCmd(runs)}
	put(t, kv, "v", "good 1")
	a := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 10*time.Second, fileIs(dest, "good 1"))
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 1))
	if err := fileIs(seen, filepath.Dir(dest)+"\n")(); err != nil {
		t.Errorf("the staged file is not in the dest's folder: %v", err)
	}

	rev := put(t, kv, "v", "broken")
	testutil.CheckFor(t, 10*time.Second, func() error {
		st := projStatus(a.Agent, "t")
		if c := st.LastCheck; c == nil || c.OK {
			return fmt.Errorf("last check %+v, want a failed one", c)
		}
		return nil
	})
	st := projStatus(a.Agent, "t")
	if !strings.Contains(st.LastCheck.Output, "syntax error in line 1") || !strings.Contains(st.LastCheck.Detail, "exit 1") {
		t.Errorf("last check = %+v, want the check's output and exit 1", st.LastCheck)
	}
	if !strings.Contains(st.LastError, "check failed") {
		t.Errorf("last error = %q, want the check failure", st.LastError)
	}
	if st.LastRevision != rev {
		t.Errorf("last revision %d, want %d", st.LastRevision, rev)
	}
	if err := fileIs(dest, "good 1")(); err != nil {
		t.Errorf("a failed check replaced the file: %v", err)
	}
	if n := countLines(t, runs); n != 1 {
		t.Errorf("action ran %d times, want 1 (none for the failed check)", n)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), ".kvsync-tmp-*")); len(m) > 0 {
		t.Errorf("staged files left behind: %v", m)
	}
	if !strings.Contains(a.logs.String(), "syntax error in line 1") {
		t.Errorf("the log does not show the check's output")
	}
	metricHas(t, a.url, `kvsync_checks_total{projection="t",result="failed"} 1`)

	put(t, kv, "v", "good 2")
	testutil.CheckFor(t, 10*time.Second, fileIs(dest, "good 2"))
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 2))
	// The status is published after the batch: poll for it.
	testutil.CheckFor(t, 10*time.Second, func() error {
		if c := projStatus(a.Agent, "t").LastCheck; c == nil || !c.OK {
			return fmt.Errorf("last check %+v, want a passed one", c)
		}
		return nil
	})
}

// metricHas fails unless the agent's /metrics has line. The test agents serve
// HTTP on their own listener.
func metricHas(t *testing.T, url, line string) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, func() error {
		_, body, err := httpGet(url + "/metrics")
		if err != nil {
			return err
		}
		if !strings.Contains(body, line) {
			return fmt.Errorf("/metrics has no %q", line)
		}
		return nil
	})
}

func TestCheckBadCommands(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	for _, tc := range []struct {
		name    string
		check   CheckConfig
		wantErr string
	}{
		{"hangs", CheckConfig{Command: []string{"sh", "-c", "sleep 60", "{{.Path}}"}, Timeout: 200 * time.Millisecond}, "timed out after 200ms"},
		{"megabytes", CheckConfig{Command: []string{"sh", "-c", "yes 'a long line of output' | head -c 8000000; exit 2", "{{.Path}}"}}, "exit 2"},
		{"missing", CheckConfig{Command: []string{"/nonexistent/check-tool", "{{.Path}}"}}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "out")
			if err := os.WriteFile(dest, []byte("last good"), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := keyTemplateCfg(s.ClientURL(), "app", dest)
			cfg.Templates[0].Check = &tc.check
			put(t, kv, "v", "new "+tc.name)
			a := startAgent(t, cfg, Options{})
			testutil.CheckFor(t, 20*time.Second, func() error {
				if c := projStatus(a.Agent, "t").LastCheck; c == nil || c.OK {
					return fmt.Errorf("last check %+v, want a failed one", c)
				}
				return nil
			})
			c := projStatus(a.Agent, "t").LastCheck
			if !strings.Contains(c.Error, tc.wantErr) {
				t.Errorf("check error %q, want %q", c.Error, tc.wantErr)
			}
			if len(c.Output) > process.OutputTail+3 {
				t.Errorf("check output is %d bytes, want at most %d", len(c.Output), process.OutputTail+3)
			}
			if err := fileIs(dest, "last good")(); err != nil {
				t.Error(err)
			}
			if !projStatus(a.Agent, "t").Synced {
				t.Error("projection not synced after a failed check")
			}
		})
	}
}

func TestNamedActionRunsOncePerBatch(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	cfg := keyTemplateCfg(s.ClientURL(), "app", filepath.Join(dir, "a"))
	cfg.Actions = map[string]Action{"reload": {Command: appendCmd(runs)}}
	cfg.Templates[0].OnChange = &Action{Ref: "reload"}
	for _, n := range []string{"b", "c"} {
		cfg.Templates = append(cfg.Templates, TemplateConfig{Name: n, Bucket: "app", Text: `{{ key "v" }}`,
			Dest: filepath.Join(dir, n), OnChange: &Action{Ref: "reload"}})
	}
	put(t, kv, "v", "0")
	a := startAgent(t, cfg, Options{})
	// Each put changes all three files: the shared action runs once per put.
	// A second run for one put would make the count overshoot and never
	// equal the next expected value.
	for i := 1; i <= 4; i++ {
		if i > 1 {
			put(t, kv, "v", fmt.Sprint(i))
		}
		want := "0"
		if i > 1 {
			want = fmt.Sprint(i)
		}
		for _, n := range []string{"a", "b", "c"} {
			testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, n), want))
		}
		testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, i))
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		for _, n := range []string{"t", "b", "c"} {
			// One run, triggered by all three projections.
			la := projStatus(a.Agent, n).LastAction
			if la == nil || !strings.Contains(la.Trigger, "t: ") || !strings.Contains(la.Trigger, "b: ") || !strings.Contains(la.Trigger, "c: ") {
				return fmt.Errorf("%s: last action %+v", n, la)
			}
		}
		return nil
	})
	metricHas(t, a.url, `kvsync_actions_total{projection="actions.reload",result="ok"} 4`)
	if n := countLines(t, runs); n != 4 {
		t.Errorf("action ran %d times for 4 batches", n)
	}
}

func TestRollbackRestoresPreviousBytes(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	dir := t.TempDir()
	dest, runs := filepath.Join(dir, "app.conf"), filepath.Join(dir, "runs")
	cfg := keyTemplateCfg(s.ClientURL(), "app", dest)
	cfg.Templates[0].Rollback = true
	// The "reload" fails while the live file says "bad".
	cfg.Templates[0].OnChange = &Action{Command: []string{"sh", "-c", `echo run >> "$0"; ! grep -q bad "$1"`, runs, dest}}
	put(t, kv, "v", "good 1")
	a := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 1))

	rev := put(t, kv, "v", "bad")
	// The failed run, then the run after the rollback.
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 3))
	testutil.CheckFor(t, 10*time.Second, func() error {
		st := projStatus(a.Agent, "t")
		if st.RolledBack == nil || st.LastAction == nil || st.LastAction.Error != "" {
			return fmt.Errorf("rolled back %+v, last action %+v", st.RolledBack, st.LastAction)
		}
		return nil
	})
	if err := fileIs(dest, "good 1")(); err != nil {
		t.Fatalf("not rolled back: %v", err)
	}
	st := projStatus(a.Agent, "t")
	if st.RolledBack.Revision != rev || !strings.Contains(st.RolledBack.Reason, "action failed") {
		t.Errorf("rolled back = %+v, want revision %d and the action's failure", st.RolledBack, rev)
	}
	metricHas(t, a.url, `kvsync_rollbacks_total{projection="t"} 1`)
	metricHas(t, a.url, fmt.Sprintf(`kvsync_rejected_revision{projection="t"} %d`, rev))

	put(t, kv, "v", "good 2")
	testutil.CheckFor(t, 10*time.Second, fileIs(dest, "good 2"))
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 4))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if rb := projStatus(a.Agent, "t").RolledBack; rb != nil {
			return fmt.Errorf("still reported rolled back: %+v", rb)
		}
		return nil
	})
	metricHas(t, a.url, `kvsync_rejected_revision{projection="t"} 0`)
}

func TestFilesCheckPerFileAndRollbackWithDiff(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	dir := filepath.Join(t.TempDir(), "conf.d")
	runs := filepath.Join(t.TempDir(), "runs")
	cfg := filesCfg(s.ClientURL(), "app", dir)
	f := &cfg.Files[0]
	f.Check = &CheckConfig{Command: []string{"sh", "-c", `! grep -q invalid "$0"`, "{{.Path}}"}}
	f.Rollback = true
	f.OnChange = &Action{Command: []string{"sh", "-c", `echo run >> "$0"; ! grep -rq bad "$1"`, runs, dir}}
	put(t, kv, "a", "one")
	a := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "one"))
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 1))

	// A file that fails its check stays out; the others of the batch go.
	put(t, kv, "b", "invalid")
	testutil.CheckFor(t, 10*time.Second, func() error {
		if c := projStatus(a.Agent, "files").LastCheck; c == nil || c.OK {
			return fmt.Errorf("last check %+v", c)
		}
		return nil
	})
	if err := fileGone(filepath.Join(dir, "b"))(); err != nil {
		t.Error(err)
	}
	if n := countLines(t, runs); n != 1 {
		t.Errorf("action ran %d times, want 1", n)
	}

	// An action failure rolls the batch back.
	rev := put(t, kv, "a", "bad")
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 3))
	testutil.CheckFor(t, 10*time.Second, func() error {
		if rb := projStatus(a.Agent, "files").RolledBack; rb == nil || rb.Revision != rev {
			return fmt.Errorf("rolled back %+v, want revision %d", rb, rev)
		}
		return nil
	})
	if err := fileIs(filepath.Join(dir, "a"), "one")(); err != nil {
		t.Fatal(err)
	}
	_, js := testutil.Connect(t, s.ClientURL())
	_ = nc
	diffs, err := Diff(context.Background(), cfg, js)
	if err != nil {
		t.Fatal(err)
	}
	var note string
	for _, d := range diffs {
		if d.Key == "a" {
			note = d.Note
		}
	}
	if want := fmt.Sprintf("rolled back: action failed at revision %d", rev); note != want {
		t.Errorf("diff note of a = %q, want %q (diffs %+v)", note, want, diffs)
	}

	// The next good value goes live and the note goes away.
	put(t, kv, "a", "two")
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "two"))
	testutil.CheckFor(t, 10*time.Second, linesAre(t, runs, 4))
	testutil.CheckFor(t, 10*time.Second, func() error {
		diffs, err := Diff(context.Background(), cfg, js)
		if err != nil {
			return err
		}
		for _, d := range diffs {
			if d.Note != "" {
				return fmt.Errorf("note left: %+v", d)
			}
		}
		return nil
	})
}

func TestSnapshotCheckSeesWholeFolder(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	dir := filepath.Join(t.TempDir(), "conf.d")
	cfg := filesCfg(s.ClientURL(), "app", dir)
	cfg.Files[0].Atomic = AtomicSnapshot
	// Valid only while every file a names exists in the staged folder.
	cfg.Files[0].Check = &CheckConfig{Command: []string{"sh", "-c", `test -f "$0/$(cat "$0/a")"`, "{{.Path}}"}}
	put(t, kv, "a", "b")
	put(t, kv, "b", "x")
	a := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "b"))
	put(t, kv, "a", "c") // names a file that is not there: the whole batch stays out
	testutil.CheckFor(t, 10*time.Second, func() error {
		if c := projStatus(a.Agent, "files").LastCheck; c == nil || c.OK {
			return fmt.Errorf("last check %+v", c)
		}
		return nil
	})
	if err := fileIs(filepath.Join(dir, "a"), "b")(); err != nil {
		t.Error(err)
	}
	put(t, kv, "c", "y")
	put(t, kv, "a", "c")
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "a"), "c"))
	testutil.CheckFor(t, 10*time.Second, fileIs(filepath.Join(dir, "c"), "y"))
}

func TestEnvFileCheck(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "flags"})
	file := filepath.Join(t.TempDir(), "flags.env")
	cfg := Default()
	cfg.NATS.URL = s.ClientURL()
	cfg.HTTP.Listen = ""
	cfg.Env = []EnvConfig{{Name: "flags", Bucket: "flags", Prefix: "F_", File: file,
		Check: &CheckConfig{Command: []string{"sh", "-c", `! grep -q off "$0"`, "{{.Path}}"}}}}
	put(t, kv, "x", "on")
	a := startAgent(t, &cfg, Options{})
	testutil.CheckFor(t, 10*time.Second, fileIs(file, "F_X='on'\n"))
	put(t, kv, "x", "off")
	testutil.CheckFor(t, 10*time.Second, func() error {
		if c := projStatus(a.Agent, "flags").LastCheck; c == nil || c.OK {
			return fmt.Errorf("last check %+v", c)
		}
		return nil
	})
	if err := fileIs(file, "F_X='on'\n")(); err != nil {
		t.Error(err)
	}
}

func TestValidateSafeApply(t *testing.T) {
	cfg := Default()
	cfg.NATS.URL = "nats://127.0.0.1:4222"
	cfg.Actions = map[string]Action{"bad": {Command: []string{""}}, "ok": {Command: []string{"true"}}, "ref": {Ref: "ok"}}
	cfg.Templates = []TemplateConfig{
		{Name: "a", Text: "x", Dest: "/tmp/kvsync-never-a", OnChange: &Action{Ref: "nope"}},
		{Name: "b", Text: "x", Dest: "/tmp/kvsync-never-b", Rollback: true, Check: &CheckConfig{}},
	}
	cfg.Exec = &ExecConfig{Command: []string{"true"}, OnExit: "sometimes",
		Env: ExecEnvConfig{Allow: []string{"[A-"}, Deny: []string{""}, Set: map[string]string{"1X": "y"}}}
	cfg.Default()
	err := cfg.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`templates[0].on_change: "nope" is not defined in actions`,
		`actions.bad.command: program name is empty`,
		`actions.ref: a named action must be an action`,
		`templates[1].check.command: required`,
		`templates[1].rollback: needs an on_change action`,
		`exec.on_exit: "sometimes" is not exit, restart or restart-on-failure`,
		`exec.env.allow[0]: "[A-" is not a valid glob pattern`,
		`exec.env.deny[0]: "" is not a valid glob pattern`,
		`exec.env.set: "1X" is not a valid environment variable name`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// execCfg is an env projection of bucket "flags" feeding an exec child.
func execCfg(url string, argv ...string) *Config {
	cfg := Default()
	cfg.NATS.URL = url
	cfg.HTTP.Listen = ""
	cfg.Env = []EnvConfig{{Name: "flags", Bucket: "flags", Prefix: "F_"}}
	cfg.Exec = &ExecConfig{Command: argv, KillTimeout: 2 * time.Second}
	return &cfg
}

func TestExecCrashLoopRestartsWithGrowingDelays(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "flags"})
	starts := filepath.Join(t.TempDir(), "starts")
	cfg := execCfg(s.ClientURL(), "/bin/sh", "-c", `date +%s%N >> "$0"; exit 3`, starts)
	cfg.Exec.OnExit = process.OnExitRestart
	cfg.Exec.RestartBackoff = BackoffConfig{Min: 50 * time.Millisecond, Max: 400 * time.Millisecond}
	put(t, kv, "x", "1")
	a := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 20*time.Second, func() error {
		if n := countLines(t, starts); n < 5 {
			return fmt.Errorf("%d starts", n)
		}
		return nil
	})
	b, err := os.ReadFile(starts)
	if err != nil {
		t.Fatal(err)
	}
	var at []time.Duration
	for _, l := range strings.Fields(string(b)) {
		var ns int64
		if _, err := fmt.Sscan(l, &ns); err != nil {
			t.Fatal(err)
		}
		at = append(at, time.Duration(ns))
	}
	// Delays double from 50ms up to 400ms, each jittered into its upper
	// half: the fourth is at least 200ms, four times the first's maximum.
	if gap := at[4] - at[3]; gap < 200*time.Millisecond {
		t.Errorf("fourth restart after %v, want at least 200ms (starts %v)", gap, at)
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		c := a.Status().Child
		if c == nil || c.Exits < 4 || c.ExitRestarts < 4 || c.LastExitCode == nil || *c.LastExitCode != 3 || c.LastExitAt == nil || c.Backoff != "400ms" {
			return fmt.Errorf("child status %+v", c)
		}
		return nil
	})
	_, body, err := httpGet(a.url + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"exits"`, `"exit_restarts"`, `"last_exit_code": 3`, `"backoff": "400ms"`} {
		if !strings.Contains(body, field) {
			t.Errorf("/status lacks %s:\n%s", field, body)
		}
	}
	metricHas(t, a.url, `kvsync_child_exits_total{code="3"}`)
}

func TestExecBackoffResetsAfterAGoodRun(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "flags"})
	starts := filepath.Join(t.TempDir(), "starts")
	// Each child stays up longer than the backoff's max.
	cfg := execCfg(s.ClientURL(), "/bin/sh", "-c", `echo >> "$0"; /bin/sleep 0.3; exit 1`, starts)
	cfg.Exec.OnExit = process.OnExitRestartOnFailure
	cfg.Exec.RestartBackoff = BackoffConfig{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	put(t, kv, "x", "1")
	a := startAgent(t, cfg, Options{})
	testutil.CheckFor(t, 20*time.Second, func() error {
		c := a.Status().Child
		if c == nil || c.Exits < 3 {
			return fmt.Errorf("child status %+v", c)
		}
		return nil
	})
	if c := a.Status().Child; c.Backoff != "40ms" {
		t.Errorf("backoff %s after exits of children that ran past max, want 40ms (the first step again)", c.Backoff)
	}
}

func TestExecRestartOnFailureExitsOnSuccess(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "flags"})
	cfg := execCfg(s.ClientURL(), "/bin/sh", "-c", "exit 0")
	cfg.Exec.OnExit = process.OnExitRestartOnFailure
	cfg.Default()
	put(t, kv, "x", "1")
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var ce *ChildExit
	if err := a.Run(ctx); !errors.As(err, &ce) || ce.Code != 0 {
		t.Fatalf("Run = %v, want the child's exit 0", err)
	}
}

func TestExecEnvPristineAndDeny(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "flags"})
	t.Setenv("KVSYNC_APPLY_SECRET", "s3cret")
	put(t, kv, "x", "on")
	for _, tc := range []struct {
		name    string
		env     ExecEnvConfig
		want    []string
		notWant []string
	}{
		{"pristine", ExecEnvConfig{Pristine: true, Set: map[string]string{"FIXED": "1"}},
			[]string{"F_X=on", "FIXED=1"}, []string{"KVSYNC_APPLY_SECRET", "PATH=", "HOME="}},
		{"deny", ExecEnvConfig{Deny: []string{"KVSYNC_APPLY_*"}},
			[]string{"F_X=on", "PATH="}, []string{"KVSYNC_APPLY_SECRET"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "env")
			cfg := execCfg(s.ClientURL(), "/bin/sh", "-c", `/usr/bin/env > "$0.tmp" && mv "$0.tmp" "$0"; exec /bin/sleep 60`, out)
			cfg.Exec.Env = tc.env
			startAgent(t, cfg, Options{})
			testutil.CheckFor(t, 10*time.Second, func() error {
				_, err := os.Stat(out)
				return err
			})
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			vars := "\n" + string(b)
			for _, w := range tc.want {
				if !strings.Contains(vars, "\n"+w) {
					t.Errorf("child env lacks %s:\n%s", w, b)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(vars, "\n"+w) {
					t.Errorf("child env has %s:\n%s", w, b)
				}
			}
		})
	}
}

// BenchmarkOwnerSafeApply is one put through a files projection (no fsync)
// and through a template, plain, with rollback: (the replaced bytes are read
// first) and with a check that runs /bin/true (a process per changed file).
func BenchmarkOwnerSafeApply(b *testing.B) {
	for _, kind := range []string{"files", "template"} {
		for _, mode := range []string{"plain", "rollback", "check"} {
			b.Run(kind+"/"+mode, func(b *testing.B) {
				cfg := benchFilesConfig(b.TempDir(), false)
				if kind == "template" {
					cfg.Files = nil
					cfg.Templates = []TemplateConfig{{Name: "t", Bucket: "b", Dest: filepath.Join(b.TempDir(), "out"), Text: `{{ key "k.000000" }}`}}
				}
				var check *CheckConfig
				rollback := mode == "rollback"
				if mode == "check" {
					check = &CheckConfig{Command: []string{"/bin/true", "{{.Path}}"}}
				}
				act := &Action{Command: []string{"/bin/true"}}
				if kind == "files" {
					cfg.Files[0].Check, cfg.Files[0].Rollback, cfg.Files[0].OnChange = check, rollback, act
				} else {
					cfg.Templates[0].Check, cfg.Templates[0].Rollback, cfg.Templates[0].OnChange = check, rollback, act
				}
				o := benchOwner(b, cfg)
				syncBucket(b, o, "b", 100)
				vals := [][]byte{[]byte("value one"), []byte("value two")}
				rev := uint64(1000)
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					rev++
					o.handle(fromWatch(&watch.Entry{Bucket: "b", Key: "k.000000", Op: OpPut, Value: vals[i%2], Revision: rev, Created: time.Now()}))
					if _, err := o.flush(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
