package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"time"

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

func newTemplateProjection(c *TemplateConfig, o *owner) (projection, error) {
	text := c.Text
	if c.Source != "" {
		b, err := os.ReadFile(c.Source)
		if err != nil {
			return nil, fmt.Errorf("%s: read template: %w", c.Name, err)
		}
		text = string(b)
	}
	t, err := templates.Parse(c.Name, text, templates.Options{DefaultBucket: c.Bucket, MaxOutput: c.MaxOutputSize})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	var buckets []string
	if c.Bucket != "" {
		buckets = []string{c.Bucket}
	}
	m, err := o.newMeta(c.Name, "template", c.Dest, buckets, c.Wait, c.OnChange, c.Check, c.Rollback)
	if err != nil {
		return nil, err
	}
	mode, _ := ParseMode(c.Mode)
	uid, gid, err := lookupOwner(c.User, c.Group)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	return &templateProjection{
		m: m, cfg: c, o: o, tmpl: t,
		fopts: projector.FileOptions{Mode: mode, UID: uid, GID: gid, Fsync: true, Backup: c.Backup, Logger: m.logger, Warned: &o.a.warned},
	}, nil
}

func (p *templateProjection) meta() *projMeta     { return p.m }
func (p *templateProjection) close() error        { return nil }
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
			return false, fmt.Errorf("%w %s: keeping the last good file; missing keys %v: %w", errRender, p.m.name, res.Missing, err)
		}
		return false, fmt.Errorf("%w %s: keeping the last good file: %w", errRender, p.m.name, err)
	}
	for _, b := range res.Deps.Buckets() {
		if bs := s.buckets[b]; bs != nil && bs.lastRev > p.m.status.LastRevision {
			p.m.status.LastRevision = bs.lastRev
		}
	}
	p.m.status.Keys = len(res.Deps.Keys()) + len(res.Deps.Filters())
	if p.o.a.opts.DryRun {
		p.m.logger.Info("dry run: would write", "dest", p.cfg.Dest, "bytes", len(res.Output))
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
		return false, err
	}
	if changed {
		p.o.a.metrics.writes.WithLabelValues(p.m.name).Inc()
		p.m.logger.Info("template rendered", "dest", p.cfg.Dest, "bytes", len(res.Output), "took", time.Since(start))
	}
	return changed, nil
}

// write stages out next to the dest, checks it (with check:), and puts it
// in place. A failed check leaves the dest as it was.
func (p *templateProjection) write(out []byte) (bool, error) {
	st, err := projector.Stage(p.cfg.Dest, out, p.fopts)
	if err != nil {
		p.o.a.metrics.errors.WithLabelValues(p.m.name, "write").Inc()
		return false, err
	}
	if st == nil {
		return false, nil // unchanged
	}
	if err := checkStaged(p.o, p.m, st.Path()); err != nil {
		if derr := st.Discard(); derr != nil {
			p.m.logger.Warn("discard staged file", "err", derr)
		}
		return false, fmt.Errorf("%s: keeping the last good file: %w", p.m.name, err)
	}
	old, existed := st.Previous()
	if err := st.Commit(); err != nil {
		p.o.a.metrics.errors.WithLabelValues(p.m.name, "write").Inc()
		return false, err
	}
	if p.m.rollback {
		p.undo = &fileUndo{old: old, existed: existed, sum: sha256.Sum256(out)}
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
