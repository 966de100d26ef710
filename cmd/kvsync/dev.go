package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/kvsync/kvsync/agent"
)

// devConfig is the built-in quickstart used by `kvsync dev` when there is no
// config file: bucket app projected into ./kvsync-dev/files, and a template.
const devConfig = `
embedded: {store_dir: ./kvsync-dev/data, listen: "127.0.0.1:4222"}
buckets:
  - {name: app, history: 5}
files:
  - name: app-files
    bucket: app
    keys: [">"]
    dir: ./kvsync-dev/files
templates:
  - name: app-conf
    bucket: app
    dest: ./kvsync-dev/app.conf
    text: |
      # rendered by kvsync from bucket app
      greeting = {{ keyOr "greeting" "hello from kvsync" }}
      {{- range keys "settings.>" }}
      {{ .Key }} = {{ .Value }}
      {{- end }}
http: {listen: "127.0.0.1:9333"}
`

// DevCommand runs an embedded JetStream server and the agent together.
type DevCommand struct{ io ioStreams }

func (c *DevCommand) handlesSignals() {}

// Run implements command.
func (c *DevCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("dev", c.io.err)
	path := configFlag(fs)
	store := fs.String("store", "", "store folder of the embedded server (default: embedded.store_dir, else ./kvsync-dev/data)")
	listen := fs.String("listen", "", "client address of the embedded server (default: embedded.listen, else 127.0.0.1:4222)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	load := func() (*agent.Config, error) {
		cfg, err := loadConfig(*path)
		if errors.Is(err, errNoConfigFile) && !flagSet(fs, "c") && !flagSet(fs, "config") && os.Getenv("KVSYNC_CONFIG") == "" {
			cfg, err = parseConfig("kvsync-dev.yaml", []byte(devConfig))
		}
		if err != nil {
			return nil, err
		}
		if cfg.Embedded == nil {
			cfg.Embedded = &agent.EmbeddedConfig{StoreDir: "./kvsync-dev/data", Listen: "127.0.0.1:4222"}
		}
		if *store != "" {
			cfg.Embedded.StoreDir = *store
		}
		if *listen != "" {
			cfg.Embedded.Listen = *listen
		}
		return cfg, nil
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	fmt.Fprintf(c.io.err, "kvsync dev: embedded NATS on %s, store %s\n  try: kvsync kv put app greeting hi -s nats://%s\n",
		cfg.Embedded.Listen, cfg.Embedded.StoreDir, cfg.Embedded.Listen)
	return runAgent(ctx, c.io, cfg, load, agent.Options{})
}
