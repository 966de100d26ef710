package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The disk alone, measured in the same run and on the same disk as the agent
// it is set beside: what a plain program spends on the same files, so a
// reader can tell the agent's cost from the disk's. Both churn the file
// system like the agent does (on ext4 without a journal, inodes freed in the
// last minutes slow the next allocations down; see docs/BENCHMARKS.md).

// diskCreate creates n files of 100 bytes in a fresh folder dir, one
// open(O_CREAT|O_EXCL)+write+close each, then makes them durable with one
// syncfs(2) when fsync is set, and returns how long that took.
func diskCreate(dir string, n int, fsync bool) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	data := pad("raw", 100)
	start := time.Now()
	for i := 0; i < n; i++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("k.%06d", i)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return 0, err
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, err
		}
	}
	if fsync {
		if err := syncfs(dir); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// diskFanout replaces one small file in each of n folders under dir at once,
// one goroutine per folder (temp file, fsync when asked, rename, folder
// fsync), rounds times with 20 ms between rounds, and returns per round the
// time until the last folder was done.
func diskFanout(dir string, n, rounds int, fsync bool) ([]time.Duration, error) {
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = filepath.Join(dir, fmt.Sprintf("d%03d", i))
		if err := os.MkdirAll(dirs[i], 0o755); err != nil {
			return nil, err
		}
	}
	data := pad("raw", 100)
	var out []time.Duration
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		errs := make([]error, n)
		start := time.Now()
		for i, d := range dirs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = replace(d, "fan", data, fsync)
			}()
		}
		wg.Wait()
		out = append(out, time.Since(start))
		for _, err := range errs {
			if err != nil {
				return nil, err
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out, nil
}

// diskRewrite creates n files of 100 bytes in a fresh folder dir, then
// replaces every one of them once in a plain loop (temp file and rename each,
// as a batch of kvsync does), makes that durable with one syncfs(2) when fsync
// is set, and returns how long the replacing took.
func diskRewrite(dir string, n int, fsync bool) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	name := func(i int) string { return fmt.Sprintf("k.%06d", i) }
	for i := 0; i < n; i++ {
		if err := os.WriteFile(filepath.Join(dir, name(i)), pad("old", 100), 0o644); err != nil {
			return 0, err
		}
	}
	data := pad("new", 100)
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := replace(dir, name(i), data, false); err != nil {
			return 0, err
		}
	}
	if fsync {
		if err := syncfs(dir); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// syncfs makes the whole file system of dir durable.
func syncfs(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = unix.Syncfs(int(d.Fd()))
	_ = d.Close() // read-only descriptor
	if err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	return nil
}

// replace writes data to the file name in folder d by temp file and rename.
func replace(d, name string, data []byte, fsync bool) error {
	f, err := os.CreateTemp(d, ".tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(d, name))
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if !fsync {
		return nil
	}
	df, err := os.Open(d)
	if err != nil {
		return err
	}
	err = df.Sync()
	_ = df.Close() // read-only descriptor
	return err
}
