package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testutil"
)

// TestPurgeAllEmptiesProjections: `kv purge BUCKET --all` purges every key
// with a marker, and every projection of the bucket empties.
func TestPurgeAllEmptiesProjections(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 5)
	for i := 0; i < 5; i++ {
		if _, err := kv.PutString(context.Background(), fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	ag := startAgent(t, s.ClientURL(), fmt.Sprintf("files:\n  - {bucket: app, dir: %q}\n", dir))
	ag.waitReady(t, 10*time.Second)
	fileHolds(t, filepath.Join(dir, "k4"), "v", 5*time.Second)

	out, stderr, code := runKvsync(t, "kv", "purge", "app", "--all", "-s", s.ClientURL())
	if code != 0 || !strings.Contains(out, "purged 5 keys") {
		t.Fatalf("purge --all: exit %d, out %q, stderr %s", code, out, stderr)
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		for i := 0; i < 5; i++ {
			if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("k%d", i))); !os.IsNotExist(err) {
				return fmt.Errorf("k%d still projected", i)
			}
		}
		return nil
	})
	if _, _, code := runKvsync(t, "kv", "purge", "app", "k1", "--all", "-s", s.ClientURL()); code != 2 {
		t.Fatalf("purge KEY --all: exit %d, want 2", code)
	}
	if _, _, code := runKvsync(t, "kv", "purge", "app", "-s", s.ClientURL()); code != 2 {
		t.Fatalf("purge without KEY or --all: exit %d, want 2", code)
	}
}
