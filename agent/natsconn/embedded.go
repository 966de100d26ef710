package natsconn

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded limits: JetStream claims 75 % of RAM without them.
const (
	embeddedMaxMemory = 256 << 20
	embeddedMaxStore  = 8 << 30
)

// StartEmbedded starts an in-process NATS server with JetStream and a file
// store, as `embedded:` and `kvsync dev` use it. Shut it down with
// (*server.Server).Shutdown and WaitForShutdown.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded.listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded.listen %q: port: %w", cfg.Listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	s, err := server.NewServer(&server.Options{
		ServerName:         "kvsync-embedded",
		Host:               host,
		Port:               port,
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxMemory: embeddedMaxMemory,
		JetStreamMaxStore:  embeddedMaxStore,
		NoSigs:             true,
		NoLog:              true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded server: %w", err)
	}
	s.Start() // starts the listeners in goroutines of its own and returns
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded server: not ready within 10s (is %s in use?)", cfg.Listen)
	}
	return s, nil
}
