// Package process is kvsync's process control: the supervised exec child,
// the on_change actions, and the reaping of children.
//
// It owns:
//
//   - the exec: block (ExecConfig) and the actions (Action, HTTPAction): their
//     defaults and their validation; the agent's Config composes them;
//   - the exec child (ExecLoop, on a supervisor): started in a process group of
//     its own with the projected environment and what it inherits, restarted
//     or signalled when that environment changes, restarted after an exit of
//     its own as on_exit says (with a jittered backoff), stopped with
//     kill_signal and then SIGKILL, and sent SIGINT, SIGTERM, SIGQUIT, SIGUSR1
//     and SIGUSR2 when kvsync gets them;
//   - the actions (ActionRunner): a signal to the pid of a pidfile or to every
//     process of a name, a command without a shell in a process group of its
//     own with the tail of its output, a webhook with retries, a restart of
//     the exec child; and the check commands (RunCheck), which run like a
//     command action and leave nothing of their process group behind;
//   - the reaper (Reaper): as PID 1 or a child subreaper, the one waiter for
//     every child of the process, orphans included.
//
// Every goroutine it starts is waited for by the one that started it, except
// the reader of a command's output while a daemon the command started keeps
// it open, and the reaper's waits for children still running when it stops.
//
// It must not import the agent, read or watch NATS, write projections, or
// decide when an action runs or what a failed one means: the agent calls
// ActionRunner.Run and ExecLoop.Update when a batch says so, and rolls back
// on a failed result. It reports to the agent through return values, the
// ExecLoop's exit codes and the Metrics interface, and logs with the logger
// it is given, which says whose process or action it is.
package process
