package agent

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus series, on a registry of its own (no
// global state: two agents in one process, as in tests, do not collide).
type metrics struct {
	reg         *prometheus.Registry
	updates     *prometheus.CounterVec   // bucket, op
	writes      *prometheus.CounterVec   // projection
	renders     *prometheus.CounterVec   // projection
	removes     *prometheus.CounterVec   // projection
	rejected    *prometheus.CounterVec   // projection, reason
	errors      *prometheus.CounterVec   // projection, kind
	actions     *prometheus.CounterVec   // projection, result
	conflicts   *prometheus.CounterVec   // projection, policy
	pushes      *prometheus.CounterVec   // projection, op
	missing     *prometheus.CounterVec   // bucket
	lastRev     *prometheus.GaugeVec     // bucket
	connected   prometheus.Gauge         //
	ready       prometheus.Gauge         //
	propagation *prometheus.HistogramVec // projection

	// Safe apply and exec supervision.
	checks       *prometheus.CounterVec // projection, result
	rollbacks    *prometheus.CounterVec // projection
	rejectedRev  *prometheus.GaugeVec   // projection
	childExits   *prometheus.CounterVec // code
	childRestart prometheus.Counter     //
	childBackoff prometheus.Gauge       //

	// The connection: refused permissions, a silent link.
	permissionDenied *prometheus.CounterVec // op, grant
	linkStale        prometheus.Gauge       //
	renderOK         *prometheus.GaugeVec   // projection (templates)

	// Fleets.
	consumerLimit *prometheus.GaugeVec // bucket
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_updates_total", Help: "KV entries received from the watchers.",
		}, []string{"bucket", "op"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_writes_total", Help: "Files written (content changed).",
		}, []string{"projection"}),
		renders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_renders_total", Help: "Template renders (a render that produces the same bytes writes nothing).",
		}, []string{"projection"}),
		removes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_removes_total", Help: "Files removed.",
		}, []string{"projection"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_rejected_keys_total", Help: "Keys refused because they would escape the projection or are not valid names.",
		}, []string{"projection", "reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_errors_total", Help: "Errors by projection and kind (write, render, check, action, rollback, env, push).",
		}, []string{"projection", "kind"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_actions_total", Help: "on_change actions run, by result (ok, error).",
		}, []string{"projection", "result"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_push_conflicts_total", Help: "Push-back compare-and-set conflicts.",
		}, []string{"projection", "policy"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_pushes_total", Help: "Local edits pushed to the bucket, by operation.",
		}, []string{"projection", "op"}),
		missing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_watch_missing_keys_total",
			Help: "Keys a watcher's self-check found missing from its view after an initial sync or a catch-up (each is fetched again).",
		}, []string{"bucket"}),
		lastRev: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_last_revision", Help: "Highest revision received per bucket.",
		}, []string{"bucket"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_connected", Help: "1 while connected to NATS.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_ready", Help: "1 once every projection finished its initial sync, every template rendered once and no bucket is missing.",
		}),
		propagation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvsync_propagation_seconds",
			Help:    "Time from the server timestamp of an entry to its bytes on disk.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"projection"}),
		permissionDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_nats_permission_denied_total",
			Help: "Publishes and subscriptions the NATS server refused, by operation and the permission to grant.",
		}, []string{"op", "grant"}),
		linkStale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_nats_link_stale",
			Help: "1 while connected but nothing has been received from the server for a few seconds (the agent is blind to changes).",
		}),
		renderOK: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_template_render_ok",
			Help: "1 when the template's latest render was written, 0 when it failed (the file is the last good render, or absent if there was none).",
		}, []string{"projection"}),
		consumerLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_consumer_limit_reached",
			Help: "1 while the server refuses the bucket's watcher because the bucket's stream is at its consumer limit (max_consumers).",
		}, []string{"bucket"}),
	}
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvsync_checks_total", Help: "Checks of staged outputs, by result (ok, failed).",
	}, []string{"projection", "result"})
	m.rollbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvsync_rollbacks_total", Help: "Batches rolled back after their action failed.",
	}, []string{"projection"})
	m.rejectedRev = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kvsync_rejected_revision", Help: "Revision rolled back and not live, per projection; 0 when none.",
	}, []string{"projection"})
	m.childExits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvsync_child_exits_total", Help: "Exits of the exec child by itself, by exit code.",
	}, []string{"code"})
	m.childRestart = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kvsync_child_exit_restarts_total", Help: "Starts of the exec child after it exited (exec.on_exit).",
	})
	m.childBackoff = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kvsync_child_restart_backoff_seconds", Help: "Delay before the exec child's next start after an exit; 0 while it runs.",
	})
	reg.MustRegister(m.checks, m.rollbacks, m.rejectedRev, m.childExits, m.childRestart, m.childBackoff)
	reg.MustRegister(m.permissionDenied, m.linkStale)
	reg.MustRegister(m.renderOK)
	reg.MustRegister(m.consumerLimit)
	reg.MustRegister(m.updates, m.writes, m.renders, m.removes, m.rejected, m.errors, m.actions, m.conflicts,
		m.pushes, m.missing, m.lastRev, m.connected, m.ready, m.propagation,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ChildExited, ChildRestarted and ChildBackoff make metrics the
// process.Metrics of the exec loop.
func (m *metrics) ChildExited(code int)         { m.childExits.WithLabelValues(strconv.Itoa(code)).Inc() }
func (m *metrics) ChildRestarted()              { m.childRestart.Inc() }
func (m *metrics) ChildBackoff(d time.Duration) { m.childBackoff.Set(d.Seconds()) }
