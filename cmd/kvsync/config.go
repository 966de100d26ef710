package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/json"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/v2"

	"github.com/kvsync/kvsync/agent"
)

// envOverrides maps environment variables onto config keys. They override the
// file; command-line flags override them. KVSYNC_NATS_URL wins over NATS_URL.
var envOverrides = []struct{ env, key string }{
	{"NATS_URL", "nats.url"},
	{"NATS_CREDS", "nats.creds"},
	{"NATS_CONTEXT", "nats.context"},
	{"NATS_USER", "nats.user"},
	{"NATS_PASSWORD", "nats.password"},
	{"KVSYNC_NATS_URL", "nats.url"},
	{"KVSYNC_LOG_LEVEL", "log.level"},
	{"KVSYNC_LOG_FORMAT", "log.format"},
	{"KVSYNC_HTTP_LISTEN", "http.listen"},
}

// loadConfig reads the config file at path (YAML, or TOML/JSON by extension),
// applies the environment overrides, fills defaults and validates. Unknown keys
// are errors. Every problem is reported at once. The error is a usageError.
func loadConfig(path string) (*agent.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError{fmt.Errorf("read config: %w", err)}
	}
	return parseConfig(path, data)
}

// parseConfig is loadConfig on bytes already read; path picks the parser.
func parseConfig(path string, data []byte) (*agent.Config, error) {
	k := koanf.New(".")
	var parser koanf.Parser
	switch strings.ToLower(filepath.Ext(path)) {
	case ".toml":
		parser = toml.Parser()
	case ".json":
		parser = json.Parser()
	default:
		parser = yaml.Parser()
	}
	if err := k.Load(rawBytes(data), parser); err != nil {
		return nil, usageError{fmt.Errorf("parse %s: %w", path, err)}
	}
	env := map[string]any{}
	for _, o := range envOverrides {
		if v, ok := os.LookupEnv(o.env); ok && v != "" {
			env[o.key] = v
		}
	}
	if err := k.Load(confmap.Provider(env, "."), nil); err != nil {
		return nil, usageError{fmt.Errorf("environment: %w", err)}
	}
	cfg := agent.Default()
	err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{
		Tag: "koanf",
		DecoderConfig: &mapstructure.DecoderConfig{
			DecodeHook: mapstructure.ComposeDecodeHookFunc(
				mapstructure.StringToTimeDurationHookFunc(),
				mapstructure.StringToSliceHookFunc(","),
				mapstructure.TextUnmarshallerHookFunc()),
			ErrorUnused:      true,
			WeaklyTypedInput: true,
			Result:           &cfg,
			TagName:          "koanf",
		},
	})
	if err != nil {
		return nil, usageError{fmt.Errorf("%s: %w", path, err)}
	}
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		return &cfg, usageError{err}
	}
	return &cfg, nil
}

// rawBytes is a koanf provider of bytes already in memory.
type rawBytes []byte

func (b rawBytes) ReadBytes() ([]byte, error) { return b, nil }
func (b rawBytes) Read() (map[string]any, error) {
	return nil, fmt.Errorf("rawBytes provider needs a parser")
}
