package agent

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent/natsconn"
)

// TestRepublishAgreesWithNatsconn: the republish setting the watchers look
// for is the one natsconn gives the buckets it creates.
func TestRepublishAgreesWithNatsconn(t *testing.T) {
	for _, b := range []string{"app", "a_b", "x-1"} {
		if got, want := *RePublish(b), *natsconn.RePublish(b); got != want {
			t.Errorf("RePublish(%s) = %+v, natsconn says %+v", b, got, want)
		}
		if got, want := republishSubject(b), natsconn.RepublishSubject(b); got != want {
			t.Errorf("republishSubject(%s) = %q, natsconn says %q", b, got, want)
		}
		for _, rp := range []*jetstream.RePublish{
			nil, RePublish(b), {Source: ">", Destination: "$KVR." + b + ".>"},
			{Source: "$KV." + b + ".>", Destination: "$KVR." + b + ".>", HeadersOnly: true},
			{Source: "$KV.other.>", Destination: "$KVR." + b + ".>"}, {Destination: "elsewhere.>"},
		} {
			if got, want := Republishes(b, rp), natsconn.Republishes(b, rp); got != want {
				t.Errorf("Republishes(%s, %s) = %v, natsconn says %v", b, RepublishName(rp), got, want)
			}
			if got, want := RepublishName(rp), natsconn.RepublishName(rp); got != want {
				t.Errorf("RepublishName = %q, natsconn says %q", got, want)
			}
		}
	}
}
