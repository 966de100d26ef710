package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
	"github.com/kvsync/kvsync/templates"
)

// errWaitingForBucket: a render read a bucket whose initial sync is not done;
// it renders again once it is.
var errWaitingForBucket = errors.New("waiting for the initial sync of a bucket")

// errRender marks a render error: the last good file is kept, and only a
// change of a key the template reads can help, so it is not retried.
var errRender = errors.New("render")

// templateProjection renders one file from a template. It re-renders only when
// a key it read (or a key matching a filter it listed) changes.
type templateProjection struct {
	m        *projMeta
	cfg      *TemplateConfig
	o        *owner
	tmpl     *templates.Template
	deps     templates.Deps
	rendered bool // deps are known
	good     bool // a render succeeded once: readiness no longer waits on it
	root     *os.Root
	fopts    projector.FileOptions

	undo     *fileUndo // what the last write replaced, with rollback: true
	rejected *[32]byte // the output a rollback rejected: not written again
}

// fileUndo is what a write replaced, for a rollback.
type fileUndo struct {
	old     []byte
	existed bool
	sum     [32]byte // of the bytes written
}

// renderFailed records a failed render or write: the last good file stays.
// Until the first success the template holds readiness back, with err as the
// reason.
func (p *templateProjection) renderFailed(err error) {
	p.o.a.metrics.renderOK.WithLabelValues(p.m.name).Set(0)
	if !p.good {
		p.m.status.NotReady = notRendered + ": " + err.Error()
	}
}

// renderDone records a successful render.
func (p *templateProjection) renderDone() {
	p.o.a.metrics.renderOK.WithLabelValues(p.m.name).Set(1)
	if !p.good {
		p.good = true
		p.o.a.rendered.Store(templateKey(p.cfg), struct{}{})
	}
	p.m.status.NotReady = ""
}

// templateKey names a template across config reloads: a template that
// rendered before a SIGHUP does not hold readiness back after it, since its
// last good file is still in place.
func templateKey(c *TemplateConfig) string { return c.Name + "\x00" + c.Dest }

// parseTemplate reads and parses the template of c. files is the folder
// `file` reads from (nil: none); the caller opens it (openFileRoot), or gives
// any non-nil FS when it only parses.
func parseTemplate(c *TemplateConfig, files fs.FS) (*templates.Template, error) {
	text := c.Text
	if c.Source != "" {
		b, err := readSource(c.Source)
		if err != nil {
			return nil, fmt.Errorf("read template: %w", err)
		}
		text = string(b)
	}
	o := templates.Options{
		DefaultBucket: c.Bucket,
		MaxOutput:     c.MaxOutputSize,
		LeftDelim:     c.LeftDelimiter,
		RightDelim:    c.RightDelimiter,
		Denylist:      c.FunctionDenylist,
		Files:         files,
		FileRoot:      c.FileRoot,
	}
	if c.Source != "" {
		o.SourceName = filepath.Base(c.Source)
	}
	return templates.Parse(c.Name, text, o)
}

// maxSource is the largest template source kvsync reads.
const maxSource = 16 << 20

// readSource reads a template source: a regular file of at most maxSource
// bytes (a device or a FIFO given by mistake would never end; it is checked
// before it is opened, since opening a FIFO blocks).
func readSource(path string) ([]byte, error) {
	if fi, err := os.Stat(path); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSource+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSource {
		return nil, fmt.Errorf("%s is larger than %d MiB", path, maxSource>>20)
	}
	return b, nil
}

// openFileRoot opens the folder `file` reads from; nil when there is none.
// An os.Root keeps symbolic links from leading out of it.
func openFileRoot(c *TemplateConfig) (*os.Root, error) {
	if c.FileRoot == "" {
		return nil, nil
	}
	r, err := os.OpenRoot(c.FileRoot)
	if err != nil {
		return nil, fmt.Errorf("file_root: %w", err)
	}
	return r, nil
}

// rootFS is r's file system, or nil.
func rootFS(r *os.Root) fs.FS {
	if r == nil {
		return nil
	}
	return r.FS()
}

// validateLanguage checks the template fields of c and parses the template:
// every syntax error, unknown or denylisted function, each with its line.
// Paths are relative to templates[i]; a parse problem's path names the
// template: "templates[0] (nginx): nginx.conf.tmpl:3: ...".
func (c *TemplateConfig) validateLanguage() []problem {
	var ps []problem
	for j, fn := range c.FunctionDenylist {
		if !templates.IsFunc(fn) {
			ps = append(ps, problem{fmt.Sprintf(".function_denylist[%d]", j), fmt.Sprintf("%q is not a template function", fn)})
		}
	}
	for _, d := range []struct{ key, val string }{{"left_delimiter", c.LeftDelimiter}, {"right_delimiter", c.RightDelimiter}} {
		if strings.ContainsFunc(d.val, unicode.IsSpace) {
			ps = append(ps, problem{"." + d.key, fmt.Sprintf("%q holds white space", d.val)})
		}
	}
	var files fs.FS
	if c.FileRoot != "" {
		fi, err := os.Stat(c.FileRoot)
		switch {
		case err != nil:
			ps = append(ps, problem{".file_root", err.Error()})
		case !fi.IsDir():
			ps = append(ps, problem{".file_root", fmt.Sprintf("%s is not a folder", c.FileRoot)})
		}
		files = os.DirFS(c.FileRoot) // only parsed: `file` may be called
	}
	if len(ps) > 0 || (c.Source == "") == (c.Text == "") || c.MaxOutputSize < 0 ||
		(c.Bucket != "" && kvkey.ValidBucket(c.Bucket) != nil) {
		return ps // reported by Validate already, or above
	}
	if c.Source != "" {
		if _, err := os.Stat(c.Source); err != nil {
			return ps
		}
	}
	_, err := parseTemplate(c, files)
	var pe *templates.ParseError
	switch {
	case errors.As(err, &pe):
		for _, e := range pe.Errs {
			ps = append(ps, problem{" (" + c.Name + ")", e.Error()})
		}
	case err != nil:
		ps = append(ps, problem{" (" + c.Name + ")", err.Error()})
	}
	return ps
}

func newTemplateProjection(c *TemplateConfig, o *owner) (projection, error) {
	root, err := openFileRoot(c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	t, err := parseTemplate(c, rootFS(root))
	if err != nil {
		if root != nil {
			root.Close()
		}
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	var buckets []string
	if c.Bucket != "" {
		buckets = []string{c.Bucket}
	}
	fail := func(err error) (projection, error) {
		if root != nil {
			root.Close()
		}
		return nil, err
	}
	m, err := o.newMeta(c.Name, "template", c.Dest, buckets, c.Wait, c.OnChange, c.Check, c.Rollback)
	if err != nil {
		return fail(err)
	}
	mode, _ := ParseMode(c.Mode)
	uid, gid, err := lookupOwner(c.User, c.Group)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", c.Name, err))
	}
	_, good := o.a.rendered.Load(templateKey(c))
	if !good {
		m.status.NotReady = notRendered
	}
	return &templateProjection{
		m: m, cfg: c, o: o, tmpl: t, root: root, good: good,
		fopts: projector.FileOptions{Mode: mode, UID: uid, GID: gid, Fsync: true, Backup: c.Backup, Logger: m.logger, Warned: &o.a.warned},
	}, nil
}

// notRendered is a template's ProjectionStatus.NotReady until its first
// successful render.
const notRendered = "never rendered"

func (p *templateProjection) meta() *projMeta { return p.m }

func (p *templateProjection) close() error {
	if p.root == nil {
		return nil
	}
	return p.root.Close()
}
func (p *templateProjection) noteKey(_, _ string) {}

func (p *templateProjection) touches(bucket, key string) bool {
	return !p.rendered || p.deps.Matches(bucket, key)
}

func (p *templateProjection) update(s *state, _ bool) (bool, error) {
	start := time.Now()
	clear(s.wanted)
	res, err := p.tmpl.Render(context.Background(), s)
	p.o.a.metrics.renders.WithLabelValues(p.m.name).Inc()
	p.deps, p.rendered = res.Deps, true
	p.m.status.Buckets = res.Deps.Buckets()
	var waiting []string
	for b := range s.wanted {
		waiting = append(waiting, "bucket "+b+" (initial sync)")
	}
	p.m.status.WaitingOn = append(waiting, res.Missing...)
	if len(waiting) > 0 {
		return false, errWaitingForBucket
	}
	if err != nil {
		p.o.a.metrics.errors.WithLabelValues(p.m.name, "render").Inc()
		if len(res.Missing) > 0 {
			err = fmt.Errorf("%w %s: keeping the last good file; missing keys %v: %w", errRender, p.m.name, res.Missing, err)
		} else {
			err = fmt.Errorf("%w %s: keeping the last good file: %w", errRender, p.m.name, err)
		}
		p.renderFailed(err)
		return false, err
	}
	for _, b := range res.Deps.Buckets() {
		if bs := s.buckets[b]; bs != nil && bs.lastRev > p.m.status.LastRevision {
			p.m.status.LastRevision = bs.lastRev
		}
	}
	p.m.status.Keys = len(res.Deps.Keys()) + len(res.Deps.Filters())
	if p.o.a.opts.DryRun {
		p.m.logger.Info("dry run: would write", "dest", p.cfg.Dest, "bytes", len(res.Output))
		p.renderDone()
		return false, nil
	}
	if p.rejected != nil {
		if sha256.Sum256(res.Output) == *p.rejected {
			return false, nil // the rolled-back output: kept out until the input changes
		}
		p.rejected = nil
	}
	changed, err := p.write(res.Output)
	if err != nil {
		p.renderFailed(err)
		return false, err
	}
	p.renderDone()
	if changed {
		p.o.a.metrics.writes.WithLabelValues(p.m.name).Inc()
		p.m.logger.Info("template rendered", "dest", p.cfg.Dest, "bytes", len(res.Output), "took", time.Since(start))
	}
	return changed, nil
}

// write stages out next to the dest, checks it (with check:), and puts it
// in place. A failed check leaves the dest as it was.
func (p *templateProjection) write(out []byte) (bool, error) {
	u, err := writeChecked(p.o, p.m, p.cfg.Dest, out, p.fopts, "the last good file")
	if err != nil || u == nil {
		return false, err
	}
	if p.m.rollback {
		p.undo = u
	}
	return true, nil
}

// rollback puts back what the last write replaced.
func (p *templateProjection) rollback() (bool, error) {
	u := p.undo
	if u == nil {
		return false, nil
	}
	p.undo = nil
	if err := restoreFile(p.cfg.Dest, u, p.fopts); err != nil {
		return false, err
	}
	p.rejected = &u.sum
	return true, nil
}
