package agent

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/natsconn"
)

// The NATS plumbing (dialling, NATS contexts, the embedded server, the
// stale-link monitor, refused permissions, bucket provisioning, mirror
// state) is the natsconn package's. The agent decides what to do with it:
// the handlers below, /status, when to provision. These names keep the
// package's API reachable from this package as before.
type (
	NATSContext     = natsconn.NATSContext
	PermissionError = natsconn.PermissionError
	Refusal         = natsconn.Refusal
	Refusals        = natsconn.Refusals
	ConnStatus      = natsconn.ConnStatus
	MirrorStatus    = natsconn.MirrorStatus
)

// Connection defaults (see natsconn).
const (
	DefaultURL          = natsconn.DefaultURL
	DefaultPingInterval = natsconn.DefaultPingInterval
)

// ErrContextNotFound is wrapped by LoadContext when no context of that name exists.
var ErrContextNotFound = natsconn.ErrContextNotFound

// Connect is natsconn.Connect: it dials NATS and retries the first connect
// until ctx ends.
func Connect(ctx context.Context, cfg NATSConfig, opts ...nats.Option) (*nats.Conn, error) {
	return natsconn.Connect(ctx, cfg, opts...)
}

// ConnectOnce is natsconn.ConnectOnce: Connect for one-shot commands, where
// an unreachable server is an error.
func ConnectOnce(ctx context.Context, cfg NATSConfig, opts ...nats.Option) (*nats.Conn, error) {
	return natsconn.ConnectOnce(ctx, cfg, opts...)
}

// JetStream is natsconn.JetStream: the JetStream handle of nc, in the
// configured domain or under the context's API prefix.
func JetStream(nc *nats.Conn, cfg NATSConfig) (jetstream.JetStream, error) {
	return natsconn.JetStream(nc, cfg)
}

// NewRefusals returns an empty collection of refused permissions.
func NewRefusals() *Refusals { return natsconn.NewRefusals() }

// AsPermissionError returns the refusal err reports, if it is one.
func AsPermissionError(err error) (*PermissionError, bool) { return natsconn.AsPermissionError(err) }

// LoadContext reads the NATS CLI context called name (natsconn.LoadContext).
func LoadContext(name string) (*NATSContext, error) { return natsconn.LoadContext(name) }

// SelectedContext returns the context name the NATS CLI has selected, or ""
// when none is.
func SelectedContext() (string, error) { return natsconn.SelectedContext() }

// StartEmbedded starts an in-process NATS server with JetStream
// (natsconn.StartEmbedded).
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) { return natsconn.StartEmbedded(cfg) }

// CreateBucket creates a bucket whose stream allows at most maxConsumers
// consumers (natsconn.CreateBucket).
func CreateBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, maxConsumers int) (jetstream.KeyValue, error) {
	return natsconn.CreateBucket(ctx, js, cfg, maxConsumers)
}

// SetMaxConsumers changes the consumer limit of an existing bucket's stream
// (natsconn.SetMaxConsumers).
func SetMaxConsumers(ctx context.Context, js jetstream.JetStream, bucket string, maxConsumers int) error {
	return natsconn.SetMaxConsumers(ctx, js, bucket, maxConsumers)
}

// StreamMaxConsumers is the max_consumers of a bucket's stream
// (natsconn.StreamMaxConsumers).
func StreamMaxConsumers(st jetstream.KeyValueStatus) int { return natsconn.StreamMaxConsumers(st) }

// connName is the connection name the server shows for an agent: nats.name,
// and the agent's id after the default name, so that `nats server report
// connections` tells the agents of a fleet apart.
func connName(cfg *Config) string {
	if cfg.NATS.Name == "kvsync" && cfg.Agent.ID != "" {
		return "kvsync " + cfg.Agent.ID
	}
	return cfg.NATS.Name
}

// connStatus reports the connection as /status shows it.
func (a *Agent) connStatus() *ConnStatus {
	return a.link.Status(a.conn.Load(), a.refusals.List())
}

// connHandlers are the handlers kvsync sets on the agent's connection:
// refusals go to the log (an ERROR naming the subject and what to grant, once
// per grant and then at most once a minute), a metric and /status; other
// asynchronous errors to the log.
func (a *Agent) connHandlers() {
	var mu sync.Mutex
	logged := map[string]time.Time{}
	a.refusals.OnRefusal(func(pe *PermissionError, first bool) {
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
	})
	a.refusals.OnOther(func(sub *nats.Subscription, err error) {
		if sub != nil {
			a.logger.Warn("NATS async error", "subject", sub.Subject, "err", err)
			return
		}
		a.logger.Warn("NATS async error", "err", err)
	})
}
