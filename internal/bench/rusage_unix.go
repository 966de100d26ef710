//go:build unix

package bench

import (
	"os"
	"runtime"
	"syscall"
	"time"
)

// usage returns the peak RSS (bytes) and the CPU time (user + system) of an
// exited process, from its rusage.
func usage(ps *os.ProcessState) (peakRSS int64, cpu time.Duration) {
	if ps == nil {
		return 0, 0
	}
	cpu = ps.UserTime() + ps.SystemTime()
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, cpu
	}
	peakRSS = int64(ru.Maxrss)
	if runtime.GOOS != "darwin" {
		peakRSS <<= 10 // kilobytes everywhere but macOS
	}
	return peakRSS, cpu
}
