package watch

import (
	"time"

	"github.com/kvsync/kvsync/templates"
)

// Op is what happened to a key.
type Op uint8

// The operations of a KV entry.
const (
	OpPut Op = iota
	OpDelete
	OpPurge
)

// String is the operation's name as templates show it (Entry.Op) and as the
// kvsync_updates_total metric labels it.
func (o Op) String() string {
	switch o {
	case OpDelete:
		return templates.OpDel
	case OpPurge:
		return templates.OpPurge
	}
	return templates.OpPut
}

// Event is what a watcher reports about its bucket, in stream order. The set
// is closed: only this package's types are events (Entry, by pointer;
// EpochStart, SyncDone, Listing, BucketGone, ConsumerLimit), and whoever
// takes them has a case for each.
type Event interface{ isEvent() }

// Sink takes a watcher's events. Push must never wait for whoever reads
// them: a watcher that waited would leave its client buffering what the
// server keeps sending.
type Sink interface{ Push(Event) }

// Entry is one KV entry as the watcher received it. It travels as *Entry:
// the watcher hands it on and never touches it again.
type Entry struct {
	Bucket   string
	Key      string
	Op       Op
	Value    []byte    // nil unless Op is OpPut
	Revision uint64    // the entry's stream sequence
	Created  time.Time // server timestamp: propagation is measured from here
}

type (
	// EpochStart: a fresh full view of the bucket follows; keep serving the
	// old one until the matching SyncDone. Size is about how many keys it
	// holds (0: not known), so the view is allocated once rather than grown.
	EpochStart struct {
		Bucket string
		Epoch  uint64
		Size   int
	}
	// SyncDone: every entry that existed when the epoch started has been sent.
	SyncDone struct {
		Bucket string
		Epoch  uint64
	}
	// Listing: after a resume, the complete key list as of stream sequence
	// AsOf. Keys held at a revision <= AsOf that are not listed were
	// deleted while the watcher was away, and their markers are gone.
	Listing struct {
		Bucket string
		AsOf   uint64
		Keys   map[string]struct{}
	}
	// BucketGone: the stream disappeared, or cannot be followed (Err says
	// why). Files are kept.
	BucketGone struct {
		Bucket string
		Err    error
	}
	// ConsumerLimit: the server refuses the watcher's consumer because the
	// stream holds as many consumers as it may (Err says so, with the fix);
	// sent again with a nil Err once a consumer runs.
	ConsumerLimit struct {
		Bucket string
		Err    error
	}
)

func (*Entry) isEvent()        {}
func (EpochStart) isEvent()    {}
func (SyncDone) isEvent()      {}
func (Listing) isEvent()       {}
func (BucketGone) isEvent()    {}
func (ConsumerLimit) isEvent() {}
