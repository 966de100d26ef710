//go:build race

package agent

// raceEnabled: the tests run under the race detector (about ten times slower).
const raceEnabled = true
