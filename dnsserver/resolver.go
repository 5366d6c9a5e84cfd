// Package dnsserver resolves names through the tunnel, and only through the
// tunnel: Resolver sends queries to the DNS servers of the WireGuard config,
// over a Dialer that is the proxy gate. When the gate is blocked, resolving
// fails at once; when the config names no DNS server, it fails too. There is
// no fallback to the host's resolver, ever: a name looked up there would leak
// what the user is about to visit.
package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/state"
)

// Dialer dials an address through the tunnel (the proxy gate).
type Dialer interface {
	DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error)
}

// ErrNoServers is returned when the config names no DNS server.
var ErrNoServers = errors.New("dnsserver: the config has no DNS server; names cannot be resolved (warren never asks the host's resolver)")

// DefaultServerTimeout bounds one exchange with one server.
const DefaultServerTimeout = 3 * time.Second

// Resolver resolves names by asking the tunnel's DNS servers.
type Resolver struct {
	dial    Dialer
	servers func() []netip.Addr
	// Timeout bounds one exchange with one server; 0 means
	// DefaultServerTimeout. Set it before first use.
	Timeout time.Duration
}

// NewResolver returns a resolver that asks, through d, the DNS servers (on
// port 53) that servers returns at the time of each query: those of the
// config the tunnel is up with.
func NewResolver(d Dialer, servers func() []netip.Addr) *Resolver {
	return &Resolver{dial: d, servers: servers}
}

// Exchange sends q to the servers in turn, over UDP and, if the answer is
// truncated, again over TCP, and returns the first answer. An error from the
// gate that it is blocked (a *state.BlockedError) is returned as it is,
// without trying further servers.
func (r *Resolver) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	servers := r.servers()
	if len(servers) == 0 {
		return nil, ErrNoServers
	}
	var errs []error
	for _, addr := range servers {
		s := netip.AddrPortFrom(addr, 53)
		m, err := r.exchange(ctx, "udp", s, q)
		if err == nil && m.Truncated {
			m, err = r.exchange(ctx, "tcp", s, q)
		}
		if err == nil {
			return m, nil
		}
		if errors.Is(err, state.ErrBlocked) {
			return nil, err // the gate is closed: no server can be reached
		}
		errs = append(errs, fmt.Errorf("%s: %w", s, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (r *Resolver) exchange(ctx context.Context, network string, server netip.AddrPort, q *dns.Msg) (*dns.Msg, error) {
	timeout := r.Timeout
	if timeout == 0 {
		timeout = DefaultServerTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := r.dial.DialContext(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	var m *dns.Msg
	if network == "tcp" {
		m, err = exchangeStream(c, q)
	} else {
		m, err = exchangeDatagram(c, q)
	}
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return m, err
}

// exchangeDatagram sends q as one datagram and reads datagrams until the
// answer with q's ID comes; others are strays, skipped.
func exchangeDatagram(c net.Conn, q *dns.Msg) (*dns.Msg, error) {
	b, err := q.Pack()
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(b); err != nil {
		return nil, err
	}
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) == nil && m.Id == q.Id {
			return m, nil
		}
	}
}

// exchangeStream sends q with TCP's length prefix and reads answers until the
// one with q's ID comes.
func exchangeStream(c net.Conn, q *dns.Msg) (*dns.Msg, error) {
	// dns.Conn frames as TCP since c is not a net.PacketConn.
	dc := &dns.Conn{Conn: c}
	if err := dc.WriteMsg(q); err != nil {
		return nil, err
	}
	for {
		m, err := dc.ReadMsg()
		if err != nil {
			return nil, err
		}
		if m.Id == q.Id {
			return m, nil
		}
	}
}

// LookupNetIP returns the addresses of host: network "ip" asks for both
// families (IPv4 first), "ip4" and "ip6" for one. An IP address is returned
// as it is, without a query.
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	var types []uint16
	switch network {
	case "ip":
		types = []uint16{dns.TypeA, dns.TypeAAAA}
	case "ip4":
		types = []uint16{dns.TypeA}
	case "ip6":
		types = []uint16{dns.TypeAAAA}
	default:
		return nil, fmt.Errorf("dnsserver: lookup: unknown network %q", network)
	}
	if _, ok := dns.IsDomainName(host); !ok {
		return nil, &net.DNSError{Err: "not a valid host name", Name: host, IsNotFound: true}
	}
	results := make([][]netip.Addr, len(types))
	errs := make([]error, len(types))
	var wg sync.WaitGroup
	for i, t := range types {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = r.lookup(ctx, host, t)
		}()
	}
	wg.Wait()
	var addrs []netip.Addr
	for _, rs := range results {
		addrs = append(addrs, rs...)
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *Resolver) lookup(ctx context.Context, host string, qtype uint16) ([]netip.Addr, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(host), qtype)
	m, err := r.Exchange(ctx, q)
	if err != nil {
		if errors.Is(err, state.ErrBlocked) || errors.Is(err, ErrNoServers) {
			return nil, err
		}
		var ne net.Error
		timeout := errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
		return nil, &net.DNSError{Err: err.Error(), Name: host, IsTimeout: timeout}
	}
	switch m.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	default:
		return nil, &net.DNSError{Err: "server answered " + dns.RcodeToString[m.Rcode], Name: host}
	}
	var addrs []netip.Addr
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				addrs = append(addrs, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
				addrs = append(addrs, a)
			}
		}
	}
	return addrs, nil
}
