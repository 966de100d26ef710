package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/agent/natsconn"
)

// defaultTimeout bounds one-shot commands: connect plus the request.
const defaultTimeout = 10 * time.Second

// cliNATSConfig builds the connection settings of a command that has no config
// file: the NATS CLI's environment (NATS_URL, NATS_CREDS, NATS_CONTEXT,
// NATS_USER, NATS_PASSWORD; KVSYNC_NATS_URL wins over NATS_URL), then the
// flags. With neither a URL nor a context, the context selected with
// `nats context select` is used when there is one, like the NATS CLI does;
// else natsconn.DefaultURL.
func cliNATSConfig(f *connFlags) (agent.NATSConfig, error) {
	cfg := agent.NATSConfig{Name: "kvsync"}
	for _, e := range []struct {
		env string
		dst *string
	}{
		{"NATS_URL", &cfg.URL},
		{"KVSYNC_NATS_URL", &cfg.URL},
		{"NATS_CREDS", &cfg.Creds},
		{"NATS_CONTEXT", &cfg.Context},
		{"NATS_USER", &cfg.User},
		{"NATS_PASSWORD", &cfg.Password},
	} {
		if v := os.Getenv(e.env); v != "" {
			*e.dst = v
		}
	}
	f.apply(&cfg)
	if cfg.URL == "" && cfg.Context == "" {
		sel, err := natsconn.SelectedContext()
		if err != nil {
			return cfg, err
		}
		cfg.Context = sel
	}
	if cfg.URL == "" && cfg.Context == "" {
		cfg.URL = natsconn.DefaultURL
	}
	if (cfg.TLS.Cert == "") != (cfg.TLS.Key == "") {
		return cfg, usagef("--tls-cert and --tls-key go together")
	}
	return cfg, nil
}

// connectCLI connects for a one-shot command: the first connect must succeed
// (a dead server is an error within seconds, not an endless retry). opts go
// to the connection (an error handler, mostly).
func connectCLI(ctx context.Context, f *connFlags, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	cfg, err := cliNATSConfig(f)
	if err != nil {
		return nil, nil, err
	}
	nc, err := natsconn.ConnectOnce(ctx, cfg, opts...)
	if err != nil {
		return nil, nil, err
	}
	js, err := natsconn.JetStream(nc, cfg)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// bucketError turns the errors of binding to a bucket into messages for people.
func bucketError(bucket string, err error) error {
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("bucket %s not found", bucket)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("bucket %s: JetStream is not enabled on this server or account", bucket)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("bucket %s: no answer from JetStream (is JetStream enabled, is the domain right?): %w", bucket, err)
	}
	return fmt.Errorf("bucket %s: %w", bucket, err)
}

// refusalOption records the server's permission refusals of a command's
// connection in r.
func refusalOption(r *agent.Refusals) nats.Option {
	return nats.ErrorHandler(r.Handler(nil))
}

// explain turns the error of a request that failed because the server refused
// a permission into that refusal: "what: permission denied for publish to
// ...". A refused request only times out (or is cancelled by r.Context), so
// any other error is returned as it is.
func explain(r *agent.Refusals, what string, err error) error {
	if err == nil {
		return nil
	}
	if e := r.Explain(err); e != err {
		return fmt.Errorf("%s: %w", what, e)
	}
	return err
}
