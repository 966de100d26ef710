package bench

import (
	"os"
	"time"
)

// cpuTime returns the CPU time (user + system) of an exited process.
func cpuTime(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
}
