//go:build linux

// Package hostmode is warren's host-mode backend: the same state machine
// as proxy mode, driving WireGuard on a kernel TUN for a whole network
// namespace (a machine, or a pod that shares its namespace with warren),
// with wg-quick's policy routing and an nftables kill switch.
//
// Host is both halves the state machine needs: Tunnel (a state.Tunnel: the
// attempts, verification and liveness of package netstack, on a kernel TUN)
// and the Policy it applies at every transition (the firewall, then the
// routes). The firewall is what keeps the namespace closed; the routes only
// steer traffic into the tunnel once it is up:
//
//   - Disconnected: no table and no routes (with lockdown: blocked, as in
//     Error).
//   - Connecting: blocked, but for warren's own marked socket: UDP to the
//     endpoints of the attempt, and DNS to resolve their names.
//   - Connected: the TUN too, DNS only to the tunnel's DNS servers; default
//     routes in warren's table.
//   - Disconnecting, Error: blocked; no routes.
//
// firewall.go says exactly what passes in each case. If warren dies, the
// table stays and the namespace stays closed; with lockdown, Close leaves it
// too. Down (warren down) and the next New remove what is left.
//
// Two things of the namespace beyond warren's own are looked at (sysctl.go):
// Host sets net.ipv4.conf.all.src_valid_mark, as wg-quick does, so that
// strict reverse-path filtering lets the endpoint's replies in; and where
// IPv6 is disabled, the tunnel carries IPv4 alone.
package hostmode

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netns"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/netstack"
	"github.com/warren-vpn/warren/state"
)

// DefaultTUN is the TUN's name when Options gives none.
const DefaultTUN = "warren0"

// Options configure a Host.
type Options struct {
	TUN      string // the TUN's name; "" means DefaultTUN
	Mark     uint32 // fwmark of warren's sockets; 0 means DefaultMark
	Table    int    // routing table; 0 means DefaultTable
	Priority int    // routing rules' priority; 0 means DefaultPriority
	// AllowLAN lets the private address ranges through in every state.
	AllowLAN bool
	// Lockdown is the state machine's lockdown at the start (Apply follows
	// the snapshots' from then on). With lockdown, Close leaves the firewall
	// table in, blocking as in Disconnected: the namespace stays closed
	// after warren stops, until Down or the next New.
	Lockdown bool
	// ProbeTargets are passed to the tunnel (see netstack.TunnelOptions).
	ProbeTargets []netip.Addr
	// ResolvConf, if set, is a resolv.conf file to point at DNSServer
	// (warren's own DNS server, on port 53) in every state but
	// Disconnected, which restores the original. Failing to change it is
	// logged, not a failure of the policy: the firewall blocks DNS outside
	// the tunnel either way.
	ResolvConf string
	DNSServer  netip.Addr
	// BootstrapDNS are the DNS servers, outside the tunnel, that resolve
	// the endpoints' host names. None means the nameservers of the host's
	// resolv.conf as it was before warren (ResolvConf's backup while
	// warren manages it), but for DNSServer.
	BootstrapDNS []netip.AddrPort
	Logger       *slog.Logger
}

// Host is host mode: a state.Tunnel and a state.Policy over one kernel TUN.
type Host struct {
	*netstack.Tunnel
	opts Options
	log  *slog.Logger
	fw   *Firewall
	rt   *Routing
	rc   *resolvConf // or nil

	// mu guards the fields below.
	mu        sync.Mutex
	cfg       *config.Config   // the config of the latest attempt
	endpoints []netip.AddrPort // its resolved endpoints
	rules     Ruleset          // the ruleset applied last
	snap      state.Snapshot   // the snapshot applied last
	lockdown  bool             // the lockdown of snap (Options.Lockdown before the first)
	tun       *kernelTUN       // the latest attempt's TUN
	// noIPv6: IPv6 is off on the latest attempt's TUN (before the first,
	// for the namespace's new links); the tunnel carries IPv4 alone.
	noIPv6       bool
	warnedIPv6   bool // the warning that IPv6 is off was logged
	srcValidMark bool // setting net.ipv4.conf.all.src_valid_mark was tried
}

var (
	_ state.Tunnel = (*Host)(nil)
	_ state.Policy = (*Host)(nil)
)

// New prepares host mode in the calling process's network namespace: it
// removes what a warren that died may have left (its routes, rules, TUN
// and resolv.conf; its firewall table is replaced by the first Apply).
// The routing rules come with the first state that wants the tunnel.
func New(opts Options) (*Host, error) {
	if opts.TUN == "" {
		opts.TUN = DefaultTUN
	}
	if opts.Mark == 0 {
		opts.Mark = DefaultMark
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Host{opts: opts, log: opts.Logger.With("component", "hostmode"), lockdown: opts.Lockdown}
	h.noIPv6, _ = ipv6Off("")
	fw, err := NewFirewall(-1)
	if err != nil {
		return nil, fmt.Errorf("hostmode: firewall: %w", err)
	}
	h.fw = fw
	rt, err := NewRouting(RoutingOptions{NetNS: netns.None(), Table: opts.Table, Mark: opts.Mark, Priority: opts.Priority})
	if err != nil {
		return nil, fmt.Errorf("hostmode: routing: %w", err)
	}
	h.rt = rt
	if err := rt.Cleanup(opts.TUN); err != nil {
		rt.Close()
		return nil, fmt.Errorf("hostmode: remove what an earlier warren left: %w", err)
	}
	if opts.ResolvConf != "" {
		h.rc = &resolvConf{path: opts.ResolvConf, server: opts.DNSServer}
		if _, err := h.rc.restore(); err != nil { // what a warren that died left
			rt.Close()
			return nil, fmt.Errorf("hostmode: %w", err)
		}
	}
	h.Tunnel = netstack.NewTunnel(netstack.TunnelOptions{
		Logger:       opts.Logger,
		Resolver:     &endpointResolver{mark: opts.Mark, bootstrap: opts.BootstrapDNS, resolvConf: opts.ResolvConf, own: opts.DNSServer},
		ProbeTargets: opts.ProbeTargets,
		Mark:         opts.Mark,
		NewTUN:       h.newTUN,
		OnEndpoints:  h.onEndpoints,
	})
	return h, nil
}

// newTUN creates an attempt's TUN and gives it the config's addresses: the
// IPv4 ones alone if IPv6 is off on it.
func (h *Host) newTUN(cfg *config.Config) (netstack.HostTUN, error) {
	t, err := createTUN(h.opts.TUN, cfg.Interface.MTU)
	if err != nil {
		return nil, err
	}
	addrs := cfg.Interface.Addresses
	noIPv6, why := ipv6Off(h.opts.TUN)
	if noIPv6 {
		addrs = slices.DeleteFunc(slices.Clone(addrs), func(p netip.Prefix) bool { return p.Addr().Is6() })
		if len(addrs) == 0 {
			t.Close()
			return nil, &netstack.CauseError{Cause: state.CauseTunnelDevice, Err: fmt.Errorf(
				"the config's addresses are all IPv6, and IPv6 is off in this network namespace (%s): give the interface an IPv4 address too, or enable IPv6", why)}
		}
	}
	t.setSources(addrs)
	if err := h.rt.SetupLink(h.opts.TUN, addrs, cfg.Interface.MTU); err != nil {
		t.Close()
		return nil, &netstack.CauseError{Cause: state.CauseRouting, Err: fmt.Errorf("set up %s: %w", h.opts.TUN, err)}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tun = t
	h.noIPv6 = noIPv6
	if address, routes := configIPv6(cfg); noIPv6 && !h.warnedIPv6 && (address || routes) {
		h.warnedIPv6 = true
		h.log.Warn("IPv6 is off in this network namespace: the tunnel carries IPv4 alone, without the config's IPv6 addresses and routes; the kill switch blocks IPv6 all the same",
			"why", why)
	}
	return t, nil
}

// onEndpoints lets the attempt's endpoints through the firewall before
// anything is sent to them.
func (h *Host) onEndpoints(cfg *config.Config, endpoints []netip.AddrPort) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.snap.State != state.Connecting {
		return nil // a stale attempt: the policy of the state it is in holds
	}
	h.cfg = cfg
	h.endpoints = slices.DeleteFunc(slices.Clone(endpoints), func(a netip.AddrPort) bool { return !a.IsValid() })
	r := h.rules
	r.Endpoints = h.endpoints
	if err := h.fw.Apply(r); err != nil {
		return &netstack.CauseError{Cause: state.CauseFirewall, Err: err}
	}
	h.rules = r
	return nil
}

// Apply sets the firewall and the routes for s: the firewall first, so
// that traffic is blocked before routes are removed and allowed before
// they are added.
func (h *Host) Apply(s state.Snapshot) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snap = s
	h.lockdown = s.Lockdown
	r := Ruleset{Block: true, TUN: h.opts.TUN, Mark: h.opts.Mark, AllowLAN: h.opts.AllowLAN}
	var routes []netip.Prefix
	switch s.State {
	case state.Disconnected:
		r.Block = s.Lockdown
	case state.Connecting:
		r.ResolveEndpoint = true
		// This attempt's endpoints come with onEndpoints; until then the
		// last ones stay allowed, which is no wider than before.
		r.Endpoints = h.endpoints
	case state.Connected:
		r.Connected = true
		r.Endpoints = h.endpoints
		if h.cfg != nil {
			r.TunnelDNS = h.cfg.Interface.DNS
			r.TunnelIPv6 = carriesIPv6(h.cfg) && !h.noIPv6
			for _, p := range h.cfg.Peers {
				for _, pfx := range p.AllowedIPs {
					if pfx.Addr().Is4() || !h.noIPv6 {
						routes = append(routes, pfx)
					}
				}
			}
		}
	}
	var errs []error
	if err := h.fw.Apply(r); err != nil {
		errs = append(errs, fmt.Errorf("firewall: %w", err))
	} else {
		h.rules = r
	}
	if s.State != state.Connected || len(errs) > 0 {
		routes = nil
	}
	if err := h.rt.SetRoutes(h.opts.TUN, routes); err != nil && s.State == state.Connected {
		errs = append(errs, fmt.Errorf("routes: %w", err))
	}
	// The rules only while the tunnel is wanted: Disconnected leaves the
	// namespace as warren found it (the firewall, with lockdown, aside).
	wanted := s.State != state.Disconnected
	if wanted && !h.srcValidMark {
		h.srcValidMark = true
		h.setSrcValidMark()
	}
	if err := h.rt.SetRules(wanted, wanted && !h.noIPv6); err != nil && wanted {
		errs = append(errs, fmt.Errorf("routing rules: %w", err))
	}
	if h.rc != nil {
		var err error
		if s.State == state.Disconnected {
			_, err = h.rc.restore()
		} else {
			err = h.rc.point()
		}
		if err != nil {
			h.log.Error("cannot manage resolv.conf; DNS outside the tunnel stays blocked all the same", "err", err)
		}
	}
	return errors.Join(errs...)
}

// setSrcValidMark sets net.ipv4.conf.all.src_valid_mark, so that the
// reverse-path check of the endpoint's replies uses the mark the firewall
// restores on them: without it, strict reverse-path filtering (rp_filter=1)
// drops them once the tunnel's routes are in. It stays set, as with
// wg-quick: it changes nothing for unmarked packets, and another WireGuard
// in the namespace may rely on it. Failing to set it is logged, not a
// failure: it matters only with strict filtering, and even then the
// namespace stays closed.
func (h *Host) setSrcValidMark() {
	changed, err := setSrcValidMark()
	switch {
	case err != nil && strictRPFilter():
		h.log.Warn("strict reverse-path filtering is on (rp_filter=1) and net.ipv4.conf.all.src_valid_mark cannot be set: the endpoint's replies will be dropped once connected; set it to 1 (docker run --sysctl net.ipv4.conf.all.src_valid_mark=1), or make rp_filter 2 (loose)",
			"err", err)
	case err != nil:
		h.log.Debug("cannot set net.ipv4.conf.all.src_valid_mark; no interface filters reverse paths strictly, so the endpoint's replies get in without it", "err", err)
	case changed:
		h.log.Info("set net.ipv4.conf.all.src_valid_mark=1, so that reverse-path filtering lets the endpoint's replies in; it stays set, as with wg-quick")
	}
}

// configIPv6 reports whether cfg gives the interface an IPv6 address, and
// whether it routes some IPv6 through a peer.
func configIPv6(cfg *config.Config) (address, routes bool) {
	is6 := func(p netip.Prefix) bool { return p.Addr().Is6() }
	address = slices.ContainsFunc(cfg.Interface.Addresses, is6)
	routes = slices.ContainsFunc(cfg.Peers, func(p config.Peer) bool { return slices.ContainsFunc(p.AllowedIPs, is6) })
	return address, routes
}

// carriesIPv6 reports whether the tunnel has an IPv6 address and routes
// some IPv6 through a peer.
func carriesIPv6(cfg *config.Config) bool {
	address, routes := configIPv6(cfg)
	return address && routes
}

// Close stops the tunnel and removes what host mode made: the rules,
// routes and TUN, and the firewall table unless the lockdown is on (in the
// snapshot applied last, or Options.Lockdown before any). With lockdown
// the table stays, blocking as in Disconnected, as after kill -9: the
// namespace stays closed until a new warren replaces the table or Down
// removes it. resolv.conf is restored either way: Disconnected has it
// restored too, and the table refuses DNS outside the tunnel either way.
// Call Close after the machine has shut down (Disconnected).
func (h *Host) Close() error {
	h.Tunnel.Close()
	h.mu.Lock()
	lockdown := h.lockdown
	h.mu.Unlock()
	var errs []error
	if lockdown {
		// Blocking first, then the routes go, as in Apply.
		if err := h.fw.Apply(Ruleset{Block: true, Mark: h.opts.Mark, AllowLAN: h.opts.AllowLAN}); err != nil {
			errs = append(errs, fmt.Errorf("hostmode: keep the kill switch: %w", err))
		} else {
			h.log.Info("lockdown: the kill switch stays after warren stops, and the namespace stays closed until warren runs again; `warren down` removes it",
				"table", "inet "+TableName)
		}
	}
	if err := h.rt.Cleanup(h.opts.TUN); err != nil {
		errs = append(errs, err)
	}
	h.rt.Close()
	if !lockdown {
		if err := h.fw.Remove(); err != nil {
			errs = append(errs, err)
		}
	}
	if h.rc != nil {
		if _, err := h.rc.restore(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Down removes what a host-mode warren left in this network namespace (it
// was killed, say): the firewall table, its routing rules and routes, and
// the TUN. It returns what it found.
func Down(opts Options) ([]string, error) {
	if opts.TUN == "" {
		opts.TUN = DefaultTUN
	}
	rt, err := NewRouting(RoutingOptions{NetNS: netns.None(), Table: opts.Table, Mark: opts.Mark, Priority: opts.Priority})
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	found, err := rt.Leftovers(opts.TUN)
	if err != nil {
		return nil, err
	}
	fw, err := NewFirewall(-1)
	if err != nil {
		return found, err
	}
	if ok, err := fw.Present(); err == nil && ok {
		found = append(found, "nftables table inet "+TableName)
	}
	var errs []error
	if err := rt.Cleanup(opts.TUN); err != nil {
		errs = append(errs, err)
	}
	if err := fw.Remove(); err != nil {
		errs = append(errs, err)
	}
	if opts.ResolvConf != "" {
		rc := &resolvConf{path: opts.ResolvConf}
		ok, err := rc.restore()
		if ok {
			found = append(found, "warren's "+opts.ResolvConf+" (the original is back, from "+rc.backupPath()+")")
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return found, errors.Join(errs...)
}
