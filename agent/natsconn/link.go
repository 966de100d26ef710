package natsconn

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/nats-io/nats.go"
)

// Link tells whether the server is still heard from. The connection only
// notices a silent link when its PINGs go unanswered; Link notices it as
// soon as nothing at all arrived for 1.5 ping intervals. On a connection that
// Connect made it watches the bytes read from the socket (a wire), PONGs
// included, and sends nothing of its own. On any other connection (one
// passed in by the caller, an in-process one) it watches the connection's
// inbound messages, and when none came for a ping interval (an idle agent:
// the watcher's heartbeat comes every 5 s, and the republish mode has none)
// it asks for a PONG itself: the client does not count its own PONGs in its
// statistics. The zero value is ready to Run.
type Link struct {
	// StaleGauge, when set, is set to 1 while the link is stale and to 0
	// when it is heard again. Set it before Run.
	StaleGauge Gauge

	heard atomic.Int64 // unix nanos of the last inbound traffic seen
	stale atomic.Int64 // unix nanos since when nothing arrived, when stale; 0 if not
	ping  atomic.Int64 // the client's ping interval, for /status; 0 before run
}

// Gauge is a metric that holds one value (a prometheus.Gauge is one).
type Gauge interface{ Set(float64) }

func (l *Link) setGauge(v float64) {
	if l.StaleGauge != nil {
		l.StaleGauge.Set(v)
	}
}

// linkTick is how often Link looks at the connection.
const linkTick = 250 * time.Millisecond

// Run samples nc until ctx is done. logger gets a WARN when the link goes
// stale and an INFO when it is heard again.
func (l *Link) Run(ctx context.Context, nc *nats.Conn, logger *slog.Logger) {
	l.ping.Store(int64(nc.Opts.PingInterval))
	w := wireOf(nc)
	// With a wire the client's own PINGs keep the link heard; without one
	// link PINGs itself, every DefaultPingInterval of silence.
	ping := DefaultPingInterval
	if w != nil && nc.Opts.PingInterval > 0 {
		ping = nc.Opts.PingInterval
	}
	staleAfter := staleAfter(ping)
	t := time.NewTicker(linkTick)
	defer t.Stop()
	inbound := func() uint64 { st := nc.Stats(); return st.InMsgs + st.InBytes }
	prev := inbound()
	l.heard.Store(time.Now().UnixNano())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if !nc.IsConnected() {
				// Reported as disconnected; a new connection starts fresh.
				prev = inbound()
				l.heard.Store(now.UnixNano())
				if l.stale.Swap(0) != 0 {
					l.setGauge(0)
				}
				continue
			}
			if w != nil {
				if h := w.heard.Load(); h > l.heard.Load() {
					l.heard.Store(h)
				}
			} else if in := inbound(); in != prev {
				prev = in
				l.heard.Store(now.UnixNano())
			}
			heard := l.heard.Load()
			silent := now.Sub(time.Unix(0, heard))
			if w == nil && silent >= ping && silent < staleAfter {
				// A PING of its own, answered within the time left before
				// the link would count as stale.
				if err := nc.FlushTimeout(staleAfter - silent); err == nil {
					l.heard.Store(time.Now().UnixNano())
					silent = 0
				} else {
					silent = time.Since(time.Unix(0, heard))
				}
			}
			if silent < staleAfter {
				if since := l.stale.Swap(0); since != 0 {
					l.setGauge(0)
					logger.Info("NATS link heard again", "silent_for", now.Sub(time.Unix(0, since)).Round(time.Millisecond).String())
				}
				continue
			}
			if l.stale.CompareAndSwap(0, heard) {
				l.setGauge(1)
				logger.Warn("NATS link stale: nothing received from the server; the agent is blind to changes until the link or a new connection is back",
					"since", time.Unix(0, heard).UTC().Format(time.RFC3339Nano))
			}
		}
	}
}

// StaleSince returns when the link went silent, if it is stale now.
func (l *Link) StaleSince() (time.Time, bool) {
	if s := l.stale.Load(); s != 0 {
		return time.Unix(0, s), true
	}
	return time.Time{}, false
}

// LastHeard returns when inbound traffic was last seen (zero before Run).
func (l *Link) LastHeard() time.Time {
	if h := l.heard.Load(); h != 0 {
		return time.Unix(0, h)
	}
	return time.Time{}
}

// ConnStatus is the connection's part of /status.
type ConnStatus struct {
	// State is "connected", "stale" (connected, but nothing heard from the
	// server for a while: the agent is blind to changes) or "disconnected".
	State     string     `json:"state"`
	Since     *time.Time `json:"stale_since,omitempty"` // stale: silent since
	LastHeard *time.Time `json:"last_heard,omitempty"`
	Detail    string     `json:"detail,omitempty"`
	// Refused lists the permissions the server refused, each with what to
	// grant; the agent cannot work fully until they are granted.
	Refused []Refusal `json:"refused,omitempty"`
}

// Status reports the connection as /status shows it: connected says whether
// the client is connected now, refused is what the server refused on it.
func (l *Link) Status(connected bool, refused []Refusal) *ConnStatus {
	s := &ConnStatus{State: "connected", Refused: refused}
	if h := l.LastHeard(); !h.IsZero() {
		h = h.UTC()
		s.LastHeard = &h
	}
	if since, ok := l.StaleSince(); ok {
		since = since.UTC()
		s.State, s.Since = "stale", &since
		s.Detail = fmt.Sprintf("nothing received from the server since %s: the agent is blind to changes; the connection is re-dialled after %s of unanswered pings",
			since.Format(time.RFC3339), time.Duration(l.ping.Load())*time.Duration(maxPingsOut+1))
	}
	if !connected {
		s.State, s.Since, s.Detail = "disconnected", nil, "not connected to NATS: reconnecting"
	}
	return s
}

// wire records when a connection last read anything from its socket: the
// client's PONGs, which its statistics leave out, included. Connect gives
// every connection it makes a wire (through its dialer) so that Link can tell
// a silent server without PINGs of its own.
type wire struct {
	heard atomic.Int64 // unix nanos of the last read that returned bytes
}

type wireConn struct {
	net.Conn
	w *wire
}

func (c wireConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.w.heard.Store(time.Now().UnixNano())
	}
	return n, err
}

// wireDialer dials TCP as the client would, and wraps the socket in a
// wireConn (TLS, when used, goes on top).
type wireDialer struct {
	d net.Dialer
	w *wire
}

func (d *wireDialer) Dial(network, address string) (net.Conn, error) {
	c, err := d.d.Dial(network, address)
	if err != nil {
		return nil, err
	}
	d.w.heard.Store(time.Now().UnixNano())
	return wireConn{Conn: c, w: d.w}, nil
}

// wires maps the connections Connect made to their wire. The key is weak and
// the entry is removed when the connection is collected.
var wires sync.Map // weak.Pointer[nats.Conn] -> *wire

func registerWire(nc *nats.Conn, w *wire) {
	k := weak.Make(nc)
	wires.Store(k, w)
	runtime.AddCleanup(nc, func(k weak.Pointer[nats.Conn]) { wires.Delete(k) }, k)
}

// wireOf returns nc's wire, or nil when Connect did not make nc.
func wireOf(nc *nats.Conn) *wire {
	if v, ok := wires.Load(weak.Make(nc)); ok {
		return v.(*wire)
	}
	return nil
}
