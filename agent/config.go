package agent

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/agent/process"
	"github.com/kvsync/kvsync/agent/watch"
	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
)

// Config is the whole agent configuration, as read from kvsync.yaml. It is a plain
// value: cmd/kvsync loads it (koanf), Default fills it, Validate checks it.
type Config struct {
	NATS      NATSConfig                `koanf:"nats"`
	Embedded  *EmbeddedConfig           `koanf:"embedded"`
	Buckets   []BucketConfig            `koanf:"buckets"`
	Actions   map[string]process.Action `koanf:"actions"`
	Files     []FilesConfig             `koanf:"files"`
	Templates []TemplateConfig          `koanf:"templates"`
	Env       []EnvConfig               `koanf:"env"`
	Exec      *process.ExecConfig       `koanf:"exec"`
	Wait      WaitConfig                `koanf:"wait"`
	Watch     WatchConfig               `koanf:"watch"`
	HTTP      HTTPConfig                `koanf:"http"`
	Log       LogConfig                 `koanf:"log"`
	Agent     AgentConfig               `koanf:"agent"`
	Report    *ReportConfig             `koanf:"report"`
}

// AgentConfig says who this agent is in a fleet.
type AgentConfig struct {
	// ID names the agent in the status bucket, in /status and in the NATS
	// connection name. Default: the host name. It must be a valid key.
	ID string `koanf:"id"`
	// Labels describe the agent (role, region); `kvsync fleet` selects
	// agents by them. Keys and values follow ValidLabel.
	Labels map[string]string `koanf:"labels"`
}

// ReportConfig publishes what this agent applied into a status bucket: one
// key per agent id. Reporting is off when the block is absent.
type ReportConfig struct {
	Bucket   string        `koanf:"bucket"`   // default kvsync_status; created if missing
	Interval time.Duration `koanf:"interval"` // refresh; a record not refreshed for 3 intervals expires
}

// Report defaults.
const (
	DefaultReportBucket   = "kvsync_status"
	DefaultReportInterval = 30 * time.Second
	// MinReportInterval is the shortest refresh: the server's per-key TTL
	// counts in whole seconds.
	MinReportInterval = time.Second
)

// The nats:, embedded: and buckets: blocks belong to the natsconn package,
// which connects and provisions; Config composes its types, and these names
// keep them reachable from this package as before.
type (
	NATSConfig     = natsconn.NATSConfig
	TLSConfig      = natsconn.TLSConfig
	EmbeddedConfig = natsconn.EmbeddedConfig
	BucketConfig   = natsconn.BucketConfig
)

// Layout values of FilesConfig.Layout.
const (
	LayoutFlat = "flat"
	LayoutTree = "tree"
)

// Atomic values of FilesConfig.Atomic.
const (
	AtomicFile     = "file"
	AtomicSnapshot = "snapshot"
)

// FilesConfig projects every matching key of a bucket to one file.
type FilesConfig struct {
	Name        string      `koanf:"name"`
	Bucket      string      `koanf:"bucket"`
	Keys        []string    `koanf:"keys"`
	StripPrefix string      `koanf:"strip_prefix"`
	Dir         string      `koanf:"dir"`
	Layout      string      `koanf:"layout"`
	Atomic      string      `koanf:"atomic"`
	Mode        string      `koanf:"mode"`
	DirMode     string      `koanf:"dir_mode"`
	User        string      `koanf:"user"`
	Group       string      `koanf:"group"`
	Fsync       *bool       `koanf:"fsync"`
	Push        PushConfig  `koanf:"push"`
	OnChange    *Action     `koanf:"on_change"`
	Wait        *WaitConfig `koanf:"wait"`

	// Safe apply.
	Check    *CheckConfig `koanf:"check"`
	Rollback bool         `koanf:"rollback"`
}

// Conflict policies of PushConfig.Conflict.
const (
	ConflictKeepRemote = "keep-remote"
	ConflictKeepLocal  = "keep-local"
)

// PushConfig turns on push-back of local edits.
type PushConfig struct {
	Enabled  bool          `koanf:"enabled"`
	Delete   bool          `koanf:"delete"`
	Conflict string        `koanf:"conflict"`
	Debounce time.Duration `koanf:"debounce"`
}

// TemplateConfig renders one file from a Go template.
type TemplateConfig struct {
	Name          string      `koanf:"name"`
	Source        string      `koanf:"source"`
	Text          string      `koanf:"text" expand:"-"` // template text: ${...} is left to it
	Dest          string      `koanf:"dest"`
	Bucket        string      `koanf:"bucket"`
	Mode          string      `koanf:"mode"`
	User          string      `koanf:"user"`
	Group         string      `koanf:"group"`
	Backup        bool        `koanf:"backup"`
	MaxOutputSize int64       `koanf:"max_output_size"`
	OnChange      *Action     `koanf:"on_change"`
	Wait          *WaitConfig `koanf:"wait"`

	// Safe apply.
	Check    *CheckConfig `koanf:"check"`
	Rollback bool         `koanf:"rollback"`
	// The template language: delimiters, functions taken away, the folder
	// `file` reads from (none: `file` is not available). See template.go.
	LeftDelimiter    string   `koanf:"left_delimiter"`
	RightDelimiter   string   `koanf:"right_delimiter"`
	FunctionDenylist []string `koanf:"function_denylist"`
	FileRoot         string   `koanf:"file_root"`
}

// EnvConfig projects keys into environment variables of the exec child and,
// optionally, a dotenv file.
type EnvConfig struct {
	Name        string      `koanf:"name"`
	Bucket      string      `koanf:"bucket"`
	Keys        []string    `koanf:"keys"`
	StripPrefix string      `koanf:"strip_prefix"`
	Prefix      string      `koanf:"prefix"`
	File        string      `koanf:"file"`
	Mode        string      `koanf:"mode"`
	OnChange    *Action     `koanf:"on_change"`
	Wait        *WaitConfig `koanf:"wait"`

	// Safe apply.
	Check    *CheckConfig `koanf:"check"`
	Rollback bool         `koanf:"rollback"`
}

// The exec: block and the actions belong to the process package, which
// runs them; Config composes its types, and these names keep them reachable
// from this package as before.
type (
	ExecConfig    = process.ExecConfig
	ExecEnvConfig = process.ExecEnvConfig
	BackoffConfig = process.BackoffConfig
	Action        = process.Action
	HTTPAction    = process.HTTPAction
)

// CheckConfig is a command that tests a staged output before it goes live.
// Every "{{.Path}}" in the arguments is replaced by the staged path.
type CheckConfig struct {
	Command []string      `koanf:"command"`
	Timeout time.Duration `koanf:"timeout"`
}

// WaitConfig is quiescence: after a change, wait until no change came for Min,
// but never longer than Max, then render and act once.
type WaitConfig struct {
	Min time.Duration `koanf:"min"`
	Max time.Duration `koanf:"max"`
}

// WatchConfig is the watch: block (watch.Config): the watch mode of each
// bucket and the republish mode's check interval.
type WatchConfig = watch.Config

// HTTPConfig is the health, metrics and status listener.
type HTTPConfig struct {
	Listen string `koanf:"listen"`
}

// LogConfig sets up slog.
type LogConfig struct {
	Level  string `koanf:"level"`
	Format string `koanf:"format"`
}

// Default returns a Config with every default of docs/CONFIG.md filled in. Projections
// get their defaults in (*Config).Default, which runs after loading.
func Default() Config {
	return Config{
		NATS: NATSConfig{Name: "kvsync"},
		HTTP: HTTPConfig{Listen: "127.0.0.1:9333"},
		Log:  LogConfig{Level: "info", Format: "text"},
	}
}

// Default fills the per-projection defaults that a loader cannot express as a
// flat map: names derived from the kind and index, modes, layouts, policies.
func (c *Config) Default() {
	if c.Embedded != nil {
		c.Embedded.Default()
	}
	for i := range c.Buckets {
		c.Buckets[i].Default()
	}
	for i := range c.Files {
		f := &c.Files[i]
		if f.Name == "" {
			f.Name = fmt.Sprintf("files-%d", i)
		}
		if len(f.Keys) == 0 {
			f.Keys = []string{">"}
		}
		if f.Layout == "" {
			f.Layout = LayoutFlat
		}
		if f.Atomic == "" {
			f.Atomic = AtomicFile
		}
		if f.Mode == "" {
			f.Mode = "0644"
		}
		if f.DirMode == "" {
			f.DirMode = "0755"
		}
		if f.Fsync == nil {
			t := true
			f.Fsync = &t
		}
		if f.Push.Conflict == "" {
			f.Push.Conflict = ConflictKeepRemote
		}
		if f.Push.Debounce == 0 {
			f.Push.Debounce = 100 * time.Millisecond
		}
	}
	for i := range c.Templates {
		t := &c.Templates[i]
		if t.Name == "" {
			t.Name = fmt.Sprintf("template-%d", i)
		}
		if t.Mode == "" {
			t.Mode = "0644"
		}
		if t.MaxOutputSize == 0 {
			t.MaxOutputSize = 64 << 20
		}
	}
	for i := range c.Env {
		e := &c.Env[i]
		if e.Name == "" {
			e.Name = fmt.Sprintf("env-%d", i)
		}
		if len(e.Keys) == 0 {
			e.Keys = []string{">"}
		}
		if e.Mode == "" {
			e.Mode = "0600"
		}
	}
	if c.Exec != nil {
		c.Exec.Default()
	}
	checks := []*CheckConfig{}
	for i := range c.Files {
		checks = append(checks, c.Files[i].Check)
	}
	for i := range c.Templates {
		checks = append(checks, c.Templates[i].Check)
	}
	for i := range c.Env {
		checks = append(checks, c.Env[i].Check)
	}
	for _, ch := range checks {
		if ch != nil && ch.Timeout == 0 {
			ch.Timeout = defaultCheckTimeout
		}
	}
	c.Watch.Default()
	if c.Agent.ID == "" {
		if h, err := os.Hostname(); err == nil {
			c.Agent.ID = h
		}
	}
	if r := c.Report; r != nil {
		if r.Bucket == "" {
			r.Bucket = DefaultReportBucket
		}
		if r.Interval == 0 {
			r.Interval = DefaultReportInterval
		}
	}
	c.NATS.Default(c.Embedded != nil)
}

// Validate reports every problem of the config at once, one a line, each
// prefixed with its path (`templates[1].dest: required`). Its only I/O is
// reading: it stats each template's source and file_root and reads and parses
// the source, so that a missing file or a template that does not parse is
// reported here, not at the first render.
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	names := map[string]string{}
	name := func(path, n string) {
		if prev, dup := names[n]; dup {
			add(path+".name", "%q is also the name of %s; names must be unique", n, prev)
		}
		names[n] = path
	}
	bucket := func(path, b string) {
		if b == "" {
			add(path, "required")
		} else if err := kvkey.ValidBucket(b); err != nil {
			add(path, "%v", err)
		}
	}
	filters := func(path string, keys []string) {
		for j, k := range keys {
			if err := kvkey.ValidFilter(k); err != nil {
				add(fmt.Sprintf("%s[%d]", path, j), "%v", err)
			}
		}
	}
	mode := func(path, m string) {
		if _, err := ParseMode(m); err != nil {
			add(path, "%v", err)
		}
	}
	action := func(path string, a *Action) {
		if a == nil {
			return
		}
		if a.Ref != "" {
			if _, ok := c.Actions[a.Ref]; !ok {
				add(path, "%q is not defined in actions", a.Ref)
			}
			return
		}
		for _, p := range a.Validate(c.Exec != nil) {
			add(path+p.Path, "%s", p.Msg)
		}
	}
	check := func(path string, ch *CheckConfig) {
		if ch == nil {
			return
		}
		if len(ch.Command) == 0 || ch.Command[0] == "" {
			add(path+".command", "required")
		}
		if ch.Timeout < 0 {
			add(path+".timeout", "must not be negative")
		}
	}
	rollback := func(path string, on bool, a *Action) {
		if on && a == nil {
			add(path, "needs an on_change action (only a failed action is rolled back)")
		}
	}
	wait := func(path string, w *WaitConfig) {
		if w == nil {
			return
		}
		if w.Min < 0 || w.Max < 0 {
			add(path, "durations must not be negative")
		}
		if w.Max != 0 && w.Max < w.Min {
			add(path+".max", "%v is less than min %v", w.Max, w.Min)
		}
	}

	for _, p := range c.NATS.Validate(c.Embedded != nil) {
		add("nats"+p.Path, "%s", p.Msg)
	}
	for _, n := range slices.Sorted(maps.Keys(c.Actions)) {
		p := "actions." + n
		a := c.Actions[n]
		switch {
		case n == "":
			add("actions", "an action name must not be empty")
		case a.Ref != "":
			add(p, "a named action must be an action, not the name %q of another", a.Ref)
		default:
			action(p, &a)
		}
	}
	if c.Embedded != nil {
		for _, p := range c.Embedded.Validate() {
			add("embedded"+p.Path, "%s", p.Msg)
		}
	}
	for i := range c.Buckets {
		for _, p := range c.Buckets[i].Validate() {
			add(fmt.Sprintf("buckets[%d]", i)+p.Path, "%s", p.Msg)
		}
	}
	dirs := map[string]string{}
	for i, f := range c.Files {
		p := fmt.Sprintf("files[%d]", i)
		name(p, f.Name)
		bucket(p+".bucket", f.Bucket)
		filters(p+".keys", f.Keys)
		if f.Dir == "" {
			add(p+".dir", "required")
		} else {
			clean := filepath.Clean(f.Dir)
			if clean == "/" {
				add(p+".dir", "refusing to project into /")
			}
			if prev, dup := dirs[clean]; dup {
				add(p+".dir", "%q is also the dir of %s; each projection needs a dir of its own", f.Dir, prev)
			}
			dirs[clean] = p
		}
		if f.Layout != LayoutFlat && f.Layout != LayoutTree {
			add(p+".layout", "%q is not flat or tree", f.Layout)
		}
		if f.Atomic != AtomicFile && f.Atomic != AtomicSnapshot {
			add(p+".atomic", "%q is not file or snapshot", f.Atomic)
		}
		mode(p+".mode", f.Mode)
		mode(p+".dir_mode", f.DirMode)
		if f.Push.Conflict != ConflictKeepRemote && f.Push.Conflict != ConflictKeepLocal {
			add(p+".push.conflict", "%q is not keep-remote or keep-local", f.Push.Conflict)
		}
		if f.Push.Enabled && f.Atomic == AtomicSnapshot {
			add(p+".push.enabled", "push-back does not work with atomic: snapshot (files are read-only links into a snapshot)")
		}
		action(p+".on_change", f.OnChange)
		wait(p+".wait", f.Wait)
		check(p+".check", f.Check)
		rollback(p+".rollback", f.Rollback, f.OnChange)
		if f.Check != nil && f.Push.Enabled {
			add(p+".check", "does not work with push.enabled (a local edit is pushed, not checked)")
		}
		if f.Rollback && f.Push.Enabled {
			add(p+".rollback", "does not work with push.enabled (a restored file would be pushed back)")
		}
	}
	for i, t := range c.Templates {
		p := fmt.Sprintf("templates[%d]", i)
		name(p, t.Name)
		switch {
		case t.Source == "" && t.Text == "":
			add(p+".source", "required (or text)")
		case t.Source != "" && t.Text != "":
			add(p+".source", "give source or text, not both")
		case t.Source != "":
			if _, err := os.Stat(t.Source); err != nil {
				add(p+".source", "%v", err)
			}
		}
		if t.Dest == "" {
			add(p+".dest", "required")
		} else if prev, dup := dirs[filepath.Clean(t.Dest)]; dup {
			add(p+".dest", "%q is also written by %s", t.Dest, prev)
		} else {
			dirs[filepath.Clean(t.Dest)] = p
		}
		if t.Bucket != "" {
			bucket(p+".bucket", t.Bucket)
		}
		mode(p+".mode", t.Mode)
		if t.MaxOutputSize < 0 {
			add(p+".max_output_size", "must not be negative")
		}
		action(p+".on_change", t.OnChange)
		wait(p+".wait", t.Wait)
		check(p+".check", t.Check)
		rollback(p+".rollback", t.Rollback, t.OnChange)
		for _, pr := range t.validateLanguage() {
			add(p+pr.path, "%s", pr.msg)
		}
	}
	for i, e := range c.Env {
		p := fmt.Sprintf("env[%d]", i)
		name(p, e.Name)
		bucket(p+".bucket", e.Bucket)
		filters(p+".keys", e.Keys)
		mode(p+".mode", e.Mode)
		if e.File != "" {
			if prev, dup := dirs[filepath.Clean(e.File)]; dup {
				add(p+".file", "%q is also written by %s", e.File, prev)
			}
			dirs[filepath.Clean(e.File)] = p
		}
		if e.Prefix != "" && !projector.ValidEnvName(e.Prefix) {
			add(p+".prefix", "%q is not a valid start of an environment variable name", e.Prefix)
		}
		action(p+".on_change", e.OnChange)
		wait(p+".wait", e.Wait)
		check(p+".check", e.Check)
		if e.Check != nil && e.File == "" {
			add(p+".check", "needs file: (the check tests the env file)")
		}
		rollback(p+".rollback", e.Rollback, e.OnChange)
		if e.File == "" && c.Exec == nil {
			add(p, "an env projection needs file: or an exec: block to feed")
		}
	}
	if x := c.Exec; x != nil {
		for _, p := range x.Validate() {
			add("exec"+p.Path, "%s", p.Msg)
		}
	}
	wait("wait", &c.Wait)
	for _, p := range c.Watch.Validate() {
		add("watch"+p.Path, "%s", p.Msg)
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "warning", "error":
	default:
		add("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add("log.format", "%q is not text or json", c.Log.Format)
	}
	if c.Agent.ID == "" {
		add("agent.id", "required (the host name is unknown)")
	} else if err := kvkey.Valid(c.Agent.ID); err != nil {
		add("agent.id", "%v", err)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Agent.Labels)) {
		if err := ValidLabel(k, c.Agent.Labels[k]); err != nil {
			add("agent.labels."+k, "%v", err)
		}
	}
	if r := c.Report; r != nil {
		bucket("report.bucket", r.Bucket)
		if r.Interval < MinReportInterval {
			add("report.interval", "%v is less than %v", r.Interval, MinReportInterval)
		}
	}
	if len(c.Files)+len(c.Templates)+len(c.Env) == 0 {
		add("files", "no projection configured: give at least one of files, templates, env")
	}
	return errors.Join(errs...)
}

type problem struct{ path, msg string }

// ParseMode parses an octal file mode such as "0644".
func ParseMode(s string) (os.FileMode, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("%q is not an octal file mode like \"0644\"", s)
	}
	return os.FileMode(m), nil
}

// Expand replaces ${VAR} and ${VAR:-default} in every string of the config
// (fields, lists and map values) with the value of VAR from lookup; $$ is a
// literal $. A $ followed by anything else stays as it is, so $HOME and a
// shell's $1 pass through. An unset VAR without a default is reported with the
// string's path (`templates[1].dest: ${MYHOST} is not set`), every problem at
// once; the string is then left as it was. ${HOSTNAME} falls back to the
// kernel's host name when lookup does not know it.
//
// The body of an inline template (templates[].text) is not expanded: it is
// template text, rendered with its own syntax, and the file a template's
// source names is never touched either.
func (c *Config) Expand(lookup func(string) (string, bool)) error {
	var errs []error
	expandValue(reflect.ValueOf(c).Elem(), "", withHostname(lookup), &errs)
	return errors.Join(errs...)
}

// withHostname makes lookup answer HOSTNAME with the kernel's host name when
// it has no value of its own: shells set $HOSTNAME but do not export it, so a
// service or a container often runs without it.
func withHostname(lookup func(string) (string, bool)) func(string) (string, bool) {
	return func(name string) (string, bool) {
		if v, ok := lookup(name); ok {
			return v, true
		}
		if name == "HOSTNAME" {
			if h, err := os.Hostname(); err == nil && h != "" {
				return h, true
			}
		}
		return "", false
	}
}

// expandValue walks v, expanding every string it can set. path is the
// config path of v (koanf names, [i] for list items, .key for map values).
func expandValue(v reflect.Value, path string, lookup func(string) (string, bool), errs *[]error) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			expandValue(v.Elem(), path, lookup, errs)
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() || f.Tag.Get("expand") == "-" {
				continue
			}
			name := f.Tag.Get("koanf")
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			p := name
			switch {
			case name == "-": // not a key of its own (an on_change given as a string)
				p = path
			case path != "":
				p = path + "." + name
			}
			expandValue(v.Field(i), p, lookup, errs)
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			expandValue(v.Index(i), fmt.Sprintf("%s[%d]", path, i), lookup, errs)
		}
	case reflect.Map:
		// Map values are not addressable: each is expanded in a copy,
		// which is stored back.
		iter := v.MapRange()
		type kv struct{ k, v reflect.Value }
		var set []kv
		for iter.Next() {
			cp := reflect.New(v.Type().Elem()).Elem()
			cp.Set(iter.Value())
			expandValue(cp, fmt.Sprintf("%s.%v", path, iter.Key()), lookup, errs)
			set = append(set, kv{iter.Key(), cp})
		}
		for _, e := range set {
			v.SetMapIndex(e.k, e.v)
		}
	case reflect.String:
		s, err := expandString(v.String(), lookup)
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
			return
		}
		if v.CanSet() {
			v.SetString(s)
		}
	}
}

// expandString replaces ${VAR} and ${VAR:-default} in s with values from
// lookup; $$ is a literal $; a $ followed by anything else is kept. VAR is
// [A-Za-z_][A-Za-z0-9_]*. The default is taken literally up to the first }
// (it is not expanded again). An unset VAR without a default, an empty or
// malformed name and an unclosed ${ are errors.
func expandString(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			i++
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i += 2
			continue
		case '{':
		default:
			b.WriteByte(c)
			i++
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return s, fmt.Errorf("%q: ${ without a closing }", s)
		}
		ref := s[i : i+2+end+1] // ${...}
		body := s[i+2 : i+2+end]
		name, def, hasDef := strings.Cut(body, ":-")
		if !projector.ValidEnvName(name) {
			return s, fmt.Errorf("%s: %q is not a variable name (write $$ for a literal $)", ref, name)
		}
		v, ok := lookup(name)
		switch {
		case ok:
			b.WriteString(v)
		case hasDef:
			b.WriteString(def)
		default:
			return s, fmt.Errorf("%s is not set", ref)
		}
		i += 2 + end + 1
	}
	return b.String(), nil
}

// ValidLabel checks one agent label. A key is 1 to 63 characters of
// [a-z0-9], '-', '_' and '.', starting and ending with a letter or digit; a
// value is 0 to 63 characters of [A-Za-z0-9], '-', '_' and '.'. Neither may
// hold '=' or ',' (the separators of a selector like role=web,region=eu).
func ValidLabel(key, value string) error {
	if key == "" || len(key) > 63 {
		return fmt.Errorf("label key %q must be 1 to 63 characters", key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || i == len(key)-1 || c != '-' && c != '_' && c != '.') {
			return fmt.Errorf("label key %q: only a-z, 0-9, '-', '_', '.', starting and ending with a letter or digit", key)
		}
	}
	if len(value) > 63 {
		return fmt.Errorf("label %s: value is over 63 characters", key)
	}
	for i := 0; i < len(value); i++ {
		c := value[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("label %s: value %q: only A-Z, a-z, 0-9, '-', '_', '.'", key, value)
		}
	}
	return nil
}

// ParseSelector parses a label selector "k=v,k2=v2" (the -l of kvsync fleet).
// An empty string selects every agent.
func ParseSelector(s string) (map[string]string, error) {
	sel := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return sel, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("label selector %q: %q is not key=value", s, part)
		}
		if err := ValidLabel(k, v); err != nil {
			return nil, fmt.Errorf("label selector %q: %w", s, err)
		}
		if prev, dup := sel[k]; dup && prev != v {
			return nil, fmt.Errorf("label selector %q: %s given twice", s, k)
		}
		sel[k] = v
	}
	return sel, nil
}

// MatchLabels reports whether labels has every key=value of sel.
func MatchLabels(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
