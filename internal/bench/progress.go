package bench

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress reports long steps: on a terminal one line redrawn in place at
// most ten times a second, elsewhere a log line when a step starts and ends.
type progress struct {
	w    io.Writer
	term bool
	mu   sync.Mutex
}

// step is one step being reported.
type step struct {
	p     *progress
	name  string
	total int
	start time.Time
	last  time.Time
}

func (p *progress) start(name string, total int) *step {
	s := &step{p: p, name: name, total: total, start: time.Now()}
	if p.w == nil {
		return s
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.term {
		fmt.Fprintf(p.w, "\r\033[K%s 0/%d", name, total)
	} else {
		fmt.Fprintf(p.w, "%s bench: %s (%d)\n", time.Now().Format(time.TimeOnly), name, total)
	}
	return s
}

// set reports that n of total are done.
func (s *step) set(n int) {
	if s.p.w == nil || !s.p.term {
		return
	}
	now := time.Now()
	if now.Sub(s.last) < 100*time.Millisecond && n < s.total {
		return
	}
	s.last = now
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	fmt.Fprintf(s.p.w, "\r\033[K%s %d/%d %s", s.name, n, s.total, now.Sub(s.start).Round(100*time.Millisecond))
}

// done ends the step.
func (s *step) done() {
	if s.p.w == nil {
		return
	}
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	took := time.Since(s.start).Round(time.Millisecond)
	if s.p.term {
		fmt.Fprint(s.p.w, "\r\033[K")
		return
	}
	fmt.Fprintf(s.p.w, "%s bench: %s done in %v\n", time.Now().Format(time.TimeOnly), s.name, took)
}
