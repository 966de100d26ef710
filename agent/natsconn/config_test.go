package natsconn

import (
	"slices"
	"testing"
	"time"
)

// TestNATSConfigDefault: the default URL only when nothing else says where
// to connect (a context's URL must not be shadowed, an embedded server is
// dialled instead), and the default name.
func TestNATSConfigDefault(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       NATSConfig
		embedded bool
		want     NATSConfig
	}{
		{"nothing", NATSConfig{}, false, NATSConfig{URL: DefaultURL, Name: "kvsync"}},
		{"context", NATSConfig{Context: "prod"}, false, NATSConfig{Context: "prod", Name: "kvsync"}},
		{"embedded", NATSConfig{}, true, NATSConfig{Name: "kvsync"}},
		{"given", NATSConfig{URL: "nats://a:4222", Name: "x"}, false, NATSConfig{URL: "nats://a:4222", Name: "x"}},
	} {
		got := tc.in
		got.Default(tc.embedded)
		if got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestConfigValidate: each block names its problems relative to itself.
func TestConfigValidate(t *testing.T) {
	paths := func(ps []Problem) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Path)
		}
		return out
	}
	n := NATSConfig{TLS: TLSConfig{Key: "k.pem"}, PingInterval: time.Hour, Password: "p"}
	if got, want := paths(n.Validate(false)), []string{".url", ".tls", ".ping_interval", ".user"}; !slices.Equal(got, want) {
		t.Errorf("nats: %v, want %v", got, want)
	}
	if got := n.Validate(true); slices.Contains(paths(got), ".url") {
		t.Errorf("nats with embedded: %+v, want no .url", got)
	}
	ok := NATSConfig{URL: DefaultURL}
	if got := ok.Validate(false); len(got) != 0 {
		t.Errorf("valid nats block: %+v", got)
	}

	e := EmbeddedConfig{}
	if got, want := paths(e.Validate()), []string{".store_dir"}; !slices.Equal(got, want) {
		t.Errorf("embedded: %v, want %v", got, want)
	}
	e.Default()
	if got := e.Validate(); len(got) != 0 || e.Listen != "127.0.0.1:4222" {
		t.Errorf("defaulted embedded: %+v, %+v", e, got)
	}

	b := BucketConfig{Name: "bad name", History: 65, TTL: -1, Replicas: 6, Storage: "disk", MaxConsumers: -2}
	if got, want := paths(b.Validate()), []string{".name", ".history", ".ttl", ".replicas", ".storage", ".max_consumers"}; !slices.Equal(got, want) {
		t.Errorf("bucket: %v, want %v", got, want)
	}
	b = BucketConfig{Name: "app"}
	b.Default()
	if got := b.Validate(); len(got) != 0 {
		t.Errorf("defaulted bucket: %+v", got)
	}
	if b.History != 1 || b.MaxBytes != -1 || b.MaxValueSize != -1 || b.Replicas != 1 || b.Storage != "file" {
		t.Errorf("bucket defaults: %+v", b)
	}
}
