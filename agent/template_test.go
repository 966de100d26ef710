package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// metricValue reads one series from /metrics; 0 when absent.
func metricValue(t *testing.T, ag *runningAgent, series string) float64 {
	t.Helper()
	_, body, err := httpGet(ag.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func lines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\n")
}

func templateCfg(url, dir string) *Config {
	cfg := Default()
	cfg.NATS.URL = url
	cfg.HTTP.Listen = ""
	cfg.Templates = []TemplateConfig{{
		Name: "conf", Bucket: "app", Dest: filepath.Join(dir, "sub", "app.conf"),
		Text:     `a={{ key "a" }}` + "\n",
		OnChange: &Action{Command: []string{"sh", "-c", "echo ran >> " + filepath.Join(dir, "actions.log")}},
	}}
	return &cfg
}

func TestTemplateRendersOnDependencyChangeOnly(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "1")
	dir := t.TempDir()
	ag := startAgent(t, templateCfg(s.ClientURL(), dir), Options{})
	dest := filepath.Join(dir, "sub", "app.conf")
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "a=1\n"))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if n := lines(filepath.Join(dir, "actions.log")); n != 1 {
			return fmt.Errorf("%d actions, want 1", n)
		}
		return nil
	})
	renders := `kvsync_renders_total{projection="conf"}`
	before := metricValue(t, ag, renders)

	// A key the template does not read: no render.
	for i := 0; i < 20; i++ {
		put(t, kv, "unrelated", fmt.Sprint(i))
	}
	put(t, kv, "a", "2")
	testutil.CheckFor(t, 2*time.Second, fileIs(dest, "a=2\n"))
	if got := metricValue(t, ag, renders); got != before+1 {
		t.Fatalf("renders %v -> %v, want exactly one more (unrelated keys must not render)", before, got)
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		if n := lines(filepath.Join(dir, "actions.log")); n != 2 {
			return fmt.Errorf("%d actions, want 2", n)
		}
		return nil
	})

	// Same bytes under a new revision: a render, no write, no action.
	put(t, kv, "a", "2")
	testutil.CheckFor(t, 2*time.Second, func() error {
		if got := metricValue(t, ag, renders); got != before+2 {
			return fmt.Errorf("renders %v", got)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // give a wrong action the chance to run
	if n := lines(filepath.Join(dir, "actions.log")); n != 2 {
		t.Fatalf("%d actions after identical bytes, want 2", n)
	}
}

func TestTemplateMissingKeyKeepsLastGoodFile(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "good")
	dir := t.TempDir()
	cfg := templateCfg(s.ClientURL(), dir)
	cfg.Templates[0].Text = `a={{ key "a" }} b={{ keyOr "b" "none" }}` + "\n"
	ag := startAgent(t, cfg, Options{})
	dest := filepath.Join(dir, "sub", "app.conf")
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "a=good b=none\n"))
	if err := kv.Delete(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 2*time.Second, func() error {
		st := ag.Status()
		if len(st.Projections[0].WaitingOn) == 0 || !strings.Contains(st.Projections[0].WaitingOn[0], "a") {
			return fmt.Errorf("status waiting_on = %v", st.Projections[0].WaitingOn)
		}
		return nil
	})
	if err := fileIs(dest, "a=good b=none\n")(); err != nil {
		t.Fatalf("last good file not kept: %v", err)
	}
	if got := metricValue(t, ag, `kvsync_errors_total{kind="render",projection="conf"}`); got < 1 {
		t.Fatalf("render error not counted: %v", got)
	}
	// keyOr recorded its key: a put of b re-renders once a is back.
	put(t, kv, "a", "back")
	put(t, kv, "b", "set")
	testutil.CheckFor(t, 2*time.Second, fileIs(dest, "a=back b=set\n"))
	if n := lines(filepath.Join(dir, "actions.log")); n > 3 {
		t.Fatalf("%d actions: an action ran for a failed render", n)
	}
}

func TestTemplateCrossBucket(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	_, other := testKV(t, s, jetstream.KeyValueConfig{Bucket: "other"})
	put(t, kv, "a", "1")
	put(t, other, "x", "from other")
	dir := t.TempDir()
	cfg := templateCfg(s.ClientURL(), dir)
	cfg.Templates[0].Text = `{{ key "a" }} {{ key "other:x" }}`
	startAgent(t, cfg, Options{})
	dest := filepath.Join(dir, "sub", "app.conf")
	testutil.CheckFor(t, 5*time.Second, fileIs(dest, "1 from other"))
	put(t, other, "x", "changed")
	testutil.CheckFor(t, 2*time.Second, fileIs(dest, "1 changed"))
}

func TestBurstCollapsesIntoOneAction(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "app"})
	put(t, kv, "a", "0")
	dir := t.TempDir()
	cfg := templateCfg(s.ClientURL(), dir)
	cfg.Templates[0].Text = `{{ range keys ">" }}{{ .Key }}={{ .Value }};{{ end }}`
	cfg.Wait = WaitConfig{Min: 300 * time.Millisecond, Max: 10 * time.Second}
	ag := startAgent(t, cfg, Options{})
	log := filepath.Join(dir, "actions.log")
	testutil.CheckFor(t, 5*time.Second, func() error {
		if n := lines(log); n != 1 {
			return fmt.Errorf("%d actions", n)
		}
		return nil
	})
	renders := `kvsync_renders_total{projection="conf"}`
	before := metricValue(t, ag, renders)
	// 1,000 puts in a burst (async publish, then wait for the acks).
	nc, js := testutil.Connect(t, s.ClientURL())
	defer nc.Close()
	var acks []jetstream.PubAckFuture
	for i := 0; i < 1000; i++ {
		f, err := js.PublishAsync(fmt.Sprintf("$KV.app.k%d", i%100), []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
	dest := filepath.Join(dir, "sub", "app.conf")
	testutil.CheckFor(t, 10*time.Second, func() error {
		b, _ := os.ReadFile(dest)
		if !strings.Contains(string(b), "k99=999;") {
			return fmt.Errorf("final values not rendered yet")
		}
		return nil
	})
	testutil.CheckFor(t, 5*time.Second, func() error {
		if n := lines(log); n != 2 {
			return fmt.Errorf("%d actions, want 2", n)
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond)
	if n := lines(log); n != 2 {
		t.Fatalf("%d actions after the burst settled, want exactly one for the burst", n)
	}
	if got := metricValue(t, ag, renders) - before; got != 1 {
		t.Fatalf("%v renders for the burst, want 1", got)
	}
}

func TestEnvFileAndExecRestart(t *testing.T) {
	s := testutil.RunServer(t, nil)
	_, kv := testKV(t, s, jetstream.KeyValueConfig{Bucket: "flags"})
	put(t, kv, "flags.beta", "on")
	put(t, kv, "flags.color-mode", "it's \"dark\" $HOME\nline2")
	dir := t.TempDir()
	out := filepath.Join(dir, "child.out")
	cfg := Default()
	cfg.NATS.URL = s.ClientURL()
	cfg.HTTP.Listen = ""
	cfg.Env = []EnvConfig{{Name: "flags", Bucket: "flags", Keys: []string{"flags.>"}, StripPrefix: "flags.", Prefix: "FLAG_", File: filepath.Join(dir, "flags.env")}}
	cfg.Exec = &ExecConfig{
		Command:     []string{"sh", "-c", `printf '%s|%s|%s\n' "$$" "$FLAG_BETA" "$FLAG_COLOR_MODE" >> ` + out + `; exec sleep 60`},
		KillTimeout: 2 * time.Second,
	}
	ag := startAgent(t, &cfg, Options{})
	testutil.CheckFor(t, 5*time.Second, func() error {
		if lines(out) != 2 { // the value has one newline
			return fmt.Errorf("child output: %d lines", lines(out))
		}
		return nil
	})
	b, _ := os.ReadFile(out)
	if !strings.Contains(string(b), "|on|it's \"dark\" $HOME\nline2") {
		t.Fatalf("child env: %q", b)
	}
	firstPID := ag.Status().Child.PID
	// The dotenv file round-trips through sh.
	env, err := os.ReadFile(filepath.Join(dir, "flags.env"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "flags.env")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("env file mode %v, want 0600", fi.Mode().Perm())
	}
	if !strings.Contains(string(env), "FLAG_BETA") {
		t.Fatalf("env file: %s", env)
	}
	put(t, kv, "flags.beta", "off")
	testutil.CheckFor(t, 10*time.Second, func() error {
		b, _ := os.ReadFile(out)
		if !strings.Contains(string(b), "|off|") {
			return fmt.Errorf("child not restarted with the new env: %q", b)
		}
		return nil
	})
	testutil.CheckFor(t, 2*time.Second, func() error {
		if pid := ag.Status().Child.PID; pid == firstPID || pid == 0 {
			return fmt.Errorf("pid %d, first %d", pid, firstPID)
		}
		return nil
	})
	if processAlive(firstPID) {
		t.Fatalf("old child %d still alive after restart", firstPID)
	}
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	return p.Signal(syscall.Signal(0)) == nil
}
