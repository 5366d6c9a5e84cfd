// Package netstack is warren's proxy-mode backend: a WireGuard device
// (wireguard-go) whose tunnel side is a userspace TCP/IP stack (gVisor), so
// that no kernel module, TUN device or privilege is needed.
//
// Device is one such device; the demo server peer uses it too. Tunnel drives
// a Device per connection attempt for the state machine (it implements
// state.Tunnel) and dials through the device of the attempt that is up.
// Tunnel dials addresses only, never names: resolving a name is the caller's
// business, through the tunnel's own DNS (package dnsserver). Nothing here
// ever dials the host's network for a flow; the only host socket is the
// WireGuard UDP socket itself.
//
// An attempt resolves the endpoints (a host name with several addresses
// yields the next address at each try of the same config), creates the
// device, and reports Up once a handshake has completed and bytes came back
// after a probe through the tunnel: an ICMP echo and a DNS query to the
// config's DNS servers, and an echo to each of TunnelOptions.ProbeTargets.
// Once up, a liveness monitor watches the device's counters (see liveness)
// and reports Down when the peer falls silent. Its probes add a handshake
// initiation, which any WireGuard peer answers: a peer that restarted and
// forgot the session is found again without tearing the tunnel down.
package netstack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/state"
)

// Verification: how often an attempt looks at the device's counters, how
// long it waits for an answer to a probe before sending another, and how
// often it sends a new handshake initiation until one is answered.
// wireguard-go alone retries every 5 s; a peer that comes back (a network
// that returns, a blackhole lifted) is found within handshakeRetry instead.
const (
	pollInterval   = 20 * time.Millisecond
	reprobeAfter   = 1 * time.Second
	handshakeRetry = 1 * time.Second
)

// ErrNotConnected is returned by DialContext when no attempt is up.
var ErrNotConnected = errors.New("netstack: tunnel not connected")

// Resolver resolves endpoint host names. *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// TunnelOptions configures a Tunnel. The zero value is usable.
type TunnelOptions struct {
	// Logger gets the backend's log lines; nil discards them.
	Logger *slog.Logger
	// Resolver resolves endpoint host names, at every attempt. nil means
	// the host's resolver: the endpoint is outside the tunnel.
	Resolver Resolver
	// NewBind makes the UDP transport of each attempt's device. nil means
	// wireguard-go's default.
	NewBind func() conn.Bind
	// ProbeTargets are addresses inside the tunnel that answer ICMP echo,
	// probed to verify an attempt, besides the config's DNS servers (which
	// also get a DNS query). With no target at all, a completed handshake is
	// all the verification there is.
	ProbeTargets []netip.Addr

	// Host mode (package hostmode) runs the same attempts on a kernel TUN:
	//
	// NewTUN, if set, makes each attempt's tunnel side; its error fails the
	// attempt with the cause it wraps (a *CauseError), or tunnel-device.
	NewTUN func(cfg *config.Config) (HostTUN, error)
	// Mark is the fwmark of each device's UDP socket; 0 for none.
	Mark uint32
	// OnEndpoints, if set, learns each attempt's resolved endpoints before
	// anything is sent to them (host mode's firewall lets only those
	// through); its error fails the attempt, as NewTUN's does.
	OnEndpoints func(cfg *config.Config, endpoints []netip.AddrPort) error
}

// CauseError is an error with the state.Cause it should be reported as.
type CauseError struct {
	Cause       state.Cause
	Recoverable bool
	Err         error
}

func (e *CauseError) Error() string { return e.Err.Error() }
func (e *CauseError) Unwrap() error { return e.Err }

// causeOf is the cause to report err as: its own if it has one, else c.
func causeOf(err error, c state.Cause) (state.Cause, bool, error) {
	var ce *CauseError
	if errors.As(err, &ce) {
		return ce.Cause, ce.Recoverable, ce.Err
	}
	return c, c.Recoverable(), err
}

// Tunnel is the proxy-mode implementation of state.Tunnel.
type Tunnel struct {
	opts TunnelOptions
	log  *slog.Logger

	// mu guards latest and closed.
	mu     sync.Mutex
	latest *run // the latest Start's run; nil after Stop
	closed bool

	wg sync.WaitGroup          // every goroutine Start and Stop start
	up atomic.Pointer[upState] // the run that is up, or nil
}

var _ state.Tunnel = (*Tunnel)(nil)

// upState is what a run that is up offers: its device, and the config it
// was made from.
type upState struct {
	dev *Device
	cfg *config.Config
}

// run is one attempt and, once it is up, the life of its device.
type run struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when everything the run made is gone
}

// NewTunnel returns a Tunnel with nothing running.
func NewTunnel(opts TunnelOptions) *Tunnel {
	t := &Tunnel{opts: opts, log: opts.Logger}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.opts.Resolver == nil {
		t.opts.Resolver = net.DefaultResolver
	}
	return t
}

// Start begins attempt a, after tearing down the previous run.
func (t *Tunnel) Start(a state.Attempt, r state.Reporter) {
	rn := &run{done: make(chan struct{})}
	rn.ctx, rn.cancel = context.WithCancel(context.Background())
	prev, ok := t.swap(rn)
	if !ok {
		rn.cancel()
		r.Failed(state.CauseTunnelDevice, false, errors.New("netstack: tunnel closed"))
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer close(rn.done)
		defer rn.cancel()
		prev.stop()
		t.attempt(rn, a, r)
	}()
}

// Stop tears down the latest run and reports Closed when it is gone.
func (t *Tunnel) Stop(r state.Reporter) {
	prev, _ := t.swap(nil)
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		prev.stop()
		r.Closed()
	}()
}

// Close stops whatever runs and waits for every goroutine of the Tunnel to
// end. Start after Close fails. It is safe to call more than once.
func (t *Tunnel) Close() error {
	t.mu.Lock()
	t.closed = true
	prev := t.latest
	t.latest = nil
	t.mu.Unlock()
	prev.stop()
	t.wg.Wait()
	return nil
}

// swap makes rn the latest run and returns the one it replaces.
func (t *Tunnel) swap(rn *run) (prev *run, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed && rn != nil {
		return nil, false
	}
	prev, t.latest = t.latest, rn
	return prev, true
}

// stop cancels the run and waits until everything it made is gone.
func (rn *run) stop() {
	if rn == nil {
		return
	}
	rn.cancel()
	<-rn.done
}

// DialContext opens a connection to an address through the tunnel; network
// is "tcp" or "udp" (optionally with 4 or 6). It fails with ErrNotConnected
// when no attempt is up.
func (t *Tunnel) DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	up := t.up.Load()
	if up == nil {
		return nil, ErrNotConnected
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
		c, err := up.dev.DialTCP(ctx, to)
		if err != nil {
			return nil, err
		}
		return c, nil
	case "udp", "udp4", "udp6":
		return up.dev.DialUDP(to)
	}
	return nil, fmt.Errorf("netstack: dial: unsupported network %q", network)
}

// ListenPacket opens an unconnected UDP socket in the tunnel: network
// "udp4" or "udp6", bound to the tunnel's own address of that family and a
// free port. It fails with ErrNotConnected when no attempt is up.
func (t *Tunnel) ListenPacket(ctx context.Context, network string) (net.PacketConn, error) {
	dev, at, err := t.own(network, "udp")
	if err != nil {
		return nil, err
	}
	return dev.ListenUDP(at)
}

// Listen listens for TCP connections on port of the tunnel's own addresses
// of one family: network "tcp4" or "tcp6". The listener belongs to the
// device that is up now and stops working when it goes down. It fails with
// ErrNotConnected when no attempt is up.
func (t *Tunnel) Listen(ctx context.Context, network string, port uint16) (net.Listener, error) {
	dev, at, err := t.own(network, "tcp")
	if err != nil {
		return nil, err
	}
	return dev.ListenTCP(netip.AddrPortFrom(at.Addr(), port))
}

// own returns the device that is up and its first address of network's
// family, which must be proto followed by 4 or 6. It binds to that address,
// not to the unspecified one: gVisor's [::] listens for IPv4 too, and would
// take the port from a tcp4 listener on the same port.
func (t *Tunnel) own(network, proto string) (*Device, netip.AddrPort, error) {
	up := t.up.Load()
	if up == nil {
		return nil, netip.AddrPort{}, ErrNotConnected
	}
	var want func(netip.Addr) bool
	switch network {
	case proto + "4":
		want = netip.Addr.Is4
	case proto + "6":
		want = netip.Addr.Is6
	default:
		return nil, netip.AddrPort{}, fmt.Errorf("netstack: unsupported network %q", network)
	}
	for _, p := range up.cfg.Interface.Addresses {
		if want(p.Addr()) {
			return up.dev, netip.AddrPortFrom(p.Addr(), 0), nil
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("netstack: %s: the tunnel has no address of this family: %w", network, syscall.EADDRNOTAVAIL)
}

// DNS returns the DNS servers of the config the tunnel is up with, or nil
// when it is not up.
func (t *Tunnel) DNS() []netip.Addr {
	if up := t.up.Load(); up != nil {
		return up.cfg.Interface.DNS
	}
	return nil
}

// Stats is what the device that is up has done, summed over its peers.
type Stats struct {
	LastHandshake    time.Time // the latest of any peer; zero before the first
	RxBytes, TxBytes uint64    // since the device was made: they start from 0 at every connection
}

// Stats returns the counters of the device that is up, or the zero Stats
// when none is.
func (t *Tunnel) Stats() Stats {
	up := t.up.Load()
	if up == nil {
		return Stats{}
	}
	peers, err := up.dev.Stats()
	if err != nil {
		return Stats{}
	}
	var s Stats
	for _, p := range peers {
		s.RxBytes += p.RxBytes
		s.TxBytes += p.TxBytes
		if p.LastHandshake.After(s.LastHandshake) {
			s.LastHandshake = p.LastHandshake
		}
	}
	return s
}

// attempt runs attempt a: resolve, create the device, verify, report Up,
// and watch the device's liveness until the run is cancelled.
func (t *Tunnel) attempt(rn *run, a state.Attempt, r state.Reporter) {
	if rn.ctx.Err() != nil {
		return // superseded before it began
	}
	ctx, cancel := context.WithDeadline(rn.ctx, a.Deadline)
	defer cancel()
	// fail reports a failure unless the run was cancelled, in which case
	// nobody is listening any more.
	fail := func(c state.Cause, recoverable bool, err error) {
		if rn.ctx.Err() == nil {
			r.Failed(c, recoverable, err)
		}
	}

	endpoints, err := t.resolve(ctx, a.Config, a.Try)
	if err != nil {
		fail(state.CauseEndpointResolution, true, err)
		return
	}
	if t.opts.OnEndpoints != nil {
		if err := t.opts.OnEndpoints(a.Config, endpoints); err != nil {
			fail(causeOf(err, state.CauseFirewall))
			return
		}
	}
	var host HostTUN
	if t.opts.NewTUN != nil {
		if host, err = t.opts.NewTUN(a.Config); err != nil {
			fail(causeOf(err, state.CauseTunnelDevice))
			return
		}
	}
	bind := &countingBind{Bind: conn.NewDefaultBind()}
	if t.opts.NewBind != nil {
		bind.Bind = t.opts.NewBind()
	}
	dev, err := NewDevice(DeviceOptions{Config: a.Config, Endpoints: endpoints, Bind: bind, Logger: t.log, TUN: host, Mark: t.opts.Mark})
	if err != nil { // NewDevice has closed host
		fail(state.CauseTunnelDevice, false, err)
		return
	}
	defer dev.Close()

	peer, err := t.verify(ctx, dev, a.Config)
	if err != nil {
		fail(diagnose(err, bind, endpoints))
		return
	}
	up := &upState{dev: dev, cfg: a.Config}
	t.up.Store(up)
	defer t.up.CompareAndSwap(up, nil)
	r.Up(describeEndpoint(a.Config, endpoints, peer))
	t.monitor(rn.ctx, dev, a.Config, r)
	<-rn.ctx.Done()
}

// resolve looks up every peer's endpoint, now: a peer whose name moved is
// found again at the next attempt. The addresses of a name are taken IPv4
// first (more hosts can reach IPv4), and try picks among them, so that
// successive tries of a config move through all of them. It fails if no
// peer's endpoint resolves.
func (t *Tunnel) resolve(ctx context.Context, cfg *config.Config, try int) ([]netip.AddrPort, error) {
	eps := make([]netip.AddrPort, len(cfg.Peers))
	var firstErr error
	found := false
	for i, p := range cfg.Peers {
		if p.Endpoint.IsZero() {
			continue
		}
		if ap, ok := p.Endpoint.Addr(); ok {
			eps[i], found = ap, true
			continue
		}
		addrs, err := t.opts.Resolver.LookupNetIP(ctx, "ip", p.Endpoint.Host)
		if err == nil && len(addrs) == 0 {
			err = errors.New("no addresses")
		}
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("resolve the endpoint of the peer on line %d (%s): %w", p.Line, p.Endpoint, err)
			}
			continue
		}
		for j, a := range addrs {
			addrs[j] = a.Unmap()
		}
		slices.SortStableFunc(addrs, func(a, b netip.Addr) int { return cmp.Compare(a.BitLen(), b.BitLen()) })
		eps[i], found = netip.AddrPortFrom(addrs[try%len(addrs)], p.Endpoint.Port), true
	}
	if !found {
		if firstErr == nil {
			firstErr = errors.New("no peer has an endpoint")
		}
		return nil, firstErr
	}
	return eps, nil
}

// errNoHandshake and errNothingBack are what verify returns when its
// deadline passes; diagnose turns them into a cause and a reason.
var (
	errNoHandshake = errors.New("no handshake with the peer before the deadline")
	errNothingBack = errors.New("a handshake completed, but nothing came back through the tunnel before the deadline: check the config's Address (the peer may not route it back) and AllowedIPs")
)

// verify waits until a handshake has completed and bytes arrive from the
// peer after a probe through the tunnel, and returns the index of the peer
// that completed the handshake.
func (t *Tunnel) verify(ctx context.Context, dev *Device, cfg *config.Config) (int, error) {
	// Sending anything makes wireguard-go start a handshake with the peer
	// that routes it; a keepalive does it for every peer with an endpoint.
	for _, p := range cfg.Peers {
		if !p.Endpoint.IsZero() {
			dev.sendKeepalive(p.PublicKey)
		}
	}
	targets := t.probeTargets(cfg)
	t.probe(dev, cfg, false)

	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	shook := -1 // the peer that completed a handshake
	var base uint64
	var probed time.Time
	initiated := time.Now()
	for {
		select {
		case <-ctx.Done():
			if shook < 0 {
				return -1, errNoHandshake
			}
			return -1, errNothingBack
		case <-tick.C:
		}
		stats, err := dev.Stats()
		if err != nil {
			return -1, err
		}
		var rx uint64
		for _, s := range stats {
			rx += s.RxBytes
			if shook < 0 && !s.LastHandshake.IsZero() {
				shook = peerIndex(cfg, s.PublicKey)
			}
		}
		switch {
		case shook < 0:
			if time.Since(initiated) >= handshakeRetry {
				initiated = time.Now()
				for _, p := range cfg.Peers {
					if !p.Endpoint.IsZero() {
						dev.rehandshake(p.PublicKey)
					}
				}
			}
		case probed.IsZero():
			if len(targets) == 0 {
				return shook, nil // nothing to probe: the handshake is all there is
			}
			base, probed = rx, time.Now()
			t.probe(dev, cfg, false)
		case rx > base:
			return shook, nil
		case time.Since(probed) >= reprobeAfter:
			base, probed = rx, time.Now()
			t.probe(dev, cfg, false)
		}
	}
}

// diagnose says why an attempt failed, from verify's error and what the
// UDP socket saw: the cause, whether it is worth retrying, and an error a
// user can act on.
func diagnose(err error, bind *countingBind, endpoints []netip.AddrPort) (state.Cause, bool, error) {
	var eps []string
	for _, ep := range endpoints {
		if ep.IsValid() {
			eps = append(eps, ep.String())
		}
	}
	to := strings.Join(eps, ", ")
	switch {
	case errors.Is(err, errNothingBack):
		return state.CauseVerificationTimeout, true, err
	case !errors.Is(err, errNoHandshake):
		return state.CauseTunnelDevice, false, err
	}
	if serr := bind.lastSendErr(); serr != nil {
		return state.CauseNetworkUnreachable, true, fmt.Errorf("cannot send to the endpoint %s: %w", to, serr)
	}
	if n := bind.received.Load(); n > 0 {
		return state.CauseHandshakeTimeout, true, fmt.Errorf("the endpoint %s sent %d datagram(s), but no valid handshake response: is it a WireGuard peer, and does it have this config's public key?", to, n)
	}
	return state.CauseHandshakeTimeout, true, fmt.Errorf("no answer from the endpoint %s before the deadline", to)
}

// monitor watches a connected device's counters and reports Down when the
// peer falls silent (see liveness).
func (t *Tunnel) monitor(ctx context.Context, dev *Device, cfg *config.Config, r state.Reporter) {
	rx, tx, err := dev.counters()
	if err != nil {
		r.Failed(state.CauseTunnelDevice, false, err)
		return
	}
	l := newLiveness(time.Now().Round(0), rx, tx)
	tick := time.NewTicker(livenessTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rx, tx, err := dev.counters()
		if err != nil {
			r.Failed(state.CauseTunnelDevice, false, err)
			return
		}
		probe, down := l.tick(time.Now().Round(0), rx, tx)
		if down {
			r.Down(fmt.Sprintf("nothing received from the peer for %v, despite probes", state.DownAfterSilence))
			return
		}
		if probe {
			t.log.Debug("liveness: probing the peer")
			t.probe(dev, cfg, true)
		}
	}
}

// probeTargets are the addresses probes go to: the config's DNS servers and
// TunnelOptions.ProbeTargets.
func (t *Tunnel) probeTargets(cfg *config.Config) []netip.Addr {
	return append(slices.Clone(cfg.Interface.DNS), t.opts.ProbeTargets...)
}

// probe sends what should make the peer send something back: an ICMP echo
// to each target and a DNS query to each DNS server, through the tunnel,
// and, with handshake, a handshake initiation to every peer with an
// endpoint.
func (t *Tunnel) probe(dev *Device, cfg *config.Config, handshake bool) {
	for _, a := range t.probeTargets(cfg) {
		if err := dev.SendPing(a); err != nil {
			t.log.Debug("probe: ping", "to", a, "err", err)
		}
		if slices.Contains(cfg.Interface.DNS, a) {
			sendDNSProbe(dev, a)
		}
	}
	if handshake {
		for _, p := range cfg.Peers {
			if !p.Endpoint.IsZero() {
				dev.sendHandshake(p.PublicKey)
			}
		}
	}
}

func peerIndex(cfg *config.Config, pk config.PublicKey) int {
	for i, p := range cfg.Peers {
		if p.PublicKey == pk {
			return i
		}
	}
	return -1
}

// sendDNSProbe sends a DNS query for ". NS" to server, and does not wait for
// the answer.
func sendDNSProbe(dev *Device, server netip.Addr) {
	c, err := dev.DialUDP(netip.AddrPortFrom(server, 53))
	if err != nil {
		return
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion(".", dns.TypeNS)
	if b, err := q.Pack(); err == nil {
		c.Write(b)
	}
}

// describeEndpoint says which endpoint is in use: "192.0.2.1:51820", or
// "vpn.example.com:51820 (192.0.2.1:51820)" for a host name.
func describeEndpoint(cfg *config.Config, endpoints []netip.AddrPort, peer int) string {
	if peer < 0 || peer >= len(endpoints) || !endpoints[peer].IsValid() {
		return ""
	}
	ep := cfg.Peers[peer].Endpoint
	if _, ok := ep.Addr(); ok {
		return endpoints[peer].String()
	}
	return fmt.Sprintf("%s (%s)", ep, endpoints[peer])
}
