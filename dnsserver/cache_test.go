package dnsserver

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func question(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	return q
}

func TestCacheTTL(t *testing.T) {
	const soa = "example. 300 IN SOA ns.example. host.example. 1 7200 3600 1209600 60"
	q := question("www.example.", dns.TypeA)
	reply := func(rcode int, answer, ns []string) *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(q, rcode)
		for _, s := range answer {
			m.Answer = append(m.Answer, rr(t, s))
		}
		for _, s := range ns {
			m.Ns = append(m.Ns, rr(t, s))
		}
		return m
	}
	tests := []struct {
		name string
		m    *dns.Msg
		want time.Duration
	}{
		{"least answer TTL", reply(dns.RcodeSuccess, []string{"www.example. 30 IN A 192.0.2.1", "www.example. 20 IN A 192.0.2.2"}, nil), 20 * time.Second},
		{"authority counts", reply(dns.RcodeSuccess, []string{"www.example. 30 IN A 192.0.2.1"}, []string{"example. 10 IN NS ns.example."}), 10 * time.Second},
		{"capped", reply(dns.RcodeSuccess, []string{"www.example. 604800 IN A 192.0.2.1"}, nil), DefaultCacheMaxTTL},
		{"TTL 0", reply(dns.RcodeSuccess, []string{"www.example. 0 IN A 192.0.2.1"}, nil), 0},
		{"top bit set means 0", reply(dns.RcodeSuccess, []string{"www.example. 2147483648 IN A 192.0.2.1"}, nil), 0},
		{"NXDOMAIN: SOA minimum", reply(dns.RcodeNameError, nil, []string{soa}), 60 * time.Second},
		{"NXDOMAIN: SOA TTL", reply(dns.RcodeNameError, nil, []string{"example. 5 IN SOA ns.example. host.example. 1 7200 3600 1209600 60"}), 5 * time.Second},
		{"NXDOMAIN capped", reply(dns.RcodeNameError, nil, []string{"example. 86400 IN SOA ns.example. host.example. 1 7200 3600 1209600 86400"}), maxNegativeTTL},
		{"NODATA: SOA", reply(dns.RcodeSuccess, nil, []string{soa}), 60 * time.Second},
		{"NXDOMAIN without SOA", reply(dns.RcodeNameError, nil, nil), 0},
		{"NODATA without SOA", reply(dns.RcodeSuccess, nil, nil), 0},
		{"SERVFAIL", reply(dns.RcodeServerFailure, nil, []string{soa}), 0},
		{"REFUSED", reply(dns.RcodeRefused, nil, []string{soa}), 0},
		{"truncated", func() *dns.Msg {
			m := reply(dns.RcodeSuccess, []string{"www.example. 30 IN A 192.0.2.1"}, nil)
			m.Truncated = true
			return m
		}(), 0},
		{"another question", func() *dns.Msg {
			m := reply(dns.RcodeSuccess, []string{"evil.example. 30 IN A 192.0.2.1"}, nil)
			m.Question[0].Name = "evil.example."
			return m
		}(), 0},
		{"question in other case", func() *dns.Msg {
			m := reply(dns.RcodeSuccess, []string{"WWW.example. 30 IN A 192.0.2.1"}, nil)
			m.Question[0].Name = "WWW.Example."
			return m
		}(), 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cacheTTL(q, tt.m, DefaultCacheMaxTTL); got != tt.want {
				t.Errorf("cacheTTL = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCacheKey(t *testing.T) {
	edns := func(do bool, opts ...dns.EDNS0) *dns.Msg {
		q := question("WWW.Example.", dns.TypeA)
		q.SetEdns0(1232, do)
		q.IsEdns0().Option = opts
		return q
	}
	base, ok := cacheKeyOf(question("www.example.", dns.TypeA))
	if !ok || base.name != "www.example." {
		t.Fatalf("key = %+v, %v", base, ok)
	}
	tests := []struct {
		name      string
		q         *dns.Msg
		cacheable bool
		sameAs    bool // the same key as a plain query for www.example. A
	}{
		{"case", question("WWW.EXAMPLE.", dns.TypeA), true, true},
		{"type", question("www.example.", dns.TypeAAAA), true, false},
		{"EDNS0", edns(false), true, false},
		{"cookie is ignored", edns(false, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}), true, false},
		{"client subnet", edns(false, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0)}), false, false},
		{"two questions", func() *dns.Msg {
			q := question("www.example.", dns.TypeA)
			q.Question = append(q.Question, q.Question[0])
			return q
		}(), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, ok := cacheKeyOf(tt.q)
			if ok != tt.cacheable || ok && (k == base) != tt.sameAs {
				t.Errorf("key %+v, %v; want cacheable %v, same as plain %v", k, ok, tt.cacheable, tt.sameAs)
			}
		})
	}
	// The bits that change the answer make other keys.
	k1, _ := cacheKeyOf(edns(false))
	k2, _ := cacheKeyOf(edns(true))
	cd := edns(false)
	cd.CheckingDisabled = true
	k3, _ := cacheKeyOf(cd)
	if k1 == k2 || k1 == k3 || k2 == k3 {
		t.Errorf("DO and CD do not change the key: %+v %+v %+v", k1, k2, k3)
	}
}

// A cached answer is given with the asker's ID and spelling of the
// question, TTLs less its age, and no other client's cookie.
func TestAnswerFrom(t *testing.T) {
	q := question("www.example.", dns.TypeA)
	q.SetEdns0(1232, true)
	m := new(dns.Msg)
	m.SetReply(q)
	m.Answer = []dns.RR{rr(t, "www.example. 30 IN A 192.0.2.1")}
	m.SetEdns0(1232, true)
	m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708aabbccddeeff0011"}}
	wire, err := storedForm(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.IsEdns0().Option) != 1 {
		t.Fatal("storedForm changed the message")
	}
	q2 := question("WWW.example.", dns.TypeA)
	q2.SetEdns0(1232, true)
	got, err := answerFrom(wire, q2, 12500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if got.Id != q2.Id || got.Question[0].Name != "WWW.example." {
		t.Errorf("id %d question %v; want %d and the asker's question", got.Id, got.Question, q2.Id)
	}
	if ttl := got.Answer[0].Header().Ttl; ttl != 18 {
		t.Errorf("TTL %d, want 30-12", ttl)
	}
	opt := got.IsEdns0()
	if opt == nil || !opt.Do() || len(opt.Option) != 0 {
		t.Errorf("OPT %v, want DO and no cookie", opt)
	}
}

func TestCacheLRU(t *testing.T) {
	clk := newFakeClock()
	q := question("a.example.", dns.TypeA)
	m := new(dns.Msg)
	m.SetReply(q)
	m.Answer = []dns.RR{rr(t, "a.example. 30 IN A 192.0.2.1")}
	wire, err := storedForm(m)
	if err != nil {
		t.Fatal(err)
	}
	key := func(name string) cacheKey { return cacheKey{name: name, qtype: dns.TypeA, qclass: dns.ClassINET} }
	entry := len(wire) + len("a.example.")

	tests := []struct {
		name       string
		maxBytes   int
		maxEntries int
	}{
		{"bytes", 3 * entry, 100},
		{"entries", 1 << 20, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(tt.maxBytes, tt.maxEntries, clk.Now)
			gen := c.use(servers)
			for _, n := range []string{"a.example.", "b.example.", "c.example."} {
				c.put(key(n), gen, wire, time.Minute)
			}
			if _, _, ok := c.get(key("a.example."), gen); !ok { // a is now the most recently used
				t.Fatal("a is not cached")
			}
			c.put(key("d.example."), gen, wire, time.Minute)
			for n, want := range map[string]bool{"a.example.": true, "b.example.": false, "c.example.": true, "d.example.": true} {
				if _, _, ok := c.get(key(n), gen); ok != want {
					t.Errorf("%s cached: %v, want %v", n, ok, want)
				}
			}
			st := c.snapshot()
			if st.Entries != 3 || st.Bytes != 3*entry || st.Evictions != 1 {
				t.Errorf("stats %+v, want 3 entries of %d bytes and 1 eviction", st, entry)
			}
		})
	}

	t.Run("too big for the cache", func(t *testing.T) {
		c := newCache(entry-1, 100, clk.Now)
		gen := c.use(servers)
		c.put(key("a.example."), gen, wire, time.Minute)
		if st := c.snapshot(); st.Entries != 0 {
			t.Errorf("stats %+v, want nothing cached", st)
		}
	})
}

func TestCacheExpiresAndFlushes(t *testing.T) {
	clk := newFakeClock()
	c := newCache(1<<20, 100, clk.Now)
	k := cacheKey{name: "a.example.", qtype: dns.TypeA, qclass: dns.ClassINET}
	gen := c.use(servers)
	c.put(k, gen, []byte("x"), 30*time.Second)
	clk.Advance(29 * time.Second)
	if _, age, ok := c.get(k, gen); !ok || age != 29*time.Second {
		t.Fatalf("at 29s: age %v, %v; want a hit of age 29s", age, ok)
	}
	clk.Advance(time.Second)
	if _, _, ok := c.get(k, gen); ok {
		t.Fatal("at 30s: still cached")
	}

	c.put(k, gen, []byte("x"), 30*time.Second)
	reordered := []netip.Addr{servers[1], servers[0]}
	if c.use(reordered) != gen {
		t.Fatal("the same servers in another order flushed the cache")
	}
	gen2 := c.use(servers[:1])
	if _, _, ok := c.get(k, gen2); ok {
		t.Fatal("cached across a change of servers")
	}
	// An answer to a query asked under the old servers is not stored.
	c.put(k, gen, []byte("x"), 30*time.Second)
	if _, _, ok := c.get(k, gen2); ok {
		t.Fatal("an answer from the old servers was stored")
	}
	if st := c.snapshot(); st.Flushes != 1 || st.Hits != 1 || st.Misses != 3 {
		t.Errorf("stats %+v, want 1 flush, 1 hit, 3 misses", st)
	}
}
