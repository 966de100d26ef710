// Package agent is the running part of kvsync: it owns the agent's NATS
// connection (made and watched through agent/natsconn), one watcher per bucket, the single owner goroutine that holds the key -> entry
// state, the projections (files, templates, env) and their change actions, the
// exec child, push-back of local edits, and the HTTP endpoints.
//
// The flow: a watcher per bucket (agent/watch: a consumer of its own, or a
// subscription to what the bucket republishes) pushes entries into an
// unbounded inbox, which carries a closed set of event types (ownerEvent:
// the watch events, wrapped by watchers.go, and push-back's); the owner
// (owner.go) applies them to its state
// and marks the projections whose keys changed; once a projection's
// quiescence has passed it is updated, through the projector package for the
// bytes on disk and the templates package for rendering, and its on_change
// action runs in a goroutine of its own, once per batch (a named action shared
// by several projections once for all of them, after all are written). With
// check: a new version is staged and tested first (apply.go, filesguard.go);
// with rollback: a batch whose action failed gets its previous bytes back.
//
// Nothing is written before a bucket's initial sync is complete, so an empty
// or restarting server never blanks a file; files are removed only on explicit
// delete, purge or expiry markers, or by a complete listing.
//
// Lifecycle: New checks the config and starts nothing. Run opens the HTTP
// listener first (an address in use fails it before it connects or writes),
// connects, and then runs a group of actors (group.go): the running config
// (the owner with its watchers, projections, actions and push-back), the
// exec child's loop, the reaper, the fleet reporter, the HTTP server and the
// stale-link monitor. The first actor to return stops the others, one after
// the other in that order, so the child is stopped after the last action and
// the fleet record is purged while the connection is open; the connection
// Run dialled closes last. An HTTP listener that fails while the agent runs
// stops it with that error.
//
// Every goroutine has an owner that waits for it: the group for the actors,
// the projections actor for the running config (a reload starts the next
// one after the last has returned), the owner for the watchers, the
// projections' goroutines (push-back's folder watcher and sender), the
// action loops and its returns of memory to the OS, each watcher for its
// best-effort consumer deletes (2 s at most) and the other requests it
// leaves running, the exec loop for its signal forwarder and the supervisor
// for its child watches. Each projection folder (projector.Dir) has one
// goroutine that unlinks replaced files; closing the folder waits for its
// last unlink, after which it only returns. Run returns only when they are
// all gone. Two kinds may outlive it, both waiting on a process rather than
// on the agent: the reader of a command action's output, when a daemon the
// command started keeps that output open (a check's process group is killed,
// an action's is not), and the reaper's waits for children still running
// when it stops.
//
// Process control (starting, signalling, stopping and reaping the exec child
// and the command actions, webhooks) is the agent/process package's; the
// agent decides when they run, through the interfaces of children.go.
//
// The NATS plumbing (dialling with the nats: block and NATS contexts, the
// stale-link monitor, refused permissions, the embedded server, creating the
// buckets: of the config, the mirror state of buckets) is the agent/natsconn
// package's. The agent sets the connection's handlers (refusals go to its
// log and metrics, conn.go; reconnects to its watchers, agent.go), runs the
// link monitor as one of its actors, provisions a config's buckets before its
// watchers start, and builds /status from what natsconn reports.
//
// Following a bucket (the consumer and republish watchers, their catch-ups,
// the shared check, gap detection) is the agent/watch package's. The agent
// starts one watch.Watcher per bucket its projections read, in the watch
// mode of the config, tells them of reconnects, and takes their events
// through a watch.Sink, the owner's inbox (watchers.go); the watchers know
// nothing of the owner or its state.
//
// The package must not parse config files (cmd/kvsync does, with koanf),
// must not dial NATS itself (agent/natsconn does), must not follow a
// bucket's stream itself (agent/watch does), must not start, signal
// or wait for processes itself (agent/process does), and must not write
// bytes to disk itself: every write goes through the
// projector. A files projection's folder is written by its projector.Dir
// alone, called on the owner goroutine — the projected files and the
// manifest, and for push-back the adopted files, the held local edits and
// the conflict copies (push-back's sender holds the bucket's KeyValue and
// never touches the disk: it asks the owner) — except for the notes of
// rolled-back paths, which projector.WriteNotes keeps in the folder's
// .kvsync state folder. A template's or an env projection's file is
// written with projector.Stage (put back after a failed action with
// projector.WriteFile or projector.RemoveFile), and a files projection's
// check tests copies that projector.StageTree writes to a private temp
// folder. The one writer that is not the projector is the embedded server
// (embedded:, natsconn.StartEmbedded, which cmd/kvsync starts), which keeps
// its JetStream store in embedded.store_dir.
package agent
