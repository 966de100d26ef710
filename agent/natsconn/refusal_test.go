package natsconn

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestPermissionErrorGrant(t *testing.T) {
	for _, tc := range []struct{ op, subject, grant string }{
		{"publish", "$KV.app.cfg.port", "$KV.app.>"},
		{"publish", "$JS.API.CONSUMER.MSG.NEXT.KV_app.kvsync_app_1f", "$JS.API.CONSUMER.MSG.NEXT.KV_app.>"},
		{"publish", "$JS.API.CONSUMER.INFO.KV_app.kvsync_app_1f", "$JS.API.CONSUMER.INFO.KV_app.>"},
		{"publish", "$JS.API.CONSUMER.CREATE.KV_app.c1.$KV.app.>", "$JS.API.CONSUMER.CREATE.KV_app.>"},
		{"publish", "$JS.API.CONSUMER.CREATE.KV_app", "$JS.API.CONSUMER.CREATE.KV_app"},
		{"publish", "$JS.API.CONSUMER.DELETE.KV_app.c1", "$JS.API.CONSUMER.DELETE.KV_app.>"},
		{"publish", "$JS.hub.API.CONSUMER.MSG.NEXT.KV_app.c1", "$JS.hub.API.CONSUMER.MSG.NEXT.KV_app.>"},
		{"publish", "$JS.API.DIRECT.GET.KV_app.$KV.app.k", "$JS.API.DIRECT.GET.KV_app.>"},
		{"publish", "$JS.API.DIRECT.GET.KV_app", "$JS.API.DIRECT.GET.KV_app"},
		{"publish", "$JS.API.STREAM.INFO.KV_app", "$JS.API.STREAM.INFO.KV_app"},
		{"publish", "$JS.FC.KV_app.abc.1", "$JS.FC.>"},
		{"subscribe", "_INBOX.abc.*", "_INBOX.>"},
		{"subscribe", "$JS.EVENT.ADVISORY.STREAM.*.KV_app", "$JS.EVENT.ADVISORY.STREAM.*.KV_app"},
	} {
		pe := &PermissionError{Op: tc.op, Subject: tc.subject}
		if got := pe.Grant(); got != tc.grant {
			t.Errorf("Grant(%s %s) = %q, want %q", tc.op, tc.subject, got, tc.grant)
		}
	}
}

func TestAsPermissionError(t *testing.T) {
	for _, tc := range []struct {
		err         error
		op, subject string
	}{
		{fmt.Errorf("%w: %s", nats.ErrPermissionViolation, `Permissions Violation for Publish to "$KV.app.k"`), "publish", "$KV.app.k"},
		{fmt.Errorf("%w: %s", nats.ErrPermissionViolation, `Permissions Violation for Subscription to "_INBOX.x.*"`), "subscribe", "_INBOX.x.*"},
		{fmt.Errorf("%w: %s", nats.ErrPermissionViolation, `Permissions Violation for Subscription to "q.a" using queue "w"`), "subscribe", "q.a"},
		{fmt.Errorf("x: %w", &PermissionError{Op: "publish", Subject: "a.b"}), "publish", "a.b"},
	} {
		pe, ok := AsPermissionError(tc.err)
		if !ok || pe.Op != tc.op || pe.Subject != tc.subject {
			t.Errorf("AsPermissionError(%v) = %+v, %v; want %s %s", tc.err, pe, ok, tc.op, tc.subject)
		}
	}
	for _, err := range []error{nil, errors.New(`for Publish to "x"`), nats.ErrTimeout,
		fmt.Errorf("%w: %s", nats.ErrPermissionViolation, "something else")} {
		if pe, ok := AsPermissionError(err); ok {
			t.Errorf("AsPermissionError(%v) = %+v, want none", err, pe)
		}
	}
}

// TestRefusals: the handler records refusals by grant, passes other errors
// on, cancels the context of Context at the first refusal, and Explain turns
// a timeout into the refusal.
func TestRefusals(t *testing.T) {
	r := NewRefusals()
	var passed []error
	h := r.Handler(func(_ *nats.Conn, _ *nats.Subscription, err error) { passed = append(passed, err) })
	ctx, stop := r.Context(context.Background())
	defer stop()
	if err := r.Explain(context.DeadlineExceeded); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Explain before any refusal = %v", err)
	}
	h(nil, nil, nats.ErrSlowConsumer)
	for _, k := range []string{"a", "b", "c"} {
		h(nil, nil, fmt.Errorf("%w: Permissions Violation for Publish to \"$KV.app.%s\"", nats.ErrPermissionViolation, k))
	}
	h(nil, nil, fmt.Errorf("%w: Permissions Violation for Subscription to \"_INBOX.z\"", nats.ErrPermissionViolation))
	if len(passed) != 1 || !errors.Is(passed[0], nats.ErrSlowConsumer) {
		t.Fatalf("passed on %v, want the slow consumer error only", passed)
	}
	l := r.List()
	if len(l) != 2 || l[0].Grant != "$KV.app.>" || l[0].Count != 3 || l[0].Subject != "$KV.app.c" || l[1].Grant != "_INBOX.>" || l[1].Op != "subscribe" {
		t.Fatalf("List() = %+v", l)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the context was not cancelled by the refusal")
	}
	var pe *PermissionError
	if err := context.Cause(ctx); !errors.As(err, &pe) || pe.Subject != "$KV.app.a" {
		t.Fatalf("cause = %v, want the first refusal", context.Cause(ctx))
	}
	if err := r.Explain(fmt.Errorf("put: %w", context.Canceled)); !errors.As(err, &pe) || !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("Explain(canceled) = %v", err)
	}
	if err := r.Explain(errors.New("other")); err.Error() != "other" {
		t.Fatalf("Explain(other) = %v", err)
	}
}
