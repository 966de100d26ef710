package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchFiles calls seen with the path of every file created, linked or
// renamed into place, or written and closed, in dirs (not below them), from
// one goroutine, until
// stop is called. The inotify event arrives within microseconds of the
// rename; seen reads the file to confirm what it holds. After the kernel
// lost events (its queue overflowed), files — the paths seen waits for — are
// looked at every 50 ms for 5 s, so no write goes unseen; looked tells seen
// the call comes from such a look, a little late, not from an event.
//
// The watch asks only for IN_CREATE (a new file linked in place),
// IN_MOVED_TO (renamed in place) and IN_CLOSE_WRITE (written in place). A
// file kvsync replaces through a temp file and a rename exchange then costs
// four events where fsnotify's fixed mask (create, modify, attributes, both
// halves of each move, delete) reports eight; thousands of agents writing at
// once overflowed the kernel's queue (16,384 events by default) with those,
// and the looks that follow took the bench's CPU from the agents it
// measures.
func watchFiles(dirs, files []string, seen func(path string, looked bool)) (stop func(), err error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch files: inotify: %w", err)
	}
	// Through the runtime's poller, so Close ends a pending Read.
	f := os.NewFile(uintptr(fd), "inotify")
	byWD := make(map[int32]string, len(dirs))
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			f.Close()
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
		wd, err := unix.InotifyAddWatch(fd, d, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("watch %s: %w", d, err)
		}
		byWD[int32(wd)] = filepath.Clean(d)
	}
	overflow := make(chan struct{}, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	var mu sync.Mutex // seen is called from one goroutine at a time
	go func() {
		defer wg.Done()
		buf := make([]byte, 1<<20)
		for {
			n, err := f.Read(buf)
			if err != nil {
				close(done)
				return
			}
			mu.Lock()
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				off += unix.SizeofInotifyEvent + int(ev.Len)
				if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
					select {
					case overflow <- struct{}{}:
					default:
					}
					continue
				}
				dir, ok := byWD[ev.Wd]
				if !ok || ev.Mask&unix.IN_ISDIR != 0 || len(name) == 0 {
					continue
				}
				if i := bytes.IndexByte(name, 0); i >= 0 {
					name = name[:i]
				}
				seen(filepath.Join(dir, string(name)), false)
			}
			mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		var rescan <-chan time.Time
		var until time.Time
		for {
			select {
			case <-done:
				return
			case <-overflow:
				until = time.Now().Add(5 * time.Second)
				if rescan == nil {
					rescan = time.Tick(50 * time.Millisecond)
				}
			case now := <-rescan:
				if now.After(until) {
					continue
				}
				mu.Lock()
				for _, p := range files {
					seen(p, true)
				}
				mu.Unlock()
			}
		}
	}()
	return func() { f.Close(); wg.Wait() }, nil
}
