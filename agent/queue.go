package agent

import "sync"

// queue is an unbounded FIFO between two goroutines. push appends and never
// waits, so a producer is never held up by a slow consumer (a watcher that
// waited for the owner would leave the client buffering hundreds of MiB: ~300
// MiB was seen on a 1M-key bucket whose reader stopped draining). ready has
// room for one signal: after a push it holds one until the consumer takes
// it, so a consumer that waits on ready and then looks at the queue misses
// nothing.
type queue[T any] struct {
	mu    sync.Mutex
	items []T
	ready chan struct{}
}

func newQueue[T any]() *queue[T] { return &queue[T]{ready: make(chan struct{}, 1)} }

// push appends v and signals ready without waiting.
func (q *queue[T]) push(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns everything queued and leaves the queue empty. buf is reused.
func (q *queue[T]) take(buf []T) []T {
	q.mu.Lock()
	items := q.items
	q.items = buf[:0]
	q.mu.Unlock()
	return items
}

// peek returns the oldest item without removing it.
func (q *queue[T]) peek() (T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		var zero T
		return zero, false
	}
	return q.items[0], true
}

// pop removes the oldest item; the queue must not be empty.
func (q *queue[T]) pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	var zero T
	q.items[0] = zero
	q.items = q.items[1:]
}

// drain returns everything queued and leaves the queue empty.
func (q *queue[T]) drain() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}
