package dnsserver

import (
	"container/list"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Cache defaults; see the Resolver fields of the same names.
const (
	DefaultCacheBytes   = 4 << 20
	DefaultCacheEntries = 10000
	DefaultCacheMaxTTL  = 24 * time.Hour
)

// maxNegativeTTL caps how long a negative answer (NXDOMAIN or NODATA) is
// kept, whatever its SOA says: RFC 2308 section 5 suggests one to three
// hours.
const maxNegativeTTL = 3 * time.Hour

// CacheStats counts the work of a Resolver's cache.
type CacheStats struct {
	// Hits and Misses count lookups of cacheable queries: a hit was
	// answered from the cache, a miss was not (nothing stored, or expired).
	Hits, Misses uint64
	// Evictions counts entries dropped to stay within the size bounds, not
	// those that expired or were flushed.
	Evictions uint64
	// Flushes counts the times entries were dropped because the set of DNS
	// servers changed.
	Flushes uint64
	// Entries and Bytes are what the cache holds now.
	Entries, Bytes int
}

// cacheKey is what an answer depends on: the question, and the bits of the
// query that change the answer.
type cacheKey struct {
	name   string // lower-cased
	qtype  uint16
	qclass uint16
	flags  keyFlags
}

type keyFlags uint8

const (
	keyRD   keyFlags = 1 << iota // recursion desired
	keyCD                        // checking disabled (DNSSEC)
	keyAD                        // authentic data asked for (RFC 6840)
	keyEDNS                      // the query has an OPT record: so will the answer
	keyDO                        // DNSSEC OK: the answer carries signatures
)

// cacheKeyOf returns the key of q, and false if q is not one the cache
// answers: it must be a plain query with one question, and no other record
// than an OPT, whose options, if any, do not change the answer (a COOKIE,
// which the cache strips, or PADDING). A query with, say, an EDNS Client
// Subnet option always goes upstream.
func cacheKeyOf(q *dns.Msg) (cacheKey, bool) {
	if q.Response || q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 || len(q.Answer) != 0 || len(q.Ns) != 0 {
		return cacheKey{}, false
	}
	var f keyFlags
	if q.RecursionDesired {
		f |= keyRD
	}
	if q.CheckingDisabled {
		f |= keyCD
	}
	if q.AuthenticatedData {
		f |= keyAD
	}
	for _, rr := range q.Extra {
		opt, ok := rr.(*dns.OPT)
		if !ok || f&keyEDNS != 0 || opt.Version() != 0 {
			return cacheKey{}, false // TSIG, a second OPT, or an EDNS version we do not know
		}
		f |= keyEDNS
		if opt.Do() {
			f |= keyDO
		}
		for _, o := range opt.Option {
			switch o.(type) {
			case *dns.EDNS0_COOKIE, *dns.EDNS0_PADDING:
			default:
				return cacheKey{}, false
			}
		}
	}
	qq := q.Question[0]
	return cacheKey{name: strings.ToLower(qq.Name), qtype: qq.Qtype, qclass: qq.Qclass, flags: f}, true
}

// cacheTTL returns how long m, the answer to q, may be cached, at most
// maxTTL; 0 means it may not be.
//
// Only NOERROR and NXDOMAIN answers that are not truncated and answer q's
// question are cached. A positive answer is kept for the least TTL of its
// records (all sections but the OPT); a negative one (NXDOMAIN, or NOERROR
// with no answer: NODATA) likewise, where the SOA in the authority section
// counts as min(its TTL, its MINIMUM) as RFC 2308 says, and at most
// maxNegativeTTL. A negative answer without a SOA is not cached (RFC 2308
// section 5). An answer whose least TTL is 0 is not cached.
func cacheTTL(q, m *dns.Msg, maxTTL time.Duration) time.Duration {
	if !m.Response || m.Truncated || m.Opcode != dns.OpcodeQuery || !sameQuestion(q, m) {
		return 0
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return 0
	}
	ttl := uint32(math.MaxUint32)
	soa := false
	for i, section := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range section {
			if _, ok := rr.(*dns.OPT); ok {
				continue
			}
			t := rr.Header().Ttl
			if t > math.MaxInt32 {
				t = 0 // RFC 2181 section 8: a TTL with the top bit set is 0
			}
			if s, ok := rr.(*dns.SOA); ok && i == 1 {
				soa = true
				t = min(t, s.Minttl)
			}
			ttl = min(ttl, t)
		}
	}
	negative := m.Rcode == dns.RcodeNameError || len(m.Answer) == 0
	if negative {
		if !soa {
			return 0
		}
		maxTTL = min(maxTTL, maxNegativeTTL)
	}
	if ttl == math.MaxUint32 {
		return 0
	}
	return min(time.Duration(ttl)*time.Second, maxTTL)
}

// sameQuestion reports whether m asks (or answers) q's one question; names
// compare without regard to case.
func sameQuestion(q, m *dns.Msg) bool {
	if len(q.Question) != 1 || len(m.Question) != 1 {
		return false
	}
	a, b := q.Question[0], m.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// storedForm packs m as the cache keeps it and as waiting queries share it:
// ID 0, and no COOKIE option, since the client cookie in it is one client's.
func storedForm(m *dns.Msg) ([]byte, error) {
	s := *m // a shallow copy: only the header and the Extra slice change
	s.Id = 0
	s.Compress = true
	s.Extra = nil
	for _, rr := range m.Extra {
		if opt, ok := rr.(*dns.OPT); ok && slices.ContainsFunc(opt.Option, isCookie) {
			o := *opt
			o.Option = slices.DeleteFunc(slices.Clone(opt.Option), isCookie)
			rr = &o
		}
		s.Extra = append(s.Extra, rr)
	}
	return s.Pack()
}

func isCookie(o dns.EDNS0) bool {
	_, ok := o.(*dns.EDNS0_COOKIE)
	return ok
}

// answerFrom makes the answer to q from a message in stored form, held for
// age: q's ID and question, and every TTL less the whole seconds of age.
func answerFrom(wire []byte, q *dns.Msg, age time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	if err := m.Unpack(wire); err != nil {
		return nil, err
	}
	m.Id = q.Id
	m.Question = slices.Clone(q.Question) // the client's spelling of the name
	secs := uint32(min(age/time.Second, math.MaxUint32))
	for _, section := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range section {
			if _, ok := rr.(*dns.OPT); ok {
				continue // its TTL field holds flags, not a TTL
			}
			h := rr.Header()
			h.Ttl -= min(h.Ttl, secs)
		}
	}
	return m, nil
}

// cache holds answers in stored form, for the TTL cacheTTL gives them, in
// at most maxBytes (the packed messages and their names) and maxEntries
// entries; past either bound, the least recently used entries go. Entries
// belong to one set of DNS servers: when the set changes, the cache is
// emptied, so that one config's answers are never given under another.
type cache struct {
	maxBytes   int
	maxEntries int
	now        func() time.Time

	// mu guards the fields below.
	mu      sync.Mutex
	servers []netip.Addr // the set of servers the entries came from
	gen     uint64       // increases with every flush
	entries map[cacheKey]*list.Element
	lru     list.List // of *cacheEntry, most recently used first
	bytes   int
	stats   CacheStats
}

type cacheEntry struct {
	key     cacheKey
	wire    []byte // stored form; never modified
	stored  time.Time
	expires time.Time
}

func (e *cacheEntry) size() int { return len(e.wire) + len(e.key.name) }

func newCache(maxBytes, maxEntries int, now func() time.Time) *cache {
	return &cache{maxBytes: maxBytes, maxEntries: maxEntries, now: now, entries: make(map[cacheKey]*list.Element)}
}

// use notes that a query is about to be asked of servers, flushing the
// cache if they are not the set of servers its entries came from. It
// returns the generation to pass to get and put: an answer to a query made
// under one generation is neither served from nor stored in another.
func (c *cache) use(servers []netip.Addr) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !sameSet(c.servers, servers) {
		if c.lru.Len() > 0 {
			c.stats.Flushes++
		}
		c.gen++
		c.servers = slices.Clone(servers)
		clear(c.entries)
		c.lru.Init()
		c.bytes = 0
	}
	return c.gen
}

func sameSet(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			return false
		}
	}
	return true
}

// get returns the stored answer for key and how long it has been held, if
// there is one of generation gen that has not expired.
func (c *cache) get(key cacheKey, gen uint64) (wire []byte, age time.Duration, ok bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.entries[key]
	if el == nil || gen != c.gen {
		c.stats.Misses++
		return nil, 0, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.removeLocked(el)
		c.stats.Misses++
		return nil, 0, false
	}
	c.lru.MoveToFront(el)
	c.stats.Hits++
	return e.wire, max(now.Sub(e.stored), 0), true
}

// put stores wire, a stored-form answer, under key for ttl, unless the
// cache has been flushed since generation gen, or the entry alone exceeds
// the bounds.
func (c *cache) put(key cacheKey, gen uint64, wire []byte, ttl time.Duration) {
	now := c.now()
	e := &cacheEntry{key: key, wire: wire, stored: now, expires: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen || ttl <= 0 || e.size() > c.maxBytes || c.maxEntries <= 0 {
		return
	}
	if el := c.entries[key]; el != nil {
		c.removeLocked(el)
	}
	c.entries[key] = c.lru.PushFront(e)
	c.bytes += e.size()
	for c.bytes > c.maxBytes || c.lru.Len() > c.maxEntries {
		c.removeLocked(c.lru.Back())
		c.stats.Evictions++
	}
}

func (c *cache) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.entries, e.key)
	c.bytes -= e.size()
}

func (c *cache) snapshot() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries, s.Bytes = c.lru.Len(), c.bytes
	return s
}
