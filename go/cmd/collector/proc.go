// Host metrics read from /proc: CPU utilisation, memory used and the 1-minute load average (Linux only).

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/pb"
)

// Series names sent by the /proc source.
const (
	cpuSeries  = "cpu_utilisation_percent"
	memSeries  = "memory_used_bytes"
	loadSeries = "load_average_1m"
)

// cpuTimes are the aggregate jiffies of the "cpu" line of /proc/stat.
type cpuTimes struct {
	busy, total uint64
}

// parseCPU reads the first line of /proc/stat: user nice system idle iowait irq softirq steal [guest
// guest_nice]. guest and guest_nice are already inside user and nice (proc(5)), so they are not added again;
// iowait counts as idle, as in top.
func parseCPU(r io.Reader) (cpuTimes, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && line == "" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: %w", err)
	}
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: first line %q is not the aggregate cpu line", line)
	}
	var v [8]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(fields[i+1], 10, 64); err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/stat: field %d of %q: %w", i+1, line, err)
		}
	}
	var total uint64
	for _, x := range v {
		total += x
	}
	idle := v[3] + v[4]
	return cpuTimes{busy: total - idle, total: total}, nil
}

// utilisation is the busy share of the CPU time between two samples, in percent.
func utilisation(prev, cur cpuTimes) (float64, bool) {
	if cur.total <= prev.total || cur.busy < prev.busy {
		return 0, false // no tick elapsed, or a counter went backwards (suspend, hotplug)
	}
	return 100 * float64(cur.busy-prev.busy) / float64(cur.total-prev.total), true
}

// parseMemUsed is MemTotal - MemAvailable from /proc/meminfo, in bytes: memory the kernel could not hand
// out without swapping (MemFree alone would count the page cache as used).
func parseMemUsed(r io.Reader) (float64, error) {
	var total, avail int64 = -1, -1
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		var dst *int64
		switch fields[0] {
		case "MemTotal:":
			dst = &total
		case "MemAvailable:":
			dst = &avail
		default:
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/meminfo: %q: %w", sc.Text(), err)
		}
		*dst = kb * 1024 // the "kB" of /proc/meminfo is KiB
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("/proc/meminfo: %w", err)
	}
	if total < 0 || avail < 0 {
		return 0, fmt.Errorf("/proc/meminfo: no MemTotal or MemAvailable line (Linux >= 3.14 has both)")
	}
	return float64(total - avail), nil
}

// parseLoad1 is the first field of /proc/loadavg.
func parseLoad1(r io.Reader) (float64, error) {
	var load1 float64
	if _, err := fmt.Fscan(r, &load1); err != nil {
		return 0, fmt.Errorf("/proc/loadavg: %w", err)
	}
	return load1, nil
}

// procSource samples the host. CPU utilisation needs two samples, so the first batch has none.
type procSource struct {
	root    string // usually /proc
	prevCPU *cpuTimes
}

func (p *procSource) read(name string, parse func(io.Reader) error) error {
	f, err := os.Open(filepath.Join(p.root, name))
	if err != nil {
		return err
	}
	defer f.Close()
	return parse(f)
}

func (p *procSource) next(now time.Time) (batch []*pb.Metric, injected []int, err error) {
	err = p.read("stat", func(r io.Reader) error {
		cur, err := parseCPU(r)
		if err != nil {
			return err
		}
		if p.prevCPU != nil {
			if u, ok := utilisation(*p.prevCPU, cur); ok {
				batch = append(batch, client.Metric(cpuSeries, u, now))
			}
		}
		p.prevCPU = &cur
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	err = p.read("meminfo", func(r io.Reader) error {
		used, err := parseMemUsed(r)
		batch = append(batch, client.Metric(memSeries, used, now))
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	err = p.read("loadavg", func(r io.Reader) error {
		load, err := parseLoad1(r)
		batch = append(batch, client.Metric(loadSeries, load, now))
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return batch, nil, nil
}
