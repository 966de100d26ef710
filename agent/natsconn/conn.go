package natsconn

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
// the agent is blind (see Link).
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
