package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/dnsserver"
	"github.com/warren-vpn/warren/netstack"
	"github.com/warren-vpn/warren/proxy"
	"github.com/warren-vpn/warren/state"
)

// appOptions is what an app is made of.
type appOptions struct {
	configs  []*config.Config // to try in turn
	socks5   []listenSpec     // SOCKS5 proxies
	http     []listenSpec     // HTTP proxies
	dns      string           // listen address of the DNS server; "" for none
	dnsSoft  bool             // dns is the default: if it is taken, warn and go on
	forwards []forwardSpec
	exposes  []exposeSpec
	probes   []netip.Addr  // extra verification targets
	hold     time.Duration // how long a new flow may wait while connecting
	log      *slog.Logger
}

// listenSpec is one proxy listener.
type listenSpec struct {
	addr  string
	creds *proxy.Credentials // nil: no authentication
}

// forwardSpec is one --forward (or [TCPClientTunnel]).
type forwardSpec struct {
	local, target string
	tcp, udp      bool
}

// exposeSpec is one --expose (or [TCPServerTunnel]).
type exposeSpec struct {
	port   uint16
	target string
}

// app is warren in proxy mode, wired together: the state machine drives the
// netstack tunnel and opens and closes the gate; every front-end dials
// through the gate and resolves names through the tunnel's DNS, with one
// shared resolver and cache.
type app struct {
	machine  *state.Machine
	tunnel   *netstack.Tunnel
	gate     *proxy.Gate
	resolver *dnsserver.Resolver
	services []*service
	// The addresses of the first SOCKS5 and HTTP proxies and of the DNS
	// server, or nil: for messages and tests.
	socks5Addr, httpAddr, dnsAddr net.Addr
	log                           *slog.Logger
}

// service is one running front-end.
type service struct {
	name     string // for messages: "SOCKS5 proxy on 127.0.0.1:1080"
	stop     func(context.Context) error
	finished chan error // what its serving goroutines returned
	serving  int        // how many
}

// start runs f in a goroutine as one of s's servers.
func (s *service) start(f func() error) {
	s.serving++
	go func() { s.finished <- f() }()
}

// listeners opens a service's sockets before anything starts, so that a
// port in use fails the start with nothing left running.
type listeners struct {
	closers []func() error
}

func (ls *listeners) tcp(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		ls.closers = append(ls.closers, l.Close)
	}
	return l, err
}

func (ls *listeners) udp(addr string) (net.PacketConn, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err == nil {
		ls.closers = append(ls.closers, pc.Close)
	}
	return pc, err
}

func (ls *listeners) closeAll() {
	for _, c := range ls.closers {
		c()
	}
}

// startApp opens the listeners and starts the machine, Disconnected. On
// error, nothing is left running.
func startApp(o appOptions) (a *app, err error) {
	var ls listeners
	defer func() {
		if err != nil {
			ls.closeAll()
		}
	}()
	tunnel := netstack.NewTunnel(netstack.TunnelOptions{Logger: o.log, ProbeTargets: o.probes})
	defer func() {
		if err != nil {
			tunnel.Close()
		}
	}()
	a = &app{log: o.log, tunnel: tunnel}
	a.gate = proxy.NewGate(a.tunnel)
	a.gate.Hold = o.hold
	a.resolver = dnsserver.NewResolver(a.gate, a.tunnel.DNS)

	// Open every socket first.
	type opened struct {
		spec listenSpec
		l    net.Listener
	}
	var socks, https []opened
	for _, s := range o.socks5 {
		l, err := ls.tcp(s.addr)
		if err != nil {
			return nil, fmt.Errorf("SOCKS5 proxy: %w", err)
		}
		socks = append(socks, opened{s, l})
	}
	for _, s := range o.http {
		l, err := ls.tcp(s.addr)
		if err != nil {
			return nil, fmt.Errorf("HTTP proxy: %w", err)
		}
		https = append(https, opened{s, l})
	}
	var dnsUDP net.PacketConn
	var dnsTCP net.Listener
	if o.dns != "" {
		dnsUDP, dnsTCP, err = listenDNS(&ls, o.dns)
		switch {
		case err != nil && o.dnsSoft && errors.Is(err, syscall.EADDRINUSE):
			o.log.Warn("DNS server not started: its default address is in use (an mDNS responder uses port 5353); choose one with --dns ADDR, or --dns off", "addr", o.dns, "err", err)
			dnsUDP, dnsTCP = nil, nil
		case err != nil:
			return nil, fmt.Errorf("DNS server: %w", err)
		}
	}
	type openedForward struct {
		spec forwardSpec
		l    net.Listener
		pc   net.PacketConn
	}
	var fwds []openedForward
	for _, f := range o.forwards {
		of := openedForward{spec: f}
		if f.tcp {
			if of.l, err = ls.tcp(f.local); err != nil {
				return nil, fmt.Errorf("forward %s=%s: %w", f.local, f.target, err)
			}
		}
		if f.udp {
			if of.pc, err = ls.udp(f.local); err != nil {
				return nil, fmt.Errorf("forward %s=%s: %w", f.local, f.target, err)
			}
		}
		fwds = append(fwds, of)
	}

	a.machine, err = state.New(state.Options{
		Tunnel:  a.tunnel,
		Policy:  a.gate,
		Configs: o.configs,
		Logger:  o.log.With("component", "tunnel"),
	})
	if err != nil {
		return nil, err
	}

	// Nothing can fail from here on: start serving.
	for _, s := range socks {
		srv := &proxy.SOCKS5{Gate: a.gate, Resolver: a.resolver, Credentials: s.spec.creds, Logger: o.log}
		svc := a.add("SOCKS5 proxy on "+s.l.Addr().String(), srv.Shutdown)
		svc.start(func() error { return srv.Serve(s.l) })
		if a.socks5Addr == nil {
			a.socks5Addr = s.l.Addr()
		}
		o.log.Info("SOCKS5 proxy listening", "addr", s.l.Addr().String(), "auth", s.spec.creds != nil)
	}
	for _, s := range https {
		srv := &proxy.HTTP{Gate: a.gate, Resolver: a.resolver, Credentials: s.spec.creds, Logger: o.log}
		svc := a.add("HTTP proxy on "+s.l.Addr().String(), srv.Shutdown)
		svc.start(func() error { return srv.Serve(s.l) })
		if a.httpAddr == nil {
			a.httpAddr = s.l.Addr()
		}
		o.log.Info("HTTP proxy listening", "addr", s.l.Addr().String(), "auth", s.spec.creds != nil)
	}
	if dnsUDP != nil {
		a.startDNS(dnsUDP, dnsTCP)
		a.dnsAddr = dnsUDP.LocalAddr()
		o.log.Info("DNS server listening", "addr", dnsUDP.LocalAddr().String(), "tcp", true)
	}
	for _, f := range fwds {
		fwd := &proxy.Forward{Gate: a.gate, Resolver: a.resolver, Target: f.spec.target, Logger: o.log}
		svc := a.add(fmt.Sprintf("forward %s=%s", f.spec.local, f.spec.target), fwd.Shutdown)
		var protos []string
		if f.l != nil {
			svc.start(func() error { return fwd.ServeTCP(f.l) })
			protos = append(protos, "tcp")
		}
		if f.pc != nil {
			svc.start(func() error { return fwd.ServeUDP(f.pc) })
			protos = append(protos, "udp")
		}
		o.log.Info("forwarding into the tunnel", "from", f.spec.local, "to", f.spec.target, "protocols", protos)
	}
	for _, e := range o.exposes {
		ex := &proxy.Expose{Gate: a.gate, Port: e.port, Target: e.target, Logger: o.log}
		ctx, cancel := context.WithCancel(context.Background())
		svc := a.add(fmt.Sprintf("expose %d=%s", e.port, e.target), func(context.Context) error {
			cancel()
			return nil
		})
		svc.start(func() error { return ex.Run(ctx) })
		o.log.Info("exposing a local service in the tunnel", "port", e.port, "to", e.target)
	}
	for _, c := range o.configs {
		if len(c.Interface.DNS) == 0 {
			o.log.Warn("the config has no DNS server: while it is in use, names cannot be resolved through the tunnel, and warren never asks the host's resolver; connect by IP address", "config", c.Path)
		}
	}
	return a, nil
}

// listenDNS opens the DNS server's UDP socket and TCP listener on addr. With
// port 0, both get the same free port.
func listenDNS(ls *listeners, addr string) (net.PacketConn, net.Listener, error) {
	pc, err := ls.udp(addr)
	if err != nil {
		return nil, nil, err
	}
	tcpAddr := addr
	if _, port, _ := net.SplitHostPort(addr); port == "0" {
		tcpAddr = pc.LocalAddr().String()
	}
	l, err := ls.tcp(tcpAddr)
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	return pc, l, nil
}

// startDNS serves the DNS server on pc and l, answering through the shared
// resolver.
func (a *app) startDNS(pc net.PacketConn, l net.Listener) {
	srv := &dnsserver.Server{Resolver: a.resolver, Logger: a.log}
	svc := a.add("DNS server on "+pc.LocalAddr().String(), srv.Shutdown)
	svc.start(func() error { return srv.Serve(pc, l) })
}

func (a *app) add(name string, stop func(context.Context) error) *service {
	s := &service{name: name, stop: stop, finished: make(chan error, 2)}
	a.services = append(a.services, s)
	return s
}

// shutdown stops the app in order: the listeners and front-ends (closing
// their flows), then the tunnel and its stack.
func (a *app) shutdown(ctx context.Context) error {
	var errs []error
	for _, s := range a.services {
		if err := s.stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", s.name, err))
		}
	}
	for _, s := range a.services {
		for range s.serving {
			if err := <-s.finished; err != nil && !errors.Is(err, proxy.ErrServerClosed) &&
				!errors.Is(err, dnsserver.ErrServerClosed) && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
			}
		}
	}
	if err := a.machine.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("disconnect: %w", err))
	}
	a.tunnel.Close()
	return errors.Join(errs...)
}
