package watch

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// Config is the watch: block: how each bucket is followed, through a
// JetStream consumer of its own (consumer), through a plain subscription to
// what the bucket republishes (republish), or the latter when the bucket
// republishes and the former otherwise (auto).
type Config struct {
	Mode    string            `koanf:"mode"`    // for every bucket not in Buckets
	Buckets map[string]string `koanf:"buckets"` // bucket name -> mode
	// CheckInterval: in the republish mode, how often an agent that heard
	// nothing asks the stream for its last sequence, to notice an entry
	// whose republished copy was lost.
	CheckInterval time.Duration `koanf:"check_interval"`
}

// DefaultCheckInterval is the republish mode's check interval when the
// config says nothing.
const DefaultCheckInterval = 30 * time.Second

// ModeOf is the watch mode of bucket.
func (c Config) ModeOf(bucket string) string {
	if m, ok := c.Buckets[bucket]; ok {
		return m
	}
	return c.Mode
}

// Default fills what the block leaves out: the auto mode, and
// DefaultCheckInterval.
func (c *Config) Default() {
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = DefaultCheckInterval
	}
}

// Problem is one thing wrong with the block. Path is relative to it
// (".mode", ".buckets.<name>").
type Problem struct{ Path, Msg string }

// Validate lists what is wrong with the block, once defaulted.
func (c *Config) Validate() []Problem {
	var ps []Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{path, fmt.Sprintf(format, args...)})
	}
	mode := func(path, m string) {
		switch m {
		case ModeConsumer, ModeRepublish, ModeAuto:
		default:
			add(path, "%q is not consumer, republish or auto", m)
		}
	}
	mode(".mode", c.Mode)
	for _, b := range slices.Sorted(maps.Keys(c.Buckets)) {
		path := ".buckets." + b
		if b == "" {
			add(path, "required")
		} else if err := kvkey.ValidBucket(b); err != nil {
			add(path, "%v", err)
		}
		mode(path, c.Buckets[b])
	}
	if c.CheckInterval < 100*time.Millisecond {
		add(".check_interval", "%v is less than 100ms", c.CheckInterval)
	}
	return ps
}
