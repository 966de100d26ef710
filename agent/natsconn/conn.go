package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/internal/retry"
)

// Connection tuning.
//
// The client sends a PING every ping interval (DefaultPingInterval unless
// nats.ping_interval says otherwise) and gives the connection up when more
// than maxPingsOut are unanswered: a link that drops packets without a reset
// (a blackhole, a half-open TCP connection after a host crash) is closed and
// re-dialled 4 to 6 s after it went silent, instead of 10 to 15 s with 5 s
// and 2. Before that, after 1.5 intervals of silence, /status already says
// the agent is blind (see link).
//
// The cost, at fleet size: every connection sends one PING per interval,
// which the server answers with a PONG, 6 bytes each way. 10,000 agents on
// their own connections at 2 s: 5,000 PINGs/s and 5,000 PONGs/s, spread over
// the servers the agents use. A PING is answered in the client's read loop and
// touches no consumer. The stale-link check adds no PING of its own on a
// connection Connect made (it sees the PONGs on the socket). A server that
// stalls for more than 4 to 6 s (a long GC or disk pause) will see its agents
// reconnect, with jitter (reconnectDelay). A large fleet may raise the
// interval: docs/SCALING.md shows what it costs.
const (
	DefaultPingInterval = 2 * time.Second
	maxPingsOut         = 2
	dialTimeout         = 3 * time.Second
	reconnectFirst      = 100 * time.Millisecond
	reconnectMax        = 600 * time.Millisecond
)

// staleAfter is the silence after which a link whose client PINGs every ping
// is reported stale: a healthy connection hears at least a PONG within ping
// plus a round trip.
func staleAfter(ping time.Duration) time.Duration { return ping + ping/2 }

// DefaultURL is the server kvsync dials when nothing else is configured.
const DefaultURL = natsconn.DefaultURL

// Connect dials NATS with every option of cfg: comma-separated URL list, creds
// file, nkey seed file, token, user/password, TLS (CA, client cert+key),
// connection name and the NATS CLI context cfg.Context ($NATS_CONTEXT is the
// caller's business). Fields set in cfg override the context's; the
// credentials go as a group: if cfg sets any of creds, nkey, token or user,
// none of the context's credentials are used.
//
// The connection reconnects forever with a jittered backoff (50-100 ms at
// first, growing to 300-600 ms), and the first connect is retried the same
// way: Connect does not fail because the server is down, which is what a
// daemon that starts before its server wants. opts (handlers, mostly) are applied after kvsync's own and win.
// Errors are configuration errors: unreadable context, bad nkey seed file.
func Connect(ctx context.Context, cfg NATSConfig, opts ...nats.Option) (*nats.Conn, error) {
	return dial(ctx, cfg, true, opts)
}

// ConnectOnce is Connect for one-shot commands: the first connect is tried
// once against each server of the list and an unreachable server is an error,
// returned within about 3 s per server, or when ctx is done. Once
// connected, it reconnects like Connect. Both return only after the attempt
// under way ended, also when ctx ends first.
func ConnectOnce(ctx context.Context, cfg NATSConfig, opts ...nats.Option) (*nats.Conn, error) {
	return dial(ctx, cfg, false, opts)
}

func dial(ctx context.Context, cfg NATSConfig, retry bool, extra []nats.Option) (*nats.Conn, error) {
	cfg, nctx, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	opts, err := options(cfg, nctx)
	if err != nil {
		return nil, err
	}
	w := &wire{}
	opts = append(opts, nats.RetryOnFailedConnect(retry),
		nats.SetCustomDialer(&wireDialer{d: net.Dialer{Timeout: dialTimeout}, w: w}))
	opts = append(opts, extra...)
	servers := serverList(cfg.URL)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redact(servers), err)
	}

	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(servers, opts...)
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("connect to %s: %w", redact(servers), r.err)
		}
		registerWire(r.nc, w)
		return r.nc, nil
	case <-ctx.Done():
		// nats.Connect takes no context: wait for the attempt (a dial
		// timeout per server at most) and close whatever it produced, so
		// that no goroutine outlives the call.
		if r := <-done; r.nc != nil {
			r.nc.Close()
		}
		return nil, fmt.Errorf("connect to %s: %w", redact(servers), ctx.Err())
	}
}

// resolve merges the context named by cfg.Context into cfg. It returns the
// context too (nil without one) for the fields NATSConfig has no room for.
func resolve(cfg NATSConfig) (NATSConfig, *NATSContext, error) {
	if cfg.Context == "" {
		if cfg.URL == "" {
			cfg.URL = DefaultURL
		}
		return cfg, nil, nil
	}
	c, err := LoadContext(cfg.Context)
	if err != nil {
		return cfg, nil, err
	}
	or := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	or(&cfg.URL, c.URL)
	or(&cfg.URL, DefaultURL)
	or(&cfg.TLS.CA, c.CA)
	or(&cfg.TLS.Cert, c.Cert)
	or(&cfg.TLS.Key, c.Key)
	or(&cfg.Domain, c.JetStreamDomain)
	if cfg.Creds != "" || cfg.NKey != "" || cfg.Token != "" || cfg.User != "" {
		// Explicit credentials replace the context's: mixing a flag's
		// user with the context's creds file would authenticate as neither.
		c.UserJWT, c.UserSeed = "", ""
	} else {
		cfg.Creds, cfg.NKey, cfg.Token = c.Creds, c.NKey, c.Token
		cfg.User, cfg.Password = c.User, c.Password
	}
	return cfg, c, nil
}

// options translates a resolved cfg into nats.Options.
func options(cfg NATSConfig, c *NATSContext) ([]nats.Option, error) {
	name := cfg.Name
	if name == "" {
		name = "kvsync"
	}
	ping := cfg.PingInterval
	if ping <= 0 {
		ping = DefaultPingInterval
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.PingInterval(ping),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.Timeout(dialTimeout),
	}
	switch {
	case cfg.Creds != "":
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	case cfg.NKey != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKey)
		if err != nil {
			return nil, fmt.Errorf("read nkey seed %s: %w", cfg.NKey, err)
		}
		opts = append(opts, o)
	case c != nil && c.UserJWT != "":
		opts = append(opts, nats.UserJWTAndSeed(c.UserJWT, c.UserSeed))
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.TLS.CA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLS.CA))
	}
	if (cfg.TLS.Cert == "") != (cfg.TLS.Key == "") {
		return nil, fmt.Errorf("nats tls: cert and key go together")
	}
	if cfg.TLS.Cert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLS.Cert, cfg.TLS.Key))
	}
	if c != nil && c.TLSFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	if c != nil && c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	return opts, nil
}

// connName is the connection name the server shows for an agent: nats.name,
// and the agent's id after the default name, so that `nats server report
// connections` tells the agents of a fleet apart.
func connName(cfg *Config) string {
	if cfg.NATS.Name == "kvsync" && cfg.Agent.ID != "" {
		return "kvsync " + cfg.Agent.ID
	}
	return cfg.NATS.Name
}

// reconnectDelay is the pause after every server of the list failed once: a
// base of 100 ms doubling to 600 ms, with equal jitter (a delay drawn from
// [base/2, base]) so that a fleet of agents cut off by one server restart
// does not reconnect in step. The cap is low on purpose: the first change
// after a server comes back must reach disk within a second, and one failed
// TCP connect per agent every ~0.5 s is cheap.
func reconnectDelay(attempts int) time.Duration { return reconnectDelayWith(attempts, nil) }

// reconnectDelayWith is reconnectDelay with the random source rnd (uniform in
// [0, n); nil: math/rand/v2).
func reconnectDelayWith(attempts int, rnd func(n int64) int64) time.Duration {
	d := reconnectMax
	if attempts < 16 {
		d = min(reconnectFirst<<max(attempts-1, 0), reconnectMax)
	}
	return retry.EqualJitter(d, rnd)
}

// serverList normalises a comma-separated URL list: spaces trimmed, empty
// entries dropped.
func serverList(s string) string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return strings.Join(out, ",")
}

// redact hides passwords, and tokens (a user name without a password), in a
// URL list for error messages.
func redact(servers string) string {
	parts := strings.Split(servers, ",")
	for i, s := range parts {
		u, err := url.Parse(s)
		if err != nil || u.User == nil {
			continue
		}
		if _, ok := u.User.Password(); !ok {
			u.User = url.User("xxxxx")
		}
		parts[i] = u.Redacted()
	}
	return strings.Join(parts, ",")
}

// JetStream returns the JetStream handle of nc, in cfg.Domain when set (else
// the domain of the NATS CLI context cfg.Context), or under the context's
// JetStream API prefix.
func JetStream(nc *nats.Conn, cfg NATSConfig) (jetstream.JetStream, error) {
	domain, prefix := cfg.Domain, ""
	if cfg.Context != "" {
		c, err := LoadContext(cfg.Context)
		if err != nil {
			return nil, err
		}
		if domain == "" {
			domain = c.JetStreamDomain
		}
		prefix = c.JetStreamAPIPrefix
	}
	var js jetstream.JetStream
	var err error
	switch {
	case domain != "":
		js, err = jetstream.NewWithDomain(nc, domain)
	case prefix != "":
		js, err = jetstream.NewWithAPIPrefix(nc, prefix)
	default:
		js, err = jetstream.New(nc)
	}
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nil
}

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
	mu      sync.Mutex
	byGrant map[string]*Refusal
	order   []string
	first   chan struct{} // closed at the first refusal
	err     error         // the first refusal
	// onRefusal, when set, is called for every refusal with whether it is
	// the first of its grant. It runs on the connection's callback goroutine.
	onRefusal func(pe *PermissionError, first bool)
	// other receives every asynchronous error that is not a refusal.
	other func(sub *nats.Subscription, err error)
}

// NewRefusals returns an empty collection.
func NewRefusals() *Refusals {
	return &Refusals{byGrant: map[string]*Refusal{}, first: make(chan struct{})}
}

// Handler is the asynchronous error handler of the connection: it records
// refusals and passes every other error on (to prev, when not nil).
func (r *Refusals) Handler(prev nats.ErrHandler) nats.ErrHandler {
	return func(nc *nats.Conn, sub *nats.Subscription, err error) {
		pe, ok := AsPermissionError(err)
		if !ok {
			if r.other != nil {
				r.other(sub, err)
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

// link tells whether the server is still heard from. The connection only
// notices a silent link when its PINGs go unanswered; link notices it as
// soon as nothing at all arrived for 1.5 ping intervals. On a connection that
// Connect made it watches the bytes read from the socket (a wire), PONGs
// included, and sends nothing of its own. On any other connection (one
// passed in by the caller, an in-process one) it watches the connection's
// inbound messages, and when none came for a ping interval (an idle agent:
// the watcher's heartbeat comes every 5 s, and the republish mode has none)
// it asks for a PONG itself: the client does not count its own PONGs in its
// statistics.
type link struct {
	heard atomic.Int64     // unix nanos of the last inbound traffic seen
	stale atomic.Int64     // unix nanos since when nothing arrived, when stale; 0 if not
	ping  atomic.Int64     // the client's ping interval, for /status; 0 before run
	gauge prometheus.Gauge // 1 while stale; may be nil
}

func (l *link) setGauge(v float64) {
	if l.gauge != nil {
		l.gauge.Set(v)
	}
}

// linkTick is how often link looks at the connection.
const linkTick = 250 * time.Millisecond

// run samples nc until ctx is done. logger gets a WARN when the link goes
// stale and an INFO when it is heard again.
func (l *link) run(ctx context.Context, nc *nats.Conn, logger *slog.Logger) {
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

// staleSince returns when the link went silent, if it is stale now.
func (l *link) staleSince() (time.Time, bool) {
	if s := l.stale.Load(); s != 0 {
		return time.Unix(0, s), true
	}
	return time.Time{}, false
}

// lastHeard returns when inbound traffic was last seen (zero before run).
func (l *link) lastHeard() time.Time {
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

// connStatus reports the connection as /status shows it.
func (a *Agent) connStatus() *ConnStatus {
	s := &ConnStatus{State: "connected", Refused: a.refusals.List()}
	if h := a.link.lastHeard(); !h.IsZero() {
		h = h.UTC()
		s.LastHeard = &h
	}
	if since, ok := a.link.staleSince(); ok {
		since = since.UTC()
		s.State, s.Since = "stale", &since
		s.Detail = fmt.Sprintf("nothing received from the server since %s: the agent is blind to changes; the connection is re-dialled after %s of unanswered pings",
			since.Format(time.RFC3339), time.Duration(a.link.ping.Load())*time.Duration(maxPingsOut+1))
	}
	if !a.conn.Load() {
		s.State, s.Since, s.Detail = "disconnected", nil, "not connected to NATS: reconnecting"
	}
	return s
}

// connHandlers are the handlers kvsync sets on the agent's connection:
// refusals go to the log (an ERROR naming the subject and what to grant, once
// per grant and then at most once a minute), a metric and /status; other
// asynchronous errors to the log.
func (a *Agent) connHandlers() {
	var mu sync.Mutex
	logged := map[string]time.Time{}
	a.refusals.onRefusal = func(pe *PermissionError, first bool) {
		a.metrics.permissionDenied.WithLabelValues(pe.Op, pe.Grant()).Inc()
		mu.Lock()
		key := pe.Op + " " + pe.Grant()
		last, seen := logged[key]
		now := time.Now()
		if !first && seen && now.Sub(last) < time.Minute {
			mu.Unlock()
			return
		}
		logged[key] = now
		mu.Unlock()
		a.logger.Error("NATS refused a permission: the agent cannot work fully until it is granted",
			"op", pe.Op, "subject", pe.Subject, "grant", pe.Grant(), "err", pe)
	}
	a.refusals.other = func(sub *nats.Subscription, err error) {
		if sub != nil {
			a.logger.Warn("NATS async error", "subject", sub.Subject, "err", err)
			return
		}
		a.logger.Warn("NATS async error", "err", err)
	}
}

// wire records when a connection last read anything from its socket: the
// client's PONGs, which its statistics leave out, included. Connect gives
// every connection it makes a wire (through its dialer) so that link can tell
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
