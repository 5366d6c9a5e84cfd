package dnsserver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/warren-vpn/warren/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeDialer serves DNS in memory: each dial is one end of a net.Pipe, and
// the other end answers with answer. It records every dial and every query
// it reads. While blocked is set, it refuses as the gate does: Wait and
// DialContext return blocked.
type fakeDialer struct {
	mu       sync.Mutex
	dials    []string // "network server"
	received []*dns.Msg
	refuse   map[netip.AddrPort]error
	answer   func(network string, q *dns.Msg) []*dns.Msg // messages to send back, in order
	blocked  error
	wg       sync.WaitGroup
}

func (f *fakeDialer) Wait(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blocked
}

func (f *fakeDialer) setBlocked(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked = err
}

func (f *fakeDialer) DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked != nil {
		return nil, f.blocked
	}
	f.dials = append(f.dials, network+" "+to.String())
	if err := f.refuse[to]; err != nil {
		return nil, err
	}
	a, b := net.Pipe()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer b.Close()
		// Over "udp" a message is one write, with no length prefix; over
		// "tcp" it has TCP's two-byte prefix.
		read, write := readDatagram, writeDatagram
		if network == "tcp" {
			dc := &dns.Conn{Conn: b}
			read, write = func(net.Conn) (*dns.Msg, error) { return dc.ReadMsg() }, func(_ net.Conn, m *dns.Msg) error { return dc.WriteMsg(m) }
		}
		q, err := read(b)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.received = append(f.received, q)
		f.mu.Unlock()
		for _, m := range f.answer(network, q) {
			if write(b, m) != nil {
				return
			}
		}
	}()
	return a, nil
}

// queries returns the queries the servers have read.
func (f *fakeDialer) queries() []*dns.Msg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*dns.Msg(nil), f.received...)
}

func readDatagram(c net.Conn) (*dns.Msg, error) {
	buf := make([]byte, dns.MaxMsgSize)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	return m, m.Unpack(buf[:n])
}

func writeDatagram(c net.Conn, m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = c.Write(b)
	return err
}

func (f *fakeDialer) dialed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.dials...)
}

// zone answers for www.example (A and AAAA) and NXDOMAIN otherwise.
func zone(network string, q *dns.Msg) []*dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	qq := q.Question[0]
	if qq.Name != "www.example." {
		m.Rcode = dns.RcodeNameError
		return []*dns.Msg{m}
	}
	hdr := dns.RR_Header{Name: qq.Name, Class: dns.ClassINET, Rrtype: qq.Qtype, Ttl: 30}
	switch qq.Qtype {
	case dns.TypeA:
		m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 10)}}
	case dns.TypeAAAA:
		m.Answer = []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8::10")}}
	}
	return []*dns.Msg{m}
}

var servers = []netip.Addr{netip.MustParseAddr("10.64.0.1"), netip.MustParseAddr("10.64.0.2")}

func fixed(addrs ...netip.Addr) func() []netip.Addr {
	return func() []netip.Addr { return addrs }
}

func TestLookupNetIP(t *testing.T) {
	d := &fakeDialer{answer: zone}
	defer d.wg.Wait()
	r := NewResolver(d, fixed(servers...))
	tests := []struct {
		network string
		want    []netip.Addr
	}{
		{"ip", []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}},
		{"ip4", []netip.Addr{netip.MustParseAddr("192.0.2.10")}},
		{"ip6", []netip.Addr{netip.MustParseAddr("2001:db8::10")}},
	}
	for _, tt := range tests {
		got, err := r.LookupNetIP(context.Background(), tt.network, "www.example")
		if err != nil {
			t.Fatalf("%s: %v", tt.network, err)
		}
		if len(got) != len(tt.want) {
			t.Fatalf("%s: got %v, want %v", tt.network, got, tt.want)
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Fatalf("%s: got %v, want %v", tt.network, got, tt.want)
			}
		}
	}
	for _, dial := range d.dialed() {
		if dial != "udp 10.64.0.1:53" {
			t.Errorf("dialed %q; want only the first server over UDP", dial)
		}
	}
}

func TestLookupNotFound(t *testing.T) {
	d := &fakeDialer{answer: zone}
	defer d.wg.Wait()
	_, err := NewResolver(d, fixed(servers...)).LookupNetIP(context.Background(), "ip", "nowhere.example")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Fatalf("err = %v, want a not-found *net.DNSError", err)
	}
}

func TestLookupIPLiteralAsksNobody(t *testing.T) {
	d := &fakeDialer{answer: zone}
	got, err := NewResolver(d, fixed()).LookupNetIP(context.Background(), "ip", "2001:db8::1")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("2001:db8::1") {
		t.Fatalf("got %v, %v", got, err)
	}
	if len(d.dialed()) != 0 {
		t.Fatal("an IP literal was looked up")
	}
}

func TestLookupBlocked(t *testing.T) {
	blocked := &state.BlockedError{State: state.Connecting}
	d := &fakeDialer{answer: zone, blocked: blocked}
	_, err := NewResolver(d, fixed(servers...)).LookupNetIP(context.Background(), "ip", "www.example")
	if !errors.Is(err, state.ErrBlocked) {
		t.Fatalf("err = %v, want the gate's refusal", err)
	}
}

func TestLookupNoServers(t *testing.T) {
	d := &fakeDialer{answer: zone}
	_, err := NewResolver(d, fixed()).LookupNetIP(context.Background(), "ip", "www.example")
	if !errors.Is(err, ErrNoServers) {
		t.Fatalf("err = %v, want ErrNoServers", err)
	}
	if len(d.dialed()) != 0 {
		t.Fatal("dialed with no servers")
	}
}

func TestExchangeTriesNextServer(t *testing.T) {
	d := &fakeDialer{answer: zone, refuse: map[netip.AddrPort]error{
		netip.AddrPortFrom(servers[0], 53): &net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH},
	}}
	defer d.wg.Wait()
	got, err := NewResolver(d, fixed(servers...)).LookupNetIP(context.Background(), "ip4", "www.example")
	if err != nil || len(got) != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	want := []string{"udp 10.64.0.1:53", "udp 10.64.0.2:53"}
	if dials := d.dialed(); len(dials) != 2 || dials[0] != want[0] || dials[1] != want[1] {
		t.Fatalf("dials %v, want %v", dials, want)
	}
}

func TestExchangeTCPOnTruncation(t *testing.T) {
	d := &fakeDialer{answer: func(network string, q *dns.Msg) []*dns.Msg {
		m := zone(network, q)[0]
		if network == "udp" {
			m.Answer = nil
			m.Truncated = true
		}
		return []*dns.Msg{m}
	}}
	defer d.wg.Wait()
	got, err := NewResolver(d, fixed(servers[0])).LookupNetIP(context.Background(), "ip4", "www.example")
	if err != nil || len(got) != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	if dials := d.dialed(); len(dials) != 2 || dials[1] != "tcp 10.64.0.1:53" {
		t.Fatalf("dials %v, want UDP then TCP", dials)
	}
}

// An answer with another ID is not ours: it is skipped, not trusted.
func TestExchangeIgnoresStrayAnswer(t *testing.T) {
	d := &fakeDialer{answer: func(network string, q *dns.Msg) []*dns.Msg {
		stray := new(dns.Msg)
		stray.SetReply(q)
		stray.Id = q.Id + 1
		stray.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(6, 6, 6, 6)}}
		return append([]*dns.Msg{stray}, zone(network, q)...)
	}}
	defer d.wg.Wait()
	got, err := NewResolver(d, fixed(servers[0])).LookupNetIP(context.Background(), "ip4", "www.example")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestExchangeTimeout(t *testing.T) {
	d := &fakeDialer{answer: func(string, *dns.Msg) []*dns.Msg {
		time.Sleep(200 * time.Millisecond) // answers nothing in time
		return nil
	}}
	defer d.wg.Wait()
	r := NewResolver(d, fixed(servers[0]))
	r.Timeout = 50 * time.Millisecond
	_, err := r.LookupNetIP(context.Background(), "ip4", "www.example")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsTimeout {
		t.Fatalf("err = %v, want a timeout *net.DNSError", err)
	}
}
