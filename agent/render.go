package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/templates"
)

// liveSource reads entries straight from the server, for `kvsync render`: no
// watcher, no state, one request per key read.
type liveSource struct {
	ctx context.Context
	js  jetstream.JetStream
	kvs map[string]jetstream.KeyValue
	err error // the first error that is not "not found"
}

func (s *liveSource) bucket(name string) jetstream.KeyValue {
	if kv, ok := s.kvs[name]; ok {
		return kv
	}
	kv, err := s.js.KeyValue(s.ctx, name)
	if err != nil {
		if s.err == nil {
			s.err = fmt.Errorf("bucket %s: %w", name, err)
		}
		kv = nil
	}
	s.kvs[name] = kv
	return kv
}

func entryOf(bucket string, e jetstream.KeyValueEntry) templates.Entry {
	return templates.Entry{Bucket: bucket, Key: e.Key(), Value: e.Value(), Revision: e.Revision(), Created: e.Created(), Op: kvOp(e.Operation()).String()}
}

// Get implements templates.Source.
func (s *liveSource) Get(bucket, key string) (templates.Entry, bool) {
	kv := s.bucket(bucket)
	if kv == nil {
		return templates.Entry{}, false
	}
	e, err := kv.Get(s.ctx, key)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) && s.err == nil {
			s.err = fmt.Errorf("get %s:%s: %w", bucket, key, err)
		}
		return templates.Entry{}, false
	}
	return entryOf(bucket, e), true
}

// List implements templates.Source.
func (s *liveSource) List(bucket, filter string) []templates.Entry {
	kv := s.bucket(bucket)
	if kv == nil {
		return nil
	}
	lister, err := kv.ListKeysFiltered(s.ctx, filter)
	if err != nil {
		if s.err == nil {
			s.err = fmt.Errorf("list %s:%s: %w", bucket, filter, err)
		}
		return nil
	}
	var keys []string
	for k := range lister.Keys() {
		if kvkey.Match(filter, k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]templates.Entry, 0, len(keys))
	for _, k := range keys {
		if e, ok := s.Get(bucket, k); ok {
			out = append(out, e)
		}
	}
	return out
}

// History implements templates.Source.
func (s *liveSource) History(ctx context.Context, bucket, key string) ([]templates.Entry, error) {
	return (&state{js: s.js}).History(ctx, bucket, key)
}

// Rendered is one template rendered by Render.
type Rendered struct {
	Name    string
	Dest    string
	Output  []byte
	Missing []string
	Err     error
}

// renderOne renders tc from the live buckets.
func renderOne(ctx context.Context, tc *TemplateConfig, js jetstream.JetStream) Rendered {
	r := Rendered{Name: tc.Name, Dest: tc.Dest}
	root, err := openFileRoot(tc)
	if err != nil {
		r.Err = err
		return r
	}
	if root != nil {
		defer root.Close()
	}
	t, err := parseTemplate(tc, rootFS(root))
	if err != nil {
		r.Err = err
		return r
	}
	src := &liveSource{ctx: ctx, js: js, kvs: map[string]jetstream.KeyValue{}}
	res, err := t.Render(ctx, src)
	if err == nil && src.err != nil {
		err = src.err
	}
	r.Output, r.Missing, r.Err = res.Output, res.Missing, err
	return r
}

// Render renders the named templates of cfg (all when names is empty) from
// the live buckets and returns their output. It writes nothing.
func Render(ctx context.Context, cfg *Config, js jetstream.JetStream, names []string) ([]Rendered, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	unknown := maps.Clone(want)
	var out []Rendered
	for _, tc := range cfg.Templates {
		if len(want) > 0 && !want[tc.Name] {
			continue
		}
		delete(unknown, tc.Name)
		out = append(out, renderOne(ctx, &tc, js))
	}
	if len(unknown) > 0 {
		return out, fmt.Errorf("no template named %v", slices.Sorted(maps.Keys(unknown)))
	}
	return out, nil
}
