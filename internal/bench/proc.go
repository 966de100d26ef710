package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// status is what /proc/PID/status says of a process's memory.
type status struct {
	rss, hwm int64 // bytes: resident now, and its peak
}

// procStatus reads VmRSS and VmHWM of a running process (Linux only).
func procStatus(pid int) (status, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return status{}, fmt.Errorf("read process status: %w", err)
	}
	defer f.Close()
	var st status
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			st.rss = kb << 10
		case "VmHWM":
			st.hwm = kb << 10
		}
	}
	return st, sc.Err()
}

// procCPU is the CPU time a running process used so far: the sum over its
// threads of /proc/PID/task/TID/schedstat (nanoseconds on a CPU), which is
// finer than the 10 ms ticks of /proc/PID/stat (Linux only).
func procCPU(pid int) (time.Duration, error) {
	if runtime.GOOS != "linux" {
		return 0, fmt.Errorf("CPU time of a running process: not supported on %s", runtime.GOOS)
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("read threads of process %d: %v", pid, err)
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended
		}
		fields := strings.Fields(string(b))
		if len(fields) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		total += time.Duration(ns)
	}
	return total, nil
}
