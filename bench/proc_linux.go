package main

// What the benchmark reads of processes and of the machine, from /proc.

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of /proc/PID/stat's times (USER_HZ, 100 on every
// Linux ABI).
const userHZ = 100

// procCPU is the CPU time (user and system, all threads, living and ended)
// a process has used, from /proc/PID/stat.
func procCPU(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: bad times %q %q", pid, f[11], f[12])
	}
	tick := time.Second / userHZ
	return time.Duration(ut) * tick, time.Duration(st) * tick, nil
}

// memInfo is a process's memory, from /proc/PID/status, in bytes.
type memInfo struct {
	rss  int64 // VmRSS: resident now
	peak int64 // VmHWM: the most resident since start or since resetPeak
	anon int64 // RssAnon: resident anonymous memory (heap, stacks)
	file int64 // RssFile: resident pages mapped from files, mostly the program's binary
}

// procMem reads a process's memInfo.
func procMem(pid int) (memInfo, error) {
	var m memInfo
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	fields := map[string]*int64{"VmRSS": &m.rss, "VmHWM": &m.peak, "RssAnon": &m.anon, "RssFile": &m.file}
	sc := bufio.NewScanner(f)
	found := 0
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		dst := fields[k]
		if !ok || dst == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return m, fmt.Errorf("/proc/%d/status: %s: %q", pid, k, v)
		}
		*dst = kb << 10
		found++
	}
	if found != len(fields) {
		return m, fmt.Errorf("/proc/%d/status: not all of VmRSS, VmHWM, RssAnon and RssFile", pid)
	}
	return m, sc.Err()
}

// resetPeak sets a process's VmHWM back to its VmRSS.
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// netSNMP reads /proc/PID/net/snmp: counters of the network namespace pid
// is in.
func netSNMP(pid int) (tcpRetrans, udpRcvbufErrors int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		return 0, 0, err
	}
	// Each protocol has two lines: the counters' names, then their values.
	names, values := map[string][]string{}, map[string][]string{}
	for line := range strings.Lines(string(b)) {
		proto, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if _, seen := names[proto]; !seen {
			names[proto] = strings.Fields(rest)
		} else {
			values[proto] = strings.Fields(rest)
		}
	}
	get := func(proto, name string) (int64, error) {
		for i, n := range names[proto] {
			if n == name && i < len(values[proto]) {
				return strconv.ParseInt(values[proto][i], 10, 64)
			}
		}
		return 0, fmt.Errorf("/proc/%d/net/snmp: no %s %s", pid, proto, name)
	}
	if tcpRetrans, err = get("Tcp", "RetransSegs"); err != nil {
		return 0, 0, err
	}
	udpRcvbufErrors, err = get("Udp", "RcvbufErrors")
	return tcpRetrans, udpRcvbufErrors, err
}

// selfCPU is this process's CPU time, user and system.
func selfCPU() (user, sys time.Duration) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// raiseNoFile raises this process's RLIMIT_NOFILE to at least n (the hard
// limit too, if it is lower: that needs CAP_SYS_RESOURCE); the processes it
// starts inherit it (Go gives a child the limit it found only when the
// program has not set one itself).
func raiseNoFile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= n {
		return nil
	}
	want := lim
	want.Cur, want.Max = n, max(lim.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE is %d (hard %d) and cannot be raised to the %d that -conns needs: %w", lim.Cur, lim.Max, n, err)
	}
	return nil
}

// describeMachine fills in what /proc says of the machine.
func describeMachine(m *machine) {
	m.nproc = runtime.NumCPU()
	m.goVersion = runtime.Version()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		cores := map[string]bool{} // physical id and core id
		var phys string
		for line := range strings.Lines(string(b)) {
			k, v, _ := strings.Cut(line, ":")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch k {
			case "model name":
				m.cpuModel = v
			case "physical id":
				phys = v
			case "core id":
				cores[phys+"/"+v] = true
			}
		}
		m.cores = len(cores)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				m.memTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
}

// loadAverage is /proc/loadavg's first three figures.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
