package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// valueLog is every value a bucket stored, from a watcher of its whole
// history started before the values were written.
type valueLog struct {
	mu   sync.Mutex
	seen map[string]bool
}

func watchValues(t *testing.T, kv jetstream.KeyValue) *valueLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := kv.WatchAll(ctx, jetstream.IncludeHistory())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	vl := &valueLog{seen: map[string]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				vl.mu.Lock()
				vl.seen[string(e.Value())] = true
				vl.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		_ = w.Stop() // ends Updates
		cancel()
		<-done
	})
	return vl
}

func (vl *valueLog) has(v string) bool {
	vl.mu.Lock()
	defer vl.mu.Unlock()
	return vl.seen[v]
}

// copyLog is the contents of the conflict copies of one file, read again
// whenever a copy's size or time changes.
type copyLog struct {
	dir   string // the folder of the file's conflict copies
	stamp map[string]string
	ever  map[string]bool // every content any copy held
}

func newCopyLog(dir string) *copyLog {
	return &copyLog{dir: dir, stamp: map[string]string{}, ever: map[string]bool{}}
}

func (cl *copyLog) has(v string) bool {
	if cl.ever[v] {
		return true
	}
	ents, _ := os.ReadDir(cl.dir)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || e.IsDir() {
			continue
		}
		p := filepath.Join(cl.dir, e.Name())
		stamp := fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
		if cl.stamp[p] == stamp {
			continue
		}
		if b, err := os.ReadFile(p); err == nil {
			cl.stamp[p] = stamp
			cl.ever[string(b)] = true
		}
	}
	return cl.ever[v]
}

// saveLocal is one way a person or a program saves a file.
type saveLocal func(p, data string, r *rand.Rand) error

var localSaves = []struct {
	name string
	save saveLocal
}{
	{"rename-replace", func(p, data string, _ *rand.Rand) error {
		tmp := filepath.Join(filepath.Dir(p), fmt.Sprintf(".%s.%d.swp", filepath.Base(p), rand.Uint64()))
		if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, p)
	}},
	{"in place", func(p, data string, _ *rand.Rand) error {
		return os.WriteFile(p, []byte(data), 0o644)
	}},
	{"in place, slow writer", func(p, data string, r *rand.Rand) error {
		// Truncated now, written a moment later: kvsync may swap the file
		// out in between, and the write then goes to the swapped-out file.
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return err
		}
		time.Sleep(time.Duration(r.IntN(1000)) * time.Microsecond)
		_, err = f.WriteString(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}},
}

// TestPushRaceStress races local saves (rename-replace, in-place writes, and
// in-place writes through a descriptor that truncated the file before the
// remote put landed) against remote puts of the same key, thousands of
// times over many keys, and accounts for every local edit: its unique bytes
// must end in the bucket's history or in a conflict copy. Each key waits for
// its edit to get there before the next save (an edit overwritten by the
// next save of the same person is not kvsync's to keep); the keys run side
// by side. At the end every file holds the bucket's value.
func TestPushRaceStress(t *testing.T) {
	// 2,048 races in all, 16 per key. No key gets more than 3 revisions a
	// round, well within the bucket's history of 64, so the history watcher
	// sees every stored value.
	const rounds = 16
	for _, tc := range []struct {
		policy string
		keys   int
	}{
		{ConflictKeepRemote, 64},
		{ConflictKeepLocal, 64},
	} {
		keys := tc.keys
		t.Run(tc.policy, func(t *testing.T) {
			initial := map[string]string{}
			for k := range keys {
				initial[raceKey(k)] = "start"
			}
			e := startPush(t, initial, jetstream.KeyValueConfig{}, func(f *FilesConfig) {
				f.Push.Conflict = tc.policy
				f.Push.Debounce = 25 * time.Millisecond
			})
			values := watchValues(t, e.kv)

			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, keys)
			for k := range keys {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(k), uint64(time.Now().UnixNano())))
					rel := raceKey(k)
					p := e.path(rel)
					copies := newCopyLog(filepath.Join(e.dir, ".kvsync", "conflicts", filepath.Dir(filepath.FromSlash(rel))))
					// Listing the copies costs more than a look at the
					// values seen: at most every 20 ms, so the test does
					// not starve the agent.
					var listed time.Time
					accounted := func(local string) bool {
						if values.has(local) {
							return true
						}
						if time.Since(listed) < 20*time.Millisecond {
							return false
						}
						listed = time.Now()
						return copies.has(local)
					}
					for i := range rounds {
						local, remote := fmt.Sprintf("local %s %d", rel, i), fmt.Sprintf("remote %s %d", rel, i)
						how := localSaves[(k+i)%len(localSaves)]
						putDone := make(chan error, 1)
						go func() {
							_, err := e.kv.PutString(context.Background(), rel, remote)
							putDone <- err
						}()
						// Save around the moment the put reaches the agent.
						time.Sleep(time.Duration(r.IntN(1500)) * time.Microsecond)
						if err := how.save(p, local, r); err != nil {
							errs <- fmt.Errorf("%s round %d: %s: %w", rel, i, how.name, err)
							return
						}
						if err := <-putDone; err != nil {
							errs <- fmt.Errorf("%s round %d: put: %w", rel, i, err)
							return
						}
						deadline := time.Now().Add(2 * time.Minute) // a loaded machine is slow; a lost edit never arrives
						for !accounted(local) {
							if time.Now().After(deadline) {
								got, _ := os.ReadFile(p)
								errs <- fmt.Errorf("%s round %d (%s): %q is neither in the bucket's history nor in a conflict copy (file holds %q)", rel, i, how.name, local, got)
								return
							}
							time.Sleep(2 * time.Millisecond)
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			var failed []string
			for err := range errs {
				failed = append(failed, err.Error())
			}
			if len(failed) > 0 {
				lines := strings.Split(e.ag.logs.String(), "\n")
				t.Fatalf("%d of %d keys lost an edit:\n%s\nlast log lines:\n%s", len(failed), keys, strings.Join(failed, "\n"),
					strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
			took := time.Since(start)

			// Every file ends equal to the bucket, and no temp file is left.
			e.barrier(t)
			for k := range keys {
				rel := raceKey(k)
				testutil.CheckFor(t, 10*time.Second, func() error {
					ent, err := e.kv.Get(context.Background(), rel)
					if err != nil {
						return err
					}
					return fileIs(e.path(rel), string(ent.Value()))()
				})
			}
			testutil.CheckFor(t, 5*time.Second, func() error {
				var left []string
				err := filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
					if err == nil && strings.HasPrefix(d.Name(), ".kvsync-tmp-") {
						left = append(left, p)
					}
					return err
				})
				if err == nil && len(left) > 0 {
					err = errors.New("temp files left: " + strings.Join(left, ", "))
				}
				return err
			})
			logs := e.ag.logs.String()
			t.Logf("%d races in %v: %d local edits found in the file the remote write displaced, %d conflicts",
				keys*rounds, took.Round(time.Millisecond),
				strings.Count(logs, "local edit meets a remote change"),
				int(metricValue(t, e.ag, fmt.Sprintf(`kvsync_push_conflicts_total{policy=%q,projection="files"}`, tc.policy))))
		})
	}
}

// raceKey is the key (and path) of stress key k: one folder each, so that a
// key's conflict copies are listed on their own.
func raceKey(k int) string { return fmt.Sprintf("race/k%03d/app.conf", k) }
