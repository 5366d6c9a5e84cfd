//go:build linux

package hostmode

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// Dialer is what host mode's front-ends (the DNS server, and the proxies if
// asked for) dial and listen with: the host's own network, which the routes
// send through the tunnel and the firewall closes unless it is up. It sits
// behind the proxy gate like the netstack tunnel in proxy mode.
type Dialer struct{}

// DialContext dials to on the host.
func (Dialer) DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, to.String())
}

// ListenPacket opens a UDP socket on the host ("udp4" or "udp6").
func (Dialer) ListenPacket(ctx context.Context, network string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, "")
}

// Listen listens for TCP on port of the host's addresses of one family,
// the tunnel's among them ("tcp4" or "tcp6").
func (Dialer) Listen(ctx context.Context, network string, port uint16) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, fmt.Sprintf(":%d", port))
}
