package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/state"
)

// testZone answers as the tunnel's DNS server would:
//
//	www.example.    A, AAAA and TXT with TTL 30; NODATA for other types
//	big.example.    TXT: 40 records, too many for 512 bytes
//	zero.example.   A with TTL 0
//	nosoa.example.  NXDOMAIN without a SOA
//	fail.example.   SERVFAIL
//	anything else   NXDOMAIN
//
// Negative answers carry example.'s SOA (TTL 300, MINIMUM 60) but for
// nosoa.example.
func testZone(_ string, q *dns.Msg) []*dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	if opt := q.IsEdns0(); opt != nil {
		m.SetEdns0(4096, opt.Do())
	}
	qq := q.Question[0]
	hdr := func(ttl uint32) dns.RR_Header {
		return dns.RR_Header{Name: qq.Name, Rrtype: qq.Qtype, Class: dns.ClassINET, Ttl: ttl}
	}
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 300},
		Ns: "ns.example.", Mbox: "hostmaster.example.", Serial: 1, Refresh: 7200, Retry: 3600, Expire: 1209600, Minttl: 60}
	switch strings.ToLower(qq.Name) {
	case "www.example.":
		switch qq.Qtype {
		case dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: hdr(30), A: net.IPv4(192, 0, 2, 10)}}
		case dns.TypeAAAA:
			m.Answer = []dns.RR{&dns.AAAA{Hdr: hdr(30), AAAA: net.ParseIP("2001:db8::10")}}
		case dns.TypeTXT:
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr(30), Txt: []string{"hello from the tunnel"}}}
		default:
			m.Ns = []dns.RR{soa}
		}
	case "big.example.":
		for i := range 40 {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(30), Txt: []string{fmt.Sprintf("%02d %s", i, strings.Repeat("x", 47))}})
		}
	case "zero.example.":
		m.Answer = []dns.RR{&dns.A{Hdr: hdr(0), A: net.IPv4(192, 0, 2, 11)}}
	case "nosoa.example.":
		m.Rcode = dns.RcodeNameError
	case "fail.example.":
		m.Rcode = dns.RcodeServerFailure
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{soa}
	}
	return []*dns.Msg{m}
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

// count returns the number of records at level whose message contains msg.
func (l *logRecorder) count(level slog.Level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Level == level && strings.Contains(r.Message, msg) {
			n++
		}
	}
	return n
}

// waitCount is count once it reaches want, or after a while: a handler logs
// its query after writing the answer, so the line may come just after it.
func (l *logRecorder) waitCount(level slog.Level, msg string, want int) int {
	n := l.count(level, msg)
	for deadline := time.Now().Add(2 * time.Second); n < want && time.Now().Before(deadline); n = l.count(level, msg) {
		time.Sleep(time.Millisecond)
	}
	return n
}

// listen opens UDP and TCP sockets on the same port of 127.0.0.1.
func listen(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		pc.Close() // the TCP port is taken: try another
	}
	t.Fatal("no port free for both UDP and TCP")
	return nil, nil
}

// serve runs s on 127.0.0.1 until the test ends, and then checks that
// Shutdown stops it.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	pc, l := listen(t)
	done := make(chan error, 1)
	go func() { done <- s.Serve(pc, l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return pc.LocalAddr().String()
}

// harness is a DNS server on 127.0.0.1, answering through a Resolver whose
// tunnel is a fakeDialer serving testZone.
type harness struct {
	d    *fakeDialer
	r    *Resolver
	clk  *fakeClock
	logs *logRecorder
	srv  *Server
	addr string
	// hold, if set, is called with every query the tunnel's server reads,
	// before it answers; if it returns true, the server answers nothing.
	hold func(q *dns.Msg) (drop bool)

	mu      sync.Mutex
	servers []netip.Addr
}

func newHarness(t *testing.T, configure func(h *harness)) *harness {
	t.Helper()
	h := &harness{clk: newFakeClock(), logs: &logRecorder{}, servers: servers}
	h.d = &fakeDialer{answer: func(network string, q *dns.Msg) []*dns.Msg {
		if h.hold != nil && h.hold(q) {
			return nil
		}
		return testZone(network, q)
	}}
	t.Cleanup(h.d.wg.Wait) // runs last, once the server is shut down
	h.r = NewResolver(h.d, h.getServers)
	h.r.now = h.clk.Now
	h.srv = &Server{Resolver: h.r, Logger: slog.New(h.logs)}
	if configure != nil {
		configure(h)
	}
	h.addr = serve(t, h.srv)
	return h
}

func (h *harness) getServers() []netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.servers
}

func (h *harness) setServers(addrs ...netip.Addr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.servers = addrs
}

// exchange sends q to the server with miekg's client.
func (h *harness) exchange(network string, q *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	m, _, err := c.Exchange(q, h.addr)
	if err == nil && m.Id != q.Id {
		err = fmt.Errorf("answer has ID %d, want %d", m.Id, q.Id)
	}
	return m, err
}

func (h *harness) mustExchange(t *testing.T, network string, q *dns.Msg) *dns.Msg {
	t.Helper()
	m, err := h.exchange(network, q)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", q.Question[0].Name, dns.TypeToString[q.Question[0].Qtype], network, err)
	}
	return m
}

func (h *harness) ask(t *testing.T, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return h.mustExchange(t, network, question(name, qtype))
}

// asked returns how many times the tunnel's servers were asked name, qtype.
func (h *harness) asked(name string, qtype uint16) int {
	n := 0
	for _, q := range h.d.queries() {
		if strings.EqualFold(q.Question[0].Name, name) && q.Question[0].Qtype == qtype {
			n++
		}
	}
	return n
}

func ede(m *dns.Msg) *dns.EDNS0_EDE {
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				return e
			}
		}
	}
	return nil
}

func TestServerAnswers(t *testing.T) {
	h := newHarness(t, nil)
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer string // in the text of the answer section
	}{
		{"A", "www.example.", dns.TypeA, dns.RcodeSuccess, "192.0.2.10"},
		{"AAAA", "www.example.", dns.TypeAAAA, dns.RcodeSuccess, "2001:db8::10"},
		{"TXT", "www.example.", dns.TypeTXT, dns.RcodeSuccess, "hello from the tunnel"},
		{"NXDOMAIN", "nowhere.example.", dns.TypeA, dns.RcodeNameError, ""},
		{"NODATA", "www.example.", dns.TypeMX, dns.RcodeSuccess, ""},
		{"upstream SERVFAIL", "fail.example.", dns.TypeA, dns.RcodeServerFailure, ""},
	}
	queries := 0
	for _, tt := range tests {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(tt.name+"/"+network, func(t *testing.T) {
				q := question(strings.ToUpper(tt.qname), tt.qtype) // the client's spelling comes back
				m := h.mustExchange(t, network, q)
				queries++
				if m.Rcode != tt.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
				}
				if len(m.Question) != 1 || m.Question[0] != q.Question[0] {
					t.Errorf("question %v, want %v", m.Question, q.Question)
				}
				var text []string
				for _, rr := range m.Answer {
					text = append(text, rr.String())
				}
				if got := strings.Join(text, "\n"); tt.answer == "" && got != "" || !strings.Contains(got, tt.answer) {
					t.Errorf("answer %q, want %q", got, tt.answer)
				}
			})
		}
	}
	if n := h.logs.waitCount(slog.LevelDebug, "query", queries); n != queries {
		t.Errorf("%d debug lines for %d queries", n, queries)
	}
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		if n := h.logs.count(level, ""); n != 0 {
			t.Errorf("%d lines at %v", n, level)
		}
	}
}

func TestServerRefusesWhenBlockedEvenIfCached(t *testing.T) {
	h := newHarness(t, nil)
	if m := h.ask(t, "udp", "www.example.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("rcode %s while connected", dns.RcodeToString[m.Rcode])
	}
	h.d.setBlocked(&state.BlockedError{State: state.Connecting, Cause: state.CauseHandshakeTimeout})
	for _, network := range []string{"udp", "tcp"} {
		q := question("www.example.", dns.TypeA)
		q.SetEdns0(1232, false)
		m := h.mustExchange(t, network, q)
		if m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
			t.Fatalf("%s: rcode %s with %d answers, want REFUSED and none", network, dns.RcodeToString[m.Rcode], len(m.Answer))
		}
		if e := ede(m); e == nil || e.InfoCode != dns.ExtendedErrorCodeNotReady || !strings.Contains(e.ExtraText, "connecting") {
			t.Errorf("%s: extended error %v, want Not Ready saying the tunnel is connecting", network, e)
		}
	}
	if st := h.r.CacheStats(); st.Hits != 0 {
		t.Fatalf("the cache was consulted while blocked: %+v", st)
	}
	h.d.setBlocked(nil)
	if m := h.ask(t, "udp", "www.example.", dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("rcode %s once connected again", dns.RcodeToString[m.Rcode])
	}
	if st := h.r.CacheStats(); st.Hits != 1 || h.asked("www.example.", dns.TypeA) != 1 {
		t.Errorf("stats %+v, asked %d times; want the answer from the cache", st, h.asked("www.example.", dns.TypeA))
	}
}

func TestServerRefusesWithoutServers(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.servers = nil })
	const warning = "no DNS server"
	for range 5 {
		if m := h.ask(t, "udp", "www.example.", dns.TypeA); m.Rcode != dns.RcodeRefused {
			t.Fatalf("rcode %s, want REFUSED", dns.RcodeToString[m.Rcode])
		}
	}
	if n := h.logs.count(slog.LevelWarn, warning); n != 1 {
		t.Fatalf("%d warnings for 5 refused queries, want 1", n)
	}
	h.setServers(servers...) // a config with DNS
	if m := h.ask(t, "tcp", "www.example.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("rcode %s with servers", dns.RcodeToString[m.Rcode])
	}
	h.setServers() // and one without again: a new situation, a new warning
	for range 3 {
		if m := h.ask(t, "tcp", "www.example.", dns.TypeA); m.Rcode != dns.RcodeRefused {
			t.Fatalf("rcode %s, want REFUSED", dns.RcodeToString[m.Rcode])
		}
	}
	if n := h.logs.count(slog.LevelWarn, warning); n != 2 {
		t.Fatalf("%d warnings, want 2", n)
	}
	if dials := h.d.dialed(); len(dials) != 1 {
		t.Errorf("dials %v, want one, while there were servers", dials)
	}
}

// The SOCKS5 and HTTP proxies' lookups and the DNS server share the cache,
// and a cached answer's TTLs count down.
func TestServerCacheHit(t *testing.T) {
	var mu sync.Mutex
	var observed []string
	h := newHarness(t, func(h *harness) {
		h.srv.Observe = func(rcode int, cached bool) {
			mu.Lock()
			defer mu.Unlock()
			observed = append(observed, fmt.Sprintf("%s cached=%v", dns.RcodeToString[rcode], cached))
		}
	})
	addrs, err := h.r.LookupNetIP(context.Background(), "ip4", "www.example")
	if err != nil || len(addrs) != 1 {
		t.Fatalf("LookupNetIP: %v, %v", addrs, err)
	}
	m := h.ask(t, "udp", "www.example.", dns.TypeA)
	if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 30 {
		t.Fatalf("answer %v, want TTL 30", m.Answer)
	}
	h.clk.Advance(10 * time.Second)
	m = h.ask(t, "tcp", "WWW.example.", dns.TypeA)
	if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 20 {
		t.Fatalf("answer %v, want TTL 20", m.Answer)
	}
	if n := h.asked("www.example.", dns.TypeA); n != 1 {
		t.Errorf("asked %d times, want once", n)
	}
	if st := h.r.CacheStats(); st.Hits != 2 || st.Misses != 1 || st.Entries != 1 {
		t.Errorf("stats %+v, want 2 hits, 1 miss, 1 entry", st)
	}
	if n := h.logs.waitCount(slog.LevelDebug, "query", 2); n != 2 {
		t.Errorf("%d debug lines, want 2", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"NOERROR cached=true", "NOERROR cached=true"}; !slices.Equal(observed, want) {
		t.Errorf("observed %q, want %q", observed, want)
	}
}

func TestServerCacheExpiry(t *testing.T) {
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		ttl    time.Duration // 0: not cached
		answer bool          // whether the answer section has the record to check
	}{
		{"positive", "www.example.", dns.TypeA, 30 * time.Second, true},
		{"NXDOMAIN from the SOA", "nowhere.example.", dns.TypeA, 60 * time.Second, false},
		{"NODATA from the SOA", "www.example.", dns.TypeMX, 60 * time.Second, false},
		{"NXDOMAIN without SOA", "nosoa.example.", dns.TypeA, 0, false},
		{"TTL 0", "zero.example.", dns.TypeA, 0, true},
		{"SERVFAIL", "fail.example.", dns.TypeA, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.ask(t, "udp", tt.qname, tt.qtype)
			if tt.ttl == 0 {
				h.ask(t, "udp", tt.qname, tt.qtype)
				if n := h.asked(tt.qname, tt.qtype); n != 2 {
					t.Fatalf("asked %d times, want 2: it was cached", n)
				}
				return
			}
			h.clk.Advance(tt.ttl - time.Second)
			m := h.ask(t, "udp", tt.qname, tt.qtype)
			if n := h.asked(tt.qname, tt.qtype); n != 1 {
				t.Fatalf("asked %d times within the TTL, want once", n)
			}
			section := m.Ns // the SOA
			if tt.answer {
				section = m.Answer
			}
			if len(section) == 0 {
				t.Fatal("nothing to check the TTL of")
			}
			want := section[0].Header().Ttl
			h.clk.Advance(time.Second)
			m = h.ask(t, "udp", tt.qname, tt.qtype)
			if n := h.asked(tt.qname, tt.qtype); n != 2 {
				t.Fatalf("asked %d times once expired, want 2", n)
			}
			if tt.answer {
				section = m.Answer
			} else {
				section = m.Ns
			}
			if got := section[0].Header().Ttl; got != want+uint32(tt.ttl/time.Second)-1 {
				t.Errorf("fresh TTL %d, want the upstream's", got)
			}
		})
	}
}

func TestServerFlushesWhenServersChange(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := newHarness(t, func(h *harness) {
		h.hold = func(q *dns.Msg) bool {
			if q.Question[0].Name == "late.example." {
				select {
				case started <- struct{}{}:
				default:
				}
				<-release
			}
			return false
		}
	})
	h.ask(t, "udp", "www.example.", dns.TypeA)
	h.setServers(servers[1], servers[0]) // the same set
	h.ask(t, "udp", "www.example.", dns.TypeA)
	if n := h.asked("www.example.", dns.TypeA); n != 1 {
		t.Fatalf("asked %d times, want once: the same servers flushed the cache", n)
	}
	h.setServers(servers[1]) // a new config
	h.ask(t, "udp", "www.example.", dns.TypeA)
	if n := h.asked("www.example.", dns.TypeA); n != 2 {
		t.Fatalf("asked %d times, want twice: the cache was not flushed", n)
	}
	if dials := h.d.dialed(); dials[len(dials)-1] != "udp 10.64.0.2:53" {
		t.Errorf("dials %v, want the new server last", dials)
	}

	// An answer asked of the old servers and received after the change is
	// not kept.
	late := make(chan *dns.Msg, 1)
	go func() {
		m, _ := h.exchange("udp", question("late.example.", dns.TypeA))
		late <- m
	}()
	<-started
	h.setServers(servers[0])
	h.ask(t, "udp", "www.example.", dns.TypeA) // the first query under the new servers flushes
	close(release)
	if m := <-late; m == nil || m.Rcode != dns.RcodeNameError {
		t.Fatalf("late answer %v", m)
	}
	h.ask(t, "udp", "late.example.", dns.TypeA)
	if n := h.asked("late.example.", dns.TypeA); n != 2 {
		t.Errorf("asked %d times, want twice: the old servers' answer was cached", n)
	}
	if st := h.r.CacheStats(); st.Flushes != 2 {
		t.Errorf("stats %+v, want 2 flushes", st)
	}
}

func TestServerPassesEDNS0Upstream(t *testing.T) {
	h := newHarness(t, nil)
	q := question("www.example.", dns.TypeA)
	q.SetEdns0(1232, true)
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"}
	q.IsEdns0().Option = append(q.IsEdns0().Option, cookie)
	m := h.mustExchange(t, "udp", q)
	if m.Rcode != dns.RcodeSuccess || m.IsEdns0() == nil {
		t.Fatalf("answer %v, want one with an OPT record", m)
	}
	got := h.d.queries()
	opt := got[len(got)-1].IsEdns0()
	if opt == nil || !opt.Do() || opt.UDPSize() != 1232 || len(opt.Option) != 1 || opt.Option[0].String() != cookie.String() {
		t.Fatalf("upstream saw OPT %v, want DO, size 1232 and the cookie", opt)
	}

	h.ask(t, "udp", "www.example.", dns.TypeAAAA)
	got = h.d.queries()
	if opt := got[len(got)-1].IsEdns0(); opt != nil {
		t.Errorf("upstream saw OPT %v for a query without one", opt)
	}
}

func TestServerTruncatesOverUDP(t *testing.T) {
	h := newHarness(t, nil)
	size := func(m *dns.Msg) int {
		m.Compress = true // as it was sent
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return len(b)
	}
	withEDNS := func(udpSize uint16) *dns.Msg {
		q := question("big.example.", dns.TypeTXT)
		q.SetEdns0(udpSize, false)
		return q
	}
	tests := []struct {
		name      string
		network   string
		q         *dns.Msg
		truncated bool
		max       int
	}{
		{"UDP", "udp", question("big.example.", dns.TypeTXT), true, 512},
		{"UDP, EDNS0 1232", "udp", withEDNS(1232), true, 1232},
		{"UDP, EDNS0 4096", "udp", withEDNS(4096), false, 4096},
		{"TCP", "tcp", question("big.example.", dns.TypeTXT), false, dns.MaxMsgSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := h.mustExchange(t, tt.network, tt.q)
			if m.Truncated != tt.truncated || size(m) > tt.max {
				t.Fatalf("truncated %v, %d bytes; want truncated %v, at most %d", m.Truncated, size(m), tt.truncated, tt.max)
			}
			if want := 40; !tt.truncated && len(m.Answer) != want || tt.truncated && len(m.Answer) >= want {
				t.Errorf("%d answers", len(m.Answer))
			}
		})
	}
}

func TestServerSurvivesMalformedPackets(t *testing.T) {
	h := newHarness(t, nil)
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	twoQuestions := question("www.example.", dns.TypeA)
	twoQuestions.Question = append(twoQuestions.Question, dns.Question{Name: "www.example.", Qtype: dns.TypeAAAA, Qclass: dns.ClassINET})
	update := new(dns.Msg)
	update.SetUpdate("example.")
	update.Insert([]dns.RR{rr(t, "new.example. 30 IN A 192.0.2.99")})
	response := question("www.example.", dns.TypeA)
	response.Response = true
	random := make([]byte, 64)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	const none, any = -1, -2
	tests := []struct {
		name   string
		packet []byte
		rcode  int // none: no answer; any: no answer, FORMERR or NOTIMP
	}{
		{"3 bytes", []byte{1, 2, 3}, none},
		{"random bytes", random, any},
		{"two questions", pack(twoQuestions), dns.RcodeFormatError},
		{"opcode UPDATE", pack(update), dns.RcodeNotImplemented},
		{"NOTIFY", func() []byte { m := question("example.", dns.TypeSOA); m.Opcode = dns.OpcodeNotify; return pack(m) }(), dns.RcodeNotImplemented},
		{"cut short", pack(question("www.example.", dns.TypeA))[:15], dns.RcodeFormatError},
		{"a response", pack(response), none},
	}
	c, err := net.Dial("udp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := func(timeout time.Duration) (*dns.Msg, error) {
		c.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		m := new(dns.Msg)
		return m, m.Unpack(buf[:n])
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Write(tt.packet); err != nil {
				t.Fatal(err)
			}
			timeout := 2 * time.Second
			if tt.rcode < 0 {
				timeout = 200 * time.Millisecond // long enough for an answer on loopback
			}
			m, err := read(timeout)
			switch {
			case isTimeout(err) && tt.rcode < 0:
				// no answer, as wanted
			case err != nil:
				t.Fatalf("read: %v", err)
			case tt.rcode == none:
				t.Fatalf("answered %v, want no answer", m)
			case tt.rcode == any && (m.Rcode == dns.RcodeFormatError || m.Rcode == dns.RcodeNotImplemented):
			case m.Rcode != tt.rcode || !m.Response:
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			// And the server still answers.
			q := question("www.example.", dns.TypeA)
			if _, err := c.Write(pack(q)); err != nil {
				t.Fatal(err)
			}
			for {
				m, err := read(2 * time.Second)
				if err != nil {
					t.Fatalf("no answer to a valid query after: %v", err)
				}
				if m.Id == q.Id {
					if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
						t.Fatalf("answer %v", m)
					}
					break
				}
			}
		})
	}

	t.Run("TCP", func(t *testing.T) {
		conn, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		co := &dns.Conn{Conn: conn}
		for _, b := range [][]byte{{1, 2, 3}, random, pack(response)} {
			if _, err := co.Write(b); err != nil { // framed with the length
				t.Fatal(err)
			}
		}
		if _, err := co.Write(pack(twoQuestions)); err != nil {
			t.Fatal(err)
		}
		// Answers come in order on one connection; the garbage has none
		// (or, for the random bytes, maybe a FORMERR or NOTIMP).
		for {
			m, err := co.ReadMsg()
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if m.Id == twoQuestions.Id {
				if m.Rcode != dns.RcodeFormatError {
					t.Fatalf("rcode %s for two questions, want FORMERR", dns.RcodeToString[m.Rcode])
				}
				break
			}
			if m.Rcode != dns.RcodeFormatError && m.Rcode != dns.RcodeNotImplemented {
				t.Fatalf("answer %v to garbage", m)
			}
		}
		q := question("www.example.", dns.TypeA)
		if err := co.WriteMsg(q); err != nil {
			t.Fatal(err)
		}
		if m, err := co.ReadMsg(); err != nil || m.Id != q.Id || m.Rcode != dns.RcodeSuccess {
			t.Fatalf("answer %v, %v", m, err)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestServerBoundsQueriesInFlight(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	h := newHarness(t, func(h *harness) {
		h.r.MaxInFlight = 2
		h.hold = func(q *dns.Msg) bool {
			if strings.HasPrefix(q.Question[0].Name, "slow") {
				started <- struct{}{}
				<-release
			}
			return false
		}
	})
	h.ask(t, "udp", "www.example.", dns.TypeA) // cached
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, name := range []string{"slow1.example.", "slow2.example."} {
		wg.Go(func() {
			m, err := h.exchange("udp", question(name, dns.TypeA))
			if err == nil && m.Rcode != dns.RcodeNameError {
				err = fmt.Errorf("%s: rcode %s", name, dns.RcodeToString[m.Rcode])
			}
			errs <- err
		})
	}
	<-started
	<-started
	if m := h.ask(t, "udp", "slow3.example.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s over the bound, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	if _, err := h.r.Exchange(context.Background(), question("slow4.example.", dns.TypeA)); !errors.Is(err, ErrTooManyQueries) {
		t.Errorf("Exchange over the bound: %v, want ErrTooManyQueries", err)
	}
	if m := h.ask(t, "udp", "www.example.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Errorf("rcode %s for a cached answer over the bound", dns.RcodeToString[m.Rcode])
	}
	close(release)
	wg.Wait()
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if m := h.ask(t, "udp", "slow3.example.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Errorf("rcode %s once under the bound again", dns.RcodeToString[m.Rcode])
	}
}

func TestResolverCoalescesIdenticalQueries(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := newHarness(t, func(h *harness) {
		h.hold = func(q *dns.Msg) bool {
			if q.Question[0].Name == "slow.example." {
				started <- struct{}{}
				<-release
			}
			return false
		}
	})
	type result struct {
		q, m *dns.Msg
		err  error
	}
	results := make(chan result, 3)
	for id := range uint16(3) {
		go func() {
			q := question("slow.example.", dns.TypeA)
			q.Id = 100 + id
			m, err := h.r.Exchange(context.Background(), q)
			results <- result{q, m, err}
		}()
	}
	<-started
	for deadline := time.Now().Add(5 * time.Second); ; {
		h.r.mu.Lock()
		waiters := 0
		for _, f := range h.r.flights {
			waiters = f.waiters
		}
		h.r.mu.Unlock()
		if waiters == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d queries wait for the one in flight, want 2", waiters)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	for range 3 {
		r := <-results
		if r.err != nil || r.m.Id != r.q.Id || r.m.Rcode != dns.RcodeNameError || len(r.m.Ns) != 1 {
			t.Errorf("answer %v, %v to query %d", r.m, r.err, r.q.Id)
		}
	}
	if n := h.asked("slow.example.", dns.TypeA); n != 1 {
		t.Errorf("asked %d times, want once", n)
	}
}

// A query cut because the gate closed while it was asked fails as blocked.
func TestResolverBlockedWhileAsking(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := newHarness(t, func(h *harness) {
		h.servers = servers[:1]
		h.hold = func(q *dns.Msg) bool {
			started <- struct{}{}
			<-release
			return true // the connection is cut: no answer
		}
	})
	done := make(chan *dns.Msg, 1)
	go func() {
		m, _ := h.exchange("udp", question("www.example.", dns.TypeA))
		done <- m
	}()
	<-started
	h.d.setBlocked(&state.BlockedError{State: state.Disconnected})
	close(release)
	if m := <-done; m == nil || m.Rcode != dns.RcodeRefused {
		t.Fatalf("answer %v, want REFUSED", m)
	}
}

func TestServerShutdown(t *testing.T) {
	t.Run("drains", func(t *testing.T) {
		release := make(chan struct{})
		started := make(chan struct{}, 1)
		d := &fakeDialer{answer: func(network string, q *dns.Msg) []*dns.Msg {
			started <- struct{}{}
			<-release
			return testZone(network, q)
		}}
		defer d.wg.Wait()
		s := &Server{Resolver: NewResolver(d, fixed(servers...))}
		pc, l := listen(t)
		served := make(chan error, 1)
		go func() { served <- s.Serve(pc, l) }()

		answered := make(chan *dns.Msg, 1)
		go func() {
			c := &dns.Client{Timeout: 5 * time.Second}
			m, _, _ := c.Exchange(question("www.example.", dns.TypeA), pc.LocalAddr().String())
			answered <- m
		}()
		<-started
		shut := make(chan error, 1)
		go func() { shut <- s.Shutdown(context.Background()) }()
		for !s.isClosed() {
			time.Sleep(time.Millisecond)
		}
		close(release)
		if m := <-answered; m == nil || m.Rcode != dns.RcodeSuccess {
			t.Fatalf("the query in flight got %v", m)
		}
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close after Shutdown: %v", err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		release := make(chan struct{})
		started := make(chan struct{}, 1)
		d := &fakeDialer{answer: func(network string, q *dns.Msg) []*dns.Msg {
			started <- struct{}{}
			<-release
			return nil
		}}
		defer d.wg.Wait()
		defer close(release)
		s := &Server{Resolver: NewResolver(d, fixed(servers...))}
		pc, l := listen(t)
		served := make(chan error, 1)
		go func() { served <- s.Serve(pc, l) }()
		conn, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		co := &dns.Conn{Conn: conn}
		if err := co.WriteMsg(question("www.example.", dns.TypeA)); err != nil {
			t.Fatal(err)
		}
		<-started
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v, want the deadline", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if m, err := co.ReadMsg(); err == nil {
			t.Errorf("the connection is still open: got %v", m)
		}
	})

	t.Run("serve after close", func(t *testing.T) {
		s := &Server{Resolver: NewResolver(&fakeDialer{}, fixed(servers...))}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		pc, l := listen(t)
		if err := s.Serve(pc, l); !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve: %v, want ErrServerClosed", err)
		}
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("the listener is open: %v", err)
		}
		if _, _, err := pc.ReadFrom(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("the packet conn is open: %v", err)
		}
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown after Close: %v", err)
		}
	})

	t.Run("no socket", func(t *testing.T) {
		s := &Server{Resolver: NewResolver(&fakeDialer{}, fixed(servers...))}
		if err := s.Serve(nil, nil); err == nil || errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve(nil, nil): %v", err)
		}
	})

	t.Run("UDP only", func(t *testing.T) {
		d := &fakeDialer{answer: testZone}
		defer d.wg.Wait()
		s := &Server{Resolver: NewResolver(d, fixed(servers...))}
		pc, l := listen(t)
		l.Close()
		served := make(chan error, 1)
		go func() { served <- s.Serve(pc, nil) }()
		c := &dns.Client{Timeout: 2 * time.Second}
		if m, _, err := c.Exchange(question("www.example.", dns.TypeA), pc.LocalAddr().String()); err != nil || m.Rcode != dns.RcodeSuccess {
			t.Fatalf("answer %v, %v", m, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
	})
}
