//go:build linux

package hostmode

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestEndpointResolverServers checks which servers resolve the endpoint:
// never warren's own, and the original ones while warren manages the file.
func TestEndpointResolverServers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	own := netip.MustParseAddr("127.0.0.1")
	ap := func(s string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(s), 53) }
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &endpointResolver{resolvConf: path, own: own}
	check := func(step string, want []netip.AddrPort) {
		t.Helper()
		got, err := r.servers()
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: servers %v, %v; want %v", step, got, err, want)
		}
	}

	write(path, "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 127.0.0.1\nnameserver 2001:db8::53\noptions ndots:1\nnameserver bogus\n")
	check("plain file", []netip.AddrPort{ap("192.0.2.53"), ap("2001:db8::53")})

	rc := &resolvConf{path: path, server: own}
	if err := rc.point(); err != nil {
		t.Fatal(err)
	}
	check("managed: the backup's servers", []netip.AddrPort{ap("192.0.2.53"), ap("2001:db8::53")})

	if _, err := rc.restore(); err != nil {
		t.Fatal(err)
	}
	write(path, "nameserver 127.0.0.1\n")
	check("only warren's own", nil)
	if _, err := r.LookupNetIP(context.Background(), "ip", "peer.example"); !errors.Is(err, errNoBootstrapDNS) {
		t.Errorf("lookup with no server: %v, want errNoBootstrapDNS", err)
	}

	r.bootstrap = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:5353")}
	check("--bootstrap-dns", r.bootstrap)

	os.Remove(path)
	r.bootstrap = nil
	check("no file", nil)
}

// TestEndpointResolverAsks checks that the lookup goes to the bootstrap
// servers, in turn (the first never answers), whatever resolv.conf says.
func TestEndpointResolverAsks(t *testing.T) {
	fwNeedRoot(t) // SO_MARK needs CAP_NET_ADMIN
	// The first server never answers; the second does.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	answered := make(chan string, 16)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 77)})
		}
		answered <- q.Question[0].Name
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	defer srv.Shutdown()

	r := &endpointResolver{
		mark:       DefaultMark,
		bootstrap:  []netip.AddrPort{netip.MustParseAddrPort(dead.LocalAddr().String()), netip.MustParseAddrPort(pc.LocalAddr().String())},
		resolvConf: filepath.Join(t.TempDir(), "none"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip4", "peer.example")
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{netip.MustParseAddr("192.0.2.77")}; !slices.Equal(addrs, want) {
		t.Errorf("resolved %v, want %v", addrs, want)
	}
	select {
	case name := <-answered:
		if name != "peer.example." {
			t.Errorf("the server was asked %q", name)
		}
	default:
		t.Error("the bootstrap server was not asked")
	}
}
