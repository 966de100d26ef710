package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/templates"
)

// bucketState is what the owner knows of one bucket. Only the owner goroutine
// touches it.
type bucketState struct {
	entries  map[string]templates.Entry // live keys only
	sorted   []string                   // keys of entries, sorted; nil when stale
	building map[string]templates.Entry // the next full view, during an epoch's initial sync
	epoch    uint64
	synced   bool // a complete view has been seen at least once
	gone     bool // the bucket is missing: files are kept, /readyz is red
	lastRev  uint64
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
		b = &bucketState{entries: map[string]templates.Entry{}}
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
	return e, ok
}

// List implements templates.Source.
func (s *state) List(bucket, filter string) []templates.Entry {
	b, ok := s.usable(bucket)
	if !ok {
		return nil
	}
	if kvkey.Literal(filter) {
		if e, ok := b.entries[filter]; ok {
			return []templates.Entry{e}
		}
		return nil
	}
	var out []templates.Entry
	for _, k := range b.keys() {
		if kvkey.Match(filter, k) {
			out = append(out, b.entries[k])
		}
	}
	return out
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
			Created: h.Created(), Op: opName(h.Operation()),
		})
	}
	return out, nil
}

func opName(op jetstream.KeyValueOp) string {
	switch op {
	case jetstream.KeyValueDelete:
		return "DEL"
	case jetstream.KeyValuePurge:
		return "PURGE"
	}
	return "PUT"
}

// keys returns the bucket's keys, sorted; it sorts again only after the key set
// changed, not after an update of an existing key.
func (b *bucketState) keys() []string {
	if b.sorted == nil {
		b.sorted = make([]string, 0, len(b.entries))
		for k := range b.entries {
			b.sorted = append(b.sorted, k)
		}
		sort.Strings(b.sorted)
	}
	return b.sorted
}

// apply records an event in the live view (or the view being built) and
// reports whether the live view changed.
func (b *bucketState) apply(ev event) bool {
	if ev.rev > b.lastRev {
		b.lastRev = ev.rev
	}
	m := b.entries
	if b.building != nil {
		m = b.building
	}
	old, had := m[ev.key]
	if ev.op == OpPut {
		m[ev.key] = templates.Entry{Bucket: ev.bucket, Key: ev.key, Value: ev.value, Revision: ev.rev, Created: ev.created, Op: "PUT"}
		if !had && b.building == nil {
			b.sorted = nil
		}
		return b.building == nil && (!had || old.Revision != ev.rev)
	}
	if !had {
		return false
	}
	delete(m, ev.key)
	if b.building == nil {
		b.sorted = nil
		return true
	}
	return false
}

// swap makes the view built during the initial sync the live one and returns
// the keys whose entry changed (added, updated or removed).
func (b *bucketState) swap() []string {
	var changed []string
	for k, e := range b.building {
		if old, ok := b.entries[k]; !ok || old.Revision != e.Revision {
			changed = append(changed, k)
		}
	}
	for k := range b.entries {
		if _, ok := b.building[k]; !ok {
			changed = append(changed, k)
		}
	}
	b.entries, b.building, b.sorted = b.building, nil, nil
	b.synced = true
	return changed
}
