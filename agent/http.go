package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
		s.Buckets = annotateMirrors(r.Context(), &a.mirrors, js, s.Buckets)
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

// listen opens the HTTP listener: Options.Listener, else cfg.HTTP.Listen;
// nil when HTTP is off. An address that cannot be bound is an error naming it.
func (a *Agent) listen() (net.Listener, error) {
	if a.opts.Listener != nil {
		return a.opts.Listener, nil
	}
	if a.cfg.HTTP.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", a.cfg.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("http listen %s: %w", a.cfg.HTTP.Listen, err)
	}
	return ln, nil
}

// httpServer serves the endpoints on one listener as an actor of Run.
type httpServer struct {
	srv    *http.Server
	ln     net.Listener
	logger *slog.Logger
	cancel context.CancelFunc // ends the requests' base context
	// inflight is read-locked by every request while its handler runs;
	// write-locked (once, by drain), it waits for them all and turns later
	// ones away.
	inflight sync.RWMutex
	drained  sync.Once
}

func (a *Agent) newHTTPServer(ln net.Listener) *httpServer {
	bctx, cancel := context.WithCancel(context.Background())
	h := &httpServer{ln: ln, logger: a.logger, cancel: cancel}
	handler := a.Handler()
	h.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !h.inflight.TryRLock() {
				http.Error(w, "stopping", http.StatusServiceUnavailable)
				return
			}
			defer h.inflight.RUnlock()
			handler.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return bctx },
	}
	return h
}

// serve serves until stop, or until the listener fails: the error then names
// the address, and Run stops with it.
func (h *httpServer) serve() error {
	addr := h.ln.Addr().String()
	h.logger.Info("serving http", "addr", addr)
	err := h.srv.Serve(h.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil // stop waits for the requests
	}
	h.drain()
	return fmt.Errorf("serve http on %s: %w", addr, err)
}

// stop closes the listener, lets the requests in flight finish (2 s at most,
// then cancels them) and returns when no handler runs any more.
func (h *httpServer) stop() {
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(sctx) // on a timeout drain cuts what is left
	h.drain()
}

// drain cancels the requests still running, closes their connections and
// waits for their handlers. Serve failing and stop may both call it.
func (h *httpServer) drain() {
	h.drained.Do(func() {
		h.cancel()
		_ = h.srv.Close()
		h.inflight.Lock()
	})
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
