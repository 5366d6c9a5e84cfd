package dnsserver

import (
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// askFrom sends a query for name over network from the loopback address
// local (Linux routes all of 127.0.0.0/8 to lo).
func (h *harness) askFrom(local, network, name string) (*dns.Msg, error) {
	var la net.Addr = &net.UDPAddr{IP: net.ParseIP(local)}
	if network == "tcp" {
		la = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: la, Timeout: 3 * time.Second}}
	q := question(name, dns.TypeA)
	q.SetEdns0(1232, false)
	m, _, err := c.Exchange(q, h.addr)
	return m, err
}

// A client that Allow refuses gets REFUSED over UDP, with an Extended DNS
// Error that says why, and nothing is asked upstream; its TCP connections
// are closed as they come. Others are answered.
func TestServerAllow(t *testing.T) {
	allowed := netip.MustParseAddr("127.0.0.2")
	var mu sync.Mutex
	var asked []netip.Addr
	h := newHarness(t, func(h *harness) {
		h.srv.Allow = func(addr net.Addr) bool {
			ap, _ := netip.ParseAddrPort(addr.String())
			client := ap.Addr()
			mu.Lock()
			asked = append(asked, client)
			mu.Unlock()
			return client == allowed
		}
	})
	m, err := h.askFrom("127.0.0.1", "udp", "www.example.")
	if err != nil {
		t.Fatal(err)
	}
	if e := ede(m); m.Rcode != dns.RcodeRefused || e == nil || e.InfoCode != dns.ExtendedErrorCodeProhibited || e.ExtraText != "client not allowed" {
		t.Errorf("a client not allowed, over UDP: %s, EDE %v; want REFUSED, Prohibited", dns.RcodeToString[m.Rcode], e)
	}
	if n := h.asked("www.example.", dns.TypeA); n != 0 {
		t.Errorf("the servers were asked %d times for a client not allowed", n)
	}
	if _, err := h.askFrom("127.0.0.1", "tcp", "www.example."); err == nil {
		t.Error("a client not allowed, over TCP: answered, want the connection closed")
	}
	if h.logs.waitCount(slog.LevelDebug, "client not allowed", 1) != 1 {
		t.Error("no debug line for the TCP connection closed")
	}
	for _, network := range []string{"udp", "tcp"} {
		m, err := h.askFrom("127.0.0.2", network, "www.example.")
		if err != nil || m.Rcode != dns.RcodeSuccess {
			t.Errorf("an allowed client over %s: %v, %v", network, m, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range asked {
		if a != allowed && a != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("Allow was asked about %v: want the clients' addresses, unmapped", a)
		}
	}
}

// Over MaxInFlight, queries are answered SERVFAIL at once, not after the
// timeout, and a warning says so once, not for every query.
func TestServerWarnsOnceWhenBusy(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := newHarness(t, func(h *harness) {
		h.r.MaxInFlight = 1
		h.hold = func(q *dns.Msg) bool {
			if strings.HasPrefix(q.Question[0].Name, "slow") {
				started <- struct{}{}
				<-release
			}
			return false
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.exchange("udp", question("slow.example.", dns.TypeA))
	}()
	<-started
	for i := range 3 {
		begin := time.Now()
		m := h.ask(t, "udp", "busy"+string(rune('a'+i))+".example.", dns.TypeA)
		if took := time.Since(begin); m.Rcode != dns.RcodeServerFailure || took > time.Second {
			t.Errorf("over the bound: %s after %v, want SERVFAIL at once", dns.RcodeToString[m.Rcode], took)
		}
	}
	close(release)
	<-done
	if n := h.logs.count(slog.LevelWarn, "too many DNS queries in flight"); n != 1 {
		t.Errorf("%d warnings, want 1", n)
	}
}
