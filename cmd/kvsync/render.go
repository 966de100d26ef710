package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/agent/natsconn"
)

// RenderCommand renders templates from live KV to stdout and writes nothing.
type RenderCommand struct{ io ioStreams }

// Run implements command.
func (c *RenderCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("render", c.io.err)
	path := configFlag(fs)
	var conn connFlags
	conn.register(fs)
	names, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	nc, js, err := connectConfig(ctx, cfg, &conn)
	if err != nil {
		return err
	}
	defer nc.Close()
	out, err := agent.Render(ctx, cfg, js, names)
	if err != nil {
		return usageError{err}
	}
	var failed []error
	for _, r := range out {
		if len(out) > 1 {
			fmt.Fprintf(c.io.out, "# ==> %s (%s) <==\n", r.Name, r.Dest)
		}
		if r.Err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", r.Name, r.Err))
			continue
		}
		_, _ = c.io.out.Write(r.Output)
	}
	return errors.Join(failed...)
}

// connectConfig connects with the nats: block of a config and the connection
// flags, failing fast: for one-shot commands that read a config. A config with
// an embedded server connects to its listen address.
func connectConfig(ctx context.Context, cfg *agent.Config, f *connFlags) (*nats.Conn, jetstream.JetStream, error) {
	n := cfg.NATS
	if cfg.Embedded != nil {
		n.URL, n.Context = "nats://"+cfg.Embedded.Listen, ""
	}
	f.apply(&n)
	nc, err := natsconn.ConnectOnce(ctx, n)
	if err != nil {
		return nil, nil, err
	}
	js, err := natsconn.JetStream(nc, n)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}
