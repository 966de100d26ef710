package watch

import (
	"sync"
	"time"
)

// inbox is a Sink as the agent's owner has one: an unbounded queue, Push
// never waits, and ready holds a signal after a Push until it is taken.
type inbox struct {
	mu    sync.Mutex
	items []Event
	ready chan struct{}
}

func newInbox() *inbox { return &inbox{ready: make(chan struct{}, 1)} }

func (q *inbox) Push(ev Event) {
	q.mu.Lock()
	q.items = append(q.items, ev)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns everything queued and leaves the queue empty. buf is reused.
func (q *inbox) take(buf []Event) []Event {
	q.mu.Lock()
	items := q.items
	q.items = buf[:0]
	q.mu.Unlock()
	return items
}

// entry is what a view holds of a key.
type entry struct {
	Value    []byte
	Revision uint64
	Created  time.Time
}

// bucketView is what the agent's owner keeps of a bucket, reduced to what
// the watcher's events decide: the live view, and the next one while an
// epoch's initial sync runs.
type bucketView struct {
	epoch    uint64
	entries  map[string]entry
	building map[string]entry
}

func newBucketView() *bucketView { return &bucketView{entries: map[string]entry{}} }

// apply records an entry in the live view, or in the view being built.
func (b *bucketView) apply(ev *Entry) {
	m := b.entries
	if b.building != nil {
		m = b.building
	}
	if ev.Op == OpPut {
		m[ev.Key] = entry{Value: ev.Value, Revision: ev.Revision, Created: ev.Created}
		return
	}
	delete(m, ev.Key)
}

// swap makes the view built during the initial sync the live one.
func (b *bucketView) swap() { b.entries, b.building = b.building, nil }
