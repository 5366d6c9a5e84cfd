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
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/state"
)

// Verification: how often an attempt looks at the device's counters, and how
// long it waits for an answer to a probe before sending another.
const (
	pollInterval = 20 * time.Millisecond
	reprobeAfter = 1 * time.Second
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
}

// Tunnel is the proxy-mode implementation of state.Tunnel.
type Tunnel struct {
	opts TunnelOptions
	log  *slog.Logger

	// mu guards latest and closed.
	mu     sync.Mutex
	latest *run // the latest Start's run; nil after Stop
	closed bool

	wg  sync.WaitGroup         // every goroutine Start and Stop start
	dev atomic.Pointer[Device] // the device of the run that is up, or nil
}

var _ state.Tunnel = (*Tunnel)(nil)

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
	dev := t.dev.Load()
	if dev == nil {
		return nil, ErrNotConnected
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
		c, err := dev.DialTCP(ctx, to)
		if err != nil {
			return nil, err
		}
		return c, nil
	case "udp", "udp4", "udp6":
		return dev.DialUDP(to)
	}
	return nil, fmt.Errorf("netstack: dial: unsupported network %q", network)
}

// attempt runs attempt a: resolve, create the device, verify, report Up,
// and keep the device until the run is cancelled.
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

	endpoints, err := t.resolve(ctx, a.Config)
	if err != nil {
		fail(state.CauseEndpointResolution, true, err)
		return
	}
	opts := DeviceOptions{Config: a.Config, Endpoints: endpoints, Logger: t.log}
	if t.opts.NewBind != nil {
		opts.Bind = t.opts.NewBind()
	}
	dev, err := NewDevice(opts)
	if err != nil {
		fail(state.CauseTunnelDevice, false, err)
		return
	}
	defer dev.Close()

	peer, cause, err := t.verify(ctx, dev, a.Config)
	if err != nil {
		fail(cause, true, err)
		return
	}
	t.dev.Store(dev)
	defer t.dev.CompareAndSwap(dev, nil)
	r.Up(describeEndpoint(a.Config, endpoints, peer))
	<-rn.ctx.Done()
}

// resolve looks up every peer's endpoint, now: a peer whose name moved is
// found again at the next attempt. A name with both IPv4 and IPv6 addresses
// uses IPv4, which more hosts can reach. It fails if no peer's endpoint
// resolves.
func (t *Tunnel) resolve(ctx context.Context, cfg *config.Config) ([]netip.AddrPort, error) {
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
				firstErr = fmt.Errorf("resolve endpoint of peer on line %d (%s): %w", p.Line, p.Endpoint, err)
			}
			continue
		}
		addr := addrs[0]
		for _, a := range addrs {
			if a.Unmap().Is4() {
				addr = a
				break
			}
		}
		eps[i], found = netip.AddrPortFrom(addr.Unmap(), p.Endpoint.Port), true
	}
	if !found {
		if firstErr == nil {
			firstErr = errors.New("no peer has an endpoint")
		}
		return nil, firstErr
	}
	return eps, nil
}

// verify waits until a handshake has completed and bytes arrive from the
// peer after a probe through the tunnel. It returns the index of the peer
// that completed the handshake, or, when ctx ends first, the cause: a
// handshake timeout, or a verification timeout if the handshake completed
// but nothing came back.
func (t *Tunnel) verify(ctx context.Context, dev *Device, cfg *config.Config) (int, state.Cause, error) {
	targets := append(append([]netip.Addr(nil), cfg.Interface.DNS...), t.opts.ProbeTargets...)
	probe := func() {
		for _, a := range targets {
			if err := dev.SendPing(a); err != nil {
				t.log.Debug("probe: ping", "to", a, "err", err)
			}
			if slices.Contains(cfg.Interface.DNS, a) {
				sendDNSProbe(dev, a)
			}
		}
	}
	// Sending anything makes wireguard-go start a handshake with the peer
	// that routes it; a keepalive does it for every peer with an endpoint.
	for _, p := range cfg.Peers {
		if !p.Endpoint.IsZero() {
			dev.sendKeepalive(p.PublicKey)
		}
	}
	probe()

	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	shook := -1 // the peer that completed a handshake
	var base uint64
	var probed time.Time
	for {
		select {
		case <-ctx.Done():
			if shook < 0 {
				return -1, state.CauseHandshakeTimeout, errors.New("no handshake with the peer before the deadline")
			}
			return -1, state.CauseVerificationTimeout, errors.New("handshake completed, but nothing came back through the tunnel")
		case <-tick.C:
		}
		stats, err := dev.Stats()
		if err != nil {
			return -1, state.CauseTunnelDevice, err
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
		case probed.IsZero():
			if len(targets) == 0 {
				return shook, state.CauseNone, nil
			}
			base, probed = rx, time.Now()
			probe()
		case rx > base:
			return shook, state.CauseNone, nil
		case time.Since(probed) >= reprobeAfter:
			base, probed = rx, time.Now()
			probe()
		}
	}
}

func peerIndex(cfg *config.Config, pk config.PublicKey) int {
	for i, p := range cfg.Peers {
		if p.PublicKey == pk {
			return i
		}
	}
	return 0
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
