package main

// This file holds a debugging aid: WARREN_PPROF=ADDR serves Go's profiler
// (net/http/pprof) on ADDR, which must be a loopback address, e.g.
// WARREN_PPROF=127.0.0.1:6060; then
//
//	go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=10
//	go tool pprof http://127.0.0.1:6060/debug/pprof/heap
//
// It is off unless the variable is set, has no flag, and is not for
// production: the profiler shows the process's memory (keys included) to
// whoever can reach it.

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
)

// envPprof names the loopback address to serve the profiler on.
const envPprof = "WARREN_PPROF"

// servePprof serves net/http/pprof on addr, a loopback IP address and port,
// for as long as the process lives.
func servePprof(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("%s=%q: want a loopback address and port, e.g. 127.0.0.1:6060", envPprof, addr)
	}
	l, err := net.Listen("tcp", ap.String())
	if err != nil {
		return fmt.Errorf("%s: %v", envPprof, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go http.Serve(l, mux) // lives as long as the process
	return nil
}
