//go:build race

package watch

// raceEnabled: the tests run under the race detector (about ten times slower).
const raceEnabled = true
