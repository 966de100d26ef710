// Command kvsync keeps files, templated config files and process environments in
// step with NATS JetStream Key/Value buckets. See README.md.
//
// The package owns the command line: the subcommands and their flags
// (main.go, flags.go); loading a config file with koanf (YAML, or TOML and
// JSON by extension), the KVSYNC_* and NATS_* environment overrides, ${VAR}
// expansion, defaults, paths made relative to the config file, and
// validation, every problem at once (config.go); the signals of run and dev
// (SIGHUP reloads the config, SIGINT and SIGTERM stop the agent or go to the
// exec child), the logger, and the embedded server they may start (run.go,
// dev.go); the one-shot commands that read or change buckets and keys (kv,
// bucket, fleet) or look at what the agent would do (validate, render,
// diff); the flags of bench; and the exit codes: 0 ok, 1 a failure, 2 a bad
// command line or config, and in exec mode the child's own code.
//
// It must not hold the agent's logic: what is projected, rendered, checked
// and run, and how, is the agent package's, and the bytes on disk are the
// projector's; a command here only builds an agent.Config and agent.Options
// (or a connection, for the one-shot commands) and reports the result.
// validate, render and diff write nothing; the only file a command here
// writes itself is bench's CPU profile, when asked for one.
package main
