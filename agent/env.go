package agent

import (
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
}

func newEnvProjection(c *EnvConfig, o *owner) (projection, error) {
	target := c.File
	if target == "" {
		target = "exec environment"
	}
	m, err := o.newMeta(c.Name, "env", target, []string{c.Bucket}, c.Wait, c.OnChange)
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
	p.vars = vars
	if p.o.a.opts.DryRun {
		p.m.logger.Info("dry run: environment changed", "vars", len(vars))
		return true, nil
	}
	if p.cfg.File != "" {
		start := time.Now()
		changed, err := projector.WriteFile(p.cfg.File, projector.EncodeDotenv(vars), p.fopts)
		if err != nil {
			p.o.a.metrics.errors.WithLabelValues(p.m.name, "write").Inc()
			return false, err
		}
		if changed {
			p.o.a.metrics.writes.WithLabelValues(p.m.name).Inc()
			p.m.logger.Info("env file written", "file", p.cfg.File, "vars", len(vars), "took", time.Since(start))
		}
	}
	return true, nil
}
