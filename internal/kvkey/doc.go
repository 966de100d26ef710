// Package kvkey holds the rules for JetStream KV keys and bucket names that every
// other package of kvsync checks against: which bytes a key may hold, and how NATS
// wildcard filters (`*`, `>`) match keys.
//
// It owns only those rules, so that the agent, the projector, the templates
// and the command line accept and refuse the same names. It must not do I/O,
// import NATS code or keep state: every function is a pure check or match.
package kvkey
