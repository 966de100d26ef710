package natsconn

import (
	"fmt"
	"time"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// NATSConfig says how to reach the NATS server.
type NATSConfig struct {
	URL      string    `koanf:"url"`
	Context  string    `koanf:"context"`
	Creds    string    `koanf:"creds"`
	NKey     string    `koanf:"nkey"`
	Token    string    `koanf:"token"`
	User     string    `koanf:"user"`
	Password string    `koanf:"password"`
	TLS      TLSConfig `koanf:"tls"`
	Name     string    `koanf:"name"`
	Domain   string    `koanf:"domain"`
	// PingInterval: how often the client PINGs the server (0: 2 s, applied
	// where the connection is made, for every caller).
	// After two unanswered PINGs the connection is re-dialled, and a link
	// silent for 1.5 intervals is reported stale. A large fleet may raise
	// it: every connection costs the server one PING per interval.
	PingInterval time.Duration `koanf:"ping_interval"`
}

// TLSConfig holds the paths of the TLS material for the NATS connection.
type TLSConfig struct {
	CA   string `koanf:"ca"`
	Cert string `koanf:"cert"`
	Key  string `koanf:"key"`
}

// EmbeddedConfig runs an in-process JetStream server.
type EmbeddedConfig struct {
	StoreDir string `koanf:"store_dir"`
	Listen   string `koanf:"listen"`
}

// BucketConfig is a bucket kvsync creates when it is missing.
type BucketConfig struct {
	Name         string        `koanf:"name"`
	History      int           `koanf:"history"`
	TTL          time.Duration `koanf:"ttl"`
	MaxBytes     int64         `koanf:"max_bytes"`
	MaxValueSize int32         `koanf:"max_value_size"`
	Replicas     int           `koanf:"replicas"`
	Storage      string        `koanf:"storage"` // file | memory
	Description  string        `koanf:"description"`
	// MaxConsumers caps the consumers of the bucket's stream, one per
	// watching agent: 0 is DefaultMaxConsumers, -1 none of the stream's own
	// (the server's default applies). Set, it is applied to an existing
	// bucket too.
	MaxConsumers int `koanf:"max_consumers"`
	// Republish makes the bucket republish every entry to $KVR.<name>.>,
	// for agents that follow it in the republish watch mode.
	Republish bool `koanf:"republish"`
}

// Problem is one thing wrong with a block of the config. Path is relative to
// the block (".url", ".history"; "" for the block as a whole): the caller
// prefixes it with where the block is.
type Problem struct{ Path, Msg string }

// Default fills the defaults of the nats: block. embedded says whether the
// config has an embedded: block, whose server is then the default.
func (n *NATSConfig) Default(embedded bool) {
	if n.Name == "" {
		n.Name = "kvsync"
	}
	// The default URL only when nothing else says where to connect: a
	// context's URL must not be shadowed by it.
	if n.URL == "" && n.Context == "" && !embedded {
		n.URL = DefaultURL
	}
}

// Validate reports every problem of the nats: block (after Default).
// embedded says whether the config has an embedded: block.
func (n *NATSConfig) Validate(embedded bool) []Problem {
	var ps []Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{path, fmt.Sprintf(format, args...)})
	}
	if n.URL == "" && n.Context == "" && !embedded {
		add(".url", "required (or nats.context, or embedded)")
	}
	if (n.TLS.Cert == "") != (n.TLS.Key == "") {
		add(".tls", "cert and key go together")
	}
	if p := n.PingInterval; p < 0 || (p > 0 && p < 100*time.Millisecond) || p > 10*time.Minute {
		add(".ping_interval", "%v is outside 100ms..10m", p)
	}
	if n.User == "" && n.Password != "" {
		add(".user", "required with nats.password")
	}
	return ps
}

// Default fills the defaults of the embedded: block.
func (e *EmbeddedConfig) Default() {
	if e.StoreDir == "" {
		e.StoreDir = "./.kvsync/data"
	}
	if e.Listen == "" {
		e.Listen = "127.0.0.1:4222"
	}
}

// Validate reports every problem of the embedded: block (after Default).
func (e *EmbeddedConfig) Validate() []Problem {
	if e.StoreDir == "" {
		return []Problem{{".store_dir", "required"}}
	}
	return nil
}

// Default fills the defaults of one buckets: entry.
func (b *BucketConfig) Default() {
	if b.History == 0 {
		b.History = 1
	}
	if b.MaxBytes == 0 {
		b.MaxBytes = -1
	}
	if b.MaxValueSize == 0 {
		b.MaxValueSize = -1
	}
	if b.Replicas == 0 {
		b.Replicas = 1
	}
	if b.Storage == "" {
		b.Storage = "file"
	}
}

// Validate reports every problem of one buckets: entry (after Default).
func (b *BucketConfig) Validate() []Problem {
	var ps []Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{path, fmt.Sprintf(format, args...)})
	}
	if b.Name == "" {
		add(".name", "required")
	} else if err := kvkey.ValidBucket(b.Name); err != nil {
		add(".name", "%v", err)
	}
	if b.History < 1 || b.History > 64 {
		add(".history", "%d is outside 1..64", b.History)
	}
	if b.TTL < 0 {
		add(".ttl", "must not be negative")
	}
	if b.Replicas < 1 || b.Replicas > 5 {
		add(".replicas", "%d is outside 1..5", b.Replicas)
	}
	if b.Storage != "file" && b.Storage != "memory" {
		add(".storage", "%q is not file or memory", b.Storage)
	}
	if b.MaxConsumers < -1 {
		add(".max_consumers", "%d: give a positive limit, 0 for kvsync's default, or -1 for the server's", b.MaxConsumers)
	}
	return ps
}

// DefaultURL is the server kvsync dials when nothing else is configured.
const DefaultURL = "nats://127.0.0.1:4222"
