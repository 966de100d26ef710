package agent

import (
	"crypto/sha256"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
)

// envProjection turns matching keys into environment variables for the exec
// child and, optionally, a dotenv file.
type envProjection struct {
	m     *projMeta
	cfg   *EnvConfig
	o     *owner
	vars  map[string]string
	fopts projector.FileOptions

	undo     *envUndo  // what the last change replaced, with rollback: true
	rejected *[32]byte // the encoded vars a rollback rejected: not applied again
}

// envUndo is what an env change replaced, for a rollback.
type envUndo struct {
	vars map[string]string
	file *fileUndo // nil without a file, or when the file did not change
	sum  [32]byte  // of the encoded new vars
}

func newEnvProjection(c *EnvConfig, o *owner) (projection, error) {
	target := c.File
	if target == "" {
		target = "exec environment"
	}
	m, err := o.newMeta(c.Name, "env", target, []string{c.Bucket}, c.Wait, c.OnChange, c.Check, c.Rollback)
	if err != nil {
		return nil, err
	}
	mode, _ := ParseMode(c.Mode)
	return &envProjection{
		m: m, cfg: c, o: o,
		fopts: projector.FileOptions{Mode: mode, UID: -1, GID: -1, Fsync: true, Logger: m.logger, Warned: &o.a.warned},
	}, nil
}

func (p *envProjection) meta() *projMeta     { return p.m }
func (p *envProjection) close() error        { return nil }
func (p *envProjection) noteKey(_, _ string) {}

func (p *envProjection) touches(bucket, key string) bool {
	return bucket == p.cfg.Bucket && kvkey.MatchAny(p.cfg.Keys, key)
}

// environ returns NAME=value pairs, sorted.
func (p *envProjection) environ() []string {
	names := slices.Sorted(maps.Keys(p.vars))
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, n+"="+p.vars[n])
	}
	return out
}

func (p *envProjection) update(s *state, _ bool) (bool, error) {
	b := s.buckets[p.cfg.Bucket]
	kv := map[string][]byte{}
	for k, e := range b.entries {
		if kvkey.MatchAny(p.cfg.Keys, k) {
			kv[k] = e.Value
		}
	}
	vars, problems := projector.EnvVars(kv, p.cfg.StripPrefix, p.cfg.Prefix)
	rejected := make([]string, 0, len(problems))
	for _, pr := range problems {
		rejected = append(rejected, fmt.Sprintf("%s: %s", pr.Key, pr.Reason))
	}
	sort.Strings(rejected)
	if !slices.Equal(rejected, p.m.status.Rejected) {
		for _, pr := range problems {
			p.m.logger.Warn("key not projected into the environment", "key", strconv.Quote(pr.Key), "name", pr.Name, "reason", pr.Reason)
			p.o.a.metrics.rejected.WithLabelValues(p.m.name, "env").Inc()
		}
	}
	p.m.status.Rejected = rejected
	p.m.status.Keys = len(vars)
	p.m.status.LastRevision = b.lastRev
	if maps.Equal(vars, p.vars) {
		return false, nil
	}
	encoded := projector.EncodeDotenv(vars)
	sum := sha256.Sum256(encoded)
	if p.rejected != nil {
		if sum == *p.rejected {
			return false, nil // the rolled-back set: kept out until the keys change
		}
		p.rejected = nil
	}
	if p.o.a.opts.DryRun {
		p.vars = vars
		p.m.logger.Info("dry run: environment changed", "vars", len(vars))
		return true, nil
	}
	undo := &envUndo{vars: p.vars, sum: sum}
	if p.cfg.File != "" {
		start := time.Now()
		fu, err := p.writeFile(encoded)
		if err != nil {
			return false, err
		}
		if fu != nil {
			undo.file = fu
			p.o.a.metrics.writes.WithLabelValues(p.m.name).Inc()
			p.m.logger.Info("env file written", "file", p.cfg.File, "vars", len(vars), "took", time.Since(start))
		}
	}
	p.vars = vars
	if p.m.rollback {
		p.undo = undo
	}
	return true, nil
}

// writeFile stages the env file, checks it (with check:) and puts it in
// place. It returns what it replaced, nil when the file held data already.
// A failed check leaves the file and the exec environment as they were.
func (p *envProjection) writeFile(data []byte) (*fileUndo, error) {
	return writeChecked(p.o, p.m, p.cfg.File, data, p.fopts, "the last good env file and environment")
}

// rollback puts back the variables and the env file the last change
// replaced.
func (p *envProjection) rollback() (bool, error) {
	u := p.undo
	if u == nil {
		return false, nil
	}
	p.undo = nil
	if u.file != nil {
		if err := restoreFile(p.cfg.File, u.file, p.fopts); err != nil {
			return false, err
		}
	}
	p.vars = u.vars
	p.rejected = &u.sum
	return true, nil
}
