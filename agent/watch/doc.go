// Package watch follows KV buckets: one Watcher per bucket keeps a reader
// (the agent's owner goroutine) told of every entry of the bucket, in
// stream order, and of when its view is complete.
//
// It owns:
//
//   - the consumer watcher (consumer.go): an ephemeral push consumer per
//     bucket, re-created right after the last sequence handed on when the
//     connection comes back, a stream advisory arrives or the consumer
//     reports trouble; flow control and heartbeats answered by the watcher;
//     gaps detected by the consumer sequence, stalls by the consumer's
//     pending count; every initial sync and catch-up checked against a
//     listing of the stream's keys, and what is missing fetched; consumers
//     refused for the stream's consumer limit explained (limits.go);
//   - the republish watcher (republish.go): a plain subscription to what the
//     bucket republishes, short-lived consumers for the initial sync and
//     the catch-ups, gaps detected by the stream sequence of the copies, and
//     the shared check of the last sequence that every agent of a bucket
//     answers; in ModeAuto it hands over to a consumer watcher when the
//     bucket does not republish;
//   - the watch: block (Config: the mode of each bucket, the check
//     interval; their defaults and validation); the agent's Config
//     composes it;
//   - what they report (event.go): the closed set of Event types (Entry,
//     EpochStart, SyncDone, Listing, BucketGone, ConsumerLimit), and what
//     both share (consumer.go): how a stream message becomes an Entry (Op,
//     markers, the key alone), the subject filters the server accepts for a
//     set of key filters, the listing of a stream's keys, the bound of an
//     API request.
//
// New chooses the implementation by the watch mode (ModeConsumer,
// ModeRepublish, ModeAuto); the reader sees only the Watcher interface and
// the events its Sink receives.
//
// It must not write files or anything else to disk, hold or touch the
// reader's state (a watcher keeps only what following the bucket needs:
// its epoch, the last sequence handed on, the keys delivered in the epoch),
// wait for the reader (Sink.Push must not block), dial NATS (it is handed a
// JetStream context) or create buckets (agent/natsconn does).
//
// Run returns only once every goroutine the watcher started has returned:
// its best-effort consumer deletes (2 s at most), the creations and
// listings it left running and a fallback watcher's are waited for.
package watch
