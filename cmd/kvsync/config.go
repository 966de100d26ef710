package main

import (
	"errors"
	"fmt"
	"io/fs"
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
	if errors.Is(err, fs.ErrNotExist) {
		return nil, usageError{fmt.Errorf("%w: %s (give -c FILE or set KVSYNC_CONFIG)", errNoConfigFile, path)}
	}
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
			// A value from the environment is taken literally: a
			// password with "${" in it must not be expanded.
			env[o.key] = strings.ReplaceAll(v, "$", "$$")
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
	// ${VAR} expansion comes before defaults and validation: an expanded
	// value is checked like one written out, and defaults are not expanded.
	expErr := cfg.Expand(os.LookupEnv)
	cfg.Default()
	resolvePaths(&cfg, filepath.Dir(path))
	if err := errors.Join(expErr, cfg.Validate()); err != nil {
		return &cfg, usageError{err}
	}
	return &cfg, nil
}

// errNoConfigFile: the config file does not exist.
var errNoConfigFile = errors.New("no config file")

// resolvePaths makes every relative path of the config relative to the folder
// of the config file, so a config means the same whatever the working folder.
func resolvePaths(c *agent.Config, base string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) && !strings.HasPrefix(*p, "~") {
			*p = filepath.Join(base, *p)
		}
	}
	abs(&c.NATS.Creds)
	abs(&c.NATS.NKey)
	abs(&c.NATS.TLS.CA)
	abs(&c.NATS.TLS.Cert)
	abs(&c.NATS.TLS.Key)
	if c.Embedded != nil {
		abs(&c.Embedded.StoreDir)
	}
	action := func(a *agent.Action) {
		if a != nil {
			abs(&a.PIDFile)
		}
	}
	for i := range c.Files {
		abs(&c.Files[i].Dir)
		action(c.Files[i].OnChange)
	}
	for i := range c.Templates {
		abs(&c.Templates[i].Source)
		abs(&c.Templates[i].Dest)
		abs(&c.Templates[i].FileRoot)
		action(c.Templates[i].OnChange)
	}
	for i := range c.Env {
		abs(&c.Env[i].File)
		action(c.Env[i].OnChange)
	}
}

// rawBytes is a koanf provider of bytes already in memory.
type rawBytes []byte

func (b rawBytes) ReadBytes() ([]byte, error) { return b, nil }
func (b rawBytes) Read() (map[string]any, error) {
	return nil, fmt.Errorf("rawBytes provider needs a parser")
}
