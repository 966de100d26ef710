package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

// Exit codes: 0 ok, 1 runtime failure, 2 usage or config error; in exec mode
// the child's code.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a bad command line or config: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitError carries an exit code chosen by a command (the exec child's code).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

const usage = `kvsync keeps files, templates and process environments in step with NATS KV buckets.

Usage:
  kvsync run      [-c FILE] [--once] [--dry-run]   run the agent
  kvsync dev      [-c FILE] [--store DIR] [--listen ADDR]
                                                   embedded JetStream server + agent
  kvsync validate [-c FILE]                        check the config, print every error
  kvsync render   [-c FILE] [NAME...]              render templates from live KV to stdout
  kvsync diff     [-c FILE]                        what differs between files and buckets
  kvsync kv       put|get|create|update|del|purge|keys|history|watch|revert BUCKET [KEY] [VALUE|-]
  kvsync bucket   add|info|ls|rm [BUCKET]
  kvsync fleet    status|wait [flags]              what every agent applied; wait for a rollout
  kvsync bench    [flags]                          propagation latency and throughput
  kvsync version

Run 'kvsync COMMAND -h' for the flags of a command.
`

// command is one subcommand.
type command interface {
	Run(ctx context.Context, args []string) error
}

func commands(stdin io.Reader, stdout, stderr io.Writer) map[string]command {
	io := ioStreams{in: stdin, out: stdout, err: stderr}
	return map[string]command{
		"run":      &RunCommand{io: io},
		"dev":      &DevCommand{io: io},
		"validate": &ValidateCommand{io: io},
		"version":  &VersionCommand{io: io},
		"render":   &RenderCommand{io: io},
		"diff":     &DiffCommand{io: io},
		"kv":       &KVCommand{io: io},
		"bucket":   &BucketCommand{io: io},
		"bench":    &BenchCommand{io: io},
		"fleet":    &FleetCommand{io: io},
	}
}

type ioStreams struct {
	in       io.Reader
	out, err io.Writer
}

// signalHandler is a command that decides itself what SIGINT and SIGTERM do
// (the agent forwards them to its exec child). Other commands stop on them.
type signalHandler interface{ handlesSignals() }

func init() {
	// kvsync never writes a heap profile. With sampling off from the start,
	// the runtime keeps no profile buckets: their hash table alone is a 1.4
	// MiB array, a page of which is touched for every sampled allocation.
	runtime.MemProfileRate = 0
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and maps its error to an exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, ok := commands(stdin, stdout, stderr)[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kvsync: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	if _, own := cmd.(signalHandler); !own {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	err := cmd.Run(ctx, args[1:])
	var ue usageError
	var ee exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "kvsync %s: %v\n", args[0], err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "kvsync %s: %v\n", args[0], err)
		return exitFailure
	}
}
