package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults for Admission's optional fields.
const (
	DefaultMaxFlows          = 4096
	DefaultMaxFlowsPerClient = 512
)

// limitWarnInterval is how often, at most, Admission warns that one limit
// (the total, or one client's) refuses flows.
const limitWarnInterval = 10 * time.Second

// ErrNotAllowed is returned by Admit for a client whose address AllowFrom
// does not hold.
var ErrNotAllowed = errors.New("proxy: client address not allowed")

// ErrTooManyFlows is what a *LimitError wraps.
var ErrTooManyFlows = errors.New("proxy: too many flows")

// LimitError is returned by Admit for a client that a limit refuses: the
// total of flows, or the client's own.
type LimitError struct {
	Client    netip.Addr
	Limit     int
	PerClient bool // the limit of one client address, not the total
}

func (e *LimitError) Error() string {
	if e.PerClient {
		return fmt.Sprintf("too many flows from %s: the limit is %d per client", e.Client, e.Limit)
	}
	return fmt.Sprintf("too many flows: the limit is %d at once", e.Limit)
}

func (e *LimitError) Unwrap() error { return ErrTooManyFlows }

// Admission decides which clients the front-ends serve, and bounds how many
// flows they may have open at once: over all clients, and from one client
// IP address. Front-ends that share an Admission share its counts.
//
// A flow holds its place from the moment its connection is accepted (or,
// for a UDP forward, its session begins) until it ends: a SOCKS5
// connection (a CONNECT, a UDP association, or one still in its
// handshake), an HTTP proxy connection, a forwarded TCP connection or UDP
// session, an exposed connection. So a client that opens connections and
// never finishes its request holds places only until the front-end's
// handshake timeout.
//
// Set its fields before first use. A nil *Admission admits every client,
// without bound.
type Admission struct {
	// AllowFrom, if not empty, holds the only client addresses admitted;
	// any other is refused with ErrNotAllowed. Empty admits every
	// address. It does not apply to Expose, whose clients come from the
	// tunnel.
	AllowFrom []netip.Prefix
	// MaxFlows bounds the flows open at once, over all clients; 0 means
	// DefaultMaxFlows, and a negative value means no bound.
	MaxFlows int
	// MaxFlowsPerClient bounds the flows open at once from one client IP
	// address; 0 means DefaultMaxFlowsPerClient, and a negative value
	// means no bound.
	MaxFlowsPerClient int
	// Logger gets a warning when a limit refuses a flow, at most one
	// every 10 s for the total and for each client; nil discards.
	Logger *slog.Logger

	initOnce     sync.Once
	log          *slog.Logger
	max          int // < 0: no bound
	maxPerClient int // < 0: no bound

	// mu guards the fields below.
	mu      sync.Mutex
	open    int
	clients map[netip.Addr]*clientFlows // clients with flows open
	warned  time.Time                   // when the total limit last warned
}

// clientFlows is one client address's flows.
type clientFlows struct {
	open   int
	warned time.Time // when this client's limit last warned
}

func (a *Admission) init() {
	a.initOnce.Do(func() {
		a.log = orDiscard(a.Logger).With("component", "admission")
		a.max, a.maxPerClient = a.MaxFlows, a.MaxFlowsPerClient
		if a.max == 0 {
			a.max = DefaultMaxFlows
		}
		if a.maxPerClient == 0 {
			a.maxPerClient = DefaultMaxFlowsPerClient
		}
		a.clients = make(map[netip.Addr]*clientFlows)
	})
}

// Allowed reports whether AllowFrom lets client in. It is true of every
// address on a nil *Admission.
func (a *Admission) Allowed(client netip.Addr) bool {
	if a == nil || len(a.AllowFrom) == 0 {
		return true
	}
	client = client.Unmap().WithZone("")
	for _, p := range a.AllowFrom {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

// Admit takes a place for a new flow from client (its remote address). It
// returns ErrNotAllowed if AllowFrom does not hold the client's address,
// and a *LimitError if a limit is reached; otherwise release, which gives
// the place back and may be called more than once.
func (a *Admission) Admit(client net.Addr) (release func(), err error) {
	return a.admit(client, true)
}

// admit is Admit, with AllowFrom applied only if checkAllow.
func (a *Admission) admit(client net.Addr, checkAllow bool) (release func(), err error) {
	if a == nil {
		return func() {}, nil
	}
	a.init()
	ip := ClientIP(client)
	if checkAllow && !a.Allowed(ip) {
		return nil, ErrNotAllowed
	}
	a.mu.Lock()
	release, warn, err := a.takeLocked(ip, time.Now())
	a.mu.Unlock()
	if warn {
		var limit *LimitError
		errors.As(err, &limit)
		if limit.PerClient {
			a.log.Warn("flow refused: the client has reached the limit of flows per client", "client", ip.String(), "limit", limit.Limit)
		} else {
			a.log.Warn("flow refused: the limit of flows at once is reached", "client", ip.String(), "limit", limit.Limit)
		}
	}
	return release, err
}

// takeLocked takes a place for ip, or returns the *LimitError that refuses
// it and whether to warn of it now.
func (a *Admission) takeLocked(ip netip.Addr, now time.Time) (release func(), warn bool, err error) {
	c := a.clients[ip]
	switch {
	case a.max >= 0 && a.open >= a.max:
		warn = now.Sub(a.warned) >= limitWarnInterval
		if warn {
			a.warned = now
		}
		return nil, warn, &LimitError{Client: ip, Limit: a.max}
	case a.maxPerClient >= 0 && c != nil && c.open >= a.maxPerClient:
		warn = now.Sub(c.warned) >= limitWarnInterval
		if warn {
			c.warned = now
		}
		return nil, warn, &LimitError{Client: ip, Limit: a.maxPerClient, PerClient: true}
	}
	if c == nil {
		c = &clientFlows{}
		a.clients[ip] = c
	}
	a.open++
	c.open++
	var once sync.Once
	return func() { once.Do(func() { a.release(ip) }) }, false, nil
}

func (a *Admission) release(ip netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.open--
	if c := a.clients[ip]; c != nil {
		if c.open--; c.open <= 0 {
			delete(a.clients, ip)
		}
	}
}

// ClientIP is the IP address of a client's net.Addr, unmapped and without
// a zone; the zero Addr if it has none (a net.Pipe, say).
func ClientIP(addr net.Addr) netip.Addr {
	var ap netip.AddrPort
	switch addr := addr.(type) {
	case *net.TCPAddr:
		ap = addr.AddrPort()
	case *net.UDPAddr:
		ap = addr.AddrPort()
	case nil:
		return netip.Addr{}
	default:
		ap, _ = netip.ParseAddrPort(addr.String())
	}
	return ap.Addr().Unmap().WithZone("")
}
