package watch

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Watch modes: how a bucket is followed.
const (
	// ModeConsumer: a consumer of the watcher's own (consumer.go).
	ModeConsumer = "consumer"
	// ModeRepublish: a subscription to what the bucket republishes
	// (republish.go); a bucket that does not republish is reported as
	// BucketGone until it does.
	ModeRepublish = "republish"
	// ModeAuto: ModeRepublish when the bucket republishes, else
	// ModeConsumer.
	ModeAuto = "auto"
)

// Watcher follows one bucket and reports to its Sink: a consumer of its own
// or a subscription to what the bucket republishes, as its mode says.
type Watcher interface {
	// Run follows the bucket until ctx is done. It returns once every
	// goroutine it started is done, but for best-effort consumer deletes
	// (2 s at most) and the requests it left running.
	Run(ctx context.Context) error
	// Reconnected tells the watcher the connection came back.
	Reconnected()
}

// Options are a watcher's settings beside its bucket.
type Options struct {
	// Mode is ModeConsumer, ModeRepublish or ModeAuto; any other value
	// (the empty one too) is followed as ModeRepublish is.
	Mode string
	// CheckInterval is the republish mode's interval of the shared check.
	CheckInterval time.Duration
	// Missing counts the keys the self-check found missing; may be nil.
	Missing prometheus.Counter

	// For tests and benchmarks:
	// Heartbeat replaces the consumer's idle heartbeat (heartbeat) when set;
	// Buffer the republish subscription's capacity (defaultRepublishBuffer);
	// Drop, when it says so, discards a message of the consumer watcher as
	// if the server had never sent it.
	Heartbeat time.Duration
	Buffer    int
	Drop      func(key string) bool
}

// New returns the watcher of bucket for the key filters (a union of every
// reader's; what it reports is filtered on them) in the mode of opts: the
// consumer watcher, or the republish watcher, which in ModeAuto hands over
// to a consumer watcher when the bucket does not republish. It starts
// nothing: Run does.
func New(js jetstream.JetStream, bucket string, filters []string, out Sink, logger *slog.Logger, opts Options) Watcher {
	if opts.Mode == ModeConsumer {
		return newWatcher(js, bucket, filters, out, logger, opts)
	}
	return newRepublishWatcher(js, bucket, filters, out, logger, opts)
}
