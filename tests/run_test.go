package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// fileHolds polls until path holds want.
func fileHolds(t *testing.T, path, want string, timeout time.Duration) {
	t.Helper()
	testutil.CheckFor(t, timeout, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(b) != want {
			return fmt.Errorf("%s = %q, want %q", path, b, want)
		}
		return nil
	})
}

func TestRunExecExitCodeIsKvsyncs(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "flags", 1)
	if _, err := kv.PutString(context.Background(), "code", "7"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf(`
env:
  - {name: flags, bucket: flags, prefix: "KV_"}
exec:
  command: ["sh", "-c", "echo $KV_CODE > %s/seen; exit $KV_CODE"]
`, dir))
	_, stderr, code := runWith(t, run{args: []string{"run", "-c", cfg}})
	if code != 7 {
		t.Fatalf("exit %d, want the child's 7; stderr:\n%s", code, stderr)
	}
	fileHolds(t, filepath.Join(dir, "seen"), "7\n", time.Second)
}

func TestRunForwardsSIGTERMToChild(t *testing.T) {
	s := testutil.RunServer(t, nil)
	createBucket(t, jetStream(t, s), "flags", 1)
	dir := t.TempDir()
	marker := filepath.Join(dir, "got")
	cfg := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf(`
env:
  - {name: flags, bucket: flags}
exec:
  command: ["sh", "-c", "trap 'echo TERM > %s; exit 3' TERM; echo up > %s.up; while :; do sleep 0.05; done"]
  kill_timeout: 5s
`, marker, marker))
	p := startKvsync(t, run{args: []string{"run", "-c", cfg}})
	fileHolds(t, marker+".up", "up\n", 10*time.Second)
	if code := p.stop(t, syscall.SIGTERM, 10*time.Second); code != 3 {
		t.Fatalf("kvsync exit %d, want the child's 3; stderr:\n%s", code, p.stderr.String())
	}
	fileHolds(t, marker, "TERM\n", time.Second)
}

func TestRunStopsChildOnShutdownWithoutExec(t *testing.T) {
	// Without exec, SIGTERM stops kvsync with exit 0.
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	dir := t.TempDir()
	ag := startAgent(t, s.ClientURL(), fmt.Sprintf("files:\n  - {bucket: app, dir: %q}\n", dir))
	ag.waitReady(t, 10*time.Second)
	if _, err := kv.PutString(context.Background(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, filepath.Join(dir, "k"), "v", 5*time.Second)
	if code := ag.stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0; stderr:\n%s", code, ag.stderr.String())
	}
}

func TestRunSIGHUPReloadsConfig(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	if _, err := kv.PutString(context.Background(), "k", "v1"); err != nil {
		t.Fatal(err)
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	ag := startAgent(t, s.ClientURL(), fmt.Sprintf("files:\n  - {bucket: app, dir: %q}\n", dirA))
	fileHolds(t, filepath.Join(dirA, "k"), "v1", 10*time.Second)
	orig, err := os.ReadFile(ag.cfg)
	if err != nil {
		t.Fatal(err)
	}

	// A bad config: the running one stays, the error is logged.
	if err := os.WriteFile(ag.cfg, []byte("files:\n  - {bucket: app}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ag.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		if !strings.Contains(ag.stderr.String(), "keeping the running config") {
			return fmt.Errorf("no reload error logged")
		}
		return nil
	})
	if _, err := kv.PutString(context.Background(), "k", "v2"); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, filepath.Join(dirA, "k"), "v2", 5*time.Second)

	// A good one: projection moves to dirB.
	good := strings.Replace(string(orig), dirA, dirB, 1)
	if err := os.WriteFile(ag.cfg, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ag.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, filepath.Join(dirB, "k"), "v2", 10*time.Second)
	ag.alive(t)
}

func TestRunOnce(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	for i := 0; i < 20; i++ {
		if _, err := kv.PutString(context.Background(), fmt.Sprintf("k%d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	cfg := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf(`
files:
  - {bucket: app, dir: %q}
templates:
  - {name: t, bucket: app, text: '{{ key "k3" }}', dest: %q}
`, filepath.Join(dir, "files"), filepath.Join(dir, "t.conf")))
	_, stderr, code := runWith(t, run{args: []string{"run", "--once", "-c", cfg}})
	if code != 0 {
		t.Fatalf("run --once exit %d; stderr:\n%s", code, stderr)
	}
	for i := 0; i < 20; i++ {
		fileHolds(t, filepath.Join(dir, "files", fmt.Sprintf("k%d", i)), fmt.Sprint(i), 0)
	}
	fileHolds(t, filepath.Join(dir, "t.conf"), "3", 0)

	// A missing key: exit 1 naming it, last good file kept.
	bad := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf(`
templates:
  - {name: t, bucket: app, text: '{{ key "absent.key" }}', dest: %q}
`, filepath.Join(dir, "t.conf")))
	_, stderr, code = runWith(t, run{args: []string{"run", "--once", "-c", bad}})
	if code != 1 || !strings.Contains(stderr, "absent.key") {
		t.Fatalf("run --once with a missing key: exit %d, stderr:\n%s", code, stderr)
	}
	fileHolds(t, filepath.Join(dir, "t.conf"), "3", 0)
}

func TestRunDryRunWritesNothing(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	if _, err := kv.PutString(context.Background(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "out")
	cfg := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf("files:\n  - {bucket: app, dir: %q}\n", dir))
	p := startKvsync(t, run{args: []string{"run", "--dry-run", "-c", cfg}})
	testutil.CheckFor(t, 10*time.Second, func() error {
		if !strings.Contains(p.stderr.String(), "dry run") {
			return fmt.Errorf("no dry-run log yet")
		}
		return nil
	})
	p.stop(t, syscall.SIGTERM, 10*time.Second)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("dry run created %s (%v)", dir, err)
	}
}

func TestRenderPrintsAndWritesNothing(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	if _, err := kv.PutString(context.Background(), "name", "world"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dest := filepath.Join(dir, "hello.txt")
	cfg := writeAgentConfig(t, s.ClientURL(), "", fmt.Sprintf(`
templates:
  - {name: hello, bucket: app, text: 'hello {{ key "name" }}', dest: %q}
  - {name: broken, bucket: app, text: '{{ key "missing" }}', dest: %q}
`, dest, filepath.Join(dir, "broken.txt")))
	out, stderr, code := runWith(t, run{args: []string{"render", "-c", cfg, "hello"}})
	if code != 0 || out != "hello world" {
		t.Fatalf("render hello: exit %d, out %q, stderr %s", code, out, stderr)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Fatalf("render wrote %s", dest)
	}
	_, stderr, code = runWith(t, run{args: []string{"render", "-c", cfg}})
	if code != 1 || !strings.Contains(stderr, "missing") {
		t.Fatalf("render with a missing key: exit %d, stderr %s", code, stderr)
	}
	_, _, code = runWith(t, run{args: []string{"render", "-c", cfg, "nosuch"}})
	if code != 2 {
		t.Fatalf("render of an unknown template: exit %d, want 2", code)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("files:\n  - {bucket: app, dir: ./out}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, stderr, code := runKvsync(t, "validate", "-c", good); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("validate good: exit %d %q %q", code, out, stderr)
	}
	bad := filepath.Join(dir, "bad.yaml")
	body := `
files:
  - {bucket: "bad bucket", dir: ./a, layout: sideways}
templates:
  - {name: t}
exec: {command: [], on_change: bounce}
log: {level: loud}
`
	if err := os.WriteFile(bad, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runKvsync(t, "validate", "-c", bad)
	if code != 2 {
		t.Fatalf("validate bad: exit %d, want 2", code)
	}
	for _, want := range []string{"files[0].bucket", "files[0].layout", "templates[0].source", "templates[0].dest", "exec.command", "exec.on_change", "log.level"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("validate does not report %s; stderr:\n%s", want, stderr)
		}
	}
	typo := filepath.Join(dir, "typo.yaml")
	if err := os.WriteFile(typo, []byte("files:\n  - {bucket: app, dir: ./a, strip_prefx: x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runKvsync(t, "validate", "-c", typo); code != 2 || !strings.Contains(stderr, "strip_prefx") {
		t.Fatalf("unknown key: exit %d, stderr %s", code, stderr)
	}
	if _, _, code := runKvsync(t, "validate", "-c", filepath.Join(dir, "none.yaml")); code != 2 {
		t.Fatalf("missing config file: exit %d, want 2", code)
	}
	// KVSYNC_CONFIG is the default for -c.
	if _, _, code := runWith(t, run{args: []string{"validate"}, env: []string{"KVSYNC_CONFIG=" + good}}); code != 0 {
		t.Fatalf("validate with KVSYNC_CONFIG: exit %d", code)
	}
}

func TestDevBuiltInQuickstart(t *testing.T) {
	dir := t.TempDir()
	port := testutil.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	p := startKvsync(t, run{
		args: []string{"dev", "--listen", fmt.Sprintf("127.0.0.1:%d", port)},
		env:  []string{"KVSYNC_HTTP_LISTEN=127.0.0.1:0"},
		dir:  dir,
	})
	testutil.CheckFor(t, 15*time.Second, func() error {
		_, stderr, code := runWith(t, run{args: []string{"kv", "put", "app", "greeting", "hi", "-s", url}})
		if code != 0 {
			return fmt.Errorf("kv put: %d %s", code, stderr)
		}
		return nil
	})
	fileHolds(t, filepath.Join(dir, "kvsync-dev", "files", "greeting"), "hi", 5*time.Second)
	testutil.CheckFor(t, 5*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(dir, "kvsync-dev", "app.conf"))
		if err != nil || !strings.Contains(string(b), "greeting = hi") {
			return fmt.Errorf("app.conf: %q %v", b, err)
		}
		return nil
	})
	if code := p.stop(t, syscall.SIGINT, 10*time.Second); code != 0 {
		t.Fatalf("dev exit %d after SIGINT; stderr:\n%s", code, p.stderr.String())
	}
}

func TestVersion(t *testing.T) {
	out := mustKvsync(t, "version")
	if !strings.HasPrefix(out, "kvsync ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: %q", out)
	}
}
