// Package proxy holds warren's front-ends for applications: the gate that
// every proxied flow goes through, the SOCKS5 server (CONNECT and UDP
// ASSOCIATE), the HTTP proxy, and port forwards into the tunnel (Forward)
// and out of it to a local service (Expose).
//
// It knows nothing of WireGuard or gVisor. The gate is handed a Dialer (the
// tunnel) and a policy (from the state machine); front-ends are handed the
// gate, and a Resolver for names. There is no other way out: no proxied
// flow dials the host's network, and names are never given to the host's
// resolver. The one connection made on the host is Expose's, to the local
// service the user named, for a connection that came in through the tunnel.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warren-vpn/warren/state"
)

// Dialer dials an address (never a name) through the tunnel.
type Dialer interface {
	DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error)
}

// PacketListener is a tunnel that can also open unconnected UDP sockets, as
// SOCKS5's UDP ASSOCIATE needs. network is "udp4" or "udp6"; the socket is
// bound to the tunnel's own address of that family and a free port.
type PacketListener interface {
	ListenPacket(ctx context.Context, network string) (net.PacketConn, error)
}

// StreamListener is a tunnel that can listen for TCP connections on its own
// addresses, as --expose needs. network is "tcp4" or "tcp6".
type StreamListener interface {
	Listen(ctx context.Context, network string, port uint16) (net.Listener, error)
}

// Resolver resolves names through the tunnel's DNS.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Gate is the only dialer front-ends have. In Connected it dials through the
// tunnel; in every other state it fails at once with a *state.BlockedError,
// unless Hold lets a flow wait for a tunnel that is connecting. It
// implements state.Policy: leaving Connected cancels dials in progress and
// aborts every live flow (TCP with a reset). A Gate starts blocked.
type Gate struct {
	tunnel Dialer

	// Hold is how long a new flow waits for Connected while the tunnel is
	// connecting (Connecting, or Disconnecting on its way to reconnect)
	// before it is refused. It never waits in Disconnected, Error, or a
	// Disconnecting that leads to either. 0, the default, refuses at once.
	// Set it before first use.
	Hold time.Duration
	// Observe, if set, learns the outcome of every flow a front-end
	// tries: the front-end's name ("socks5", "socks5-udp", "http",
	// "forward", "forward-udp", "expose") and "accepted" or why the flow
	// was refused (see FlowOutcome). It is called from many goroutines.
	// Set it before first use.
	Observe func(frontend, outcome string)

	// policy is read on every dial, without a lock.
	policy atomic.Pointer[gatePolicy]

	// mu guards flows, and orders registering a flow against cutting them
	// all: a flow registers under the policy it was opened under, and is
	// refused if that policy has been replaced.
	mu    sync.Mutex
	flows map[*flow]struct{}
}

var _ state.Policy = (*Gate)(nil)

// gatePolicy is one period during which the gate is open, or blocked.
type gatePolicy struct {
	blocked  error // nil when open
	holdable bool  // blocked, but connecting: a flow may wait
	// ctx is cancelled when this period ends; dials made in it, and flows
	// held in it, watch it.
	ctx    context.Context
	cancel context.CancelFunc
}

// flow is one live flow: what to abort when the gate closes.
type flow struct {
	abort func()
}

// NewGate returns a blocked gate that dials through tunnel once opened.
func NewGate(tunnel Dialer) *Gate {
	g := &Gate{tunnel: tunnel, flows: make(map[*flow]struct{})}
	g.policy.Store(newGatePolicy(state.Snapshot{State: state.Disconnected}))
	return g
}

func newGatePolicy(s state.Snapshot) *gatePolicy {
	p := &gatePolicy{
		blocked:  s.Blocked(),
		holdable: s.State == state.Connecting || s.State == state.Disconnecting && s.After == state.AfterReconnect,
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// Apply opens the gate in Connected and blocks it otherwise. Leaving
// Connected aborts every live flow before Apply returns.
func (g *Gate) Apply(s state.Snapshot) error {
	old := g.policy.Load()
	if old.blocked == nil && s.State == state.Connected {
		return nil // still open: live flows carry on
	}
	// The new policy and an empty set of flows, together: a flow that
	// registers under the new policy (once it is told of it, below) is
	// not one of the old ones to abort.
	g.mu.Lock()
	g.policy.Store(newGatePolicy(s))
	flows := g.flows
	g.flows = make(map[*flow]struct{})
	g.mu.Unlock()
	old.cancel()
	for f := range flows {
		f.abort()
	}
	return nil
}

// observe reports a flow's outcome to Observe.
func (g *Gate) observe(frontend string, err error) {
	if g.Observe != nil {
		g.Observe(frontend, FlowOutcome(err))
	}
}

// FlowOutcome names what came of a flow, for metrics: "accepted" when err
// is nil, and otherwise why it was refused: "blocked" (the tunnel is not
// up), "auth" (wrong or missing credentials), "not-allowed" (the client's
// address is not in the Admission's AllowFrom), "limit" or "client-limit"
// (the Admission's limit of flows in all, or per client, is reached),
// "resolve" (the name did not resolve), "timeout", or "dial" (the
// destination refused or could not be reached).
func FlowOutcome(err error) string {
	var dnsErr *net.DNSError
	var ne net.Error
	var limit *LimitError
	switch {
	case err == nil:
		return "accepted"
	case errors.Is(err, state.ErrBlocked):
		return "blocked"
	case errors.Is(err, errAuth):
		return "auth"
	case errors.Is(err, ErrNotAllowed):
		return "not-allowed"
	case errors.As(err, &limit) && limit.PerClient:
		return "client-limit"
	case errors.Is(err, ErrTooManyFlows):
		return "limit"
	case errors.As(err, &dnsErr):
		return "resolve"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "dial"
}

// errAuth stands for a client that gave the wrong credentials, or none.
var errAuth = errors.New("proxy: authentication failed")

// Blocked returns nil when the gate is open, and otherwise the
// *state.BlockedError a flow would get.
func (g *Gate) Blocked() error { return g.policy.Load().blocked }

// Wait returns nil once the gate is open: at once if it is, or, while the
// tunnel is connecting, as soon as it opens within Hold. Otherwise it
// returns the gate's *state.BlockedError, at once or when Hold has passed.
func (g *Gate) Wait(ctx context.Context) error {
	p := g.policy.Load()
	if p.blocked == nil || !p.holdable || g.Hold <= 0 {
		return p.blocked
	}
	timer := time.NewTimer(g.Hold)
	defer timer.Stop()
	for {
		select {
		case <-p.ctx.Done(): // the policy changed
			p = g.policy.Load()
			if p.blocked == nil || !p.holdable {
				return p.blocked
			}
		case <-timer.C:
			return g.policy.Load().blocked
		case <-ctx.Done():
			return g.policy.Load().blocked
		}
	}
}

// Flows returns the number of live flows.
func (g *Gate) Flows() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.flows)
}

// DialContext dials to through the tunnel if the gate is open, and returns a
// connection that is aborted when the gate closes. Closing it ends the flow.
func (g *Gate) DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	c, f, err := openFlow(g, ctx, func(ctx context.Context) (net.Conn, error) {
		return g.tunnel.DialContext(ctx, network, to)
	})
	if err != nil {
		return nil, err
	}
	return &flowConn{Conn: c, g: g, f: f}, nil
}

// ListenPacket opens a UDP socket in the tunnel ("udp4" or "udp6") if the
// gate is open. The socket is closed when the gate closes; closing it ends
// the flow. It fails if the tunnel cannot open UDP sockets.
func (g *Gate) ListenPacket(ctx context.Context, network string) (net.PacketConn, error) {
	pl, ok := g.tunnel.(PacketListener)
	if !ok {
		return nil, fmt.Errorf("proxy: the tunnel cannot open UDP sockets")
	}
	pc, f, err := openFlow(g, ctx, func(ctx context.Context) (net.PacketConn, error) {
		return pl.ListenPacket(ctx, network)
	})
	if err != nil {
		return nil, err
	}
	return &flowPacketConn{PacketConn: pc, g: g, f: f}, nil
}

// Listen listens on port of the tunnel's own address ("tcp4" or "tcp6") if
// the gate is open. The listener is closed when the gate closes; the
// connections it accepts are not flows of the gate until Tracked.
func (g *Gate) Listen(ctx context.Context, network string, port uint16) (net.Listener, error) {
	sl, ok := g.tunnel.(StreamListener)
	if !ok {
		return nil, fmt.Errorf("proxy: the tunnel cannot listen")
	}
	l, f, err := openFlow(g, ctx, func(ctx context.Context) (net.Listener, error) {
		return sl.Listen(ctx, network, port)
	})
	if err != nil {
		return nil, err
	}
	return &flowListener{Listener: l, g: g, f: f}, nil
}

// WaitOpen waits until the gate is open, however long that takes, or ctx
// ends. It is for listeners that follow the tunnel (--expose), not for
// flows, which use Wait and its Hold.
func (g *Gate) WaitOpen(ctx context.Context) error {
	for {
		p := g.policy.Load()
		if p.blocked == nil {
			return nil
		}
		select {
		case <-p.ctx.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Changed returns a channel that is closed when the gate's policy next
// changes (it opens or closes).
func (g *Gate) Changed() <-chan struct{} { return g.policy.Load().ctx.Done() }

// openFlow waits for the gate (at most its Hold), runs open with a context
// that is cancelled if the gate closes meanwhile, and registers what it
// opened as a flow of the period it was opened in.
func openFlow[T io.Closer](g *Gate, ctx context.Context, open func(context.Context) (T, error)) (T, *flow, error) {
	var zero T
	if err := g.Wait(ctx); err != nil {
		return zero, nil, err
	}
	p := g.policy.Load()
	if p.blocked != nil {
		return zero, nil, p.blocked // closed again since Wait
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel)
	defer stop()
	c, err := open(ctx)
	if err != nil {
		if p.ctx.Err() != nil {
			return zero, nil, g.Blocked() // the gate closed while opening
		}
		return zero, nil, err
	}
	f := &flow{abort: func() { abort(c) }}
	if err := g.register(p, f); err != nil {
		abort(c)
		return zero, nil, err
	}
	return c, f, nil
}

// Track registers a connection the gate does not make, such as a client's
// connection to a proxy, so that it too is aborted when the gate closes. It
// fails with the gate's *state.BlockedError if the gate is closed. release
// ends the tracking; call it when the connection is done with.
func (g *Gate) Track(c net.Conn) (release func(), err error) {
	f := &flow{abort: func() { abort(c) }}
	if err := g.register(g.policy.Load(), f); err != nil {
		return nil, err
	}
	return func() { g.unregister(f) }, nil
}

// errReopened refuses a flow opened while the gate was open, if the gate
// closed and opened again before the flow registered: the tunnel it was
// opened through is gone.
var errReopened = fmt.Errorf("%w: the tunnel reconnected while the flow was opened", state.ErrBlocked)

func (g *Gate) register(p *gatePolicy, f *flow) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch cur := g.policy.Load(); {
	case cur.blocked != nil:
		return cur.blocked
	case cur != p:
		return errReopened
	}
	g.flows[f] = struct{}{}
	return nil
}

func (g *Gate) unregister(f *flow) {
	g.mu.Lock()
	delete(g.flows, f)
	g.mu.Unlock()
}

// flowConn is a connection made by the gate.
type flowConn struct {
	net.Conn
	g    *Gate
	f    *flow
	once sync.Once
}

func (c *flowConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.g.unregister(c.f) })
	return err
}

// Abort resets the flow (see abort): the destination sees it cut, not
// finished.
func (c *flowConn) Abort() {
	abort(c.Conn)
	c.once.Do(func() { c.g.unregister(c.f) })
}

// flowPacketConn is a UDP socket opened by the gate.
type flowPacketConn struct {
	net.PacketConn
	g    *Gate
	f    *flow
	once sync.Once
}

func (c *flowPacketConn) Close() error {
	err := c.PacketConn.Close()
	c.once.Do(func() { c.g.unregister(c.f) })
	return err
}

// flowListener is a tunnel listener opened by the gate.
type flowListener struct {
	net.Listener
	g    *Gate
	f    *flow
	once sync.Once
}

func (l *flowListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { l.g.unregister(l.f) })
	return err
}

// CloseWrite half-closes a TCP flow, if the connection supports it.
func (c *flowConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("proxy: connection cannot half-close")
}

// abort ends c at once: a TCP connection with a reset rather than a FIN, so
// that the other end sees the flow was cut, not finished.
func abort(c io.Closer) {
	switch c := c.(type) {
	case interface{ Abort() }:
		c.Abort()
	case *net.TCPConn:
		c.SetLinger(0)
		c.Close()
	default:
		c.Close()
	}
}
