package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /healthz, /readyz, /metrics and /status.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			s := a.liveStatus()
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, notReady(&s))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		s := a.liveStatus()
		js := a.jetStream()
		if !s.Connected || (s.Connection != nil && s.Connection.State == "stale") {
			// A request would wait for the connection or a silent link:
			// show what is known.
			js = nil
		}
		s.Buckets = a.mirrors.annotate(r.Context(), js, s.Buckets)
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s)
	})
	return mux
}

// liveStatus is the latest status snapshot with the connection as it is now:
// the owner publishes its snapshot only when something happens.
func (a *Agent) liveStatus() Status {
	s := *a.Status()
	s.Connected = a.conn.Load()
	s.Connection = a.connStatus()
	return s
}

// templatesReady reports whether no projection holds readiness back: a
// template that has never rendered does (ProjectionStatus.NotReady). One that
// rendered once and fails later does not: it keeps serving its last good
// file, and /status shows the error.
func templatesReady(s *Status) bool {
	for _, p := range s.Projections {
		if p.NotReady != "" {
			return false
		}
	}
	return true
}

// serveHTTP starts the listener, if any, in a goroutine tracked by wg.
func (a *Agent) serveHTTP(ctx context.Context, wg *sync.WaitGroup) error {
	ln := a.opts.Listener
	if ln == nil {
		if a.cfg.HTTP.Listen == "" {
			return nil
		}
		var err error
		ln, err = net.Listen("tcp", a.cfg.HTTP.Listen)
		if err != nil {
			return fmt.Errorf("http listen: %w", err)
		}
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	a.logger.Info("serving http", "addr", ln.Addr().String())
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.logger.Error("http server", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return nil
}

// notReady is the body of a 503 from /readyz: one line per reason, the
// refused permissions first (the likeliest reason a sync never ends), then
// buckets refused for the consumer limit (both need an operator).
func notReady(s *Status) string {
	var b strings.Builder
	b.WriteString("not ready:\n")
	c := s.Connection
	if c != nil {
		for _, r := range c.Refused {
			times := "once"
			if r.Count > 1 {
				times = fmt.Sprintf("%d times", r.Count)
			}
			fmt.Fprintf(&b, "- NATS refused %s to %q (%s, last %s): allow %s on %q for this user\n",
				r.Op, r.Subject, times, r.Last.UTC().Format(time.RFC3339), r.Op, r.Grant)
		}
		if c.State != "connected" {
			fmt.Fprintf(&b, "- connection %s: %s\n", c.State, c.Detail)
		}
	}
	for _, bk := range s.Buckets {
		if bk.ConsumerLimit {
			fmt.Fprintf(&b, "- bucket %s: %s\n", bk.Name, bk.Error)
		}
	}
	for _, bk := range s.Buckets {
		switch {
		case bk.ConsumerLimit: // said above
		case bk.Missing:
			fmt.Fprintf(&b, "- bucket %s: not found\n", bk.Name)
		case !bk.Synced:
			fmt.Fprintf(&b, "- bucket %s: initial sync not done (at revision %d)\n", bk.Name, bk.LastRevision)
		}
	}
	for _, p := range s.Projections {
		if p.Synced && p.NotReady != "" {
			fmt.Fprintf(&b, "- %s %s: %s\n", p.Kind, p.Name, p.NotReady)
		}
		if !p.Synced {
			fmt.Fprintf(&b, "- %s %s: not written yet", p.Kind, p.Name)
			if len(p.WaitingOn) > 0 {
				fmt.Fprintf(&b, ", waiting on %s", strings.Join(p.WaitingOn, ", "))
			}
			if p.LastError != "" {
				fmt.Fprintf(&b, ", last error: %s", p.LastError)
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("(details in /status)\n")
	return b.String()
}
