package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// childEnv are the variables that would override the generated config of a
// child agent: they are removed from its environment.
var childEnv = []string{
	"NATS_URL", "NATS_CREDS", "NATS_CONTEXT", "NATS_USER", "NATS_PASSWORD",
	"KVSYNC_NATS_URL", "KVSYNC_LOG_LEVEL", "KVSYNC_LOG_FORMAT", "KVSYNC_HTTP_LISTEN", "KVSYNC_CONFIG",
}

// child is one `kvsync run` in a process of its own.
type child struct {
	cmd    *exec.Cmd
	start  time.Time
	stderr *tailBuffer
	done   chan struct{}
	err    error        // of Wait, once done is closed
	hwm    atomic.Int64 // the child's own peak RSS (VmHWM), sampled while it runs
}

// peakRSS is the highest VmHWM seen while the child ran. rusage's Maxrss is
// not used: Linux carries the forked parent's high-water mark into the child
// across exec, so a small child would report the bench's own size.
func (c *child) peakRSS() int64 { return c.hwm.Load() }

// sampleHWM reads the child's VmHWM every 2 ms until it exits. VmHWM belongs
// to the process image after exec, and only grows, so the last read before
// the exit is its peak up to within the last 2 ms.
func (c *child) sampleHWM() {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		if st, err := procStatus(c.cmd.Process.Pid); err == nil && st.hwm > c.hwm.Load() {
			c.hwm.Store(st.hwm)
		}
		select {
		case <-c.done:
			return
		case <-t.C:
		}
	}
}

// startChild starts kvsync with args.
func (e *env) startChild(ctx context.Context, args ...string) (*child, error) {
	var cmd *exec.Cmd
	if e.o.Child != nil {
		cmd = e.o.Child(ctx, args...)
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find kvsync: %w", err)
		}
		cmd = exec.CommandContext(ctx, exe, args...)
	}
	base := cmd.Env
	if base == nil {
		base = os.Environ()
	}
	cmd.Env = nil
	for _, kv := range base {
		name, _, _ := strings.Cut(kv, "=")
		if !contains(childEnv, name) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	c := &child{cmd: cmd, stderr: &tailBuffer{max: 8 << 10}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	c.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	go c.sampleHWM()
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// stop sends SIGTERM and waits for the exit (SIGKILL after 30 s).
func (c *child) stop() error {
	select {
	case <-c.done:
		return c.exitErr()
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	return c.exitErr()
}

func (c *child) exitErr() error {
	if c.err != nil {
		return fmt.Errorf("kvsync: %w: %s", c.err, strings.TrimSpace(c.stderr.String()))
	}
	return nil
}

// exited reports, without waiting, whether the child is gone.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// waitReady polls the child's /readyz until it answers 200.
func (c *child) waitReady(ctx context.Context, addr string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return poll(ctx, timeout, 2*time.Millisecond, func() error {
		if c.exited() {
			return final{fmt.Errorf("kvsync exited before it was ready: %v", c.exitErr())}
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// writeChildConfig writes the JSON config of a child agent with one files
// projection of bucket into dir.
func (e *env) writeChildConfig(path, bucket, dir, httpListen string) error {
	return e.writeChild(path, httpListen, "files", map[string]any{
		"name": "files", "bucket": bucket, "keys": []string{">"}, "dir": dir, "fsync": e.o.Fsync,
	})
}

// writeTemplateChildConfig writes the config of a child agent with one
// template that ranges over every key of bucket into dest.
func (e *env) writeTemplateChildConfig(path, bucket, dest string) error {
	return e.writeChild(path, "", "templates", map[string]any{
		"name": "all", "bucket": bucket, "dest": dest,
		"text": "{{ range keys \">\" }}{{ .Key }}={{ .Value }}\n{{ end }}",
	})
}

// writeChild writes the JSON config of a child agent: the bench's connection,
// one projection of kind ("files", "templates"), an HTTP listener or none.
func (e *env) writeChild(path, httpListen, kind string, projection map[string]any) error {
	n := e.nats
	cfg := map[string]any{
		"nats": map[string]any{
			"url": n.URL, "context": n.Context, "creds": n.Creds, "nkey": n.NKey, "token": n.Token,
			"user": n.User, "password": n.Password, "name": "kvsync-bench-child", "domain": n.Domain,
			"tls": map[string]any{"ca": n.TLS.CA, "cert": n.TLS.Cert, "key": n.TLS.Key},
		},
		kind:   []any{projection},
		"http": map[string]any{"listen": httpListen},
		"log":  map[string]any{"level": "warn"},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// fillFiles creates a bucket of n keys of 100 bytes and returns it, with the
// function that deletes it.
func (e *env) fillFiles(ctx context.Context, name string, n int) (string, func(), error) {
	kv, drop, err := e.bucket(ctx, name)
	if err != nil {
		return "", nil, err
	}
	err = e.fill(ctx, kv, n, func(i int) string { return fmt.Sprintf("k.%06d", i) },
		func(i int) []byte { return pad(fmt.Sprintf("v%06d-", i), 100) })
	if err != nil {
		drop()
		return "", nil, err
	}
	return kv.Bucket(), drop, nil
}

// filesChild fills a bucket of n keys (named after bucket) and writes the
// config of a child agent that projects it into the folder of scenario, with
// an HTTP listener on a free address. drop deletes the bucket.
func (e *env) filesChild(ctx context.Context, bucket, scenario string, n int) (dir, cfgPath, addr string, drop func(), err error) {
	name, drop, err := e.fillFiles(ctx, bucket, n)
	if err != nil {
		return "", "", "", nil, err
	}
	if addr, err = freeAddr(); err == nil {
		dir, cfgPath = e.path(scenario, "files"), e.path(scenario, "kvsync.json")
		err = e.writeChildConfig(cfgPath, name, dir, addr)
	}
	if err != nil {
		drop()
		return "", "", "", nil, err
	}
	return dir, cfgPath, addr, drop, nil
}

// checkFiles confirms that dir holds the n files of fillFiles.
func checkFiles(dir string, n int) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	got := 0
	for _, en := range ents {
		if strings.HasPrefix(en.Name(), "k.") {
			got++
		}
	}
	if got != n {
		return fmt.Errorf("%s holds %d files, want %d", dir, got, n)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("k.%06d", i)))
		if err != nil {
			return fmt.Errorf("read projected file: %w", err)
		}
		if want := pad(fmt.Sprintf("v%06d-", i), 100); !bytes.Equal(b, want) {
			return fmt.Errorf("k.%06d holds %q, want %q", i, b, want)
		}
	}
	return nil
}

// initialSync: a child `kvsync run` projects a bucket of Keys keys (100,000)
// of 100 bytes; wall time from its start to /readyz, and peak RSS.
func (e *env) initialSync(ctx context.Context) ([]Result, error) {
	n := orDefault(e.o.Keys, 100_000)
	res := Result{Scenario: InitialSync, Case: fmt.Sprintf("%s keys x 100 B", sizeLabel(n)), Keys: n}
	dir, cfgPath, addr, drop, err := e.filesChild(ctx, "sync", "initial-sync", n)
	if err != nil {
		return nil, err
	}
	defer drop()
	step := e.prog.start(fmt.Sprintf("initial-sync of %d keys (child process)", n), 0)
	c, err := e.startChild(ctx, "run", "-c", cfgPath)
	if err != nil {
		step.done()
		return nil, err
	}
	err = c.waitReady(ctx, addr, 10*time.Minute)
	res.Wall = time.Since(c.start)
	step.done()
	if err != nil {
		_ = c.stop()
		return nil, err
	}
	if st, err := procStatus(c.cmd.Process.Pid); err == nil {
		res.RSS = st.rss
	}
	if err := checkFiles(dir, n); err != nil {
		_ = c.stop()
		return nil, err
	}
	if err := c.stop(); err != nil {
		return nil, err
	}
	res.CPU = cpuTime(c.cmd.ProcessState)
	res.PeakRSS = c.peakRSS()
	res.Throughput, res.Unit = float64(n)/res.Wall.Seconds(), "keys/s"
	res.Note = fmt.Sprintf("child process kvsync run, start to /readyz; fsync=%v; RSS at ready; peak RSS = the child's VmHWM; CPU from rusage at exit", e.o.Fsync)

	// The disk alone, while the agent's files are still there.
	step = e.prog.start(fmt.Sprintf("initial-sync: %d files by a plain loop (the disk alone)", n), 0)
	wall, err := diskCreate(e.path("initial-sync", "disk"), n, e.o.Fsync)
	step.done()
	if err != nil {
		return nil, fmt.Errorf("disk alone: %w", err)
	}
	disk := Result{
		Scenario: InitialSync, Case: fmt.Sprintf("%s files x 100 B, disk alone", sizeLabel(n)), Keys: n,
		Wall: wall, Throughput: float64(n) / wall.Seconds(), Unit: "files/s",
		Note: fmt.Sprintf("a plain loop in the bench process on the same disk, right after the agent: open(O_CREAT|O_EXCL)+write+close per file, then one syncfs when fsync=%v; no NATS, no manifest", e.o.Fsync),
	}
	return []Result{res, disk}, nil
}

// once: a child `kvsync run --once` over a bucket of Keys keys (10,000), two
// ways: a template ranging over every key into one file (what consul-template's
// and confd's once modes are measured on), and one file per key. Wall time to
// its exit, peak RSS.
func (e *env) once(ctx context.Context) ([]Result, error) {
	n := orDefault(e.o.Keys, 10_000)
	bucket, drop, err := e.fillFiles(ctx, "once", n)
	if err != nil {
		return nil, err
	}
	defer drop()
	var out []Result
	for _, asTemplate := range []bool{true, false} {
		res := Result{Scenario: Once, Keys: n}
		name := "files"
		var write func(path string) error
		if asTemplate {
			name = "template"
			res.Case = fmt.Sprintf("run --once, %s-key template", sizeLabel(n))
			dest := e.path("once", "all.conf")
			write = func(path string) error { return e.writeTemplateChildConfig(path, bucket, dest) }
		} else {
			res.Case = fmt.Sprintf("run --once, %s files", sizeLabel(n))
			dir := e.path("once", "files")
			write = func(path string) error { return e.writeChildConfig(path, bucket, dir, "") }
		}
		cfgPath := e.path("once", name+".json")
		if err := write(cfgPath); err != nil {
			return nil, err
		}
		step := e.prog.start(fmt.Sprintf("run --once of %d keys, %s (child process)", n, name), 0)
		c, err := e.startChild(ctx, "run", "--once", "-c", cfgPath)
		if err != nil {
			step.done()
			return nil, err
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			_ = c.stop()
			step.done()
			return nil, ctx.Err()
		}
		res.Wall = time.Since(c.start)
		step.done()
		if err := c.exitErr(); err != nil {
			return nil, err
		}
		if asTemplate {
			if err := checkTemplate(e.path("once", "all.conf"), n); err != nil {
				return nil, err
			}
		} else if err := checkFiles(e.path("once", "files"), n); err != nil {
			return nil, err
		}
		res.CPU = cpuTime(c.cmd.ProcessState)
		res.PeakRSS = c.peakRSS()
		res.Throughput, res.Unit = float64(n)/res.Wall.Seconds(), "keys/s"
		res.Note = fmt.Sprintf("child process (process start to exit, connect included); %s; fsync=%v; peak RSS = the child's VmHWM; CPU from rusage", name, e.o.Fsync)
		out = append(out, res)
	}
	return out, nil
}

// checkTemplate confirms that the rendered file has a line per key.
func checkTemplate(path string, n int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read rendered file: %w", err)
	}
	if got := bytes.Count(b, []byte("\n")); got != n {
		return fmt.Errorf("%s has %d lines, want %d", path, got, n)
	}
	return nil
}

// idle: a child agent with Keys keys (1,000) projected is left alone for
// IdleFor (10 s): the CPU time it used meanwhile, and its RSS.
func (e *env) idle(ctx context.Context) ([]Result, error) {
	n := orDefault(e.o.Keys, 1000)
	idleFor := orDefault(e.o.IdleFor, 10*time.Second)
	res := Result{Scenario: Idle, Case: fmt.Sprintf("%s keys, idle %v", sizeLabel(n), idleFor), Keys: n, Wall: idleFor}
	_, cfgPath, addr, drop, err := e.filesChild(ctx, "idle", "idle", n)
	if err != nil {
		return nil, err
	}
	defer drop()
	c, err := e.startChild(ctx, "run", "-c", cfgPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.stop() }()
	if err := c.waitReady(ctx, addr, 5*time.Minute); err != nil {
		return nil, err
	}
	pid := c.cmd.Process.Pid
	before, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	step := e.prog.start(fmt.Sprintf("idle agent with %d keys for %v (child process)", n, idleFor), int(idleFor/time.Second))
	tick := time.NewTicker(time.Second)
	end := time.After(idleFor)
	for i, idle := 1, true; idle; i++ {
		select {
		case <-ctx.Done():
			tick.Stop()
			step.done()
			return nil, ctx.Err()
		case <-tick.C:
			step.set(i)
		case <-end:
			idle = false
		}
	}
	tick.Stop()
	step.done()
	after, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	res.CPU = after - before
	if st, err := procStatus(pid); err == nil {
		res.RSS = st.rss
	}
	if err := c.stop(); err != nil {
		return nil, err
	}
	res.PeakRSS = c.peakRSS()
	res.Note = "child process; CPU summed over its threads' schedstat while idle; RSS at the end, peak RSS = the child's VmHWM"
	return []Result{res}, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
