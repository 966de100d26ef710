package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/watch"
	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/templates"
)

// bucketState is what the owner knows of one bucket. Only the owner goroutine
// touches it.
type bucketState struct {
	name     string
	entries  map[string]entry  // live keys only
	ordered  []templates.Entry // entries sorted by key, for templates; nil until a List asks or when the key set changed
	index    map[string]int    // key -> position in ordered
	building map[string]entry  // the next full view, during an epoch's initial sync
	epoch    uint64
	synced   bool // a complete view has been seen at least once
	gone     bool // the bucket is missing: files are kept, /readyz is red
	lastRev  uint64
}

// entry is one live key of a bucket. The bucket and the key are the map's,
// and a live key's operation is always a put: templates.Entry, with all of
// them, is made when a template reads the key, so a bucket of 100,000 keys
// does not hold 100,000 copies of its name.
type entry struct {
	Value    []byte
	Revision uint64
	Created  time.Time
}

// templateEntry is e as templates see it.
func (b *bucketState) templateEntry(key string, e entry) templates.Entry {
	return templates.Entry{Bucket: b.name, Key: key, Value: e.Value, Revision: e.Revision, Created: e.Created, Op: templates.OpPut}
}

// state is the owner's key -> entry map for every watched bucket. It is the
// templates.Source renders read, so it records which buckets a render wanted
// that are not (yet) watched or synced.
type state struct {
	buckets map[string]*bucketState
	js      jetstream.JetStream

	// wanted collects buckets a render asked for that are not synced yet.
	wanted map[string]struct{}
}

func newState(js jetstream.JetStream) *state {
	return &state{buckets: map[string]*bucketState{}, js: js, wanted: map[string]struct{}{}}
}

func (s *state) bucket(name string) *bucketState {
	b := s.buckets[name]
	if b == nil {
		b = &bucketState{name: name, entries: map[string]entry{}}
		s.buckets[name] = b
	}
	return b
}

// usable returns the bucket if its initial sync is done, else records the
// bucket as wanted.
func (s *state) usable(name string) (*bucketState, bool) {
	b := s.buckets[name]
	if b == nil || !b.synced {
		s.wanted[name] = struct{}{}
		return nil, false
	}
	return b, true
}

// Get implements templates.Source.
func (s *state) Get(bucket, key string) (templates.Entry, bool) {
	b, ok := s.usable(bucket)
	if !ok {
		return templates.Entry{}, false
	}
	e, ok := b.entries[key]
	if !ok {
		return templates.Entry{}, false
	}
	return b.templateEntry(key, e), true
}

// List implements templates.Source. The entries come from the bucket's sorted
// view: a filter with a literal prefix ("app.>") is a binary search and a
// scan of its range only, and when every key in that range matches, the
// result is a sub-slice of the view, with no copy. Callers must not modify it.
func (s *state) List(bucket, filter string) []templates.Entry {
	b, ok := s.usable(bucket)
	if !ok {
		return nil
	}
	if kvkey.Literal(filter) {
		if e, ok := b.entries[filter]; ok {
			return []templates.Entry{b.templateEntry(filter, e)}
		}
		return nil
	}
	view := b.view()
	prefix := literalPrefix(filter)
	lo, _ := slices.BinarySearchFunc(view, prefix, func(e templates.Entry, p string) int { return strings.Compare(e.Key, p) })
	hi := lo
	for hi < len(view) && strings.HasPrefix(view[hi].Key, prefix) {
		hi++
	}
	// A filter "prefix>" ("app.>", ">") matches every key of the range.
	all := filter[len(prefix):] == ">" ||
		!slices.ContainsFunc(view[lo:hi], func(e templates.Entry) bool { return !kvkey.Match(filter, e.Key) })
	if all {
		return view[lo:hi:hi]
	}
	var out []templates.Entry
	for _, e := range view[lo:hi] {
		if kvkey.Match(filter, e.Key) {
			out = append(out, e)
		}
	}
	return out
}

// literalPrefix is the part of a filter before its first wildcard token,
// with the trailing '.': every matching key starts with it.
func literalPrefix(filter string) string {
	n := 0
	for {
		i := strings.IndexByte(filter[n:], '.')
		tok := filter[n:]
		if i >= 0 {
			tok = filter[n : n+i]
		}
		if tok == "*" || tok == ">" {
			return filter[:n]
		}
		if i < 0 {
			return filter
		}
		n += i + 1
	}
}

// History implements templates.Source; it asks the server.
func (s *state) History(ctx context.Context, bucket, key string) ([]templates.Entry, error) {
	if s.js == nil {
		return nil, fmt.Errorf("history %s:%s: not connected", bucket, key)
	}
	kv, err := s.js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("history %s:%s: %w", bucket, key, err)
	}
	hist, err := kv.History(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("history %s:%s: %w", bucket, key, err)
	}
	out := make([]templates.Entry, 0, len(hist))
	for _, h := range hist {
		out = append(out, templates.Entry{
			Bucket: bucket, Key: h.Key(), Value: h.Value(), Revision: h.Revision(),
			Created: h.Created(), Op: kvOp(h.Operation()).String(),
		})
	}
	return out, nil
}

// kvOp is the Op of a jetstream operation.
func kvOp(op jetstream.KeyValueOp) Op {
	switch op {
	case jetstream.KeyValueDelete:
		return OpDelete
	case jetstream.KeyValuePurge:
		return OpPurge
	}
	return OpPut
}

// view returns the live entries sorted by key. It is rebuilt only after the
// key set changed; an update of an existing key is written into it in place.
func (b *bucketState) view() []templates.Entry {
	if b.ordered == nil {
		keys := make([]string, 0, len(b.entries))
		for k := range b.entries {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b.ordered = make([]templates.Entry, len(keys))
		b.index = make(map[string]int, len(keys))
		for i, k := range keys {
			b.ordered[i] = b.templateEntry(k, b.entries[k])
			b.index[k] = i
		}
	}
	return b.ordered
}

// invalidate drops the sorted view after the key set changed.
func (b *bucketState) invalidate() { b.ordered, b.index = nil, nil }

// apply records an event in the live view (or the view being built) and
// reports whether the live view changed.
func (b *bucketState) apply(ev *watch.Entry) bool {
	if ev.Revision > b.lastRev {
		b.lastRev = ev.Revision
	}
	m := b.entries
	if b.building != nil {
		m = b.building
	}
	old, had := m[ev.Key]
	if ev.Op == OpPut {
		e := entry{Value: ev.Value, Revision: ev.Revision, Created: ev.Created}
		m[ev.Key] = e
		if b.building != nil {
			return false
		}
		if !had {
			b.invalidate()
		} else if i, ok := b.index[ev.Key]; ok {
			b.ordered[i] = b.templateEntry(ev.Key, e)
		}
		return !had || old.Revision != ev.Revision
	}
	if !had {
		return false
	}
	delete(m, ev.Key)
	if b.building == nil {
		b.invalidate()
		return true
	}
	return false
}

// swap makes the view built during the initial sync the live one and returns
// how many keys changed (added, updated or removed).
func (b *bucketState) swap() int {
	changed := 0
	for k, e := range b.building {
		if old, ok := b.entries[k]; !ok || old.Revision != e.Revision {
			changed++
		}
	}
	for k := range b.entries {
		if _, ok := b.building[k]; !ok {
			changed++
		}
	}
	b.entries, b.building = b.building, nil
	b.invalidate()
	b.synced = true
	return changed
}
