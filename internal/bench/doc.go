// Package bench measures kvsync against a JetStream server: propagation
// latency of each kind of projection beside the raw put→watch latency of the
// same run, the time and memory of an initial sync, coalescing of a burst,
// the cost of an idle agent, fan-out to many agents (beside the same fan-out
// without kvsync), and a reconnect storm (the server restarted under many
// agents). It backs the `kvsync bench` command.
//
// It owns the scenarios, the statistics (percentiles, reading the agent's
// propagation histogram) and the report (table and JSON). Agents run in this
// process through agent.New and Run, except where the memory or CPU of one
// agent alone is measured: those run `kvsync run` as a child process, started
// by the caller's Options.Child. The server is embedded in this process, or
// a nats-server child process of the bench's own (Options.ServerBin) whose
// memory and CPU are measured apart, or one the caller names.
//
// It must not change what an agent does to make it look faster, must not
// assert targets (it reports; people judge), and must leave nothing behind on
// a server it did not start: every bucket it creates is deleted when it is
// done.
package bench
