//go:build !unix

package bench

import (
	"os"
	"time"
)

// usage returns the CPU time of an exited process; peak RSS is not known
// here.
func usage(ps *os.ProcessState) (peakRSS int64, cpu time.Duration) {
	if ps == nil {
		return 0, 0
	}
	return 0, ps.UserTime() + ps.SystemTime()
}
