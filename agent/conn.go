package agent

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvsync/kvsync/agent/natsconn"
)

// The NATS plumbing (dialling, NATS contexts, the embedded server, the
// stale-link monitor, refused permissions, bucket provisioning, mirror
// state) is the natsconn package's; callers use it there. The agent decides
// what to do with it: the handlers below, /status, when to provision.
type (
	PermissionError = natsconn.PermissionError
	Refusals        = natsconn.Refusals
	ConnStatus      = natsconn.ConnStatus
	MirrorStatus    = natsconn.MirrorStatus
)

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
