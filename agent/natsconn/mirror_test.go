package natsconn

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestMirrorStatus: the mirror part of /status from a stream's info.
func TestMirrorStatus(t *testing.T) {
	if m := mirrorStatus(&jetstream.StreamInfo{}); m != nil {
		t.Fatalf("not a mirror: %+v, want nil", m)
	}
	for _, tc := range []struct {
		src                  jetstream.StreamSource
		origin, domain, pref string
	}{
		{jetstream.StreamSource{Name: "KV_app"}, "app", "", ""},
		{jetstream.StreamSource{Name: "KV_app", External: &jetstream.ExternalStream{APIPrefix: "$JS.hub.API"}}, "app", "hub", ""},
		{jetstream.StreamSource{Name: "KV_app", External: &jetstream.ExternalStream{APIPrefix: "$JS.a.b.API"}}, "app", "", "$JS.a.b.API"},
		{jetstream.StreamSource{Name: "KV_app", External: &jetstream.ExternalStream{APIPrefix: "other.API"}}, "app", "", "other.API"},
	} {
		info := &jetstream.StreamInfo{
			Config: jetstream.StreamConfig{Mirror: &tc.src},
			Mirror: &jetstream.StreamSourceInfo{Lag: 7, Active: 1500 * time.Millisecond,
				Error: &jetstream.APIError{Code: 503, Description: "no route"}},
		}
		m := mirrorStatus(info)
		if m.Origin != tc.origin || m.Domain != tc.domain || m.APIPrefix != tc.pref {
			t.Errorf("%+v: origin %q domain %q prefix %q, want %q %q %q", tc.src, m.Origin, m.Domain, m.APIPrefix, tc.origin, tc.domain, tc.pref)
		}
		if m.Lag != 7 || m.LastContact != "1.5s" || !strings.Contains(m.Error, "no route") {
			t.Errorf("lag %d, last contact %q, error %q", m.Lag, m.LastContact, m.Error)
		}
	}
	never := mirrorStatus(&jetstream.StreamInfo{
		Config: jetstream.StreamConfig{Mirror: &jetstream.StreamSource{Name: "KV_app"}},
		Mirror: &jetstream.StreamSourceInfo{Active: -1},
	})
	if never.LastContact != "" {
		t.Errorf("never in contact: last contact %q, want none", never.LastContact)
	}
}
