package netstack

import (
	"context"
	"net/netip"
	"testing"

	"github.com/warren-vpn/warren/config"
)

type fixedResolver []netip.Addr

func (r fixedResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return append([]netip.Addr(nil), r...), nil
}

// Successive tries of a config move through all of a name's addresses,
// IPv4 first.
func TestResolveRotatesAddresses(t *testing.T) {
	addrs := fixedResolver{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("::ffff:192.0.2.2")}
	tun := NewTunnel(TunnelOptions{Resolver: addrs})
	cfg := &config.Config{Peers: []config.Peer{
		{Endpoint: config.Endpoint{Host: "vpn.example", Port: 51820}},
		{}, // no endpoint
		{Endpoint: config.Endpoint{Host: "198.51.100.9", Port: 1}}, // an IP: always itself
	}}
	want := []string{"192.0.2.1:51820", "192.0.2.2:51820", "[2001:db8::1]:51820", "192.0.2.1:51820"}
	for try, w := range want {
		eps, err := tun.resolve(context.Background(), cfg, try)
		if err != nil {
			t.Fatal(err)
		}
		if eps[0].String() != w || eps[1].IsValid() || eps[2].String() != "198.51.100.9:1" {
			t.Fatalf("try %d: %v, want %s first", try, eps, w)
		}
	}
}
