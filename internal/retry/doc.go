// Package retry holds the delays kvsync waits between attempts: an
// exponential backoff with equal jitter (Backoff) and the jitter on its own
// (EqualJitter), and the jitter of timers that race to do one thing for a
// whole fleet (LateJitter).
//
// Equal jitter draws each delay uniformly from [d/2, d]. The random half
// spreads a fleet of agents that failed at the same moment (a server restart,
// a refused consumer) so that they do not retry in step; the fixed half keeps
// a floor under each agent's retry rate.
//
// The package owns only the arithmetic of the delays. It must not sleep,
// start goroutines, log or know what is being retried: callers wait for the
// delay themselves, next to their other cases (a context ending, a nudge), and
// decide when a run of failures is over (Reset).
package retry
