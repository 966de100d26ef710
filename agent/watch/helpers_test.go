package watch

import "sync"

// events is a Sink that keeps what it is given.
type events struct {
	mu   sync.Mutex
	list []Event
}

func (e *events) Push(ev Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
}
