package process

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procCommLen is the longest name the kernel keeps in /proc/<pid>/comm
// (TASK_COMM_LEN minus the NUL byte); longer program names are cut there.
const procCommLen = 15

// findProcesses returns the pid of every process under procRoot (normally
// "/proc") whose comm or argv[0] base name equals name, except the calling
// process itself: a reload action that signals kvsync is never intended.
// Processes that vanish while they are read are skipped. It returns an
// error when procRoot cannot be listed, never when nothing matched: an empty
// result is the caller's to judge.
func findProcesses(procRoot, name string) ([]int, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("list processes in %s: %w", procRoot, err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == self {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		if procNameMatches(dir, name) && !procZombie(dir) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// procNameMatches reports whether the process whose /proc folder is dir is
// called name, by comm (as the kernel truncates it) or by argv[0]'s base name.
func procNameMatches(dir, name string) bool {
	if comm, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil {
		c := strings.TrimSuffix(string(comm), "\n")
		if c == name || len(name) > procCommLen && c == name[:procCommLen] {
			return true
		}
	}
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil || len(cmdline) == 0 {
		// Gone, not ours to read, or a kernel thread (no argv at all).
		return false
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	return len(argv0) > 0 && filepath.Base(string(argv0)) == name
}

// procZombie reports whether the process whose /proc folder is dir has
// exited and waits to be reaped. A process whose state cannot be read is
// taken as alive.
func procZombie(dir string) bool {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	state := stat[i+2]
	return state == 'Z' || state == 'X'
}

// readPIDFile reads a pid file: one decimal pid, surrounding white space
// allowed. Errors name the file.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pidfile %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		// pid 0 or a negative pid would signal a whole process group.
		return 0, fmt.Errorf("pidfile %s: %q is not a process id", path, procClip(s, 32))
	}
	return pid, nil
}

// procClip cuts s to at most n bytes for use in a message.
func procClip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
