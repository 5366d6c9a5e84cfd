//go:build linux

package hostmode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/goleak"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// The lab's addresses. O plays the internet (its "public" addresses sit on
// its loopback, reached through P's default route) and the LAN (its eth0
// addresses); T plays the far side of the tunnel.
const (
	fwOPublic4 = "198.51.100.1"
	fwOPublic6 = "2001:db8::1"
	fwOLAN4    = "10.77.0.1"
	fwOLAN6    = "fd77::1"
	fwPAddr4   = "10.77.0.2"
	fwTDNS4    = "172.16.99.1" // in TunnelDNS
	fwTOther4  = "172.16.99.3" // not in TunnelDNS
	fwTDNS6    = "fd99::1"
	fwTOther6  = "fd99::3"
	fwPTun4    = "172.16.99.2"

	fwTUN    = "wgt0"
	fwMark   = 0x5157
	fwWGPort = "51820"
)

// fwConnecting is the Connecting state: only the marked socket, to O's
// WireGuard port, on both families.
func fwConnecting() Ruleset {
	return Ruleset{
		Block: true,
		Mark:  fwMark,
		Endpoints: []netip.AddrPort{
			netip.MustParseAddrPort(net.JoinHostPort(fwOPublic4, fwWGPort)),
			netip.MustParseAddrPort(net.JoinHostPort(fwOPublic6, fwWGPort)),
		},
	}
}

// fwConnected is the Connected state over wgt0.
func fwConnected(tunnelIPv6 bool) Ruleset {
	r := fwConnecting()
	r.Connected = true
	r.TUN = fwTUN
	r.TunnelDNS = []netip.Addr{netip.MustParseAddr(fwTDNS4), netip.MustParseAddr(fwTDNS6)}
	r.TunnelIPv6 = tunnelIPv6
	return r
}

// fwLab is the topology the namespace tests run in:
//
//	P (protected: the Firewall programs this namespace)
//	  eth0 10.77.0.2/24 fd77::2/64   <-> O eth0 10.77.0.1/24 fd77::1/64; O lo 198.51.100.1 2001:db8::1
//	  wgt0 172.16.99.2/24 fd99::2/64 <-> T eth0 172.16.99.1,.3/24 fd99::1,::3/64
//	  default routes via O; T's subnets on wgt0.
//
// Servers count what reaches them: O has a TCP echo server on :80, UDP echo
// servers on :51820 (the endpoint), :4000 and :53; T has TCP echo on :80 and
// :53 and UDP echo on :53; P has TCP echo on :9000 and, standing for warren's
// own DNS server, UDP echo on loopback port 53.
type fwLab struct {
	p, o, t *fwNS
	fw      *Firewall

	oTCP, tTCP, tDNSTCP, pTCP *fwTCPServer
	oWG, oOther, oDNS, tDNS   *fwUDPServer
	pDNS                      *fwUDPServer
}

func fwNewLab(t *testing.T) *fwLab {
	t.Helper()
	fwNeedRoot(t)
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // runs last

	base := fwRandomName("wfw")
	lab := &fwLab{
		p: fwNewNS(t, base+"p"),
		o: fwNewNS(t, base+"o"),
		t: fwNewNS(t, base+"t"),
	}
	p, o, tn := lab.p, lab.o, lab.t
	p.ip(t, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", o.name)
	p.ip(t, "link", "add", fwTUN, "type", "veth", "peer", "name", "eth0", "netns", tn.name)
	for _, c := range []struct {
		ns    *fwNS
		dev   string
		addrs []string
	}{
		{p, "eth0", []string{fwPAddr4 + "/24", "fd77::2/64"}},
		{p, fwTUN, []string{fwPTun4 + "/24", "fd99::2/64"}},
		{o, "eth0", []string{fwOLAN4 + "/24", fwOLAN6 + "/64"}},
		{o, "lo", []string{fwOPublic4 + "/32", fwOPublic6 + "/128"}},
		{tn, "eth0", []string{fwTDNS4 + "/24", fwTOther4 + "/24", fwTDNS6 + "/64", fwTOther6 + "/64"}},
	} {
		for _, a := range c.addrs {
			args := []string{"addr", "add", a, "dev", c.dev}
			if strings.Contains(a, ":") {
				args = append(args, "nodad")
			}
			c.ns.ip(t, args...)
		}
		c.ns.ip(t, "link", "set", c.dev, "up")
	}
	p.ip(t, "route", "add", "default", "via", fwOLAN4)
	p.ip(t, "-6", "route", "add", "default", "via", fwOLAN6)

	lab.oTCP = fwServeTCP(t, o, ":80")
	lab.oWG = fwServeUDP(t, o, fwWGPort, fwOPublic4, fwOPublic6)
	lab.oOther = fwServeUDP(t, o, "4000", fwOPublic4, fwOPublic6)
	lab.oDNS = fwServeUDP(t, o, "53", fwOPublic4, fwOPublic6, fwOLAN4, fwOLAN6)
	lab.tTCP = fwServeTCP(t, tn, ":80")
	lab.tDNSTCP = fwServeTCP(t, tn, ":53")
	lab.tDNS = fwServeUDP(t, tn, "53", fwTDNS4, fwTOther4, fwTDNS6, fwTOther6)
	lab.pTCP = fwServeTCP(t, p, ":9000")
	lab.pDNS = fwServeUDP(t, p, "53", "127.0.0.1", "::1")

	fw, err := NewFirewall(int(p.h))
	if err != nil {
		t.Fatalf("NewFirewall: %v", err)
	}
	lab.fw = fw
	t.Cleanup(func() {
		if err := fw.Remove(); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})

	// Without a table every path works, so a failure later is the table's
	// doing. IPv6 may need a moment for neighbour discovery.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := errors.Join(
			fwTCP(p, fwOPublic4, "80"), fwTCP(p, fwOPublic6, "80"),
			fwTCP(p, fwTDNS4, "80"), fwTCP(p, fwTDNS6, "80"),
			fwUDP(p, fwOPublic4, fwWGPort, 0), fwUDP(p, fwOPublic6, "53", 0),
			fwPing(p, fwOPublic4), fwPing(p, fwOPublic6),
		)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lab does not work without a firewall: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return lab
}

// counts returns what every server has received so far.
func (lab *fwLab) counts() map[string]int64 {
	return map[string]int64{
		"O tcp accepts":     lab.oTCP.accepts.Load(),
		"O tcp bytes":       lab.oTCP.bytes.Load(),
		"O udp endpoint":    lab.oWG.packets.Load(),
		"O udp other":       lab.oOther.packets.Load(),
		"O dns":             lab.oDNS.packets.Load(),
		"T tcp accepts":     lab.tTCP.accepts.Load(),
		"T dns":             lab.tDNS.packets.Load(),
		"T dns tcp accepts": lab.tDNSTCP.accepts.Load(),
		"P tcp accepts":     lab.pTCP.accepts.Load(),
		"P dns":             lab.pDNS.packets.Load(),
	}
}

// wantCounts waits for stray packets to land, then checks that the servers'
// counts rose from before by exactly delta (missing keys: by zero).
func (lab *fwLab) wantCounts(t *testing.T, before map[string]int64, delta map[string]int64) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	after := lab.counts()
	for k, b := range before {
		if got, want := after[k]-b, delta[k]; got != want {
			t.Errorf("%s rose by %d, want %d", k, got, want)
		}
	}
}

func (lab *fwLab) apply(t *testing.T, r Ruleset) {
	t.Helper()
	if err := lab.fw.Apply(r); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// fwWantOK fails the test if a probe that should pass failed.
func fwWantOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v, want it to work", what, err)
	}
}

// fwWantRefused fails the test unless a probe failed at once with an error
// that is not a timeout: the reject rule answered it.
func fwWantRefused(t *testing.T, what string, probe func() error) {
	t.Helper()
	start := time.Now()
	err := probe()
	d := time.Since(start)
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("%s worked, want it refused", what)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("%s timed out after %v (%v), want it refused at once", what, d, err)
	case d > time.Second:
		t.Errorf("%s took %v to fail (%v), want under 1s", what, d, err)
	}
}

// fwWantFail fails the test if a probe worked; dropped or refused are both fine.
func fwWantFail(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s worked, want it blocked", what)
	}
}

const fwProbeTimeout = time.Second

// fwTCP connects from ns to host:port, sends a few bytes and waits for the echo.
func fwTCP(ns *fwNS, host, port string) error {
	var c net.Conn
	err := ns.do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(host, port), fwProbeTimeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	return fwEcho(c)
}

func fwEcho(c net.Conn) error {
	c.SetDeadline(time.Now().Add(fwProbeTimeout))
	msg := []byte("warren")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := c.Read(buf); err != nil {
		return err
	}
	if !bytes.Equal(buf, msg) {
		return fmt.Errorf("echo: got %q, want %q", buf, msg)
	}
	return nil
}

// fwUDP sends a datagram from a socket in ns with the given SO_MARK (0: none)
// to host:port and waits for the echo from that address.
func fwUDP(ns *fwNS, host, port string, mark int) error {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		if mark == 0 {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
		}); err != nil {
			return err
		}
		return serr
	}}
	var pc net.PacketConn
	if err := ns.do(func() (err error) {
		pc, err = lc.ListenPacket(context.Background(), "udp", ":0")
		return err
	}); err != nil {
		return err
	}
	defer pc.Close()
	to, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, port))
	if err != nil {
		return err
	}
	pc.SetDeadline(time.Now().Add(fwProbeTimeout))
	msg := []byte("warren")
	if _, err := pc.WriteTo(msg, to); err != nil {
		return err
	}
	buf := make([]byte, 64)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		fa := from.(*net.UDPAddr).AddrPort()
		if fa.Addr().Unmap() == to.AddrPort().Addr().Unmap() && fa.Port() == to.AddrPort().Port() && bytes.Equal(buf[:n], msg) {
			return nil
		}
	}
}

// fwPing sends one ICMP or ICMPv6 echo request from ns to host and waits for
// the reply.
func fwPing(ns *fwNS, host string) error {
	addr := netip.MustParseAddr(host)
	return ns.do(func() error {
		network, listen, proto := "ip4:icmp", "0.0.0.0", 1
		var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
		if addr.Is6() {
			network, listen, proto = "ip6:ipv6-icmp", "::", 58
			typ, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
		}
		c, err := icmp.ListenPacket(network, listen)
		if err != nil {
			return err
		}
		defer c.Close()
		id := os.Getpid() & 0xffff
		b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("warren")}}).Marshal(nil)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(fwProbeTimeout))
		if _, err := c.WriteTo(b, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return err
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && m.Type == reply && e.ID == id {
				return nil
			}
		}
	})
}

// fwTCPServer is a TCP echo server that counts connections and bytes.
type fwTCPServer struct {
	ln      net.Listener
	accepts atomic.Int64
	bytes   atomic.Int64
	wg      sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	conns  map[net.Conn]bool
	closed bool
}

// fwServeTCP listens on addr in ns and serves until the test ends.
func fwServeTCP(t *testing.T, ns *fwNS, addr string) *fwTCPServer {
	t.Helper()
	s := &fwTCPServer{conns: map[net.Conn]bool{}}
	if err := ns.do(func() (err error) {
		s.ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns.name, err)
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.close)
	return s
}

func (s *fwTCPServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepts.Add(1)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			buf := make([]byte, 1500)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					s.bytes.Add(int64(n))
					c.Write(buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// push writes b, unasked, to every connection the server has open.
func (s *fwTCPServer) push(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.SetWriteDeadline(time.Now().Add(fwProbeTimeout))
		c.Write(b)
	}
}

func (s *fwTCPServer) close() {
	s.mu.Lock()
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// fwUDPServer is a UDP echo server on one or more addresses that counts the
// datagrams it gets. It binds each address on its own so that replies come
// from the address that was asked.
type fwUDPServer struct {
	packets atomic.Int64
	conns   []net.PacketConn
	wg      sync.WaitGroup
}

func fwServeUDP(t *testing.T, ns *fwNS, port string, hosts ...string) *fwUDPServer {
	t.Helper()
	s := &fwUDPServer{}
	t.Cleanup(s.close)
	for _, h := range hosts {
		var pc net.PacketConn
		if err := ns.do(func() (err error) {
			pc, err = net.ListenPacket("udp", net.JoinHostPort(h, port))
			return err
		}); err != nil {
			t.Fatalf("listen on udp %s port %s in %s: %v", h, port, ns.name, err)
		}
		s.conns = append(s.conns, pc)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 1500)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				s.packets.Add(1)
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	return s
}

func (s *fwUDPServer) close() {
	for _, pc := range s.conns {
		pc.Close()
	}
	s.wg.Wait()
}

// TestFirewallConnecting checks the Connecting state with real packets: only
// the marked socket reaches the endpoint; everything else fails at once.
func TestFirewallConnecting(t *testing.T) {
	lab := fwNewLab(t)
	p := lab.p
	lab.apply(t, fwConnecting())

	before := lab.counts()
	for _, o := range []string{fwOPublic4, fwOPublic6} {
		fwWantRefused(t, "TCP to "+o, func() error { return fwTCP(p, o, "80") })
		fwWantRefused(t, "UDP to "+o, func() error { return fwUDP(p, o, "4000", 0) })
		fwWantRefused(t, "DNS to "+o, func() error { return fwUDP(p, o, "53", 0) })
		fwWantRefused(t, "ping "+o, func() error { return fwPing(p, o) })
		fwWantRefused(t, "unmarked UDP to the endpoint "+o, func() error { return fwUDP(p, o, fwWGPort, 0) })
		fwWantRefused(t, "marked UDP to another port of "+o, func() error { return fwUDP(p, o, "4000", fwMark) })
		fwWantRefused(t, "UDP to the endpoint with another mark "+o, func() error { return fwUDP(p, o, fwWGPort, fwMark+1) })
		fwWantRefused(t, "marked DNS without ResolveEndpoint to "+o, func() error { return fwUDP(p, o, "53", fwMark) })
		fwWantOK(t, "marked UDP to the endpoint "+o, fwUDP(p, o, fwWGPort, fwMark))
	}
	fwWantRefused(t, "TCP to the tunnel's side", func() error { return fwTCP(p, fwTDNS4, "80") })
	lab.wantCounts(t, before, map[string]int64{"O udp endpoint": 2})
	// The port 53 guard, not the final reject, stopped the four DNS probes.
	if n := fwRuleCounter(t, p, "dns elsewhere udp"); n != 4 {
		t.Errorf("the port 53 guard counted %d packets, want 4", n)
	}

	// Resolving the endpoint: marked port 53 anywhere, and only marked.
	r := fwConnecting()
	r.ResolveEndpoint = true
	lab.apply(t, r)
	before = lab.counts()
	for _, o := range []string{fwOPublic4, fwOPublic6} {
		fwWantOK(t, "marked DNS to "+o, fwUDP(p, o, "53", fwMark))
		fwWantRefused(t, "unmarked DNS to "+o, func() error { return fwUDP(p, o, "53", 0) })
	}
	lab.wantCounts(t, before, map[string]int64{"O dns": 2})

	// Lockdown in Disconnected: not even the marked socket.
	lab.apply(t, Ruleset{Block: true})
	before = lab.counts()
	fwWantRefused(t, "marked UDP to the endpoint in lockdown", func() error { return fwUDP(p, fwOPublic4, fwWGPort, fwMark) })
	fwWantRefused(t, "TCP to O in lockdown", func() error { return fwTCP(p, fwOPublic4, "80") })
	lab.wantCounts(t, before, nil)
}

// TestFirewallConnected checks the Connected state: the tunnel works, DNS only
// to the tunnel's servers, nothing direct, IPv6 only when the tunnel has it.
func TestFirewallConnected(t *testing.T) {
	lab := fwNewLab(t)
	p := lab.p
	lab.apply(t, fwConnected(false))

	before := lab.counts()
	fwWantOK(t, "TCP over the tunnel", fwTCP(p, fwTDNS4, "80"))
	fwWantOK(t, "TCP over the tunnel to another address", fwTCP(p, fwTOther4, "80"))
	fwWantOK(t, "DNS to the tunnel's DNS server", fwUDP(p, fwTDNS4, "53", 0))
	fwWantRefused(t, "DNS over the tunnel to another address", func() error { return fwUDP(p, fwTOther4, "53", 0) })
	fwWantRefused(t, "DNS over TCP over the tunnel to another address", func() error { return fwTCP(p, fwTOther4, "53") })
	fwWantRefused(t, "TCP direct to O", func() error { return fwTCP(p, fwOPublic4, "80") })
	fwWantRefused(t, "DNS direct to O", func() error { return fwUDP(p, fwOPublic4, "53", 0) })
	fwWantOK(t, "marked UDP to the endpoint", fwUDP(p, fwOPublic4, fwWGPort, fwMark))
	fwWantRefused(t, "IPv6 TCP over a tunnel without IPv6", func() error { return fwTCP(p, fwTDNS6, "80") })
	fwWantRefused(t, "IPv6 DNS over a tunnel without IPv6", func() error { return fwUDP(p, fwTDNS6, "53", 0) })
	fwWantRefused(t, "IPv6 ping over a tunnel without IPv6", func() error { return fwPing(p, fwTDNS6) })
	// A new connection from the tunnel's side is dropped: only replies come in.
	fwWantFail(t, "TCP from the tunnel's side into P", fwTCP(lab.t, fwPTun4, "9000"))
	lab.wantCounts(t, before, map[string]int64{
		"T tcp accepts":  2,
		"T dns":          1,
		"O udp endpoint": 1,
	})

	lab.apply(t, fwConnected(true))
	before = lab.counts()
	fwWantOK(t, "IPv6 TCP over the tunnel", fwTCP(p, fwTDNS6, "80"))
	fwWantOK(t, "IPv6 ping over the tunnel", fwPing(p, fwTDNS6))
	fwWantOK(t, "IPv6 DNS to the tunnel's DNS server", fwUDP(p, fwTDNS6, "53", 0))
	fwWantRefused(t, "IPv6 DNS over the tunnel to another address", func() error { return fwUDP(p, fwTOther6, "53", 0) })
	fwWantRefused(t, "IPv6 TCP direct to O", func() error { return fwTCP(p, fwOPublic6, "80") })
	fwWantOK(t, "IPv4 TCP over the tunnel", fwTCP(p, fwTDNS4, "80"))
	lab.wantCounts(t, before, map[string]int64{"T tcp accepts": 2, "T dns": 1})
}

// TestFirewallCutsEstablished checks that a connection opened while a path
// was allowed does not survive a switch to a table that does not allow it, in
// either direction: there is no blanket "ct state established accept".
func TestFirewallCutsEstablished(t *testing.T) {
	lab := fwNewLab(t)
	lan := fwConnecting()
	lan.AllowLAN = true
	tests := []struct {
		name   string
		before Ruleset // Block false: no table, but conntrack already in use
		host   string
		server *fwTCPServer
		after  Ruleset
	}{
		{"no table to connected", Ruleset{}, fwOPublic4, lab.oTCP, fwConnected(true)},
		{"lan to connecting", lan, fwOLAN4, lab.oTCP, fwConnecting()},
		{"tunnel to connecting", fwConnected(false), fwTDNS4, lab.tTCP, fwConnecting()},
		{"tunnel to lockdown", fwConnected(false), fwTOther4, lab.tTCP, Ruleset{Block: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.before.Block {
				// Without a rule that uses conntrack, the namespace tracks
				// nothing and the old connection would look new to the
				// table; a host that already tracks is the harder case.
				lab.fw.Remove()
				lab.p.nft(t, "add table inet fwtest; add chain inet fwtest out { type filter hook output priority 10; policy accept; }; add rule inet fwtest out ct state established counter")
				defer lab.p.nft(t, "delete", "table", "inet", "fwtest")
			}
			lab.apply(t, tt.before)
			var c net.Conn
			if err := lab.p.do(func() (err error) {
				c, err = net.DialTimeout("tcp", net.JoinHostPort(tt.host, "80"), fwProbeTimeout)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := fwEcho(c); err != nil {
				t.Fatalf("before the switch: %v", err)
			}

			lab.apply(t, tt.after)
			received := tt.server.bytes.Load()

			// Server to P: dropped on the way in.
			tt.server.push([]byte("pushed"))
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if n, err := c.Read(make([]byte, 16)); err == nil {
				t.Errorf("read %d bytes the server sent after the switch, want none", n)
			}

			// P to the server: rejected on the way out, with a reset.
			err := fwEcho(c)
			var ne net.Error
			switch {
			case err == nil:
				t.Errorf("the old connection still works after the switch")
			case errors.As(err, &ne) && ne.Timeout():
				t.Errorf("the old connection timed out (%v), want a reset at once", err)
			}
			time.Sleep(200 * time.Millisecond)
			if n := tt.server.bytes.Load() - received; n != 0 {
				t.Errorf("the server received %d bytes after the switch, want 0", n)
			}
		})
	}
}

// TestFirewallLoopbackRemoveReplace checks that loopback works in every
// state, that Apply replaces the table instead of adding to it, that Remove
// restores everything and leaves nothing, and Present.
func TestFirewallLoopbackRemoveReplace(t *testing.T) {
	lab := fwNewLab(t)
	p := lab.p

	lan := fwConnecting()
	lan.AllowLAN = true
	resolve := fwConnecting()
	resolve.ResolveEndpoint = true
	states := []struct {
		name string
		r    Ruleset
	}{
		{"lockdown", Ruleset{Block: true}},
		{"connecting", fwConnecting()},
		{"resolving", resolve},
		{"connected", fwConnected(false)},
		{"connected ipv6", fwConnected(true)},
		{"lan", lan},
	}
	for _, s := range states {
		lab.apply(t, s.r)
		before := lab.counts()
		for _, host := range []string{"127.0.0.1", "::1", fwPAddr4} {
			fwWantOK(t, s.name+": TCP to "+host, fwTCP(p, host, "9000"))
		}
		for _, host := range []string{"127.0.0.1", "::1"} {
			fwWantOK(t, s.name+": DNS to warren's server on "+host, fwUDP(p, host, "53", 0))
		}
		fwWantRefused(t, s.name+": TCP to O", func() error { return fwTCP(p, fwOPublic4, "80") })
		lab.wantCounts(t, before, map[string]int64{"P tcp accepts": 3, "P dns": 2})
		if ok, err := lab.fw.Present(); !ok || err != nil {
			t.Errorf("%s: Present() = %v, %v; want true, nil", s.name, ok, err)
		}
	}

	// Apply replaces: the same Ruleset gives the same table, whatever came
	// before it, with no duplicate chain, rule or element.
	list := func() string { return p.nft(t, "list", "table", "inet", TableName) }
	lab.apply(t, fwConnected(true))
	first := list()
	lab.apply(t, lan)
	lab.apply(t, fwConnected(true))
	lab.apply(t, fwConnected(true))
	if second := list(); second != first {
		t.Errorf("the same Ruleset applied again gives a different table:\n%s\nthen:\n%s", first, second)
	}
	if n := strings.Count(p.nft(t, "list", "tables"), "table inet "+TableName); n != 1 {
		t.Errorf("%d tables named inet %s, want 1", n, TableName)
	}
	if n := strings.Count(first, "\tchain "); n != 5 {
		t.Errorf("%d chains, want 5:\n%s", n, first)
	}
	if n := strings.Count(first, `comment "tunnel"`); n != 2 {
		t.Errorf("%d rules commented \"tunnel\", want 2 (input, output):\n%s", n, first)
	}

	// Remove leaves nothing and restores every path.
	if err := lab.fw.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if ok, err := lab.fw.Present(); ok || err != nil {
		t.Errorf("after Remove, Present() = %v, %v; want false, nil", ok, err)
	}
	if rs := strings.TrimSpace(p.nft(t, "list", "ruleset")); rs != "" {
		t.Errorf("after Remove the ruleset is not empty:\n%s", rs)
	}
	fwWantOK(t, "TCP to O after Remove", fwTCP(p, fwOPublic4, "80"))
	fwWantOK(t, "DNS to O after Remove", fwUDP(p, fwOPublic6, "53", 0))
	fwWantOK(t, "ping O after Remove", fwPing(p, fwOPublic4))
	if err := lab.fw.Remove(); err != nil {
		t.Errorf("Remove with no table: %v, want nil", err)
	}

	// Apply(Ruleset{}) is Remove.
	lab.apply(t, fwConnecting())
	lab.apply(t, Ruleset{})
	if ok, err := lab.fw.Present(); ok || err != nil {
		t.Errorf("after Apply(Ruleset{}), Present() = %v, %v; want false, nil", ok, err)
	}
	fwWantOK(t, "TCP to O after Apply(Ruleset{})", fwTCP(p, fwOPublic4, "80"))
}

// TestFirewallAtomicReplace switches between two blocking tables 200 times
// while P keeps trying to reach O: if a switch ever left P without a table
// for an instant, O would see a connection or a datagram.
func TestFirewallAtomicReplace(t *testing.T) {
	lab := fwNewLab(t)
	a, b := fwConnecting(), fwConnected(true)
	b.Endpoints = b.Endpoints[1:]
	lab.apply(t, a)
	before := lab.counts()

	var (
		stop     atomic.Bool
		attempts atomic.Int64
		wg       sync.WaitGroup
		errc     = make(chan error, 4)
	)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- lab.p.do(func() error {
				host := fwOPublic4
				if i%2 == 1 {
					host = fwOPublic6
				}
				for !stop.Load() {
					attempts.Add(1)
					if c, err := net.DialTimeout("tcp", net.JoinHostPort(host, "80"), 200*time.Millisecond); err == nil {
						c.Close()
					}
					if pc, err := net.ListenPacket("udp", ":0"); err == nil {
						to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(host), 51820))
						pc.WriteTo([]byte("leak?"), to)
						pc.Close()
					}
				}
				return nil
			})
		}()
	}
	for i := range 200 {
		r := a
		if i%2 == 0 {
			r = b
		}
		if err := lab.fw.Apply(r); err != nil {
			t.Errorf("Apply %d: %v", i, err)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}
	if attempts.Load() < 200 {
		t.Errorf("only %d attempts during the switches; the test proves little", attempts.Load())
	}
	t.Logf("%d attempts to reach O during 200 replacements", attempts.Load())
	lab.wantCounts(t, before, nil)
}

// TestFirewallAllowLAN checks that AllowLAN opens the private ranges, and
// only them, and that port 53 stays closed there.
func TestFirewallAllowLAN(t *testing.T) {
	lab := fwNewLab(t)
	p := lab.p
	r := fwConnecting()

	lab.apply(t, r)
	before := lab.counts()
	fwWantRefused(t, "TCP to O's LAN address without AllowLAN", func() error { return fwTCP(p, fwOLAN4, "80") })
	fwWantRefused(t, "IPv6 TCP to O's LAN address without AllowLAN", func() error { return fwTCP(p, fwOLAN6, "80") })
	fwWantFail(t, "TCP from the LAN into P without AllowLAN", fwTCP(lab.o, fwPAddr4, "9000"))
	lab.wantCounts(t, before, nil)

	r.AllowLAN = true
	lab.apply(t, r)
	before = lab.counts()
	fwWantOK(t, "TCP from the LAN into P", fwTCP(lab.o, fwPAddr4, "9000"))
	for _, host := range []string{fwOLAN4, fwOLAN6} {
		fwWantOK(t, "TCP to the LAN "+host, fwTCP(p, host, "80"))
		fwWantOK(t, "ping the LAN "+host, fwPing(p, host))
		fwWantRefused(t, "DNS to the LAN "+host, func() error { return fwUDP(p, host, "53", 0) })
	}
	for _, host := range []string{fwOPublic4, fwOPublic6} {
		fwWantRefused(t, "TCP to the internet "+host, func() error { return fwTCP(p, host, "80") })
	}
	lab.wantCounts(t, before, map[string]int64{"O tcp accepts": 2, "O tcp bytes": 12, "P tcp accepts": 1})
}

// TestFirewallVerifyDetectsTampering changes the table behind the Firewall's
// back and checks that the read-back sees it, and that Apply repairs it.
func TestFirewallVerifyDetectsTampering(t *testing.T) {
	lab := fwNewLab(t)
	r := fwConnected(false)
	p, err := r.plan()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		nft    []string
		inDiff string
	}{
		{"extra rule", []string{"add", "rule", "inet", TableName, "output", "accept"}, "chain output: rules"},
		{"rule gone", []string{"flush", "chain", "inet", TableName, "input"}, "chain input: rules"},
		{"policy accept", []string{"add", "chain", "inet", TableName, "forward", "{ type filter hook forward priority 0 ; policy accept ; }"}, "chain forward: type"},
		{"extra element", []string{"add", "element", "inet", TableName, "dns4", "{ 192.0.2.53 }"}, "set dns4: elements"},
		{"extra chain", []string{"add", "chain", "inet", TableName, "sneaky"}, "unexpected chain sneaky"},
		{"table gone", []string{"delete", "table", "inet", TableName}, "table present = false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lab.apply(t, r)
			lab.p.nft(t, tt.nft...)
			conn, err := lab.fw.newConn()
			if err != nil {
				t.Fatal(err)
			}
			err = fwVerify(conn, p)
			if !errors.Is(err, errFWMismatch) || !strings.Contains(err.Error(), tt.inDiff) {
				t.Errorf("verify after %q = %v, want a mismatch mentioning %q", strings.Join(tt.nft, " "), err, tt.inDiff)
			}
			lab.apply(t, r) // Apply replaces whatever is there and verifies.
		})
	}
}

// The tests below need no privileges.

func TestFirewallDiffTable(t *testing.T) {
	r := fwConnected(true)
	r.ResolveEndpoint = true
	r.AllowLAN = true
	p, err := r.plan()
	if err != nil {
		t.Fatal(err)
	}
	if err := fwDiffTable(p.state(), p.state()); err != nil {
		t.Fatalf("a table differs from itself: %v", err)
	}
	tests := []struct {
		name   string
		change func(st *fwTableState)
		want   string
	}{
		{"absent", func(st *fwTableState) { *st = fwTableState{} }, "table present = false"},
		{"chain missing", func(st *fwTableState) { delete(st.chains, "forward") }, "chain forward missing"},
		{"extra chain", func(st *fwTableState) { st.chains["x"] = fwChainState{} }, "unexpected chain x"},
		{"policy", func(st *fwTableState) {
			c := st.chains["input"]
			c.policy = nftables.ChainPolicyAccept
			st.chains["input"] = c
		}, "chain input: type"},
		{"type", func(st *fwTableState) {
			c := st.chains["forward"]
			c.typ = nftables.ChainTypeRoute
			st.chains["forward"] = c
		}, "chain forward: type"},
		{"hook", func(st *fwTableState) {
			c := st.chains["output"]
			c.hook = *nftables.ChainHookPostrouting
			st.chains["output"] = c
		}, "chain output: type"},
		{"priority", func(st *fwTableState) {
			c := st.chains["output"]
			c.priority = -1
			st.chains["output"] = c
		}, "chain output: type"},
		{"rule missing", func(st *fwTableState) {
			c := st.chains["output"]
			c.rules = c.rules[1:]
			st.chains["output"] = c
		}, "chain output: rules"},
		{"rules reordered", func(st *fwTableState) {
			c := st.chains["input"]
			c.rules = slices.Clone(c.rules)
			c.rules[0], c.rules[1] = c.rules[1], c.rules[0]
			st.chains["input"] = c
		}, "chain input: rules"},
		{"rule changed", func(st *fwTableState) {
			c := st.chains["output"]
			c.rules = slices.Clone(c.rules)
			c.rules[3].exprs++
			st.chains["output"] = c
		}, "chain output: rules"},
		{"set missing", func(st *fwTableState) { delete(st.sets, fwSetEndpoint6.name) }, "set endpoint6 missing"},
		{"set type", func(st *fwTableState) {
			s := st.sets[fwSetDNS4.name]
			s.keyType = "ipv6_addr"
			st.sets[fwSetDNS4.name] = s
		}, "set dns4: type"},
		{"element missing", func(st *fwTableState) {
			s := st.sets[fwSetEndpoint4.name]
			s.elems = nil
			st.sets[fwSetEndpoint4.name] = s
		}, "set endpoint4: elements"},
		{"element changed", func(st *fwTableState) {
			s := st.sets[fwSetDNS6.name]
			s.elems = [][]byte{bytes.Repeat([]byte{1}, 16)}
			st.sets[fwSetDNS6.name] = s
		}, "set dns6: elements"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := p.state() // a fresh copy of maps each time
			tt.change(&got)
			err := fwDiffTable(p.state(), got)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("diffTable = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestFirewallRulesetValidate(t *testing.T) {
	ep := netip.MustParseAddrPort("192.0.2.1:51820")
	tests := []struct {
		name string
		r    Ruleset
		ok   bool
	}{
		{"lockdown", Ruleset{Block: true}, true},
		{"connecting", Ruleset{Block: true, Mark: 1, Endpoints: []netip.AddrPort{ep}}, true},
		{"connected", fwConnected(true), true},
		{"no mark", Ruleset{Block: true, Endpoints: []netip.AddrPort{ep}}, false},
		{"no mark to resolve", Ruleset{Block: true, ResolveEndpoint: true}, false},
		{"no tun", Ruleset{Block: true, Connected: true}, false},
		{"long tun", Ruleset{Block: true, Connected: true, TUN: "a-very-long-name0"}, false},
		{"bad endpoint", Ruleset{Block: true, Mark: 1, Endpoints: []netip.AddrPort{{}}}, false},
		{"zero port", Ruleset{Block: true, Mark: 1, Endpoints: []netip.AddrPort{netip.AddrPortFrom(ep.Addr(), 0)}}, false},
		{"zoned endpoint", Ruleset{Block: true, Mark: 1, Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[fe80::1%eth0]:1")}}, false},
		{"bad dns", Ruleset{Block: true, TunnelDNS: []netip.Addr{{}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.r.plan()
			if (err == nil) != tt.ok {
				t.Errorf("plan() error = %v, want ok = %v", err, tt.ok)
			}
		})
	}
	if _, err := NewFirewall(0); err == nil {
		t.Errorf("NewFirewall(0) = nil error, want one")
	}
}

// TestFirewallPlan checks properties of every table Apply could send,
// without a kernel.
func TestFirewallPlan(t *testing.T) {
	var rulesets []Ruleset
	for _, base := range []Ruleset{{Block: true}, fwConnecting(), fwConnected(false), fwConnected(true)} {
		for _, lan := range []bool{false, true} {
			for _, resolve := range []bool{false, true} {
				r := base
				r.AllowLAN, r.ResolveEndpoint = lan, resolve
				if resolve && r.Mark == 0 {
					continue
				}
				rulesets = append(rulesets, r)
			}
		}
	}
	for _, r := range rulesets {
		name := fmt.Sprintf("%+v", r)
		p, err := r.plan()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		wantChains := 5 // input, output, forward, mark-save, mark-restore
		if r.Mark == 0 {
			wantChains = 3 // "meta mark 0" would be every unmarked packet
		}
		if len(p.chains) != wantChains {
			t.Fatalf("%s: %d chains, want %d", name, len(p.chains), wantChains)
		}
		for _, c := range p.chains {
			seen := map[string]bool{}
			for i, rule := range c.rules {
				if seen[rule.comment] {
					t.Errorf("%s: chain %s: comment %q used twice", name, c.name, rule.comment)
				}
				seen[rule.comment] = true
				// The only accept with no condition but a conntrack state
				// would be the blanket "ct state established accept".
				if len(rule.exprs) == 4 {
					if _, ok := rule.exprs[0].(*expr.Ct); ok && fwIsAccept(rule.exprs[3]) {
						t.Errorf("%s: chain %s rule %d (%s) accepts on conntrack state alone", name, c.name, i, rule.comment)
					}
				}
			}
			switch c.name {
			case "mark-save", "mark-restore":
				// They mark warren's flows and nothing else: no verdict,
				// and every packet goes on to the filtering chains.
				if c.policy != nftables.ChainPolicyAccept || c.priority >= *nftables.ChainPriorityFilter || len(c.rules) != 1 {
					t.Errorf("%s: %s: policy %v priority %d, %d rules; want accept, before the filters, 1 rule", name, c.name, c.policy, c.priority, len(c.rules))
				}
				for _, e := range c.rules[0].exprs {
					if _, ok := e.(*expr.Verdict); ok {
						t.Errorf("%s: %s has a verdict", name, c.name)
					}
				}
			case "forward":
				if len(c.rules) != 0 {
					t.Errorf("%s: forward has %d rules, want none", name, len(c.rules))
				}
			case "output":
				n := len(c.rules)
				if c.rules[n-2].comment != "reject tcp" || c.rules[n-1].comment != "reject" {
					t.Errorf("%s: output ends with %q, %q; want the rejects", name, c.rules[n-2].comment, c.rules[n-1].comment)
				}
				if _, ok := c.rules[n-1].exprs[len(c.rules[n-1].exprs)-1].(*expr.Reject); !ok {
					t.Errorf("%s: last output rule does not reject", name)
				}
				// The port 53 guard comes before every accept that is not
				// loopback, NDP, DHCP, the marked socket or the tunnel's DNS.
				guard := slices.IndexFunc(c.rules, func(r fwRulePlan) bool { return r.comment == "dns elsewhere udp" })
				for _, rule := range c.rules[:guard] {
					ok := slices.ContainsFunc([]string{"loopback", "ndp", "dhcp", "invalid", "endpoint", "resolve endpoint", "tunnel dns", "dns elsewhere"},
						func(prefix string) bool { return strings.HasPrefix(rule.comment, prefix) })
					if !ok {
						t.Errorf("%s: rule %q comes before the port 53 guard", name, rule.comment)
					}
				}
			}
		}
	}
}

// fwRuleCounter returns the packet count of the rule of table inet warren
// with the given comment, as nft shows it in ns.
func fwRuleCounter(t *testing.T, ns *fwNS, comment string) int {
	t.Helper()
	for _, line := range strings.Split(ns.nft(t, "list", "table", "inet", TableName), "\n") {
		if !strings.HasSuffix(line, `comment "`+comment+`"`) {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(line[strings.Index(line, "counter packets "):], "counter packets %d", &n); err != nil {
			t.Fatalf("no counter in %q: %v", line, err)
		}
		return n
	}
	t.Fatalf("no rule with comment %q", comment)
	return 0
}

func fwIsAccept(e expr.Any) bool {
	v, ok := e.(*expr.Verdict)
	return ok && v.Kind == expr.VerdictAccept
}

// TestFirewallMarkForReversePath puts P behind strict reverse-path
// filtering with wg-quick's routing (a default route into the tunnel for
// everything unmarked): the endpoint's replies to the marked socket get in
// only because the table restores their mark from conntrack and
// src_valid_mark lets the reverse-path check use it.
func TestFirewallMarkForReversePath(t *testing.T) {
	lab := fwNewLab(t)
	p := lab.p
	sysctl := func(settings ...string) {
		t.Helper()
		args := append([]string{"netns", "exec", p.name, "sysctl", "-qw"}, settings...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %v: %v: %s", settings, err, fwTrim(out))
		}
	}
	sysctl("net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1", "net.ipv4.conf.all.src_valid_mark=1")
	p.ip(t, "rule", "add", "priority", "100", "table", "main", "suppress_prefixlength", "0")
	p.ip(t, "rule", "add", "priority", "101", "not", "fwmark", fmt.Sprint(fwMark), "table", "100")
	p.ip(t, "route", "add", "default", "dev", fwTUN, "table", "100")

	lab.apply(t, fwConnecting())
	fwWantOK(t, "marked UDP to the endpoint, strict rp_filter", fwUDP(p, fwOPublic4, fwWGPort, fwMark))
	fwWantOK(t, "marked UDP to the endpoint, strict rp_filter, again", fwUDP(p, fwOPublic4, fwWGPort, fwMark))
	// The mark alone is not enough: the check must be allowed to use it.
	sysctl("net.ipv4.conf.all.src_valid_mark=0")
	fwWantFail(t, "marked UDP to the endpoint without src_valid_mark", fwUDP(p, fwOPublic4, fwWGPort, fwMark))
	sysctl("net.ipv4.conf.all.src_valid_mark=1")
	fwWantOK(t, "marked UDP to the endpoint with src_valid_mark again", fwUDP(p, fwOPublic4, fwWGPort, fwMark))
	// Only warren's flows carry the conntrack mark.
	if out := p.nft(t, "list", "table", "inet", TableName); !strings.Contains(out, "meta mark set ct mark") || !strings.Contains(out, "ct mark set meta mark") {
		t.Errorf("no mark chains:\n%s", out)
	}
}
