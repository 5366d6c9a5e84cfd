package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/control"
	"github.com/warren-vpn/warren/dnsserver"
	"github.com/warren-vpn/warren/hostmode"
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
	limits   limitOptions
	log      *slog.Logger
	// load reads the configs again, for a reload; nil when they cannot be
	// (the demo's is made in memory).
	load func() ([]*config.Config, error)
	// api are the control API's listeners; apiToken is what clients of a
	// TCP one must send.
	api      []apiSpec
	apiToken string
	// host, if set, is host mode: the tunnel runs on its kernel TUN, its
	// firewall and routes follow the state, and the front-ends dial on the
	// host (which its routes and firewall send only through the tunnel).
	host *hostmode.Host
	// lockdown blocks in Disconnected too (host mode's firewall).
	lockdown bool
}

// limitOptions are the front-ends' limits and who may use them. Zero
// fields mean the packages' defaults; a negative number, none (no limit,
// no timeout, no cache).
type limitOptions struct {
	maxFlows, maxFlowsPerClient int
	allowFrom                   []netip.Prefix // empty: every client
	// allowUnauthenticatedRemote lets a proxy without credentials listen
	// beyond loopback.
	allowUnauthenticatedRemote     bool
	handshakeTimeout               time.Duration
	udpIdleTimeout                 time.Duration
	dnsCacheEntries, dnsCacheBytes int
	dnsMaxInFlight                 int
}

// listenSpec is one proxy listener.
type listenSpec struct {
	addr  string
	creds *proxy.Credentials // nil: no authentication
	// section names where a wireproxy file asks for it, for messages; ""
	// for a flag's.
	section string
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
	machine     *state.Machine
	tunnel      *netstack.Tunnel
	closeTunnel func() error // the tunnel's, or host mode's Close
	gate        *proxy.Gate
	admission   *proxy.Admission // shared by every front-end
	resolver    *dnsserver.Resolver
	services    []*service
	// The addresses of the first SOCKS5 and HTTP proxies and of the DNS
	// server, or nil: for messages and tests.
	socks5Addr, httpAddr, dnsAddr net.Addr
	log                           *slog.Logger

	load      func() ([]*config.Config, error)
	frontends config.Frontends // the first config's listener sections, as started
	reloadMu  sync.Mutex       // one reload at a time

	metrics   *control.Metrics
	listening []control.Listener // every listener, for the API's status
	apiAddrs  []string           // the API's listeners, as network:addr
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

// api opens one of the API's listeners.
func (ls *listeners) api(spec apiSpec) (net.Listener, error) {
	if spec.network == "tcp" {
		return ls.tcp(spec.addr)
	}
	l, err := control.ListenUnix(spec.addr)
	if err == nil {
		ls.closers = append(ls.closers, l.Close)
	}
	return l, err
}

// openedAPI is an API listener, open.
type openedAPI struct {
	spec apiSpec
	l    net.Listener
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
	var tunnel *netstack.Tunnel
	var dialer proxy.Dialer
	var closeTunnel func() error
	if o.host != nil {
		tunnel, dialer, closeTunnel = o.host.Tunnel, hostmode.Dialer{}, o.host.Close
	} else {
		tunnel = netstack.NewTunnel(netstack.TunnelOptions{Logger: o.log, ProbeTargets: o.probes})
		dialer, closeTunnel = tunnel, tunnel.Close
	}
	defer func() {
		if err != nil {
			closeTunnel()
		}
	}()
	a = &app{log: o.log, tunnel: tunnel, closeTunnel: closeTunnel, load: o.load, frontends: o.configs[0].Frontends}
	a.gate = proxy.NewGate(dialer)
	a.gate.Hold = o.hold
	a.metrics = control.NewMetrics()
	a.gate.Observe = a.metrics.Flow
	a.resolver = dnsserver.NewResolver(a.gate, a.tunnel.DNS)
	lim := o.limits
	a.resolver.CacheEntries, a.resolver.CacheBytes, a.resolver.MaxInFlight = lim.dnsCacheEntries, lim.dnsCacheBytes, lim.dnsMaxInFlight
	a.admission = &proxy.Admission{
		AllowFrom:         lim.allowFrom,
		MaxFlows:          lim.maxFlows,
		MaxFlowsPerClient: lim.maxFlowsPerClient,
		Logger:            o.log,
	}

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
		if err := checkRemoteAuth("SOCKS5 proxy", "socks5", s, l.Addr(), lim.allowUnauthenticatedRemote); err != nil {
			return nil, err
		}
		socks = append(socks, opened{s, l})
	}
	for _, s := range o.http {
		l, err := ls.tcp(s.addr)
		if err != nil {
			return nil, fmt.Errorf("HTTP proxy: %w", err)
		}
		if err := checkRemoteAuth("HTTP proxy", "http", s, l.Addr(), lim.allowUnauthenticatedRemote); err != nil {
			return nil, err
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

	var apis []openedAPI
	for _, spec := range o.api {
		l, err := ls.api(spec)
		switch {
		case err != nil && spec.soft:
			o.log.Warn("control API not started at its default socket; choose one with --api unix:PATH, or --api off", "addr", spec.addr, "err", err)
		case err != nil:
			return nil, fmt.Errorf("control API: %w", err)
		default:
			apis = append(apis, openedAPI{spec, l})
		}
	}

	var st state.Tunnel = a.tunnel
	var policy state.Policy = a.gate
	if o.host != nil {
		// The firewall first: it blocks before the gate cuts, and allows
		// before the gate opens.
		st, policy = o.host, policies{o.host, a.gate}
	}
	a.machine, err = state.New(state.Options{
		Tunnel:   st,
		Policy:   policy,
		Configs:  o.configs,
		Lockdown: o.lockdown,
		Logger:   o.log.With("component", "tunnel"),
	})
	if err != nil {
		return nil, err
	}

	// Nothing can fail from here on: start serving.
	for _, s := range socks {
		srv := &proxy.SOCKS5{Gate: a.gate, Resolver: a.resolver, Credentials: s.spec.creds, Logger: o.log,
			HandshakeTimeout: lim.handshakeTimeout, UDPIdleTimeout: lim.udpIdleTimeout, Admission: a.admission}
		svc := a.add("SOCKS5 proxy on "+s.l.Addr().String(), srv.Shutdown)
		svc.start(func() error { return srv.Serve(s.l) })
		if a.socks5Addr == nil {
			a.socks5Addr = s.l.Addr()
		}
		a.listening = append(a.listening, control.Listener{Name: "socks5", Addr: s.l.Addr().String()})
		o.log.Info("SOCKS5 proxy listening", "addr", s.l.Addr().String(), "auth", s.spec.creds != nil)
	}
	for _, s := range https {
		srv := &proxy.HTTP{Gate: a.gate, Resolver: a.resolver, Credentials: s.spec.creds, Logger: o.log,
			HandshakeTimeout: lim.handshakeTimeout, Admission: a.admission}
		svc := a.add("HTTP proxy on "+s.l.Addr().String(), srv.Shutdown)
		svc.start(func() error { return srv.Serve(s.l) })
		if a.httpAddr == nil {
			a.httpAddr = s.l.Addr()
		}
		a.listening = append(a.listening, control.Listener{Name: "http", Addr: s.l.Addr().String()})
		o.log.Info("HTTP proxy listening", "addr", s.l.Addr().String(), "auth", s.spec.creds != nil)
	}
	if dnsUDP != nil {
		a.startDNS(dnsUDP, dnsTCP)
		a.dnsAddr = dnsUDP.LocalAddr()
		a.listening = append(a.listening, control.Listener{Name: "dns", Addr: a.dnsAddr.String()})
		o.log.Info("DNS server listening", "addr", dnsUDP.LocalAddr().String(), "tcp", true)
	}
	for _, f := range fwds {
		fwd := &proxy.Forward{Gate: a.gate, Resolver: a.resolver, Target: f.spec.target, Logger: o.log,
			UDPIdleTimeout: lim.udpIdleTimeout, Admission: a.admission}
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
		a.listening = append(a.listening, control.Listener{Name: "forward", Addr: f.spec.local + "=" + f.spec.target})
	}
	for _, e := range o.exposes {
		ex := &proxy.Expose{Gate: a.gate, Port: e.port, Target: e.target, Logger: o.log, Admission: a.admission}
		ctx, cancel := context.WithCancel(context.Background())
		svc := a.add(fmt.Sprintf("expose %d=%s", e.port, e.target), func(context.Context) error {
			cancel()
			return nil
		})
		svc.start(func() error { return ex.Run(ctx) })
		o.log.Info("exposing a local service in the tunnel", "port", e.port, "to", e.target)
		a.listening = append(a.listening, control.Listener{Name: "expose", Addr: fmt.Sprintf("%d=%s", e.port, e.target)})
	}
	for _, api := range apis {
		a.listening = append(a.listening, control.Listener{Name: "api", Addr: api.spec.network + ":" + api.l.Addr().String()})
		a.apiAddrs = append(a.apiAddrs, api.spec.network+":"+api.l.Addr().String())
	}
	a.startAPI(apis, o.apiToken)
	warnNoDNS(o.configs, o.log)
	return a, nil
}

// checkRemoteAuth refuses a proxy listener (spec, bound at bound) that asks
// for no credentials and listens beyond loopback (on every address, say), where
// anyone who can reach it could use the tunnel; unless allow
// (--allow-unauthenticated-remote). kind and flag name the proxy in the
// message ("SOCKS5 proxy", "socks5"), which says how to fix it.
func checkRemoteAuth(kind, flag string, spec listenSpec, bound net.Addr, allow bool) error {
	if spec.creds != nil || allow || isLoopback(bound) {
		return nil
	}
	how := fmt.Sprintf("set --%s-user with --%s-password-file (or %s)", flag, flag, envName(flag+"-password"))
	if spec.section != "" {
		how = fmt.Sprintf("add Username and Password to %s, or %s", spec.section, how)
	}
	return fmt.Errorf("%s on %s: it has no authentication and listens beyond loopback, so anyone who can reach it could use the tunnel. "+
		"Give it a user and password (%s), or listen on 127.0.0.1; or, if only trusted clients can reach it, give --allow-unauthenticated-remote (and consider --allow-from)",
		kind, spec.addr, how)
}

// isLoopback reports whether a listener's address is a loopback address.
func isLoopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// reload reads the configs again and, if they are all valid, hands them
// to the machine, which reconnects with them if it is connecting or
// connected; the listeners stay open. If any is invalid, nothing changes
// and the error lists every problem. It returns the snapshot the reload
// led to.
func (a *app) reload(ctx context.Context) (state.Snapshot, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if a.load == nil {
		return a.machine.Current(), errors.New("this warren's config is made in memory and cannot be reloaded")
	}
	configs, err := a.load()
	if err != nil {
		a.log.Error("reload: the new config is rejected; the tunnel is left as it was", "err", err)
		return a.machine.Current(), err
	}
	if !reflect.DeepEqual(configs[0].Frontends, a.frontends) {
		a.log.Warn("reload: the config's listener sections changed; listeners are not reopened by a reload, restart warren to apply them", "config", configs[0].Path)
	}
	warnNoDNS(configs, a.log)
	s, err := a.machine.Reload(ctx, configs)
	if err != nil {
		return s, err
	}
	a.log.Info("reload: config re-read", "configs", len(configs), "state", s.String())
	return s, nil
}

// warnNoDNS warns about each config that names no DNS server.
func warnNoDNS(configs []*config.Config, log *slog.Logger) {
	for _, c := range configs {
		if len(c.Interface.DNS) == 0 {
			log.Warn("the config has no DNS server: while it is in use, names cannot be resolved through the tunnel, and warren never asks the host's resolver; connect by IP address", "config", c.Path)
		}
	}
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

// startAPI serves the control API on its listeners, and keeps the metrics
// of the machine's transitions.
func (a *app) startAPI(apis []openedAPI, token string) {
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		a.metrics.Watch(ctx, a.machine)
	}()
	a.metrics.SetStats(a.tunnelStats, a.gate.Flows)
	srv := &control.Server{
		Machine:   a.machine,
		Stats:     a.tunnelStats,
		Flows:     a.gate.Flows,
		Listeners: func() []control.Listener { return a.listening },
		Metrics:   a.metrics,
		Logger:    a.log,
	}
	if a.load != nil {
		srv.Reload = a.reload
	}
	svc := a.add("control API", func(ctx context.Context) error {
		cancel()
		<-watched
		return srv.Shutdown(ctx)
	})
	for _, api := range apis {
		tok := token
		if api.spec.network != "tcp" {
			tok = "" // the unix socket is guarded by its mode
		}
		svc.start(func() error { return srv.Serve(api.l, tok) })
		a.log.Info("control API listening", "addr", api.spec.network+":"+api.l.Addr().String())
	}
}

// tunnelStats is what the tunnel up now has done, for the API.
func (a *app) tunnelStats() control.TunnelStats {
	st := a.tunnel.Stats()
	return control.TunnelStats{LastHandshake: st.LastHandshake, RxBytes: st.RxBytes, TxBytes: st.TxBytes}
}

// startDNS serves the DNS server on pc and l, answering through the shared
// resolver.
func (a *app) startDNS(pc net.PacketConn, l net.Listener) {
	srv := &dnsserver.Server{Resolver: a.resolver, Logger: a.log, Observe: func(rcode int, cached bool) {
		a.metrics.DNSQuery(dns.RcodeToString[rcode], cached)
	}}
	if len(a.admission.AllowFrom) > 0 {
		srv.Allow = func(client net.Addr) bool {
			if a.admission.Allowed(proxy.ClientIP(client)) {
				return true
			}
			a.metrics.Flow("dns", proxy.FlowOutcome(proxy.ErrNotAllowed))
			return false
		}
	}
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
				!errors.Is(err, dnsserver.ErrServerClosed) && !errors.Is(err, control.ErrServerClosed) &&
				!errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
			}
		}
	}
	if err := a.machine.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("disconnect: %w", err))
	}
	if err := a.closeTunnel(); err != nil {
		errs = append(errs, fmt.Errorf("close the tunnel: %w", err))
	}
	return errors.Join(errs...)
}

// policies applies several policies in order, all of them even if one
// fails.
type policies []state.Policy

func (ps policies) Apply(s state.Snapshot) error {
	var errs []error
	for _, p := range ps {
		if err := p.Apply(s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
