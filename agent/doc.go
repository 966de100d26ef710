// Package agent is the running part of kvsync: it owns the NATS connection, one
// watcher per bucket, the single owner goroutine that holds the key -> entry
// state, the projections (files, templates, env) and their change actions, the
// exec child, push-back of local edits, and the HTTP endpoints.
//
// The flow: a watcher (an ephemeral pull consumer per bucket, see watch.go)
// pushes entries into an unbounded inbox; the owner (owner.go) applies them to
// its state and marks the projections whose keys changed; once a projection's
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
// The package must not parse config files (cmd/kvsync does, with koanf) and
// must not write bytes to disk itself: that is the projector's job.
package agent
