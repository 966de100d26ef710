package main

import (
	"errors"
	"flag"
	"io"
	"os"

	"github.com/kvsync/kvsync/agent"
)

// errHelp is returned when -h was given: the usage is printed, exit 0.
var errHelp = errors.New("help requested")

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kvsync "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseArgs parses flags that may stand before or after positional arguments
// (`kvsync kv get app k -s URL`) and returns the positional ones. Everything
// after a "--" is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, usageError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, rest...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// configFlag registers -c/--config, defaulting to $KVSYNC_CONFIG, else ./kvsync.yaml.
func configFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("KVSYNC_CONFIG")
	if def == "" {
		def = "kvsync.yaml"
	}
	p := new(string)
	fs.StringVar(p, "c", def, "config file (YAML; .toml and .json by extension); env KVSYNC_CONFIG")
	fs.StringVar(p, "config", def, "same as -c")
	return p
}

// connFlags are the connection flags of every command that connects.
type connFlags struct {
	server, creds, nkey, user, password, token string
	tlsCA, tlsCert, tlsKey, context            string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "s", "", "NATS server URL(s), comma-separated; env NATS_URL")
	fs.StringVar(&c.server, "server", "", "same as -s")
	fs.StringVar(&c.creds, "creds", "", "user credentials file; env NATS_CREDS")
	fs.StringVar(&c.nkey, "nkey", "", "nkey seed file")
	fs.StringVar(&c.user, "user", "", "user name; env NATS_USER")
	fs.StringVar(&c.password, "password", "", "password; env NATS_PASSWORD")
	fs.StringVar(&c.token, "token", "", "authentication token")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "CA certificate file")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "client certificate file")
	fs.StringVar(&c.tlsKey, "tls-key", "", "client key file")
	fs.StringVar(&c.context, "context", "", "NATS CLI context name; env NATS_CONTEXT")
}

// apply overrides n with every flag that was given.
func (c *connFlags) apply(n *agent.NATSConfig) {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&n.URL, c.server)
	set(&n.Creds, c.creds)
	set(&n.NKey, c.nkey)
	set(&n.User, c.user)
	set(&n.Password, c.password)
	set(&n.Token, c.token)
	set(&n.TLS.CA, c.tlsCA)
	set(&n.TLS.Cert, c.tlsCert)
	set(&n.TLS.Key, c.tlsKey)
	set(&n.Context, c.context)
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}
