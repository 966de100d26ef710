package templates

import (
	"slices"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// Deps is what a render read: exact keys (key, keyOr, exists, revision,
// history) and filters (keys, tree). The zero Deps read nothing. A Deps is
// immutable once Render returned it and safe for concurrent reads.
type Deps struct {
	keys    map[string]map[string]struct{} // bucket → key
	filters map[string]map[string]struct{} // bucket → NATS wildcard filter
}

// Matches reports whether a change of bucket/key would affect the render that
// produced d: the key was read, or it matches a filter that was listed.
func (d Deps) Matches(bucket, key string) bool {
	if _, ok := d.keys[bucket][key]; ok {
		return true
	}
	for f := range d.filters[bucket] {
		if kvkey.Match(f, key) {
			return true
		}
	}
	return false
}

// Empty reports whether the render read no key at all; such a template never
// needs a re-render.
func (d Deps) Empty() bool { return len(d.keys) == 0 && len(d.filters) == 0 }

// Buckets returns every bucket the render read, sorted.
func (d Deps) Buckets() []string {
	var out []string
	for b := range d.keys {
		out = append(out, b)
	}
	for b := range d.filters {
		if _, ok := d.keys[b]; !ok {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out
}

// Keys returns the exact keys the render read as "bucket:key", sorted.
func (d Deps) Keys() []string { return refs(d.keys) }

// Filters returns the filters the render listed as "bucket:filter", sorted.
func (d Deps) Filters() []string { return refs(d.filters) }

func refs(m map[string]map[string]struct{}) []string {
	var out []string
	for b, set := range m {
		for k := range set {
			out = append(out, b+":"+k)
		}
	}
	slices.Sort(out)
	return out
}

// depsBuilder collects the dependencies of one render.
type depsBuilder struct {
	keys    map[string]map[string]struct{}
	filters map[string]map[string]struct{}
}

func (d *depsBuilder) key(bucket, key string) { d.keys = add(d.keys, bucket, key) }

func (d *depsBuilder) filter(bucket, filter string) { d.filters = add(d.filters, bucket, filter) }

func add(m map[string]map[string]struct{}, bucket, s string) map[string]map[string]struct{} {
	if m == nil {
		m = make(map[string]map[string]struct{})
	}
	set := m[bucket]
	if set == nil {
		set = make(map[string]struct{})
		m[bucket] = set
	}
	set[s] = struct{}{}
	return m
}

// done hands the collected dependencies over; the builder must not be used
// after.
func (d *depsBuilder) done() Deps { return Deps{keys: d.keys, filters: d.filters} }
