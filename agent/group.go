package agent

import "log/slog"

// group runs actors, each an execute function and an interrupt function,
// until the first of them returns, then stops the others. It is the shape of
// oklog/run with one difference: the others are stopped one at a time, in
// the order they were added, each only after the one before it has returned.
// The order of shutdown is thereby the order of add, written down in one
// place instead of implied by the order of deferred calls.
type group struct {
	logger *slog.Logger
	actors []actor
}

// actor is one long-running part of Run. execute runs until the work ends or
// interrupt is called; interrupt must make execute return soon, and may be
// called before or after execute returned (it is then a no-op for it).
type actor struct {
	name      string
	execute   func() error
	interrupt func(error)
}

// add appends an actor. Actors are stopped in the order they were added.
func (g *group) add(name string, execute func() error, interrupt func(error)) {
	g.actors = append(g.actors, actor{name: name, execute: execute, interrupt: interrupt})
}

// run starts every actor in a goroutine of its own and waits for the first
// to return. It then interrupts the others in the order they were added,
// waiting for each to return before interrupting the next, and returns when
// all have returned: no goroutine it started is left. The error is the first
// non-nil error an actor returned, in the order they returned (the first
// actor's own error when it returned one).
func (g *group) run() error {
	if len(g.actors) == 0 {
		return nil
	}
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(g.actors))
	for i, a := range g.actors {
		go func() { results <- result{i, a.execute()} }()
	}
	done := make([]bool, len(g.actors))
	var first error
	take := func() {
		r := <-results
		done[r.i] = true
		if first == nil {
			first = r.err
		}
	}
	take()
	cause := first
	for i, a := range g.actors {
		if done[i] {
			continue
		}
		g.logger.Debug("stopping", "actor", a.name)
		a.interrupt(cause)
		for !done[i] {
			take()
		}
	}
	return first
}
