// Package testutil holds the helpers the tests of kvsync share to run real
// NATS servers and to wait for a state: an embedded JetStream server
// (RunServer, RestartServer), test clients (Connect, ConnectRetrying),
// buckets (CreateBucket), a nats-server child process that can be stopped,
// SIGKILLed and restarted on the same port and store (NATSProc), a 3-node
// cluster of such processes (Cluster), free loopback ports (FreePort), a
// buffer a logger writes while the test reads it (SyncBuffer) and the
// polling helpers: CheckFor (CheckForEvery where a test measures a delay),
// Poll where the caller reports the failure itself, and True to poll a
// condition.
//
// Everything a helper starts is stopped, closed or killed in tb.Cleanup, and
// every store lives in tb.TempDir(). The helpers fail the test themselves
// (tb.Fatal) and must be called from the test's goroutine.
//
// The package is imported by tests only. It must not mock NATS, hold state
// between tests (the nats-server binary built once per test binary aside), or
// assert on time: a timeout here is a ceiling that keeps a broken test from
// hanging, never a measure of speed.
package testutil
