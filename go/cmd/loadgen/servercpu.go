package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

var serverPID = flag.Int("server-pid", 0, "a local server's process id: report its CPU seconds over the measured "+
	"window (server_cpu_s, from /proc/PID/stat), for metrics per server CPU-second")

// clockTicks is USER_HZ, the unit of /proc/PID/stat's utime and stime: 100 on every Linux architecture Go
// supports (sysconf(_SC_CLK_TCK) would need cgo).
const clockTicks = 100

// cpuSeconds is a process's user + system CPU time (all its threads), from /proc/PID/stat.
func cpuSeconds(pid int) (float64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// the command name is in parentheses and may hold spaces: the fields counted from after its ")"
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := bytes.Fields(stat[i+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	utime, err1 := strconv.ParseUint(string(fields[11]), 10, 64) // field 14 of the file
	stime, err2 := strconv.ParseUint(string(fields[12]), 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, fields[11], fields[12])
	}
	return float64(utime+stime) / clockTicks, nil
}

// cpuWindow reads a process's CPU time at the start and at the end of the measured window, each on time.
type cpuWindow struct {
	done    chan struct{}
	seconds float64
	err     error
}

func watchServerCPU(pid int, from, to time.Time) *cpuWindow {
	w := &cpuWindow{done: make(chan struct{})}
	if pid == 0 {
		close(w.done)
		return w
	}
	go func() {
		defer close(w.done)
		time.Sleep(time.Until(from))
		start, err := cpuSeconds(pid)
		if err != nil {
			w.err = err
			return
		}
		time.Sleep(time.Until(to))
		end, err := cpuSeconds(pid)
		w.seconds, w.err = end-start, err
	}()
	return w
}

// result waits for the end of the window: the server's CPU seconds in it (0 without -server-pid).
func (w *cpuWindow) result() (float64, error) {
	<-w.done
	return w.seconds, w.err
}
