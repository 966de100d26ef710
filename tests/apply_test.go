package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// lineCount polls until the file a command appends to has want lines.
func lineCount(t *testing.T, path string, want int) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, func() error {
		b, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		if n := strings.Count(string(b), "\n"); n != want {
			return fmt.Errorf("%s has %d lines, want %d", path, n, want)
		}
		return nil
	})
}

func TestNamedActionRunsOncePerPut(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	var body strings.Builder
	fmt.Fprintf(&body, "actions:\n  reload: {command: [sh, -c, 'echo run >> %s']}\ntemplates:\n", runs)
	for _, n := range []string{"a", "b", "c"} {
		fmt.Fprintf(&body, "  - {name: %s, bucket: app, text: '{{ key \"v\" }}', dest: %s, on_change: reload}\n", n, filepath.Join(dir, n))
	}
	ag := startAgent(t, s.ClientURL(), body.String())
	for i := 1; i <= 3; i++ {
		if _, err := kv.PutString(context.Background(), "v", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"a", "b", "c"} {
			fileHolds(t, filepath.Join(dir, n), fmt.Sprint(i), 10*time.Second)
		}
		// Once per put: a second run would overshoot and never match the
		// next count.
		lineCount(t, runs, i)
	}
	ag.alive(t)
}

func TestValidateUndefinedActionName(t *testing.T) {
	cfg := writeAgentConfig(t, "nats://127.0.0.1:1", "", `
actions:
  reload: {command: [nginx, -s, reload]}
templates:
  - {name: a, text: x, dest: /nonexistent/a, on_change: relaod}
`)
	_, stderr, code := runKvsync(t, "validate", "-c", cfg)
	if code != 2 || !strings.Contains(stderr, `templates[0].on_change: "relaod" is not defined in actions`) {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 2 and the undefined name with its path", code, stderr)
	}
}

func TestRollbackRejectsRevisionAndDiffSaysWhy(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	dir := filepath.Join(t.TempDir(), "conf.d")
	runs := filepath.Join(t.TempDir(), "runs")
	// The "reload" fails while a projected file says "bad".
	ag := startAgent(t, s.ClientURL(), fmt.Sprintf(`
files:
  - name: conf
    bucket: app
    dir: %s
    rollback: true
    check: {command: [sh, -c, '! grep -q invalid "$0"', "{{.Path}}"], timeout: 5s}
    on_change: {command: [sh, -c, 'echo run >> %s; ! grep -rq bad %s']}
`, dir, runs, dir))
	ctx := context.Background()
	if _, err := kv.PutString(ctx, "a", "good"); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, filepath.Join(dir, "a"), "good", 10*time.Second)
	lineCount(t, runs, 1)

	// A value the check refuses: the file keeps its last good version and
	// no action runs.
	if _, err := kv.PutString(ctx, "a", "invalid"); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Projections []struct {
			Name      string `json:"name"`
			LastCheck *struct {
				OK    bool   `json:"ok"`
				Error string `json:"error"`
			} `json:"last_check"`
			RolledBack *struct {
				Revision uint64 `json:"revision"`
				Reason   string `json:"reason"`
			} `json:"rolled_back"`
		} `json:"projections"`
	}
	status := func() error {
		_, body, err := ag.get("/status")
		if err != nil {
			return err
		}
		st.Projections = nil // absent fields must not keep old values
		return json.Unmarshal([]byte(body), &st)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		if err := status(); err != nil {
			return err
		}
		if c := st.Projections[0].LastCheck; c == nil || c.OK {
			return fmt.Errorf("last check %+v", c)
		}
		return nil
	})
	fileHolds(t, filepath.Join(dir, "a"), "good", time.Second)
	lineCount(t, runs, 1)

	// A value that makes the action fail: rolled back, reported, and
	// explained by kvsync diff.
	rev, err := kv.PutString(ctx, "a", "bad")
	if err != nil {
		t.Fatal(err)
	}
	lineCount(t, runs, 3) // the failed run and the run after the rollback
	testutil.CheckFor(t, 10*time.Second, func() error {
		if err := status(); err != nil {
			return err
		}
		if rb := st.Projections[0].RolledBack; rb == nil || rb.Revision != rev {
			return fmt.Errorf("rolled back %+v, want revision %d", rb, rev)
		}
		return nil
	})
	fileHolds(t, filepath.Join(dir, "a"), "good", time.Second)
	out, stderr, code := runKvsync(t, "diff", "-c", ag.cfg)
	if want := fmt.Sprintf("(files conf, app:a): rolled back: action failed at revision %d", rev); !strings.Contains(out, want) {
		t.Errorf("kvsync diff (exit %d) does not say why:\n%s%s\nwant %q", code, out, stderr, want)
	}

	// The next good value goes live.
	if _, err := kv.PutString(ctx, "a", "better"); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, filepath.Join(dir, "a"), "better", 10*time.Second)
	lineCount(t, runs, 4)
	testutil.CheckFor(t, 10*time.Second, func() error {
		if err := status(); err != nil {
			return err
		}
		if rb := st.Projections[0].RolledBack; rb != nil {
			return fmt.Errorf("still rolled back: %+v", rb)
		}
		return nil
	})
	ag.alive(t)
}

func TestExecRestartStillStopsOnSIGTERM(t *testing.T) {
	s := testutil.RunServer(t, nil)
	createBucket(t, jetStream(t, s), "flags", 1)
	dir := t.TempDir()
	marker := filepath.Join(dir, "up")
	// The child crashes once (exit 5), is restarted, and then exits 3 on
	// the SIGTERM kvsync forwards: kvsync must exit with that 3, not restart it.
	cfg := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf(`
env:
  - {name: flags, bucket: flags}
exec:
  command: ["sh", "-c", "trap 'exit 3' TERM; echo up >> %s; [ $(wc -l < %s) -eq 1 ] && exit 5; while :; do sleep 0.05; done"]
  on_exit: restart
  restart_backoff: {min: 10ms, max: 100ms}
  kill_timeout: 5s
`, marker, marker))
	p := startKvsync(t, run{args: []string{"run", "-c", cfg}})
	fileHolds(t, marker, "up\nup\n", 10*time.Second)
	if code := p.stop(t, syscall.SIGTERM, 10*time.Second); code != 3 {
		t.Fatalf("kvsync exit %d, want the child's 3; stderr:\n%s", code, p.stderr.String())
	}
}
