package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// copyExample copies examples/NAME into a temp folder, so that the relative
// folders of its configs land there, and returns that folder.
func copyExample(t *testing.T, name string) string {
	t.Helper()
	src := filepath.Join("..", "examples", name)
	dst := filepath.Join(t.TempDir(), name)
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestPushBackExample runs examples/push-back as its README says: the dev
// server and two agents; an edit in ./a appears in ./b and the other way
// round, and a removed file goes from both.
func TestPushBackExample(t *testing.T) {
	dir := copyExample(t, "push-back")
	port := testutil.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	env := []string{"KVSYNC_NATS_URL=" + url, "KVSYNC_HTTP_LISTEN=127.0.0.1:0"}
	srv := startKvsync(t, run{args: []string{"dev", "-c", "server.yaml", "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, dir: dir, env: env})
	testutil.CheckFor(t, 15*time.Second, func() error {
		if _, stderr, code := runWith(t, run{args: []string{"bucket", "info", "shared", "-s", url}}); code != 0 {
			return fmt.Errorf("server not up: %s", stderr)
		}
		return nil
	})
	a := startKvsync(t, run{args: []string{"run", "-c", "agent-a.yaml"}, dir: dir, env: env})
	b := startKvsync(t, run{args: []string{"run", "-c", "agent-b.yaml"}, dir: dir, env: env})
	for _, p := range []*proc{srv, a, b} {
		go func() {
			for range p.lines {
			}
		}()
	}
	// Both agents have synced once their folders exist.
	testutil.CheckFor(t, 15*time.Second, func() error {
		for _, d := range []string{"a", "b"} {
			if _, err := os.Stat(filepath.Join(dir, d, ".kvsync")); err != nil {
				return err
			}
		}
		return nil
	})

	if err := os.WriteFile(filepath.Join(dir, "a", "motd"), []byte("hello from a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, filepath.Join(dir, "b", "motd"), "hello from a\n", 10*time.Second)
	fileHolds(t, filepath.Join(dir, "mirror", "motd"), "hello from a\n", 10*time.Second)

	if err := os.WriteFile(filepath.Join(dir, "b", "motd"), []byte("edited in b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fileHolds(t, filepath.Join(dir, "a", "motd"), "edited in b\n", 10*time.Second)

	// One revision per edit: no echo.
	out, stderr, code := runWith(t, run{args: []string{"kv", "history", "shared", "motd", "-s", url, "--json"}})
	if code != 0 {
		t.Fatalf("kv history: %s", stderr)
	}
	if n := strings.Count(out, `"revision"`); n != 2 {
		t.Fatalf("history has %d revisions, want 2 (one per edit):\n%s", n, out)
	}

	if err := os.Remove(filepath.Join(dir, "a", "motd")); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		for _, d := range []string{"b", "mirror"} {
			if _, err := os.Stat(filepath.Join(dir, d, "motd")); !os.IsNotExist(err) {
				return fmt.Errorf("%s/motd still there", d)
			}
		}
		return nil
	})
}
