package natsconn

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// PermissionError is a publish or a subscription the server refused for lack
// of permission. The server does not fail the request itself: it tells the
// connection asynchronously, and a request to a refused subject only times
// out. Grant is what to allow in the user's permissions.
type PermissionError struct {
	Op      string // "publish" or "subscribe"
	Subject string // the subject refused, as the server named it
}

// Error says what was refused and what to grant.
func (e *PermissionError) Error() string {
	return fmt.Sprintf("permission denied for %s to %q: allow %s on %q for this user (docs/PERMISSIONS.md)",
		e.Op, e.Subject, e.Op, e.Grant())
}

// Unwrap makes errors.Is(err, nats.ErrPermissionViolation) true.
func (e *PermissionError) Unwrap() error { return nats.ErrPermissionViolation }

// Grant is the permission to add for the refused subject: the subject with its
// variable part (a key, a consumer name, an inbox token) turned into ">", so
// the same grant covers every later request of its kind.
func (e *PermissionError) Grant() string {
	t := strings.Split(e.Subject, ".")
	upTo := func(n int) string {
		if len(t) <= n {
			return e.Subject
		}
		return strings.Join(t[:n], ".") + ".>"
	}
	// JetStream API subjects: $JS.API.<...> or, in a domain, $JS.<domain>.API.<...>.
	api := -1
	if len(t) > 2 && t[0] == "$JS" {
		switch {
		case t[1] == "API":
			api = 1
		case len(t) > 3 && t[2] == "API":
			api = 2
		}
	}
	switch {
	case len(t) > 2 && t[0] == "$KV":
		return upTo(2) // $KV.<bucket>.>
	case len(t) > 1 && t[0] == "_INBOX":
		return upTo(1)
	case len(t) > 2 && t[0] == "$JS" && (t[1] == "FC" || t[1] == "ACK"):
		return upTo(2) // $JS.FC.> and $JS.ACK.>
	case api > 0 && len(t) > api+4 && t[api+1] == "CONSUMER" && t[api+2] == "MSG" && t[api+3] == "NEXT":
		return upTo(api + 5) // $JS.API.CONSUMER.MSG.NEXT.<stream>.>
	case api > 0 && len(t) > api+3 && t[api+1] == "CONSUMER":
		return upTo(api + 4) // $JS.API.CONSUMER.<op>.<stream>.>
	case api > 0 && len(t) > api+4 && t[api+1] == "DIRECT" && t[api+2] == "GET":
		return upTo(api + 4) // $JS.API.DIRECT.GET.<stream>.>
	}
	return e.Subject
}

// permissionRe matches the server's refusal as nats.go reports it:
// `nats: permissions violation: Permissions Violation for Publish to "x"`.
var permissionRe = regexp.MustCompile(`(?i)violation for (publish|subscription) to "([^"]+)"`)

// AsPermissionError returns the refusal err reports, if it is one.
func AsPermissionError(err error) (*PermissionError, bool) {
	if err == nil {
		return nil, false
	}
	var pe *PermissionError
	if errors.As(err, &pe) {
		return pe, true
	}
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return nil, false
	}
	m := permissionRe.FindStringSubmatch(err.Error())
	if m == nil {
		return nil, false
	}
	op := "publish"
	if strings.EqualFold(m[1], "subscription") {
		op = "subscribe"
	}
	return &PermissionError{Op: op, Subject: m[2]}, true
}

// Refusal is one kind of refused permission (one grant) seen on the
// connection, for /status.
type Refusal struct {
	Op      string    `json:"op"`
	Subject string    `json:"subject"` // the last subject refused
	Grant   string    `json:"grant"`   // what to allow
	Count   int       `json:"count"`
	First   time.Time `json:"first"`
	Last    time.Time `json:"last"`
	Error   string    `json:"error"`
}

// Refusals collects the permission refusals the server reports on one
// connection. Its Handler goes to nats.ErrorHandler. The zero value is not
// usable: make one with NewRefusals.
type Refusals struct {
	mu        sync.Mutex
	byGrant   map[string]*Refusal
	order     []string
	first     chan struct{}                           // closed at the first refusal
	err       error                                   // the first refusal
	onRefusal func(pe *PermissionError, first bool)   // see OnRefusal
	other     func(sub *nats.Subscription, err error) // see OnOther
}

// NewRefusals returns an empty collection.
func NewRefusals() *Refusals {
	return &Refusals{byGrant: map[string]*Refusal{}, first: make(chan struct{})}
}

// OnRefusal sets f to be called for every refusal, with whether it is the
// first of its grant. f runs on the connection's callback goroutine.
func (r *Refusals) OnRefusal(f func(pe *PermissionError, first bool)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onRefusal = f
}

// OnOther sets f to receive every asynchronous error that is not a refusal.
// f runs on the connection's callback goroutine.
func (r *Refusals) OnOther(f func(sub *nats.Subscription, err error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.other = f
}

// Handler is the asynchronous error handler of the connection: it records
// refusals and passes every other error on (to prev, when not nil).
func (r *Refusals) Handler(prev nats.ErrHandler) nats.ErrHandler {
	return func(nc *nats.Conn, sub *nats.Subscription, err error) {
		pe, ok := AsPermissionError(err)
		if !ok {
			r.mu.Lock()
			other := r.other
			r.mu.Unlock()
			if other != nil {
				other(sub, err)
			}
			if prev != nil {
				prev(nc, sub, err)
			}
			return
		}
		r.add(pe, time.Now())
	}
}

func (r *Refusals) add(pe *PermissionError, now time.Time) {
	r.mu.Lock()
	g := pe.Op + " " + pe.Grant()
	rf, seen := r.byGrant[g]
	if !seen {
		rf = &Refusal{Op: pe.Op, Grant: pe.Grant(), First: now}
		r.byGrant[g] = rf
		r.order = append(r.order, g)
	}
	rf.Subject, rf.Count, rf.Last, rf.Error = pe.Subject, rf.Count+1, now, pe.Error()
	if r.err == nil {
		r.err = pe
		close(r.first)
	}
	cb := r.onRefusal
	r.mu.Unlock()
	if cb != nil {
		cb(pe, !seen)
	}
}

// List returns the refusals seen, in the order their grants first came up.
func (r *Refusals) List() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Refusal, 0, len(r.order))
	for _, g := range r.order {
		out = append(out, *r.byGrant[g])
	}
	return out
}

// Err returns the first refusal (a *PermissionError), or nil.
func (r *Refusals) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Context returns a context that is cancelled, with the refusal as its cause,
// as soon as the server refuses anything on the connection: a one-shot
// command fails at once with the reason instead of waiting out its timeout.
func (r *Refusals) Context(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
		case <-r.first:
			cancel(r.Err())
		}
	}()
	// The cancel function returns after the goroutine did.
	return ctx, func() { cancel(context.Canceled); <-done }
}

// Explain returns err as the refusal that caused it when the connection
// reported one: a request to a refused subject fails only with a timeout or a
// cancelled context. Any other err is returned as it is.
func (r *Refusals) Explain(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := AsPermissionError(err); ok {
		return err
	}
	if pe := r.Err(); pe != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)) {
		return pe
	}
	return err
}
