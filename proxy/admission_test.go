package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The Admission, and the limits, access rules and timeouts of each
// front-end. Clients come from several loopback addresses (Linux routes
// all of 127.0.0.0/8 to lo), so that "another client" is another address.

func TestAdmission(t *testing.T) {
	type step struct {
		client string // its address, IP:port
		n      int    // this many times
		want   string // FlowOutcome of each
	}
	for _, tt := range []struct {
		name  string
		a     *Admission
		steps []step
	}{
		{"nil admits everyone", nil, []step{{"192.0.2.1:1", 10000, "accepted"}}},
		{"defaults", &Admission{}, []step{
			{"192.0.2.1:1", DefaultMaxFlowsPerClient, "accepted"},
			{"192.0.2.1:2", 1, "client-limit"},
			{"192.0.2.2:1", 1, "accepted"},
		}},
		{"per client", &Admission{MaxFlowsPerClient: 2}, []step{
			{"192.0.2.1:1", 2, "accepted"},
			{"192.0.2.1:2", 3, "client-limit"},
			{"192.0.2.2:1", 2, "accepted"},
			{"[::ffff:192.0.2.2]:1", 1, "client-limit"}, // the same client, mapped
			{"[2001:db8::1]:1", 2, "accepted"},
			{"[2001:db8::1]:2", 1, "client-limit"},
		}},
		{"total", &Admission{MaxFlows: 3}, []step{
			{"192.0.2.1:1", 2, "accepted"},
			{"192.0.2.2:1", 1, "accepted"},
			{"192.0.2.3:1", 1, "limit"},
			{"192.0.2.1:1", 1, "limit"},
		}},
		{"total before per client", &Admission{MaxFlows: 2, MaxFlowsPerClient: 2}, []step{
			{"192.0.2.1:1", 2, "accepted"},
			{"192.0.2.1:1", 1, "limit"},
		}},
		{"no bounds", &Admission{MaxFlows: -1, MaxFlowsPerClient: -1}, []step{{"192.0.2.1:1", 10000, "accepted"}}},
		{"allow from", &Admission{AllowFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}}, []step{
			{"10.1.2.3:1", 1, "accepted"},
			{"[::ffff:10.0.0.1]:1", 1, "accepted"},
			{"[2001:db8::1%eth0]:1", 1, "accepted"},
			{"192.0.2.1:1", 1, "not-allowed"},
			{"[2001:db9::1]:1", 1, "not-allowed"},
			{"11.0.0.1:1", 1, "not-allowed"},
		}},
		{"refused clients take no place", &Admission{MaxFlowsPerClient: 1, AllowFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, []step{
			{"192.0.2.1:1", 5, "not-allowed"},
			{"10.0.0.1:1", 1, "accepted"},
			{"10.0.0.1:1", 5, "client-limit"},
			{"10.0.0.2:1", 1, "accepted"},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var releases []func()
			for _, s := range tt.steps {
				addr := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s.client))
				for i := range s.n {
					release, err := tt.a.Admit(addr)
					if got := FlowOutcome(err); got != s.want {
						t.Fatalf("flow %d from %s: %q (%v), want %q", i+1, s.client, got, err, s.want)
					}
					if (err == nil) != (release != nil) {
						t.Fatalf("flow %d from %s: release %v with err %v", i+1, s.client, release != nil, err)
					}
					if err != nil {
						continue
					}
					releases = append(releases, release)
				}
			}
			for _, r := range releases {
				r()
				r() // twice gives back one place
			}
			if tt.a == nil {
				return
			}
			tt.a.mu.Lock()
			defer tt.a.mu.Unlock()
			if tt.a.open != 0 || len(tt.a.clients) != 0 {
				t.Errorf("all released: %d open, %d clients, want none", tt.a.open, len(tt.a.clients))
			}
		})
	}
}

func TestLimitErrorSaysWhich(t *testing.T) {
	a := &Admission{MaxFlows: 2, MaxFlowsPerClient: 1}
	c1 := net.TCPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.7:1"))
	c2 := net.TCPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.8:1"))
	a.Admit(c1)
	_, err := a.Admit(c1)
	if !errors.Is(err, ErrTooManyFlows) || err.Error() != "too many flows from 192.0.2.7: the limit is 1 per client" {
		t.Errorf("per client: %v", err)
	}
	a.Admit(c2)
	_, err = a.Admit(c2)
	if !errors.Is(err, ErrTooManyFlows) || err.Error() != "too many flows: the limit is 2 at once" {
		t.Errorf("total: %v", err)
	}
}

// A limit warns when it refuses, naming the client and the limit, but not
// for every refusal: at most once in 10 s per client (and for the total).
func TestAdmissionWarnsOnce(t *testing.T) {
	var logs lockedBuffer
	a := &Admission{MaxFlowsPerClient: 1, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	for _, client := range []string{"192.0.2.1:1", "192.0.2.2:1"} {
		addr := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(client))
		for range 5 {
			a.Admit(addr)
		}
	}
	out := logs.String()
	for _, want := range []string{"client=192.0.2.1 limit=1", "client=192.0.2.2 limit=1"} {
		if n := strings.Count(out, want); n != 1 {
			t.Errorf("%d lines with %q, want 1:\n%s", n, want, out)
		}
	}
	if n := strings.Count(out, "level=WARN"); n != 2 {
		t.Errorf("%d warnings, want 2:\n%s", n, out)
	}
}

// openFlows is the number of flows admitted and not yet released.
func (a *Admission) openFlows() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.open
}

func (l *flowLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// dialFrom connects to addr from the loopback address local.
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// socksConnectOn sends a SOCKS5 CONNECT to 10.77.0.1:80 on c, without
// authentication, and returns the reply code, or 0xff if the connection
// ended before a reply came.
func socksConnectOn(t *testing.T, c net.Conn) byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	c.Write([]byte{5, 1, 0, 5, 1, 0, 1, 10, 77, 0, 1, 0, 80})
	var reply [2 + 10]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("no reply")
		}
		return 0xff
	}
	return reply[3]
}

// Over a limit of flows, a SOCKS5 client is answered 0x02, a warning names
// it and the limit, the refusal is counted with its reason; others are
// still served, and so is the client once a place is free.
func TestSOCKS5Limits(t *testing.T) {
	for _, tt := range []struct {
		name        string
		adm         *Admission
		held        []string // the clients whose flows fill the limit
		from        string   // the client refused
		other       string   // a client still served, if any
		wantOutcome string
		wantLog     string
	}{
		{"per client", &Admission{MaxFlowsPerClient: 2}, []string{"127.0.0.1", "127.0.0.1", "127.0.0.2"}, "127.0.0.1", "127.0.0.3",
			"socks5 client-limit", "client=127.0.0.1 limit=2"},
		{"total", &Admission{MaxFlows: 3}, []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, "127.0.0.4", "",
			"socks5 limit", "client=127.0.0.4 limit=3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs lockedBuffer
			var flows flowLog
			tt.adm.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			h := newSOCKS(t, func(s *SOCKS5) {
				s.Admission = tt.adm
				s.Gate.Observe = flows.observe
			})
			h.gate.Apply(connected)
			var held []net.Conn
			for _, from := range tt.held {
				c := dialFrom(t, from, h.addr)
				if rep := socksConnectOn(t, c); rep != 0 {
					t.Fatalf("flow from %s under the limit: reply %#x", from, rep)
				}
				echo(t, c, "held")
				held = append(held, c)
			}
			if rep := socksConnectOn(t, dialFrom(t, tt.from, h.addr)); rep != 0x02 {
				t.Fatalf("over the limit: reply %#x, want 0x02", rep)
			}
			if got := flows.take(); !slices.Contains(got, tt.wantOutcome) {
				t.Errorf("observed %q, want %q among them", got, tt.wantOutcome)
			}
			if out := logs.String(); !strings.Contains(out, tt.wantLog) || !strings.Contains(out, "level=WARN") {
				t.Errorf("log %q, want a warning with %q", out, tt.wantLog)
			}
			if tt.other != "" {
				c := dialFrom(t, tt.other, h.addr)
				if rep := socksConnectOn(t, c); rep != 0 {
					t.Fatalf("another client: reply %#x, want it served", rep)
				}
				echo(t, c, "another client")
			}
			held[0].Close()
			waitFor(t, "a place to be free", func() bool {
				c := dialFrom(t, tt.from, h.addr)
				defer c.Close()
				return socksConnectOn(t, c) == 0
			})
		})
	}
}

// A connection holds its place from accept: a client that never sends its
// request takes a place until the handshake timeout.
func TestSOCKS5HandshakeHoldsAPlace(t *testing.T) {
	adm := &Admission{MaxFlowsPerClient: 1}
	h := newSOCKS(t, func(s *SOCKS5) {
		s.Admission = adm
		s.HandshakeTimeout = 500 * time.Millisecond
	})
	h.gate.Apply(connected)
	silent := dialFrom(t, "127.0.0.1", h.addr)
	waitFor(t, "the silent connection to be admitted", func() bool { return adm.openFlows() == 1 })
	if rep := socksConnectOn(t, dialFrom(t, "127.0.0.1", h.addr)); rep != 0x02 {
		t.Fatalf("while a silent connection holds the only place: reply %#x, want 0x02", rep)
	}
	// The silent one is cut at the handshake timeout, and its place freed.
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(silent); err != nil {
		t.Fatalf("the silent connection: %v, want it closed", err)
	}
	waitFor(t, "the place to be free", func() bool {
		c := dialFrom(t, "127.0.0.1", h.addr)
		defer c.Close()
		return socksConnectOn(t, c) == 0
	})
}

// A client --allow-from does not hold is disconnected as it is accepted,
// without a byte, and counted; others are served.
func TestSOCKS5AllowFrom(t *testing.T) {
	var flows flowLog
	h := newSOCKS(t, func(s *SOCKS5) {
		s.Admission = &Admission{AllowFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
		s.Gate.Observe = flows.observe
	})
	h.gate.Apply(connected)
	c := dialFrom(t, "127.0.0.1", h.addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte{5, 1, 0})
	if b, err := io.ReadAll(c); len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a client not allowed: read %v, %v; want the connection closed at once", b, err)
	}
	if got := flows.take(); !slices.Equal(got, []string{"socks5 not-allowed"}) {
		t.Errorf("observed %q", got)
	}
	ok := dialFrom(t, "127.0.0.2", h.addr)
	if rep := socksConnectOn(t, ok); rep != 0 {
		t.Fatalf("an allowed client: reply %#x", rep)
	}
	echo(t, ok, "allowed")
}

// A UDP association holds a place as long as it lives.
func TestSOCKS5UDPAssociationHoldsAPlace(t *testing.T) {
	h := newSOCKS(t, func(s *SOCKS5) { s.Admission = &Admission{MaxFlowsPerClient: 1} })
	h.gate.Apply(connected)
	rep, c := associate(t, h.addr)
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	c.exchange("10.77.0.1", 7, "associated")
	if rep, _ := associate(t, h.addr); rep != 0x02 {
		t.Errorf("a second association: reply %#x, want 0x02", rep)
	}
	if rep := socksConnectOn(t, dialFrom(t, "127.0.0.1", h.addr)); rep != 0x02 {
		t.Errorf("a CONNECT beside the association: reply %#x, want 0x02", rep)
	}
	c.ctrl.Close()
	waitFor(t, "the place to be free", func() bool {
		c := dialFrom(t, "127.0.0.1", h.addr)
		defer c.Close()
		return socksConnectOn(t, c) == 0
	})
}

// A slowloris client, that sends its greeting a byte at a time and never
// finishes, is disconnected at the handshake timeout: the timeout counts
// from accept, not from the last byte.
func TestSOCKS5Slowloris(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h := newSOCKS(t, func(s *SOCKS5) { s.HandshakeTimeout = timeout })
	c := dialFrom(t, "127.0.0.1", h.addr)
	begin := time.Now()
	// 255 methods, a byte every 50 ms: 13 s to finish the greeting.
	closed := dribble(c, append([]byte{5, 255}, make([]byte, 255)...), 50*time.Millisecond)
	select {
	case <-closed:
		t.Logf("disconnected after %v", time.Since(begin))
	case <-time.After(timeout + 4*time.Second):
		t.Fatalf("still connected after %v", time.Since(begin))
	}
}

// The same for an HTTP client that sends its headers a byte at a time.
func TestHTTPSlowloris(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h := newHTTPProxy(t, func(s *HTTP) { s.HandshakeTimeout = timeout })
	c := dialFrom(t, "127.0.0.1", h.addr)
	begin := time.Now()
	closed := dribble(c, []byte("GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\nX-Slow: "+strings.Repeat("a", 250)), 50*time.Millisecond)
	select {
	case <-closed:
		t.Logf("disconnected after %v", time.Since(begin))
	case <-time.After(timeout + 4*time.Second):
		t.Fatalf("still connected after %v", time.Since(begin))
	}
}

// dribble writes b to c a byte every interval, and reads from c; the
// channel it returns is closed when c is closed by the other end (or the
// bytes run out). It closes c when it is done.
func dribble(c net.Conn, b []byte, interval time.Duration) <-chan struct{} {
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		io.Copy(io.Discard, c)
	}()
	go func() {
		defer c.Close()
		for _, x := range b {
			select {
			case <-closed:
				return
			case <-time.After(interval):
			}
			if _, err := c.Write([]byte{x}); err != nil {
				return
			}
		}
	}()
	return closed
}

// The handshake timeout ends with the request: a CONNECT held longer than
// it (by the gate's Hold) still gets its answer.
func TestSOCKS5HandshakeTimeoutEndsWithTheRequest(t *testing.T) {
	h := newSOCKS(t, func(s *SOCKS5) { s.HandshakeTimeout = 100 * time.Millisecond })
	h.gate.Hold = 5 * time.Second
	h.gate.Apply(connecting)
	go func() {
		time.Sleep(500 * time.Millisecond)
		h.gate.Apply(connected)
	}()
	c := dialFrom(t, "127.0.0.1", h.addr)
	if rep := socksConnectOn(t, c); rep != 0 {
		t.Fatalf("reply %#x, want success", rep)
	}
	echo(t, c, "held past the handshake timeout")
}

// A UDP association that carries nothing for the idle timeout ends: its
// control connection is closed. One that carries datagrams lives on.
func TestSOCKS5UDPIdleTimeout(t *testing.T) {
	const idle = 500 * time.Millisecond
	h := newSOCKS(t, func(s *SOCKS5) { s.UDPIdleTimeout = idle })
	h.gate.Apply(connected)
	_, c := associate(t, h.addr)
	// Busy for four idle timeouts: it lives.
	for end := time.Now().Add(4 * idle); time.Now().Before(end); {
		c.exchange("10.77.0.1", 7, "keep me")
		time.Sleep(idle / 10)
	}
	c.ctrl.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := c.ctrl.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a busy association: %v, want it open", err)
	}
	// Then silent: it ends.
	begin := time.Now()
	c.ctrl.SetReadDeadline(time.Now().Add(idle + 4*time.Second))
	if _, err := io.ReadAll(c.ctrl); err != nil {
		t.Fatalf("a silent association: %v, want its control connection closed", err)
	}
	t.Logf("closed %v after the last datagram", time.Since(begin))
	waitFor(t, "the tunnel sockets to close", func() bool { return h.tunnel.openPacketConns() == 0 && h.gate.Flows() == 0 })
}

// Over a limit, an HTTP request is answered 503 with the limit on one line,
// and its connection closed; others are served, and so is the client once
// its place is free.
func TestHTTPLimits(t *testing.T) {
	var flows flowLog
	h := newHTTPProxy(t, func(s *HTTP) {
		s.Admission = &Admission{MaxFlowsPerClient: 1}
		s.Gate.Observe = flows.observe
	})
	h.upstream(digestHandler)
	h.gate.Apply(connected)
	get := "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n"
	// The first connection stays open (keep-alive) and holds the place.
	first := dialFrom(t, "127.0.0.1", h.addr)
	firstReader := bufio.NewReader(first)
	first.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(first, get)
	resp, err := http.ReadResponse(firstReader, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first: %v, %v", resp, err)
	}
	readBody(t, resp)
	flows.take()

	for _, req := range []string{get, "CONNECT demo.warren:443 HTTP/1.1\r\nHost: demo.warren:443\r\n\r\n"} {
		c := dialFrom(t, "127.0.0.1", h.addr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		r := bufio.NewReader(c)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusServiceUnavailable || body != "warren: too many flows from 127.0.0.1: the limit is 1 per client\n" || !resp.Close {
			t.Errorf("over the limit: %s %q (close %v); want 503 with the limit, and the connection closed", resp.Status, body, resp.Close)
		}
		if _, err := r.ReadByte(); err != io.EOF {
			t.Errorf("after the 503: %v, want the connection closed", err)
		}
	}
	if got := flows.take(); !slices.Equal(got, []string{"http client-limit", "http client-limit"}) {
		t.Errorf("observed %q", got)
	}
	// Another client is served.
	resp, body := rawHTTPFrom(t, "127.0.0.2", h.addr, get)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("another client: %s %q", resp.Status, body)
	}
	// The first goes: its place is free.
	first.Close()
	waitFor(t, "the place to be free", func() bool {
		resp, _ := rawHTTPFrom(t, "127.0.0.1", h.addr, get)
		return resp.StatusCode == http.StatusOK
	})
}

// rawHTTPFrom sends req on a new connection from the loopback address
// local, and reads one response.
func rawHTTPFrom(t *testing.T, local, addr, req string) (*http.Response, string) {
	t.Helper()
	c := dialFrom(t, local, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp, readBody(t, resp)
}

func TestHTTPAllowFrom(t *testing.T) {
	var flows flowLog
	h := newHTTPProxy(t, func(s *HTTP) {
		s.Admission = &Admission{AllowFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
		s.Gate.Observe = flows.observe
	})
	h.upstream(digestHandler)
	h.gate.Apply(connected)
	c := dialFrom(t, "127.0.0.1", h.addr)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n")
	if b, err := io.ReadAll(c); len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a client not allowed: %q, %v; want the connection closed without an answer", b, err)
	}
	if got := flows.take(); !slices.Equal(got, []string{"http not-allowed"}) {
		t.Errorf("observed %q", got)
	}
	if resp, body := rawHTTPFrom(t, "127.0.0.2", h.addr, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n"); resp.StatusCode != http.StatusOK {
		t.Errorf("an allowed client: %s %q", resp.Status, body)
	}
}

// A forward's connection over a limit, or from a client not allowed, is
// reset; so are the datagrams of a new UDP session dropped.
func TestForwardLimits(t *testing.T) {
	var flows flowLog
	h := newForward(t, "10.77.0.9:5432", func(f *Forward) {
		f.Admission = &Admission{MaxFlowsPerClient: 1, AllowFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("127.0.0.2/32")}}
		f.Gate.Observe = flows.observe
	})
	h.gate.Apply(connected)
	held := dialFrom(t, "127.0.0.1", h.tcp)
	echo(t, held, "holds the place")
	flows.take()

	wantCut(t, "over the limit", "127.0.0.1", h.tcp)
	wantCut(t, "not allowed", "127.0.0.3", h.tcp)
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udp.WriteToUDP([]byte("a new session"), h.udp)
	waitFor(t, "the datagram to be refused", func() bool { return flows.len() > 2 })
	if got := flows.take(); !slices.Equal(got, []string{"forward client-limit", "forward not-allowed", "forward-udp client-limit"}) {
		t.Errorf("observed %q", got)
	}
	if n := len(h.tunnel.udpSent()); n != 0 {
		t.Errorf("%d datagrams went through the tunnel", n)
	}
	other := dialFrom(t, "127.0.0.2", h.tcp)
	echo(t, other, "another client")
}

// wantCut checks that a connection from the loopback address local to
// addr is cut at once: reset (maybe before Dial returns) or closed.
func wantCut(t *testing.T, what, local, addr string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return // reset during the handshake
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: read %v, want the connection cut", what, err)
	}
}

// Exposed connections count toward the limits, but --allow-from (for
// local clients) does not apply to them: they come from the tunnel.
func TestExposeLimits(t *testing.T) {
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	go func() {
		for {
			c, err := svc.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	var flows flowLog
	tun := &fakeTunnel{}
	gate := NewGate(tun)
	gate.Observe = flows.observe
	adm := &Admission{MaxFlowsPerClient: 1, AllowFrom: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	e := &Expose{Gate: gate, Port: 8080, Target: svc.Addr().String(), Admission: adm}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- e.Run(ctx) }()
	defer func() {
		cancel()
		<-ran
	}()
	gate.Apply(connected)
	waitFor(t, "the tunnel listener", func() bool { return tun.lastListening() != "" })
	first := dialFrom(t, "127.0.0.1", tun.lastListening())
	echo(t, first, "not in AllowFrom, but from the tunnel")
	wantCut(t, "over the limit", "127.0.0.1", tun.lastListening())
	if got := flows.take(); !slices.Equal(got, []string{"expose accepted", "expose client-limit"}) {
		t.Errorf("observed %q", got)
	}
	first.Close()
}
