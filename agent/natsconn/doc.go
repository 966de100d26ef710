// Package natsconn is kvsync's NATS plumbing: how a connection is made and
// watched, and what kvsync sets up on the server before it watches anything.
//
// It owns:
//
//   - the nats:, embedded: and buckets: blocks (NATSConfig, TLSConfig,
//     EmbeddedConfig, BucketConfig): their defaults and their validation;
//     the agent's Config composes them;
//   - the connection (Connect, ConnectOnce): the options of the nats: block
//     merged with a NATS CLI context (LoadContext, SelectedContext), the
//     ping interval and the unanswered pings after which it is re-dialled,
//     reconnects forever with a jittered delay, and a dialer that records
//     when the socket last read anything; JetStream, in the configured
//     domain or under the context's API prefix;
//   - the stale-link monitor (Link): a connection silent for 1.5 ping
//     intervals is reported stale, from the socket's reads (PONGs included)
//     on a connection Connect made, from the inbound statistics and PINGs of
//     its own on any other; Link.Status is the connection's part of /status;
//   - refused permissions (PermissionError, Refusals): the server's
//     asynchronous refusals, each with the grant that would allow it;
//   - the embedded server (StartEmbedded), which keeps its JetStream store in
//     embedded.store_dir;
//   - bucket provisioning (Provision, CreateBucket, SetMaxConsumers): the
//     buckets of the config created when missing, with a consumer limit
//     (DefaultMaxConsumers) and the republish setting (RePublish, to
//     $KVR.<bucket>.>); an existing bucket's differences reported;
//   - the mirror state of buckets (MirrorCache), for /status.
//
// It must not import the agent, agent/process, the projector or templates,
// watch buckets (agent/watch does), hold the
// agent's state or metrics, or decide what a refusal or a stale link means
// for the agent: it reports them through return values, Refusals.OnRefusal
// and OnOther, and the Link's StaleGauge, and logs with the logger it is
// given. It writes nothing to disk; the embedded server writes its store.
//
// Every goroutine it starts is waited for before the call that started it
// returns, or by the cancel function it returns (Refusals.Context); Link.Run
// runs on its caller's goroutine until its context ends. The connection's
// own goroutines are the NATS client's, and end when the connection is
// closed; the embedded server's end with its Shutdown.
package natsconn
