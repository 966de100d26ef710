package agent

import (
	"github.com/kvsync/kvsync/agent/watch"
)

// Op is what happened to a key (watch.Op).
type Op = watch.Op

// The operations of a KV entry.
const (
	OpPut    = watch.OpPut
	OpDelete = watch.OpDelete
	OpPurge  = watch.OpPurge
)

// Watch modes of WatchConfig (watch.ModeConsumer, ...).
const (
	WatchConsumer  = watch.ModeConsumer
	WatchRepublish = watch.ModeRepublish
	WatchAuto      = watch.ModeAuto
)

// ownerEvent is a message in the owner's inbox. The set is closed: only the
// types that have the unexported marker method are events, the watchers'
// (watchEntry, watchEvent: the closed set of watch.Event) and push-back's
// (push.go), and the owner's handle has a case for each.
type ownerEvent interface{ ownerEvent() }

// watchEntry carries a watcher's entry, watchEvent its every other event,
// into the inbox. An entry is the bulk of what watchers send: a struct of
// one pointer goes into the inbox without an allocation of its own.
type (
	watchEntry struct{ e *watch.Entry }
	watchEvent struct{ e watch.Event }
)

func (watchEntry) ownerEvent() {}
func (watchEvent) ownerEvent() {}

// fromWatch is the inbox's message for a watcher's event.
func fromWatch(e watch.Event) ownerEvent {
	if en, ok := e.(*watch.Entry); ok {
		return watchEntry{en}
	}
	return watchEvent{e}
}

// inbox is the owner's queue (queue.go): the watchers and the push-back
// actors put their events in it and never wait for the owner.
type inbox = queue[ownerEvent]

func newInbox() *inbox { return newQueue[ownerEvent]() }

// inboxSink is the watchers' watch.Sink: the owner's inbox.
type inboxSink struct{ in *inbox }

func (s inboxSink) Push(e watch.Event) { s.in.push(fromWatch(e)) }

// watchOptions are the settings of bucket's watcher: its mode (the consumer
// mode without a JetStream context) and the counter of keys its self-check
// found missing.
func (o *owner) watchOptions(bucket string) watch.Options {
	mode := o.cfg.Watch.ModeOf(bucket)
	if o.js == nil {
		mode = watch.ModeConsumer
	}
	return watch.Options{
		Mode:          mode,
		CheckInterval: o.cfg.Watch.CheckInterval,
		Missing:       o.a.metrics.missing.WithLabelValues(bucket),
	}
}

// newBucketWatcher returns the watcher of bucket with opts, feeding the
// inbox.
func (o *owner) newBucketWatcher(bucket string, filters []string, opts watch.Options) watch.Watcher {
	return watch.New(o.js, bucket, filters, inboxSink{o.in}, o.logger, opts)
}
