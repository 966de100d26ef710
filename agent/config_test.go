package agent

import (
	"strings"
	"testing"
	"time"
)

// TestConfigNamesBucketProblems: the problems of the blocks natsconn owns
// (nats:, buckets:) come out of Validate under their path in the config.
func TestConfigNamesBucketProblems(t *testing.T) {
	c := Default()
	c.NATS.TLS.Cert = "/cert.pem"
	c.NATS.PingInterval = time.Millisecond
	c.Buckets = []BucketConfig{{Name: "ok"}, {Name: "x", MaxConsumers: -2}}
	c.Default()
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted a max_consumers of -2")
	}
	for _, want := range []string{
		"nats.tls: cert and key go together",
		"nats.ping_interval: 1ms is outside 100ms..10m",
		"buckets[1].max_consumers: -2: give a positive limit, 0 for kvsync's default, or -1 for the server's",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v\nwant a line %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "buckets[0]") {
		t.Errorf("Validate: %v\nwant nothing about buckets[0]", err)
	}
}
