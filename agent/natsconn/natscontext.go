package natsconn

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// NATSContext is a NATS CLI context file
// ($XDG_CONFIG_HOME/nats/context/NAME.json). kvsync reads the fields that say
// how to connect; the CLI's other fields are ignored. Paths are already
// expanded (~ and $VAR) when LoadContext returns.
type NATSContext struct {
	// Name is the context name, or the file path it was loaded from.
	Name string `json:"-"`

	Description string `json:"description"`
	URL         string `json:"url"`
	Token       string `json:"token"`
	User        string `json:"user"`
	Password    string `json:"password"`
	Creds       string `json:"creds"`
	NKey        string `json:"nkey"`
	Cert        string `json:"cert"`
	Key         string `json:"key"`
	CA          string `json:"ca"`
	UserJWT     string `json:"user_jwt"`
	UserSeed    string `json:"user_seed"`
	InboxPrefix string `json:"inbox_prefix"`
	TLSFirst    bool   `json:"tls_first"`

	JetStreamDomain    string `json:"jetstream_domain"`
	JetStreamAPIPrefix string `json:"jetstream_api_prefix"`
}

// ErrContextNotFound is wrapped by LoadContext when no context of that name exists.
var ErrContextNotFound = errors.New("not found")

// contextDir returns the folder that holds the NATS CLI context files:
// $XDG_CONFIG_HOME/nats/context, or ~/.config/nats/context.
func contextDir() (string, error) {
	base := os.Getenv("XDG_CONFIG_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("locate nats contexts: %w", err)
		}
		base = filepath.Join(home, ".config")
	}
	return filepath.Join(base, "nats", "context"), nil
}

// SelectedContext returns the context name the NATS CLI has selected
// (`nats context select`, kept in nats/context.txt), or "" when none is.
func SelectedContext() (string, error) {
	dir, err := contextDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(filepath.Dir(dir), "context.txt")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// LoadContext reads the NATS CLI context called name from the NATS CLI's
// context folder ($XDG_CONFIG_HOME/nats/context, or ~/.config/nats/context).
// A name that ends in ".json" and holds a path separator is read as a file
// path instead, which suits a context file mounted from a secret. An unknown name
// gives an error that wraps ErrContextNotFound and names the folder looked in.
func LoadContext(name string) (*NATSContext, error) {
	path, err := contextPath(name)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nats context %q %w: no %s in %s", name, ErrContextNotFound, filepath.Base(path), filepath.Dir(path))
	}
	if err != nil {
		return nil, fmt.Errorf("read nats context %q: %w", name, err)
	}
	c := &NATSContext{}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("parse nats context %s: %w", path, err)
	}
	c.Name = name
	for _, p := range []*string{&c.Creds, &c.NKey, &c.Cert, &c.Key, &c.CA} {
		*p = expandPath(*p)
	}
	return c, nil
}

func contextPath(name string) (string, error) {
	if strings.HasSuffix(name, ".json") && strings.ContainsRune(name, filepath.Separator) {
		return expandPath(name), nil
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return "", fmt.Errorf("nats context %q: not a valid context name", name)
	}
	dir, err := contextDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, name+".json"), nil
}

// expandPath expands $VAR and ${VAR}, then a leading ~ to the home folder, as
// the NATS CLI does for the paths in a context.
func expandPath(p string) string {
	if p == "" {
		return p
	}
	p = os.ExpandEnv(p)
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, p[1:])
		}
	}
	return p
}
