package testutil

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
)

// pollInterval is how long CheckFor and Poll wait between two calls of fn.
const pollInterval = 10 * time.Millisecond

// CheckFor calls fn until it returns nil. Once timeout has passed without
// that, it fails the test with fn's last error.
//
// The timeout is a ceiling that keeps a broken test from hanging, not an
// assertion on speed: choose it well above the time the state normally takes,
// so that a loaded machine does not fail the test.
func CheckFor(tb testing.TB, timeout time.Duration, fn func() error) {
	tb.Helper()
	CheckForEvery(tb, timeout, pollInterval, fn)
}

// CheckForEvery is CheckFor calling fn every interval. It is for a test that
// measures how long a state takes to come (the interval bounds the error of
// that measure); any other test uses CheckFor.
func CheckForEvery(tb testing.TB, timeout, interval time.Duration, fn func() error) {
	tb.Helper()
	if err := poll(timeout, interval, fn); err != nil {
		tb.Fatalf("%v", err)
	}
}

// Poll is CheckFor that returns the failure instead of failing the test: nil
// once fn returns nil, or, once timeout has passed without that, fn's last
// error (wrapped, with the timeout). It is for a caller that adds context to
// the failure (a log), or that runs on a goroutine other than the test's.
func Poll(timeout time.Duration, fn func() error) error {
	return poll(timeout, pollInterval, fn)
}

func poll(timeout, interval time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}

// True turns a condition into a check for CheckFor or Poll: nil once cond
// returns true, otherwise an error that is what (the state waited for).
func True(what string, cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errors.New(what)
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
