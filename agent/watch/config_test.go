package watch

import (
	"fmt"
	"testing"
	"time"
)

// TestConfig: the block's defaults, the mode of a bucket, and the problems
// Validate reports, with their paths relative to the block, in order.
func TestConfig(t *testing.T) {
	var c Config
	c.Default()
	if c.Mode != ModeAuto || c.CheckInterval != DefaultCheckInterval {
		t.Fatalf("defaults: %+v", c)
	}
	if ps := c.Validate(); len(ps) != 0 {
		t.Fatalf("defaults: problems %v", ps)
	}
	c = Config{Mode: ModeConsumer, Buckets: map[string]string{"flags": ModeRepublish}, CheckInterval: time.Second}
	if c.ModeOf("flags") != ModeRepublish || c.ModeOf("app") != ModeConsumer {
		t.Fatalf("ModeOf: flags %q, app %q", c.ModeOf("flags"), c.ModeOf("app"))
	}
	c = Config{Mode: "pull", Buckets: map[string]string{"flags": "push", "a b": ModeAuto}, CheckInterval: 10 * time.Millisecond}
	got := fmt.Sprint(c.Validate())
	want := `[{.mode "pull" is not consumer, republish or auto} {.buckets.a b ` // the bucket name's own error follows
	if len(got) < len(want) || got[:len(want)] != want {
		t.Fatalf("problems %s, want them to start with %s", got, want)
	}
	ps := c.Validate()
	if n := len(ps); n != 4 ||
		ps[2] != (Problem{".buckets.flags", `"push" is not consumer, republish or auto`}) ||
		ps[3] != (Problem{".check_interval", "10ms is less than 100ms"}) {
		t.Fatalf("problems %q", ps)
	}
}
