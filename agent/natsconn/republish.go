package natsconn

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// RepublishSubject is the subject pattern a bucket republishes its entries
// to for agents in the republish watch mode: $KVR.<bucket>.>. It does not
// overlap the bucket's own subjects ($KV.<bucket>.>), as the server requires.
func RepublishSubject(bucket string) string { return "$KVR." + bucket + ".>" }

// RePublish is the stream setting that republishes every entry of bucket,
// headers and value, to $KVR.<bucket>.>.
func RePublish(bucket string) *jetstream.RePublish {
	return &jetstream.RePublish{Source: "$KV." + bucket + ".>", Destination: RepublishSubject(bucket)}
}

// Republishes reports whether a stream with the setting rp republishes every
// entry of bucket, with its value, to $KVR.<bucket>.>. Only then is
// the stream sequence of the republished copies consecutive, which is how
// the republish watcher sees what it missed.
func Republishes(bucket string, rp *jetstream.RePublish) bool {
	if rp == nil || rp.HeadersOnly || rp.Destination != RepublishSubject(bucket) {
		return false
	}
	switch rp.Source {
	case "", ">", "$KV." + bucket + ".>":
		return true
	}
	return false
}

// RepublishName describes a stream's republish setting: "none", or
// "src -> dest", with " (headers only)" when the values are left out.
func RepublishName(rp *jetstream.RePublish) string {
	switch {
	case rp == nil:
		return "none"
	case rp.HeadersOnly:
		return fmt.Sprintf("%s -> %s (headers only)", rp.Source, rp.Destination)
	}
	return fmt.Sprintf("%s -> %s", rp.Source, rp.Destination)
}
