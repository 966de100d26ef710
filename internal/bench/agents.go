package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvsync/kvsync/agent"
)

// running is an agent hosted in this process, on a connection of its own or
// on one it shares with other agents (see fleet).
type running struct {
	a      *agent.Agent
	nc     *nats.Conn
	ownsNC bool // the connection is the agent's alone: stop closes it
	cancel context.CancelFunc
	done   chan error

	stopOnce sync.Once
	stopErr  error
}

// baseConfig is an agent config with no projection, reaching the bench's
// server, with HTTP off.
func (e *env) baseConfig() *agent.Config {
	cfg := agent.Default()
	cfg.NATS = e.nats
	cfg.HTTP.Listen = ""
	return &cfg
}

// startAgent fills cfg's defaults and runs an agent on a new connection.
func (e *env) startAgent(ctx context.Context, cfg *agent.Config) (*running, error) {
	return e.startAgentOn(ctx, cfg, nil)
}

// startAgentOn runs an agent on shared, a connection other agents use too,
// or on a new connection of its own when shared is nil. The agent does not
// close a connection it is given; stop closes only one of its own.
func (e *env) startAgentOn(ctx context.Context, cfg *agent.Config, shared *nats.Conn) (*running, error) {
	cfg.Default()
	nc := shared
	if nc == nil {
		var err error
		if nc, _, err = e.connect(ctx); err != nil {
			return nil, err
		}
	}
	a, err := agent.New(cfg, agent.Options{Conn: nc, Logger: e.logger})
	if err != nil {
		if shared == nil {
			nc.Close()
		}
		return nil, err
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &running{a: a, nc: nc, ownsNC: shared == nil, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(actx) }()
	return r, nil
}

// stop stops the agent and closes its connection when it is its own. Later
// calls return the first call's result.
func (r *running) stop() error {
	r.stopOnce.Do(func() {
		r.cancel()
		if r.ownsNC {
			defer r.nc.Close()
		}
		select {
		case r.stopErr = <-r.done:
		case <-time.After(30 * time.Second):
			r.stopErr = errors.New("agent did not stop within 30s")
		}
	})
	return r.stopErr
}

// waitReady waits until the agent finished its initial sync.
func (r *running) waitReady(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, time.Millisecond, func() error {
		select {
		case err := <-r.done:
			r.done <- err
			return final{fmt.Errorf("agent stopped: %v", err)}
		default:
		}
		if !r.a.Ready() {
			// A bucket the server refuses the agent is not a matter of
			// time: say why.
			for _, b := range r.a.Status().Buckets {
				if b.ConsumerLimit {
					return fmt.Errorf("agent not ready: %s", b.Error)
				}
			}
			return errors.New("agent not ready")
		}
		return nil
	})
}

// metrics returns the agent's /metrics page.
func (r *running) metrics() string {
	rec := httptest.NewRecorder()
	r.a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// propagation reads the agent's propagation histogram of one projection.
func (r *running) propagation(projection string) *Summary {
	return histSummary(histogram(strings.NewReader(r.metrics()), "kvsync_propagation_seconds", map[string]string{"projection": projection}))
}

// final is an error of a poll function that makes waiting pointless.
type final struct{ error }

// poll calls fn every interval until it returns nil or a final error, ctx is
// done or timeout passes; it returns fn's last error then.
func poll(ctx context.Context, timeout, interval time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var f final
		if errors.As(err, &f) {
			return f.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
