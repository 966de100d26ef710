package natsconn

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestRepublishes: which republish settings give the watchers every entry.
func TestRepublishes(t *testing.T) {
	for _, tc := range []struct {
		rp   *jetstream.RePublish
		want bool
	}{
		{nil, false},
		{RePublish("app"), true},
		{&jetstream.RePublish{Destination: "$KVR.app.>"}, true},
		{&jetstream.RePublish{Source: ">", Destination: "$KVR.app.>"}, true},
		{&jetstream.RePublish{Source: "$KV.app.>", Destination: "$KVR.app.>", HeadersOnly: true}, false},
		{&jetstream.RePublish{Source: "$KV.app.a.>", Destination: "$KVR.app.>"}, false},
		{&jetstream.RePublish{Source: "$KV.app.>", Destination: "$KVR.other.>"}, false},
	} {
		if got := Republishes("app", tc.rp); got != tc.want {
			t.Errorf("Republishes(app, %s) = %v, want %v", RepublishName(tc.rp), got, tc.want)
		}
	}
	if got := RepublishSubject("app"); got != "$KVR.app.>" {
		t.Fatalf("RepublishSubject = %q", got)
	}
}
