package templates

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// memSource is a fixed in-memory Source.
type memSource struct {
	entries map[string]map[string]Entry // bucket → key → entry
	sorted  map[string][]string         // bucket → keys, sorted
	hist    map[string][]Entry          // "bucket:key" → history
	histErr error
	rev     uint64

	// Like the agent's state, List hands out a kept slice rather than
	// building one per call, so that benchmarks measure the render.
	mu    sync.Mutex
	lists map[string][]Entry // "bucket filter" → List result
}

// epoch is the Created time of the first fixture entry.
var epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

func newSource() *memSource {
	return &memSource{
		entries: make(map[string]map[string]Entry),
		sorted:  make(map[string][]string),
		hist:    make(map[string][]Entry),
	}
}

// put adds or replaces bucket/key with the next revision.
func (s *memSource) put(bucket, key, value string) *memSource {
	s.lists = nil
	s.rev++
	if s.entries[bucket] == nil {
		s.entries[bucket] = make(map[string]Entry)
	}
	if _, ok := s.entries[bucket][key]; !ok {
		i, _ := slices.BinarySearch(s.sorted[bucket], key)
		s.sorted[bucket] = slices.Insert(s.sorted[bucket], i, key)
	}
	s.entries[bucket][key] = Entry{
		Bucket: bucket, Key: key, Value: []byte(value), Revision: s.rev,
		Created: epoch.Add(time.Duration(s.rev) * time.Second), Op: OpPut,
	}
	return s
}

func (s *memSource) Get(bucket, key string) (Entry, bool) {
	e, ok := s.entries[bucket][key]
	return e, ok
}

func (s *memSource) List(bucket, filter string) []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	if out, ok := s.lists[bucket+" "+filter]; ok {
		return out
	}
	var out []Entry
	for _, k := range s.sorted[bucket] {
		if kvkey.Match(filter, k) {
			out = append(out, s.entries[bucket][k])
		}
	}
	if s.lists == nil {
		s.lists = make(map[string][]Entry)
	}
	s.lists[bucket+" "+filter] = out
	return out
}

func (s *memSource) History(ctx context.Context, bucket, key string) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.histErr != nil {
		return nil, s.histErr
	}
	return s.hist[bucket+":"+key], nil
}

// fixture is the Source the golden files render against.
func fixture() *memSource {
	s := newSource()
	s.put("app", "app.name", "shop").
		put("app", "app.db", "primary").
		put("app", "app.db.host", "db.internal").
		put("app", "app.db.port", "5432").
		put("app", "app.db/user", "admin").
		put("app", "app.features.beta", "true").
		put("app", "app.features.dark_mode", "false").
		put("app", "app.config.json", `{"port": 8080, "big": 12345678901234567890, "ratio": 0.25, "tags": ["a", "b"], "nested": {"z": 1, "a": "<b>&"}}`).
		put("app", "app.config.yaml", "server:\n  port: 8080\n  hosts:\n    - a\n    - b\n1: one\nenabled: true\n").
		put("app", "app.motd", "hello & <welcome>").
		put("app", "zeta", "last").
		put("app", "alpha", "first").
		put("app", "a/b/c", "slashes").
		put("flags", "flags.beta", "on").
		put("flags", "flags.new-ui", "off").
		put("flags", "flags.ui.theme", "dark")
	s.hist["app:app.name"] = []Entry{
		{Bucket: "app", Key: "app.name", Value: []byte("shop-v1"), Revision: 1, Created: epoch, Op: OpPut},
		{Bucket: "app", Key: "app.name", Revision: 3, Created: epoch.Add(time.Minute), Op: OpDel},
		{Bucket: "app", Key: "app.name", Value: []byte("shop"), Revision: 7, Created: epoch.Add(time.Hour), Op: OpPut},
	}
	return s
}

// bigSource holds the n keys app.k00000, app.k00001, … in bucket app.
func bigSource(n int) *memSource {
	s := newSource()
	for i := range n {
		s.put("app", fmt.Sprintf("app.k%05d", i), fmt.Sprintf("value-%d", i))
	}
	return s
}
