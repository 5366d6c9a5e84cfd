// Package dnsserver resolves names through the tunnel, and only through the
// tunnel: Resolver sends queries to the DNS servers of the WireGuard config,
// over a Dialer that is the proxy gate, and keeps their answers in a small
// cache; Server is the local DNS server (UDP and TCP) that applications ask,
// and answers through a Resolver.
//
// When the gate is blocked, resolving fails at once, and nothing is answered,
// not even from the cache; when the config names no DNS server, it fails
// too. There is no fallback to the host's resolver, ever: a name looked up
// there would leak what the user is about to visit.
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

// Dialer is the way to the tunnel's DNS servers: the proxy gate.
type Dialer interface {
	// Wait returns nil when the dialer is open, and otherwise an error
	// that wraps state.ErrBlocked (the gate's *state.BlockedError), at
	// once or after waiting a while for a tunnel that is connecting. When
	// ctx is done, it must not wait: it says at once whether it is open.
	Wait(ctx context.Context) error
	// DialContext dials to, an address in the tunnel. While the dialer is
	// closed it fails with an error that wraps state.ErrBlocked, and a
	// connection it made is cut when it closes.
	DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error)
}

// ErrNoServers is returned when the config names no DNS server.
var ErrNoServers = errors.New("dnsserver: the config has no DNS server; names cannot be resolved (warren never asks the host's resolver)")

// ErrTooManyQueries is returned, at once, for a query that would go upstream
// while MaxInFlight queries already are.
var ErrTooManyQueries = errors.New("dnsserver: too many queries in flight")

// Defaults for the Resolver's optional fields.
const (
	DefaultServerTimeout = 3 * time.Second
	DefaultMaxInFlight   = 256
)

// Resolver resolves names by asking the tunnel's DNS servers, and caches
// their answers. It is safe for concurrent use. Set its fields before first
// use.
//
// Every query, cached or not, first asks the Dialer whether it is open; if
// not, the query fails with its error, and nothing is served from the cache.
// Identical cacheable queries in flight at the same time are asked once.
type Resolver struct {
	dial    Dialer
	servers func() []netip.Addr

	// Timeout bounds one exchange with one server; 0 means
	// DefaultServerTimeout.
	Timeout time.Duration
	// CacheBytes bounds the cache's size, counted as the bytes of the
	// packed answers and their names; 0 means DefaultCacheBytes, and a
	// negative value turns caching off.
	CacheBytes int
	// CacheEntries bounds the number of cached answers; 0 means
	// DefaultCacheEntries, and a negative value turns caching off.
	CacheEntries int
	// CacheMaxTTL caps how long an answer is cached, whatever its TTL; 0
	// means DefaultCacheMaxTTL. Negative answers are kept 3 hours at most.
	CacheMaxTTL time.Duration
	// MaxInFlight bounds the queries being asked of the servers at once;
	// one more fails at once with ErrTooManyQueries. 0 or less means
	// DefaultMaxInFlight.
	MaxInFlight int

	// now is the cache's clock; nil means time.Now. Tests set it.
	now func() time.Time

	initOnce sync.Once
	cache    *cache
	maxTTL   time.Duration
	sem      chan struct{} // one token per query in flight upstream

	// mu guards flights.
	mu      sync.Mutex
	flights map[flightKey]*flight
}

// flightKey names a query in flight upstream, which identical queries may
// wait for rather than ask again.
type flightKey struct {
	cacheKey
	gen uint64
}

// flight is a query in flight upstream. Its fields are set before done is
// closed.
type flight struct {
	done    chan struct{}
	waiters int    // guarded by Resolver.mu
	wire    []byte // the answer in stored form
	err     error
	// shared reports whether wire or err stands for the waiters too; it
	// does not if the one who asked gave up (its context ended).
	shared bool
}

// NewResolver returns a resolver that asks, through d, the DNS servers (on
// port 53) that servers returns at the time of each query: those of the
// config the tunnel is up with. When that set of servers changes, the cache
// is emptied.
func NewResolver(d Dialer, servers func() []netip.Addr) *Resolver {
	return &Resolver{dial: d, servers: servers}
}

func (r *Resolver) init() {
	r.initOnce.Do(func() {
		now := r.now
		if now == nil {
			now = time.Now
		}
		size, entries := r.CacheBytes, r.CacheEntries
		if size == 0 {
			size = DefaultCacheBytes
		}
		if entries == 0 {
			entries = DefaultCacheEntries
		}
		if size < 0 || entries < 0 {
			size, entries = 0, 0 // caching off; the cache still tracks the servers
		}
		r.cache = newCache(size, entries, now)
		r.maxTTL = r.CacheMaxTTL
		if r.maxTTL <= 0 {
			r.maxTTL = DefaultCacheMaxTTL
		}
		n := r.MaxInFlight
		if n <= 0 {
			n = DefaultMaxInFlight
		}
		r.sem = make(chan struct{}, n)
		r.flights = make(map[flightKey]*flight)
	})
}

// CacheStats returns the cache's counters.
func (r *Resolver) CacheStats() CacheStats {
	r.init()
	return r.cache.snapshot()
}

// Exchange answers q: from the cache, or by sending it (with its OPT record
// as it is, under a fresh ID) to the servers in turn, over UDP and, if the
// answer is truncated, again over TCP. The answer carries q's ID; q is not
// modified.
//
// While the Dialer is closed, Exchange returns its error (one that wraps
// state.ErrBlocked), also if the answer is cached, and also if the Dialer
// closes while the servers are asked. It returns ErrNoServers if the config
// names no server, ErrTooManyQueries if MaxInFlight queries are already
// asked, and otherwise the servers' errors.
func (r *Resolver) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	m, _, err := r.resolve(ctx, q)
	return m, err
}

// source says where an answer came from.
type source uint8

const (
	fromServer source = iota // asked of a server for this query
	fromCache                // the cache
	fromFlight               // an identical query's, asked at the same time
)

func (r *Resolver) resolve(ctx context.Context, q *dns.Msg) (*dns.Msg, source, error) {
	r.init()
	// The gate first: while the tunnel is not Connected, nothing is
	// answered, not even from the cache.
	if err := r.dial.Wait(ctx); err != nil {
		return nil, 0, err
	}
	servers := r.servers()
	gen := r.cache.use(servers)
	if len(servers) == 0 {
		return nil, 0, ErrNoServers
	}
	key, ok := cacheKeyOf(q)
	if !ok {
		m, err := r.ask(ctx, servers, q)
		return m, fromServer, err
	}
	if wire, age, ok := r.cache.get(key, gen); ok {
		if m, err := answerFrom(wire, q, age); err == nil {
			return m, fromCache, nil
		}
	}
	fk := flightKey{key, gen}
	for {
		r.mu.Lock()
		if f := r.flights[fk]; f != nil {
			f.waiters++
			r.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				r.mu.Lock()
				f.waiters--
				r.mu.Unlock()
				return nil, 0, ctx.Err()
			}
			if !f.shared {
				continue // its asker gave up: ask again
			}
			if f.err != nil {
				return nil, 0, f.err
			}
			m, err := answerFrom(f.wire, q, 0)
			return m, fromFlight, err
		}
		f := &flight{done: make(chan struct{})}
		r.flights[fk] = f
		r.mu.Unlock()

		m, err := r.ask(ctx, servers, q)
		if err == nil {
			if wire, perr := storedForm(m); perr == nil {
				f.wire, f.shared = wire, true
				if ttl := cacheTTL(q, m, r.maxTTL); ttl > 0 {
					r.cache.put(key, gen, wire, ttl)
				}
			}
		} else {
			f.err, f.shared = err, ctx.Err() == nil
		}
		r.mu.Lock()
		delete(r.flights, fk)
		r.mu.Unlock()
		close(f.done)
		return m, fromServer, err
	}
}

// doneCtx is a context that is already done: Wait with it does not wait.
var doneCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// ask sends q upstream, within the MaxInFlight bound.
func (r *Resolver) ask(ctx context.Context, servers []netip.Addr, q *dns.Msg) (*dns.Msg, error) {
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	default:
		return nil, ErrTooManyQueries
	}
	u := *q // a shallow copy, to send under a fresh ID
	u.Id = dns.Id()
	m, err := r.askServers(ctx, servers, &u)
	if err != nil {
		if !errors.Is(err, state.ErrBlocked) {
			// The gate cuts the flows when it closes: if that is why
			// asking failed, say so.
			if berr := r.dial.Wait(doneCtx); berr != nil {
				return nil, berr
			}
		}
		return nil, err
	}
	m.Id = q.Id
	return m, nil
}

// askServers sends q to the servers in turn, over UDP and, if the answer is
// truncated, again over TCP, and returns the first answer. An error from the
// gate that it is blocked (a *state.BlockedError) is returned as it is,
// without trying further servers.
func (r *Resolver) askServers(ctx context.Context, servers []netip.Addr, q *dns.Msg) (*dns.Msg, error) {
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

// isAnswer reports whether m answers q: a response with q's ID, and q's
// question if both have one (an error answer may not).
func isAnswer(q, m *dns.Msg) bool {
	return m.Response && m.Id == q.Id && (len(m.Question) == 0 || len(q.Question) != 1 || sameQuestion(q, m))
}

// exchangeDatagram sends q as one datagram and reads datagrams until the
// answer to q comes; others are strays, skipped.
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
		if m.Unpack(buf[:n]) == nil && isAnswer(q, m) {
			return m, nil
		}
	}
}

// exchangeStream sends q with TCP's length prefix and reads answers until the
// one to q comes.
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
		if isAnswer(q, m) {
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
