package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// natscliVersion is the official NATS CLI the end-to-end tests use as a second
// client. It is built with `go install module@version`, outside kvsync's own
// module graph: as a tool requirement in go.mod it would move the versions of
// seven modules kvsync itself links (sprig's dependencies among them).
const natscliVersion = "github.com/nats-io/natscli/nats@v0.5.1"

// natsCLIBin builds the NATS CLI once per machine: the binary is kept in the
// user's cache folder under its version, so later test runs neither compile
// nor link it again (the first build takes minutes on 2 cores).
var natsCLIBin = sync.OnceValues(func() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "kvsync-tests")
	bin := filepath.Join(dir, "nats-"+strings.ReplaceAll(natscliVersion[strings.LastIndexByte(natscliVersion, '@')+1:], "/", "_"))
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o100 != 0 {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	build := exec.Command("go", "install", natscliVersion)
	build.Env = append(os.Environ(), "GOBIN="+tmp)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the NATS CLI: %v\n%s", err, out)
	}
	// A rename, so a concurrent run never sees half a binary.
	if err := os.Rename(filepath.Join(tmp, "nats"), bin); err != nil {
		return "", err
	}
	return bin, nil
})

// natsCLI runs the NATS CLI against url and returns its stdout; a non-zero
// exit fails the test.
func natsCLI(t testing.TB, url string, args ...string) string {
	t.Helper()
	bin, err := natsCLIBin()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--server", url, "--no-context"}, args...)...)
	cmd.Env = testEnv(t)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("nats %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// historyOps reads "revision op" pairs from either CLI's `kv history` output:
// the NATS CLI's table rows and kvsync's plain columns both hold the key, the
// revision and the operation in that order.
func historyOps(out, key string) []string {
	re := regexp.MustCompile(`(?m)^[\s│|]*` + regexp.QuoteMeta(key) + `[\s│|]+(\d+)[\s│|]+(PUT|DELETE|PURGE|DEL)\b`)
	var ops []string
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		ops = append(ops, m[1]+" "+m[2])
	}
	return ops
}

// TestNATSCLISecondClient: the official NATS CLI writes and reads the same
// bucket as kvsync. A `nats kv put` reaches the agent's file, a delete removes
// it; a `kvsync kv put` is what `nats kv get` reads; both CLIs show the same
// history with the same operation names.
func TestNATSCLISecondClient(t *testing.T) {
	if _, err := natsCLIBin(); err != nil {
		t.Fatal(err)
	}
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	kv := createBucket(t, jetStream(t, s), "app", 10)
	dir := t.TempDir()
	a := startAgent(t, url, fmt.Sprintf("files:\n  - {name: app, bucket: app, dir: %q}\n", dir))
	a.waitReady(t, 20*time.Second)

	natsCLI(t, url, "kv", "put", "app", "from.nats", "hello from nats")
	waitFile(t, filepath.Join(dir, "from.nats"), []byte("hello from nats"), time.Now(), 10*time.Second)

	mustKvsync(t, "kv", "put", "app", "from.kvsync", "hello from kvsync", "-s", url)
	if got := natsCLI(t, url, "kv", "get", "app", "from.kvsync", "--raw"); got != "hello from kvsync" {
		t.Fatalf("nats kv get = %q", got)
	}
	waitFile(t, filepath.Join(dir, "from.kvsync"), []byte("hello from kvsync"), time.Now(), 10*time.Second)

	// A history with every operation, written by both clients.
	natsCLI(t, url, "kv", "put", "app", "h", "one")
	mustKvsync(t, "kv", "put", "app", "h", "two", "-s", url)
	natsCLI(t, url, "kv", "del", "app", "h", "-f")
	mustKvsync(t, "kv", "put", "app", "h", "three", "-s", url)
	mustKvsync(t, "kv", "del", "app", "h", "-s", url)
	theirs := historyOps(natsCLI(t, url, "kv", "history", "app", "h"), "h")
	ours := historyOps(mustKvsync(t, "kv", "history", "app", "h", "-s", url), "h")
	if len(theirs) != 5 || !slices.Equal(ours, theirs) {
		t.Fatalf("kv history: kvsync %q, nats %q; want the same 5 operations", ours, theirs)
	}
	for _, op := range ours {
		if strings.HasSuffix(op, " DEL") {
			t.Fatalf("kvsync prints %q: the NATS CLI says DELETE", op)
		}
	}
	natsCLI(t, url, "kv", "purge", "app", "h", "-f")
	theirs = historyOps(natsCLI(t, url, "kv", "history", "app", "h"), "h")
	ours = historyOps(mustKvsync(t, "kv", "history", "app", "h", "-s", url), "h")
	if len(theirs) != 1 || !strings.HasSuffix(theirs[0], " PURGE") || !slices.Equal(ours, theirs) {
		t.Fatalf("kv history after a purge: kvsync %q, nats %q; want one PURGE", ours, theirs)
	}

	// Keys: the same set from both.
	natsKeys := strings.Fields(natsCLI(t, url, "kv", "ls", "app"))
	slices.Sort(natsKeys)
	if got := strings.Fields(mustKvsync(t, "kv", "keys", "app", "-s", url)); !slices.Equal(got, natsKeys) {
		t.Fatalf("kv keys: kvsync %q, nats %q", got, natsKeys)
	}

	natsCLI(t, url, "kv", "del", "app", "from.nats", "-f")
	testutil.CheckFor(t, 10*time.Second, func() error {
		if _, err := os.Stat(filepath.Join(dir, "from.nats")); !os.IsNotExist(err) {
			return fmt.Errorf("from.nats still there after nats kv del (%v)", err)
		}
		return nil
	})
	converges(t, 10*time.Second, kv, dir)
}
