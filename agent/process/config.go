package process

import (
	"fmt"
	"maps"
	pathpkg "path"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kvsync/kvsync/projector"
)

// Exec on_change values.
const (
	ExecRestart = "restart"
	ExecSignal  = "signal"
	ExecNone    = "none"
)

// ExecConfig supervises one child process that gets the env projections.
type ExecConfig struct {
	Command     []string      `koanf:"command"`
	OnChange    string        `koanf:"on_change"`
	Signal      string        `koanf:"signal"`
	KillSignal  string        `koanf:"kill_signal"`
	KillTimeout time.Duration `koanf:"kill_timeout"`

	// What happens when the child exits by itself, and what it inherits.
	OnExit         string        `koanf:"on_exit"`
	RestartBackoff BackoffConfig `koanf:"restart_backoff"`
	Env            ExecEnvConfig `koanf:"env"`
}

// Exec on_exit values.
const (
	OnExitExit             = "exit"
	OnExitRestart          = "restart"
	OnExitRestartOnFailure = "restart-on-failure"
)

// BackoffConfig is the delay before restarting a child that exited: Min
// after the first exit, doubling (with jitter) up to Max.
type BackoffConfig struct {
	Min time.Duration `koanf:"min"`
	Max time.Duration `koanf:"max"`
}

// ExecEnvConfig says what the exec child inherits from kvsync's own
// environment. The projected variables are always added.
type ExecEnvConfig struct {
	Pristine bool              `koanf:"pristine"` // inherit nothing
	Allow    []string          `koanf:"allow"`    // glob patterns on names; empty: every name
	Deny     []string          `koanf:"deny"`     // glob patterns on names, applied after allow
	Set      map[string]string `koanf:"set"`      // fixed extra variables
}

// Action is what runs after a projection changed (on_change). Exactly one of
// Signal, Command, HTTP, Restart is set, or, for an on_change given as a
// string, only Ref: the name of an entry of the config's actions.
type Action struct {
	Ref     string        `koanf:"-"`
	Signal  string        `koanf:"signal"`
	PIDFile string        `koanf:"pidfile"`
	Process string        `koanf:"process"`
	Command []string      `koanf:"command"`
	Timeout time.Duration `koanf:"timeout"`
	HTTP    *HTTPAction   `koanf:"http"`
	Restart bool          `koanf:"restart"`
	Splay   time.Duration `koanf:"splay"`
}

// UnmarshalText makes an on_change given as a string a reference to a named
// action.
func (a *Action) UnmarshalText(b []byte) error {
	*a = Action{Ref: string(b)}
	return nil
}

// HTTPAction is a webhook.
type HTTPAction struct {
	URL     string            `koanf:"url"`
	Method  string            `koanf:"method"`
	Headers map[string]string `koanf:"headers"`
	Body    string            `koanf:"body"`
	Retries int               `koanf:"retries"`
	Timeout time.Duration     `koanf:"timeout"`
}

// Default fills the defaults of the exec: block.
func (x *ExecConfig) Default() {
	if x.OnChange == "" {
		x.OnChange = ExecRestart
	}
	if x.Signal == "" {
		x.Signal = "SIGHUP"
	}
	if x.KillSignal == "" {
		x.KillSignal = "SIGTERM"
	}
	if x.KillTimeout == 0 {
		x.KillTimeout = 10 * time.Second
	}
	if x.OnExit == "" {
		x.OnExit = OnExitExit
	}
	if x.RestartBackoff.Min == 0 {
		x.RestartBackoff.Min = time.Second
	}
	if x.RestartBackoff.Max == 0 {
		x.RestartBackoff.Max = max(30*time.Second, x.RestartBackoff.Min)
	}
}

// Problem is one thing wrong with a block of the config. Path is relative to
// the block (".signal", ".env.allow[0]"; "" for the block as a whole): the
// caller prefixes it with where the block is.
type Problem struct{ Path, Msg string }

// Validate reports every problem of the exec: block (after Default).
func (x *ExecConfig) Validate() []Problem {
	var ps []Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{path, fmt.Sprintf(format, args...)})
	}
	if len(x.Command) == 0 || x.Command[0] == "" {
		add(".command", "required")
	}
	switch x.OnChange {
	case ExecRestart, ExecSignal, ExecNone:
	default:
		add(".on_change", "%q is not restart, signal or none", x.OnChange)
	}
	if _, err := ParseSignal(x.Signal); err != nil {
		add(".signal", "%v", err)
	}
	if _, err := ParseSignal(x.KillSignal); err != nil {
		add(".kill_signal", "%v", err)
	}
	if x.KillTimeout < 0 {
		add(".kill_timeout", "must not be negative")
	}
	switch x.OnExit {
	case OnExitExit, OnExitRestart, OnExitRestartOnFailure:
	default:
		add(".on_exit", "%q is not exit, restart or restart-on-failure", x.OnExit)
	}
	if b := x.RestartBackoff; b.Min <= 0 || b.Max <= 0 {
		add(".restart_backoff", "durations must be positive")
	} else if b.Max < b.Min {
		add(".restart_backoff.max", "%v is less than min %v", b.Max, b.Min)
	}
	globs := func(path string, pats []string) {
		for j, g := range pats {
			if _, err := pathpkg.Match(g, ""); err != nil || g == "" {
				add(fmt.Sprintf("%s[%d]", path, j), "%q is not a valid glob pattern", g)
			}
		}
	}
	globs(".env.allow", x.Env.Allow)
	globs(".env.deny", x.Env.Deny)
	for _, n := range slices.Sorted(maps.Keys(x.Env.Set)) {
		if !projector.ValidEnvName(n) {
			add(".env.set", "%q is not a valid environment variable name", n)
		} else if strings.ContainsRune(x.Env.Set[n], 0) {
			add(".env.set."+n, "value contains a NUL byte")
		}
	}
	return ps
}

// Validate reports every problem of an action that is not a Ref. haveExec
// says whether there is an exec child for {restart: true}.
func (a *Action) Validate(haveExec bool) []Problem {
	var ps []Problem
	n := 0
	if a.Signal != "" {
		n++
		if _, err := ParseSignal(a.Signal); err != nil {
			ps = append(ps, Problem{".signal", err.Error()})
		}
		if (a.PIDFile == "") == (a.Process == "") {
			ps = append(ps, Problem{".signal", "give exactly one of pidfile or process"})
		}
	}
	if len(a.Command) > 0 {
		n++
		if a.Command[0] == "" {
			ps = append(ps, Problem{".command", "program name is empty"})
		}
	}
	if a.HTTP != nil {
		n++
		if !strings.HasPrefix(a.HTTP.URL, "http://") && !strings.HasPrefix(a.HTTP.URL, "https://") {
			ps = append(ps, Problem{".http.url", fmt.Sprintf("%q is not an http(s) URL", a.HTTP.URL)})
		}
		if a.HTTP.Retries < 0 {
			ps = append(ps, Problem{".http.retries", "must not be negative"})
		}
	}
	if a.Restart {
		n++
		if !haveExec {
			ps = append(ps, Problem{".restart", "needs an exec: block"})
		}
	}
	if n != 1 {
		ps = append(ps, Problem{"", "give exactly one of signal, command, http, restart"})
	}
	if a.Timeout < 0 || a.Splay < 0 {
		ps = append(ps, Problem{"", "durations must not be negative"})
	}
	if a.Signal == "" && (a.PIDFile != "" || a.Process != "") {
		ps = append(ps, Problem{".signal", "required with pidfile or process"})
	}
	return ps
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "CONT": syscall.SIGCONT,
	"STOP": syscall.SIGSTOP, "WINCH": syscall.SIGWINCH, "ALRM": syscall.SIGALRM,
}

// ParseSignal parses a signal name: "SIGHUP", "HUP" or "hup".
func ParseSignal(s string) (syscall.Signal, error) {
	n := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := signals[n]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("%q is not a signal name like SIGHUP", s)
}
