package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvsync/kvsync/internal/retry"
)

// Kinds of ActionResult.Kind.
const (
	actionSignal  = "signal"
	actionCommand = "command"
	actionHTTP    = "http"
	actionRestart = "restart"
)

// Defaults of the actions (docs/CONFIG.md).
const (
	defaultCommandTimeout = 30 * time.Second
	defaultHTTPTimeout    = 10 * time.Second
	defaultHTTPRetries    = 3
	httpBackoffFirst      = 100 * time.Millisecond
	httpBackoffMax        = 2 * time.Second
	// OutputTail is how much of a command's or a check's combined output is
	// kept: the last 4 KiB, with "..." in front when some was dropped.
	OutputTail = 4 << 10
	// commandOutputGrace is how long, after a command exited, Run waits for
	// the end of its output: a daemon it left behind may hold the pipe open
	// for ever. The pipe is still drained after that, but not waited for.
	commandOutputGrace = 200 * time.Millisecond
	// httpBodyTail is how much of a failed webhook's response body is quoted.
	httpBodyTail = 256
)

// RunCheck runs the check command argv like a command action with timeout
// (no shell, a process group of its own, killed on timeout or when ctx is
// done), then kills what the command left running in its group and waits
// for the whole output. It returns how the command ended ("exit 0", "timed
// out after 10s" follows the command line in detail), the tail of its
// output, and an error unless it exited 0.
func RunCheck(ctx context.Context, argv []string, timeout time.Duration, logger *slog.Logger, reaper *Reaper) (detail, output string, err error) {
	r := &ActionRunner{a: Action{Command: argv, Timeout: timeout}, kind: actionCommand, logger: logger, reaper: reaper, reapGroup: true}
	return r.command(ctx)
}

// ActionResult is what one run of an action did; shown in /status and logged.
type ActionResult struct {
	Kind     string        // "signal", "command", "http", "restart"
	Detail   string        // e.g. "SIGHUP to pid 1234 (pidfile /run/x.pid)", "nginx -s reload: exit 0", "POST http://..: 200"
	Trigger  string        // what caused it (passed in)
	Start    time.Time     // when the action began, after the splay
	Duration time.Duration // how long the action itself took, splay excluded
	Err      error         // nil when the action did what it should
}

// ActionRunner runs one configured on_change action. It is safe for
// concurrent use, though the agent runs each projection's action from one
// goroutine.
type ActionRunner struct {
	a       Action
	kind    string
	sig     syscall.Signal
	logger  *slog.Logger
	restart func(ctx context.Context) error
	reaper  *Reaper
	client  *http.Client

	// reapGroup: once the command exited, kill what is left of its process
	// group and wait for the whole output. Checks set it: their output is
	// the diagnosis, and a check has no business leaving a daemon behind.
	reapGroup bool
}

// NewActionRunner checks a (already validated) and prepares it. owner names
// the projection the action belongs to in errors; logger, which every run
// logs to, must say it too (the agent passes the projection's logger, or the
// named action's). restart is called for {restart: true} and may be nil
// otherwise.
func NewActionRunner(a Action, owner string, logger *slog.Logger, restart func(ctx context.Context) error, opts ...Option) (*ActionRunner, error) {
	var o procOptions
	for _, opt := range opts {
		opt(&o)
	}
	r := &ActionRunner{a: a, logger: logger, restart: restart, reaper: o.reaper}
	switch {
	case a.Signal != "":
		sig, err := ParseSignal(a.Signal)
		if err != nil {
			return nil, fmt.Errorf("action of %s: %w", owner, err)
		}
		if (a.PIDFile == "") == (a.Process == "") {
			return nil, fmt.Errorf("action of %s: signal needs exactly one of pidfile or process", owner)
		}
		r.kind, r.sig = actionSignal, sig
	case len(a.Command) > 0:
		if a.Command[0] == "" {
			return nil, fmt.Errorf("action of %s: command: program name is empty", owner)
		}
		r.kind = actionCommand
	case a.HTTP != nil:
		u, err := url.Parse(a.HTTP.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("action of %s: http.url %q is not an http(s) URL", owner, a.HTTP.URL)
		}
		r.kind = actionHTTP
		r.client = &http.Client{}
	case a.Restart:
		if restart == nil {
			return nil, fmt.Errorf("action of %s: restart needs an exec child", owner)
		}
		r.kind = actionRestart
	default:
		return nil, fmt.Errorf("action of %s: none of signal, command, http, restart is set", owner)
	}
	return r, nil
}

// Run runs the action once: it waits a random splay in [0, a.Splay) first,
// then acts, logs one line at INFO with what triggered it and what it did
// (or at ERROR, WARN when ctx ended it), and returns the result. ctx
// cancellation aborts the splay and the action; a command is then killed.
func (r *ActionRunner) Run(ctx context.Context, trigger string) ActionResult {
	res := ActionResult{Kind: r.kind, Trigger: trigger}
	if err := r.splay(ctx); err != nil {
		res.Start = time.Now()
		res.Detail = "aborted during splay"
		res.Err = fmt.Errorf("splay: %w", err)
		r.log(res, "")
		return res
	}
	res.Start = time.Now()
	var output string
	res.Detail, output, res.Err = r.act(ctx)
	res.Duration = time.Since(res.Start)
	r.log(res, output)
	return res
}

// splay waits a random time below a.Splay, or until ctx is done.
func (r *ActionRunner) splay(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.a.Splay <= 0 {
		return nil
	}
	t := time.NewTimer(rand.N(r.a.Splay))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// act does the action; a panic in it (the restart callback is not ours)
// becomes an error.
func (r *ActionRunner) act(ctx context.Context) (detail, output string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s action panicked: %v", r.kind, p)
		}
	}()
	switch r.kind {
	case actionSignal:
		detail, err = r.signal()
		return detail, "", err
	case actionCommand:
		return r.command(ctx)
	case actionHTTP:
		detail, err = r.webhook(ctx)
		return detail, "", err
	default:
		if err := r.restart(ctx); err != nil {
			return "restart exec child", "", fmt.Errorf("restart exec child: %w", err)
		}
		return "restarted exec child", "", nil
	}
}

// log writes the one line that says what the action did.
func (r *ActionRunner) log(res ActionResult, output string) {
	attrs := []any{
		"trigger", res.Trigger, "kind", res.Kind,
		"detail", res.Detail, "duration", res.Duration,
	}
	if output != "" {
		attrs = append(attrs, "output", output)
	}
	switch {
	case res.Err == nil:
		r.logger.Info("action ran", attrs...)
	case errors.Is(res.Err, context.Canceled):
		r.logger.Warn("action aborted", append(attrs, "err", res.Err)...)
	default:
		r.logger.Error("action failed", append(attrs, "err", res.Err)...)
	}
}

// signal sends the signal to the pid of a pidfile or to every process of a
// name.
func (r *ActionRunner) signal() (string, error) {
	name := unix.SignalName(r.sig)
	if r.a.PIDFile != "" {
		pid, err := readPIDFile(r.a.PIDFile)
		if err != nil {
			return fmt.Sprintf("%s via pidfile %s", name, r.a.PIDFile), err
		}
		detail := fmt.Sprintf("%s to pid %d (pidfile %s)", name, pid, r.a.PIDFile)
		if err := syscall.Kill(pid, r.sig); err != nil {
			return detail, fmt.Errorf("send %s to pid %d from pidfile %s: %w", name, pid, r.a.PIDFile, err)
		}
		return detail, nil
	}
	pids, err := findProcesses("/proc", r.a.Process)
	if err != nil {
		return fmt.Sprintf("%s to process %s", name, r.a.Process), err
	}
	var sent []string
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, r.sig); err != nil {
			if !errors.Is(err, syscall.ESRCH) { // it exited meanwhile: not a match any more
				errs = append(errs, fmt.Errorf("send %s to pid %d: %w", name, pid, err))
			}
			continue
		}
		sent = append(sent, strconv.Itoa(pid))
	}
	detail := fmt.Sprintf("%s to pid %s (process %s)", name, strings.Join(sent, ", "), r.a.Process)
	if len(sent) == 0 {
		detail = fmt.Sprintf("%s to process %s", name, r.a.Process)
		if len(errs) == 0 {
			errs = append(errs, fmt.Errorf("no process named %q", r.a.Process))
		}
	}
	return detail, errors.Join(errs...)
}

// command runs the argv without a shell, in a process group of its own so
// that a timeout kills everything it started.
func (r *ActionRunner) command(ctx context.Context) (detail, output string, err error) {
	argv := r.a.Command
	line := CommandLine(argv)
	timeout := r.a.Timeout
	if timeout <= 0 {
		timeout = defaultCommandTimeout
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		return line, "", fmt.Errorf("run %s: %w", line, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// One *os.File for both: the output interleaves as it was written, and
	// os/exec starts no copying goroutine of its own.
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := startProc(cmd, r.reaper)
	pw.Close() // the child holds its copy
	if err != nil {
		pr.Close()
		return line, "", fmt.Errorf("run %s: %w", line, err)
	}

	tail := &tailBuffer{max: OutputTail}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer pr.Close()
		// Until EOF: a daemon the command started may keep the pipe and
		// must not get EPIPE for writing to it after we stopped listening.
		_, _ = io.Copy(tail, pr)
	}()

	var cut error
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		cut = fmt.Errorf("timed out after %v", timeout)
	case <-ctx.Done():
		cut = ctx.Err()
	}
	if cut != nil {
		if kerr := killGroup(p.pid, syscall.SIGKILL); kerr != nil {
			cut = errors.Join(cut, kerr)
		}
		select {
		case <-p.done:
		case <-time.After(killWait):
			return line + ": still running after SIGKILL", tail.String(),
				fmt.Errorf("run %s: %w; pid %d still running %v after SIGKILL", line, cut, p.pid, killWait)
		}
	}
	grace := commandOutputGrace
	if r.reapGroup {
		if kerr := killGroup(p.pid, syscall.SIGKILL); kerr != nil {
			r.logger.Warn("kill what the command left running", "command", line, "err", kerr)
		}
		grace = killWait
	}
	select {
	case <-readDone:
	case <-time.After(grace):
	}
	output = tail.String()

	detail = line + ": " + p.describe()
	switch {
	case cut != nil:
		return detail, output, fmt.Errorf("run %s: %w", line, cut)
	case p.err != nil:
		return detail, output, fmt.Errorf("run %s: %w", line, p.err)
	case p.ws.Signaled() || p.ws.ExitStatus() != 0:
		return detail, output, fmt.Errorf("run %s: %s", line, p.describe())
	}
	return detail, output, nil
}

// webhook calls the http action, retrying with backoff.
func (r *ActionRunner) webhook(ctx context.Context) (string, error) {
	h := r.a.HTTP
	method := strings.ToUpper(h.Method)
	if method == "" {
		method = http.MethodPost
	}
	shown := h.URL
	if u, err := url.Parse(h.URL); err == nil {
		shown = u.Redacted()
	}
	retries := h.Retries
	if retries <= 0 {
		retries = defaultHTTPRetries
	}
	backoff := httpBackoffFirst
	var status int
	var err error
	attempts := 0
	cancelled := func() (string, error) {
		return webhookDetail(method, shown, status, err),
			fmt.Errorf("%s %s: %w (after %d attempts; last: %w)", method, shown, ctx.Err(), attempts, err)
	}
	for attempts <= retries {
		if attempts > 0 {
			t := time.NewTimer(retry.EqualJitter(backoff, nil))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return cancelled()
			}
			backoff = min(2*backoff, httpBackoffMax)
		}
		attempts++
		var retry bool
		status, retry, err = r.webhookOnce(ctx, method)
		if err == nil {
			return webhookDetail(method, shown, status, nil), nil
		}
		if ctx.Err() != nil {
			// Cancelled during the request: say so, whatever the answer.
			return cancelled()
		}
		if !retry {
			break
		}
	}
	return webhookDetail(method, shown, status, err), fmt.Errorf("%s %s: %w (after %d attempts)", method, shown, err, attempts)
}

// webhookOnce makes one request. It reports whether a failure is worth a
// retry: transport errors, 408, 429 and 5xx are; other statuses are not.
func (r *ActionRunner) webhookOnce(ctx context.Context, method string) (status int, retry bool, err error) {
	h := r.a.HTTP
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = r.a.Timeout // timeout: next to http: means the same
	}
	if timeout <= 0 {
		timeout = defaultHTTPTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if h.Body != "" {
		body = strings.NewReader(h.Body)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.URL, body)
	if err != nil {
		return 0, false, err
	}
	for k, v := range h.Headers {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, true, err
	}
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, httpBodyTail))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // let the connection be reused
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, false, nil
	}
	err = fmt.Errorf("status %d", resp.StatusCode)
	if msg := strings.TrimSpace(strings.ToValidUTF8(string(head), "?")); msg != "" {
		err = fmt.Errorf("status %d: %s", resp.StatusCode, msg)
	}
	retry = resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests
	return resp.StatusCode, retry, err
}

// webhookDetail is the Detail of an http action: "POST http://x/-/reload: 200".
func webhookDetail(method, url string, status int, err error) string {
	if status == 0 && err != nil {
		return fmt.Sprintf("%s %s: no response", method, url)
	}
	return fmt.Sprintf("%s %s: %d", method, url, status)
}

// CommandLine renders argv for logs, quoting the words that need it.
func CommandLine(argv []string) string {
	words := make([]string, len(argv))
	for i, w := range argv {
		if w == "" || strings.ContainsAny(w, " \t\n\"'\\$`") {
			w = strconv.Quote(w)
		}
		words[i] = w
	}
	return strings.Join(words, " ")
}

// tailBuffer keeps the last max bytes written to it. It is safe for one
// writer and concurrent String calls.
type tailBuffer struct {
	max     int
	mu      sync.Mutex
	buf     []byte
	dropped bool
}

// Write keeps the tail of p; it never fails.
func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.max {
		t.dropped = t.dropped || len(t.buf) > 0 || len(p) > t.max
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.dropped = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// String is the kept output, "..." first if some was dropped, trailing
// white space trimmed.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.ToValidUTF8(strings.TrimRight(string(t.buf), " \t\r\n"), "?")
	if t.dropped {
		return "..." + s
	}
	return s
}
