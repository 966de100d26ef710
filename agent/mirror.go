package agent

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/natsconn"
)

// annotateMirrors returns buckets with Mirror set for every bucket whose
// stream is a mirror, as mirrors knows it (natsconn.MirrorCache). js is nil
// when the agent has no JetStream handle or no connection: the last known
// state is shown then.
func annotateMirrors(ctx context.Context, mirrors *natsconn.MirrorCache, js jetstream.JetStream, buckets []BucketStatus) []BucketStatus {
	if len(buckets) == 0 {
		return buckets
	}
	names := make([]string, len(buckets))
	for i, b := range buckets {
		names[i] = b.Name
	}
	out := make([]BucketStatus, len(buckets))
	copy(out, buckets)
	for i, m := range mirrors.Lookup(ctx, js, names) {
		if m != nil {
			out[i].Mirror = m
		}
	}
	return out
}
