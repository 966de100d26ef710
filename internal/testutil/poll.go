package testutil

import (
	"net"
	"testing"
	"time"
)

// pollInterval is how long CheckFor waits between two calls of fn.
const pollInterval = 10 * time.Millisecond

// CheckFor calls fn until it returns nil. Once timeout has passed without
// that, it fails the test with fn's last error.
//
// The timeout is a ceiling that keeps a broken test from hanging, not an
// assertion on speed: choose it well above the time the state normally takes,
// so that a loaded machine does not fail the test.
func CheckFor(tb testing.TB, timeout time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// FreePort returns a loopback TCP port nothing listens on right now. Another
// process may take it before the caller does; use it for a server that must
// come back on a port it had (a restart), or whose port goes into a config
// file written before it starts.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
