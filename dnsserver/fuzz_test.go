package dnsserver

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/state"
)

// fuzzTimeout bounds one fuzz input: every query answered or dropped, and
// the server shut down.
const fuzzTimeout = 10 * time.Second

// packetScript is a net.PacketConn that hands a server one datagram from
// fuzzClient, then blocks (honouring read deadlines) until it is closed. It
// keeps what the server writes. drained is closed when the server reads
// again after the datagram: it has taken it and handed it to a handler.
type packetScript struct {
	drained   chan struct{}
	closed    chan struct{}
	closeOnce sync.Once

	// mu guards the fields below.
	mu       sync.Mutex
	packet   []byte // nil once read
	out      [][]byte
	to       []net.Addr
	deadline time.Time
	wake     chan struct{} // closed and replaced when the deadline changes
}

var fuzzClient = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

func newPacketScript(packet []byte) *packetScript {
	return &packetScript{packet: packet, drained: make(chan struct{}), closed: make(chan struct{}), wake: make(chan struct{})}
}

func (c *packetScript) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		select {
		case <-c.closed:
			c.mu.Unlock()
			return 0, nil, net.ErrClosed
		default:
		}
		if c.packet != nil {
			n := copy(b, c.packet)
			c.packet = nil
			c.mu.Unlock()
			return n, fuzzClient, nil
		}
		select {
		case <-c.drained:
		default:
			close(c.drained)
		}
		wait := time.Hour // until woken
		if !c.deadline.IsZero() {
			if wait = time.Until(c.deadline); wait <= 0 {
				c.mu.Unlock()
				return 0, nil, os.ErrDeadlineExceeded
			}
		}
		wake := c.wake
		c.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-c.closed:
		case <-wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

func (c *packetScript) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, slices.Clone(b))
	c.to = append(c.to, addr)
	return len(b), nil
}

func (c *packetScript) written() ([][]byte, []net.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.out), slices.Clone(c.to)
}

func (c *packetScript) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *packetScript) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}

func (c *packetScript) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *packetScript) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	close(c.wake)
	c.wake = make(chan struct{})
	return nil
}

func (c *packetScript) SetWriteDeadline(time.Time) error { return nil }

// streamScript is a TCP client connection that sends a script and then
// half-closes (reads return io.EOF). It keeps what the server writes and
// notes when the server closes it.
type streamScript struct {
	closed    chan struct{}
	closeOnce sync.Once

	// mu guards the fields below.
	mu  sync.Mutex
	in  []byte
	out []byte
}

func (c *streamScript) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *streamScript) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	c.out = append(c.out, b...)
	return len(b), nil
}

func (c *streamScript) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.out)
}

func (c *streamScript) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *streamScript) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (c *streamScript) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *streamScript) SetDeadline(time.Time) error      { return nil } // reads and writes never block
func (c *streamScript) SetReadDeadline(time.Time) error  { return nil }
func (c *streamScript) SetWriteDeadline(time.Time) error { return nil }

// oneConnListener hands out one connection, then waits to be closed.
type oneConnListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{conns: make(chan net.Conn, 1), done: make(chan struct{})}
	l.conns <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }

// serveUntil runs s on pc or l until done is closed (the server has taken
// everything the client sent), then shuts it down; Serve must return
// ErrServerClosed. It fails the test if that takes longer than fuzzTimeout.
func serveUntil(t *testing.T, s *Server, pc net.PacketConn, l net.Listener, done <-chan struct{}) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- s.Serve(pc, l) }()
	timer := time.NewTimer(fuzzTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Fatalf("the server did not take the query within %v\n%s", fuzzTimeout, allStacks())
	}
	ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v\n%s", err, allStacks())
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
}

func allStacks() []byte {
	buf := make([]byte, 1<<20)
	return buf[:runtime.Stack(buf, true)]
}

// fuzzMode is what a fuzz input's first argument picks: TCP (bit 0) or UDP,
// a blocked gate (bit 1), a config with no DNS server (bit 2), and, over
// UDP, a gate that blocks after the first datagram (bit 3).
type fuzzMode struct{ tcp, blocked, noServers, blockLater bool }

func fuzzModeOf(b uint8) fuzzMode {
	return fuzzMode{tcp: b&1 != 0, blocked: b&2 != 0, noServers: b&4 != 0, blockLater: b&9 == 8}
}

// refusing reports whether the server cannot ask anyone: the gate is
// blocked, or there are no servers.
func (m fuzzMode) refusing() bool { return m.blocked || m.noServers }

var fuzzBlocked = &state.BlockedError{State: state.Connecting, Cause: state.CauseHandshakeTimeout}

// fuzzDialer is a fakeDialer that also counts the dials tried, those it
// refuses (being blocked) included.
type fuzzDialer struct {
	*fakeDialer
	tries atomic.Int64
}

func (d *fuzzDialer) DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	d.tries.Add(1)
	return d.fakeDialer.DialContext(ctx, network, to)
}

// newFuzzResolver returns a resolver over a fake tunnel that serves
// testZone, set as m says, with short timeouts and a clock that stands
// still (so that a cached answer is the same as a fresh one).
func newFuzzResolver(m fuzzMode) (*Resolver, *fuzzDialer) {
	d := &fuzzDialer{fakeDialer: &fakeDialer{answer: testZone}}
	if m.blocked {
		d.blocked = fuzzBlocked
	}
	list := servers
	if m.noServers {
		list = nil
	}
	r := NewResolver(d, fixed(list...))
	r.Timeout = 200 * time.Millisecond
	clock := newFakeClock()
	r.now = clock.Now
	return r, d
}

// FuzzServer gives the DNS server arbitrary queries: one datagram over UDP
// (sent twice, so that the second may be answered from the cache), or an
// arbitrary byte stream over TCP. The server must not panic, must answer
// each query with a well-formed response that carries its ID, or not at all
// (a runt, or a message that is itself a response), within bounded time;
// must answer the same query the same way from the cache; and must ask
// nothing of anyone but the tunnel's DNS servers, and nothing at all while
// the gate is blocked or there are no servers.
func FuzzServer(f *testing.F) {
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	frame := func(msgs ...[]byte) []byte {
		var b []byte
		for _, m := range msgs {
			b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
			b = append(b, m...)
		}
		return b
	}
	edns := question("www.example.", dns.TypeAAAA)
	edns.SetEdns0(1232, true)
	edns.IsEdns0().Option = append(edns.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	ecs := question("www.example.", dns.TypeA)
	ecs.SetEdns0(4096, false)
	ecs.IsEdns0().Option = append(ecs.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0).To4()})
	big := question("big.example.", dns.TypeTXT)
	bigEDNS := question("big.example.", dns.TypeTXT)
	bigEDNS.SetEdns0(1232, false)
	twoQuestions := question("www.example.", dns.TypeA)
	twoQuestions.Question = append(twoQuestions.Question, dns.Question{Name: "www.example.", Qtype: dns.TypeAAAA, Qclass: dns.ClassINET})
	notify := question("example.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	response := question("www.example.", dns.TypeA)
	response.Response = true
	cd := question("WWW.Example.", dns.TypeA)
	cd.CheckingDisabled, cd.AuthenticatedData = true, true
	for _, q := range []*dns.Msg{
		question("www.example.", dns.TypeA), edns, ecs, big, bigEDNS, question("zero.example.", dns.TypeA),
		question("nosoa.example.", dns.TypeA), question("fail.example.", dns.TypeA),
		question("nowhere.example.", dns.TypeMX), twoQuestions, notify, response, cd,
	} {
		f.Add(uint8(0), pack(q))
	}
	f.Add(uint8(0), []byte{1, 2, 3})
	f.Add(uint8(0), pack(question("www.example.", dns.TypeA))[:15])
	f.Add(uint8(2), pack(question("www.example.", dns.TypeA)))
	f.Add(uint8(4), pack(edns))
	f.Add(uint8(1), frame(pack(question("www.example.", dns.TypeA)), pack(big)))
	f.Add(uint8(1), frame([]byte{1, 2, 3}, pack(response), pack(twoQuestions), pack(edns)))
	f.Add(uint8(1), append(frame(pack(cd)), 0, 40, 1))
	f.Add(uint8(3), frame(pack(ecs)))
	f.Add(uint8(8), pack(question("www.example.", dns.TypeA)))
	f.Add(uint8(8), pack(cd))
	f.Fuzz(func(t *testing.T, mode uint8, in []byte) {
		m := fuzzModeOf(mode)
		r, d := newFuzzResolver(m)
		var queries [][]byte
		var answers [][][]byte
		var refusing []bool // for each query, whether the server could not ask
		if m.tcp {
			c := &streamScript{in: slices.Clone(in), closed: make(chan struct{})}
			serveUntil(t, &Server{Resolver: r, Timeout: 2 * time.Second}, nil, newOneConnListener(c), c.closed)
			queries = tcpFrames(in)
			for range queries {
				refusing = append(refusing, m.refusing())
			}
			out := tcpFrames(c.written())
			if len(out) > len(queries) {
				t.Fatalf("%d answers to %d queries", len(out), len(queries))
			}
			answers = matchAnswers(t, queries, out)
		} else {
			// The same datagram twice, to two servers with one resolver:
			// the second may be answered from the cache, unless the gate
			// has blocked since.
			for i := range 2 {
				if i == 1 && m.blockLater {
					tries := d.tries.Load()
					defer func() {
						if n := d.tries.Load() - tries; n > 0 {
							t.Errorf("%d dials tried after the gate blocked", n)
						}
					}()
					d.setBlocked(fuzzBlocked)
				}
				refusing = append(refusing, m.refusing() || i == 1 && m.blockLater)
				pc := newPacketScript(slices.Clone(in))
				serveUntil(t, &Server{Resolver: r, Timeout: 2 * time.Second}, pc, nil, pc.drained)
				out, to := pc.written()
				for _, a := range to {
					if a.String() != fuzzClient.String() {
						t.Fatalf("answered to %v, not the client", a)
					}
				}
				queries = append(queries, in)
				answers = append(answers, out)
			}
			if len(answers[0]) != len(answers[1]) {
				t.Fatalf("the same datagram answered %d times, then %d times", len(answers[0]), len(answers[1]))
			}
		}
		d.wg.Wait()
		for i, q := range queries {
			// miekg answers at most 128 queries on one TCP connection.
			checkDNSAnswers(t, m.tcp, refusing[i], q, answers[i], i < 128)
		}
		if !m.tcp && !m.blockLater && len(answers[0]) == 1 {
			a, b := new(dns.Msg), new(dns.Msg)
			a.Unpack(answers[0][0])
			b.Unpack(answers[1][0])
			if a.String() != b.String() {
				t.Fatalf("the same query answered two ways:\n%v\nthen\n%v", a, b)
			}
		}
		checkUpstream(t, m, d, func(u *dns.Msg) bool {
			for _, q := range queries {
				c := new(dns.Msg)
				if c.Unpack(q) == nil && sameQuestion(c, u) && u.Question[0].Name == c.Question[0].Name {
					return true
				}
			}
			return false
		})
	})
}

// tcpFrames splits a TCP DNS stream into its messages, as far as it goes.
func tcpFrames(b []byte) [][]byte {
	var msgs [][]byte
	for len(b) >= 2 {
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			break
		}
		msgs = append(msgs, b[2:2+n])
		b = b[2+n:]
	}
	return msgs
}

// matchAnswers pairs TCP answers with the queries they answer, in order:
// each answer carries the ID of a query after the last one answered, and
// not a runt or a response, which get none.
func matchAnswers(t *testing.T, queries, out [][]byte) [][][]byte {
	t.Helper()
	answers := make([][][]byte, len(queries))
	i := 0
	for _, a := range out {
		if len(a) < 2 {
			t.Fatalf("answer %x", a)
		}
		for i < len(queries) && (len(queries[i]) < 12 || queries[i][2]&0x80 != 0 ||
			binary.BigEndian.Uint16(queries[i]) != binary.BigEndian.Uint16(a)) {
			i++
		}
		if i == len(queries) {
			t.Fatalf("answer %x matches no query, in order", a)
		}
		answers[i] = append(answers[i], a)
		i++
	}
	return answers
}

// checkDNSAnswers checks the answers the server wrote to query q, over TCP
// or UDP, while the server could ask (or not, if refusing). There must be
// one if mustAnswer and it is a query the server takes.
func checkDNSAnswers(t *testing.T, tcp, refusing bool, q []byte, answers [][]byte, mustAnswer bool) {
	t.Helper()
	if len(answers) > 1 {
		t.Fatalf("%d answers to one query", len(answers))
	}
	if len(q) < 12 || q[2]&0x80 != 0 { // a runt, or a response
		if len(answers) > 0 {
			t.Fatalf("answered %x to %x", answers[0], q)
		}
		return
	}
	query := new(dns.Msg)
	parsed := query.Unpack(q) == nil
	var h dns.Header
	h.Id, h.Bits = binary.BigEndian.Uint16(q), binary.BigEndian.Uint16(q[2:])
	h.Qdcount, h.Ancount = binary.BigEndian.Uint16(q[4:]), binary.BigEndian.Uint16(q[6:])
	h.Nscount, h.Arcount = binary.BigEndian.Uint16(q[8:]), binary.BigEndian.Uint16(q[10:])
	if len(answers) == 0 {
		if mustAnswer && parsed && acceptQuery(h) == dns.MsgAccept {
			t.Fatalf("no answer to %v", query)
		}
		return
	}
	a := new(dns.Msg)
	if err := a.Unpack(answers[0]); err != nil {
		t.Fatalf("answer %x: %v", answers[0], err)
	}
	if !a.Response || a.Id != h.Id {
		t.Fatalf("answer %v to a query with ID %d", a, h.Id)
	}
	limit := dns.MinMsgSize
	if parsed {
		limit = udpSize(query)
	}
	if !tcp && len(answers[0]) > limit {
		t.Fatalf("answer of %d bytes over UDP, to a client that takes %d", len(answers[0]), limit)
	}
	if refusing && a.Rcode != dns.RcodeRefused && a.Rcode != dns.RcodeFormatError && a.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("rcode %s while it cannot ask", dns.RcodeToString[a.Rcode])
	}
}

// checkUpstream checks what the fake tunnel was asked: nothing while the
// gate is blocked or there are no servers, and otherwise only the tunnel's
// servers on port 53, with queries that asked says were asked for.
func checkUpstream(t *testing.T, m fuzzMode, d *fuzzDialer, asked func(*dns.Msg) bool) {
	t.Helper()
	dials := d.dialed()
	if m.refusing() && d.tries.Load() > 0 {
		t.Fatalf("%d dials tried (blocked %v, no servers %v)", d.tries.Load(), m.blocked, m.noServers)
	}
	for _, dial := range dials {
		network, addr, _ := strings.Cut(dial, " ")
		ap, err := netip.ParseAddrPort(addr)
		if network != "udp" && network != "tcp" || err != nil || ap.Port() != 53 || !slices.Contains(servers, ap.Addr()) {
			t.Fatalf("dialed %q", dial)
		}
	}
	for _, u := range d.queries() {
		if u.Response || len(u.Question) != 1 || !asked(u) {
			t.Fatalf("asked upstream %v, which was not asked for", u)
		}
	}
}

// FuzzLookupNetIP looks up arbitrary names, as the proxies do for the names
// in SOCKS5 requests, UDP datagrams and HTTP requests. It must not panic;
// an IP address must be asked of nobody; and a name must be asked only of
// the tunnel's servers, as itself, and give only the addresses they
// answered.
func FuzzLookupNetIP(f *testing.F) {
	for _, name := range []string{
		"www.example", "www.example.", "WWW.EXAMPLE", "nowhere.example", "fail.example", "10.0.0.1",
		"2001:db8::1", "fe80::1%eth0", "", ".", "a..b", "a b", "\x00", "x\\.y", strings.Repeat("a", 64) + ".example",
		strings.Repeat("a.", 127) + "a",
	} {
		f.Add(uint8(0), name)
	}
	f.Add(uint8(1), "www.example")
	f.Add(uint8(2), "www.example")
	f.Add(uint8(3), "www.example")
	answered := map[netip.Addr]bool{
		netip.MustParseAddr("192.0.2.10"): true, netip.MustParseAddr("192.0.2.11"): true,
		netip.MustParseAddr("2001:db8::10"): true,
	}
	f.Fuzz(func(t *testing.T, mode uint8, host string) {
		network := []string{"ip", "ip4", "ip6", "ip"}[mode%4]
		m := fuzzMode{blocked: mode&4 != 0}
		r, d := newFuzzResolver(m)
		ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
		defer cancel()
		addrs, err := r.LookupNetIP(ctx, network, host)
		d.wg.Wait()
		dials := d.dialed()
		if ip, perr := netip.ParseAddr(host); perr == nil {
			if err != nil || len(addrs) != 1 || addrs[0] != ip || len(dials) > 0 {
				t.Fatalf("IP address %q: %v, %v; dialed %v", host, addrs, err, dials)
			}
			return
		}
		// While blocked, a lookup fails with the gate's error, or, for
		// what is not a host name, with that.
		_, isName := dns.IsDomainName(host)
		if m.blocked && (err == nil || isName && !errors.Is(err, state.ErrBlocked) || d.tries.Load() > 0) {
			t.Fatalf("while blocked: %v, %v; %d dials tried", addrs, err, d.tries.Load())
		}
		if err == nil && len(addrs) == 0 {
			t.Fatal("no addresses and no error")
		}
		for _, a := range addrs {
			if !answered[a] {
				t.Fatalf("%q: %v, which no server answered", host, addrs)
			}
		}
		checkUpstream(t, m, d, func(u *dns.Msg) bool {
			q := u.Question[0]
			return q.Name == onTheWire(host) && q.Qclass == dns.ClassINET &&
				(q.Qtype == dns.TypeA && network != "ip6" || q.Qtype == dns.TypeAAAA && network != "ip4")
		})
	})
}

// onTheWire is the name a query for host carries, as a server reads it:
// host as a fully qualified name in miekg's presentation format, packed and
// unpacked (a space, say, comes back escaped).
func onTheWire(host string) string {
	q := question(dns.Fqdn(host), dns.TypeA)
	b, err := q.Pack()
	if err != nil || q.Unpack(b) != nil {
		return ""
	}
	return q.Question[0].Name
}
