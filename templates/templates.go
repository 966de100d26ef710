package templates

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// Entry is one KV entry as templates see it.
type Entry struct {
	Bucket   string
	Key      string
	Value    []byte
	Revision uint64
	Created  time.Time
	Op       string // "PUT", "DEL", "PURGE" (history only)
}

// Entry operations as they appear in Entry.Op.
const (
	OpPut   = "PUT"
	OpDel   = "DEL"
	OpPurge = "PURGE"
)

// Source is the read view a render uses; the agent implements it over its
// in-memory state. Reads are synchronous, and a Source must be safe for the
// concurrent use of as many renders as the agent runs at once.
//
// The bytes of an Entry.Value a Source returns must never change afterwards:
// a replaced or deleted entry gets a new Entry, its old Value is left as it
// was. Renders hand values to templates as strings that share those bytes
// instead of copying them, and such strings may outlive the render (in Deps).
type Source interface {
	// Get returns the current value of key; false if it is absent or deleted.
	Get(bucket, key string) (Entry, bool)
	// List returns the current entries whose key matches the NATS wildcard
	// filter, sorted by key.
	List(bucket, filter string) []Entry
	// History returns every revision of key still held by the bucket, oldest
	// first. It may do I/O and must honour ctx.
	History(ctx context.Context, bucket, key string) ([]Entry, error)
}

// Options configures a Template.
type Options struct {
	// DefaultBucket is the bucket of a key function's argument that names no
	// bucket ("k" rather than "bucket:k"). Empty means every ref must name one.
	DefaultBucket string
	// MaxOutput is the largest output in bytes a render may produce; 0 means
	// unlimited. A render that would exceed it stops at once with
	// ErrOutputTooLarge.
	MaxOutput int64
	// LeftDelim and RightDelim are the action delimiters; empty means "{{"
	// and "}}". Text outside them, including the other pair, is printed as is.
	LeftDelim, RightDelim string
	// SourceName names the text in error positions ("nginx.conf.tmpl:3");
	// empty means the template's name.
	SourceName string
	// Denylist names functions the template must not call. A template that
	// names one fails to parse, and the functions are left out of the
	// function map the template is executed with.
	Denylist []string
	// Files is the folder the `file` function reads from, and FileRoot its
	// path (for arguments given as absolute paths). Nil Files: a template
	// that calls `file` fails to parse. An os.Root's FS keeps symbolic links
	// from leading out of the folder.
	Files    fs.FS
	FileRoot string
}

// ErrMissingKey is wrapped by the error of a render in which `key` asked for a
// key that does not exist; Result.Missing lists them.
var ErrMissingKey = errors.New("missing key")

// ErrOutputTooLarge is wrapped by the error of a render whose output would
// exceed Options.MaxOutput.
var ErrOutputTooLarge = errors.New("output too large")

// errNotRendering is returned by the functions of the parsed template itself,
// which is never executed: renders execute bound clones.
var errNotRendering = errors.New("template function called outside a render")

// Template is a parsed template, reusable and safe for concurrent Render calls.
type Template struct {
	name string
	opts Options
	root *template.Template // parsed with unbound functions; only cloned, never executed

	ranges   map[string]*printingRange // by marker; see fastrange.go
	pool     sync.Pool                 // of *binding: clones of root bound to a per-render state
	lists    sync.Pool                 // of *[]Record: the lists keys and tree return; see render.records
	sizeHint atomic.Int64              // output size of the last successful render
}

// Result is what one render produced and read.
type Result struct {
	// Output is the rendered text; nil when the render failed.
	Output []byte
	// Deps is every key and filter the render read, also when it failed.
	Deps Deps
	// Missing holds the "bucket:key" refs `key` asked for that do not exist,
	// in the order first asked.
	Missing []string
}

// ParseError is the error of Parse: every problem found, each with its
// position ("nginx.conf.tmpl:3: function \"nosuchfn\" not defined").
type ParseError struct {
	Name string  // the template's name
	Errs []error // in the order found
}

func (e *ParseError) Error() string {
	msgs := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		msgs[i] = err.Error()
	}
	return "parse " + e.Name + ": " + strings.Join(msgs, "; ")
}

// Unwrap returns the problems, for errors.Is and errors.As.
func (e *ParseError) Unwrap() []error { return e.Errs }

// Parse parses text as the template name, once; call it at start and on reload.
// It reports, as a *ParseError, a syntax error, or else every call of a function
// that is not defined, is denylisted (Options.Denylist), or is `file` without
// Options.Files, each with its line. Refs given as string literals to the key
// functions (`key "a b"`) are checked here too, so a bad key name is reported
// before any render.
func Parse(name, text string, o Options) (*Template, error) {
	return parseTemplate(name, text, o, true)
}

// parseTemplate is Parse; printRanges=false leaves every range to
// text/template (tests compare both ways).
func parseTemplate(name, text string, o Options, printRanges bool) (*Template, error) {
	fail := func(errs ...error) (*Template, error) { return nil, &ParseError{Name: name, Errs: errs} }
	if o.DefaultBucket != "" {
		if err := kvkey.ValidBucket(o.DefaultBucket); err != nil {
			return fail(fmt.Errorf("default bucket: %w", err))
		}
	}
	if o.MaxOutput < 0 {
		return fail(fmt.Errorf("max output %d is negative", o.MaxOutput))
	}
	funcs := maps.Clone(baseFuncs())
	maps.Copy(funcs, (&binding{}).funcs())
	for _, fn := range o.Denylist {
		if _, ok := funcs[fn]; !ok && !slices.Contains(builtins, fn) {
			return fail(fmt.Errorf("denylist: %q is not a template function", fn))
		}
	}
	src := o.SourceName
	if src == "" {
		src = name
	}
	if errs := checkFuncs(src, text, o, funcs); len(errs) > 0 {
		return fail(errs...)
	}
	for _, fn := range o.Denylist {
		delete(funcs, fn)
	}
	root, err := template.New(src).
		Delims(o.LeftDelim, o.RightDelim).
		Option("missingkey=error").
		Funcs(funcs).
		Parse(text)
	if err != nil {
		return fail(trimParseError(err))
	}
	t := &Template{name: name, opts: o, root: root}
	if errs := t.checkLiterals(); len(errs) > 0 {
		return fail(errs...)
	}
	if printRanges {
		t.ranges = compileRanges(root)
	}
	return t, nil
}

// Name returns the name the template was parsed with.
func (t *Template) Name() string { return t.name }

// Render executes the template against src. It records every dependency it
// read; on error the returned Result still carries Deps and Missing, so the
// caller knows what to wait on. Errors wrap ErrMissingKey, ErrOutputTooLarge,
// ctx.Err(), kvkey.ErrInvalid for a bad key name, or describe a template
// execution error with the template name and line.
func (t *Template) Render(ctx context.Context, src Source) (Result, error) {
	b, err := t.binding()
	if err != nil {
		return Result{}, err
	}
	w := &limitWriter{max: t.opts.MaxOutput, ctx: ctx}
	if h := t.sizeHint.Load(); h > 0 {
		// Some headroom: a value that got a little longer must not make the
		// buffer grow, which copies the whole output, near the end.
		w.buf = make([]byte, 0, h+h/32)
	}
	r := &render{ctx: ctx, src: src, def: t.opts.DefaultBucket, lists: &t.lists, out: w}
	b.r = r
	execErr := b.tmpl.Execute(w, nil)
	if w.err != nil {
		// What text/template returns for a write error, also when a
		// printing range met it (its function's error is wrapped).
		execErr = w.err
	}
	b.r = nil
	t.pool.Put(b)
	r.release()

	res := Result{Deps: r.deps.done(), Missing: r.missing}
	if err := t.renderError(r, execErr); err != nil {
		return res, err
	}
	res.Output = w.buf
	t.sizeHint.Store(int64(len(res.Output)))
	return res, nil
}

// renderError is the error a render ends with: every missing key first, then
// whatever stopped execution.
func (t *Template) renderError(r *render, execErr error) error {
	if execErr != nil {
		var ee template.ExecError
		if !errors.As(execErr, &ee) {
			// Writer and context errors carry no template name.
			execErr = fmt.Errorf("render %s: %w", t.name, execErr)
		}
	}
	if len(r.missing) == 0 {
		return execErr
	}
	missErr := fmt.Errorf("render %s: %w: %s", t.name, ErrMissingKey, strings.Join(r.missing, ", "))
	if execErr == nil {
		return missErr
	}
	return errors.Join(missErr, execErr)
}

// binding returns a pooled clone of the parsed template, or makes one.
func (t *Template) binding() (*binding, error) {
	if b, ok := t.pool.Get().(*binding); ok {
		return b, nil
	}
	return t.newBinding()
}

// newBinding clones the parsed template and binds its key functions to a
// fresh binding. Clone is needed because Funcs mutates the template's function
// map, which concurrent renders would otherwise share.
func (t *Template) newBinding() (*binding, error) {
	c, err := t.root.Clone()
	if err != nil {
		return nil, fmt.Errorf("clone %s: %w", t.name, err)
	}
	b := &binding{ranges: t.ranges, opts: &t.opts}
	funcs := b.funcs()
	for _, fn := range t.opts.Denylist {
		delete(funcs, fn)
	}
	b.tmpl = c.Funcs(funcs)
	return b, nil
}

// limitWriter buffers output and fails once more than max bytes (when max > 0)
// would be written, or once ctx is done; text/template stops at the first
// write error. The first error sticks: every later write returns it.
type limitWriter struct {
	buf   []byte
	max   int64
	ctx   context.Context
	since int // bytes written since ctx was last checked
	err   error
}

// ctxCheckEvery is how many output bytes may pass between two checks of the
// render's context: often enough to stop a runaway render, rarely enough to
// cost nothing.
const ctxCheckEvery = 32 << 10

func (w *limitWriter) Write(p []byte) (int, error) {
	if w.write(p); w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// write and writeString append to the output when there is room; a printing
// range calls them directly and looks at w.err.
func (w *limitWriter) write(p []byte) {
	if w.room(len(p)) {
		w.buf = append(w.buf, p...)
	}
}

func (w *limitWriter) writeString(s string) {
	if w.room(len(s)) {
		w.buf = append(w.buf, s...)
	}
}

// room reports whether n more bytes may be written, and sets w.err if not.
func (w *limitWriter) room(n int) bool {
	if w.err != nil {
		return false
	}
	if w.max > 0 && int64(len(w.buf))+int64(n) > w.max {
		w.err = fmt.Errorf("%w: more than %d bytes", ErrOutputTooLarge, w.max)
		return false
	}
	w.since += n
	if w.since >= ctxCheckEvery {
		w.since = 0
		if err := w.ctx.Err(); err != nil {
			w.err = err
			return false
		}
	}
	return true
}
