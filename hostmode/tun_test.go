//go:build linux

package hostmode

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	gvchecksum "gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The probes are well-formed packets, checked by gVisor's own code.
func TestEchoPackets(t *testing.T) {
	src4, dst4 := netip.MustParseAddr("10.78.0.2"), netip.MustParseAddr("10.78.0.1")
	p := echo4(src4, dst4, 7)
	ip := header.IPv4(p)
	if !ip.IsValid(len(p)) || !ip.IsChecksumValid() {
		t.Fatalf("IPv4 header not valid: %x", p)
	}
	if ip.SourceAddress() != tcpip.AddrFrom4(src4.As4()) || ip.DestinationAddress() != tcpip.AddrFrom4(dst4.As4()) ||
		ip.TransportProtocol() != header.ICMPv4ProtocolNumber {
		t.Errorf("IPv4 header: %v -> %v proto %d", ip.SourceAddress(), ip.DestinationAddress(), ip.TransportProtocol())
	}
	icmp := header.ICMPv4(ip.Payload())
	if icmp.Type() != header.ICMPv4Echo || icmp.Ident() != probeID || icmp.Sequence() != 7 {
		t.Errorf("ICMP type %d id %#x seq %d", icmp.Type(), icmp.Ident(), icmp.Sequence())
	}
	if sum := gvchecksum.Checksum(icmp, 0); sum != 0xffff {
		t.Errorf("ICMP checksum does not verify: %#x", sum)
	}

	src6, dst6 := netip.MustParseAddr("fd78::2"), netip.MustParseAddr("fd78::1")
	p = echo6(src6, dst6, 9)
	ip6 := header.IPv6(p)
	if !ip6.IsValid(len(p)) || ip6.TransportProtocol() != header.ICMPv6ProtocolNumber {
		t.Fatalf("IPv6 header not valid: %x", p)
	}
	icmp6 := header.ICMPv6(ip6.Payload())
	want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header:      icmp6[:header.ICMPv6EchoMinimumSize],
		Src:         tcpip.AddrFrom16(src6.As16()),
		Dst:         tcpip.AddrFrom16(dst6.As16()),
		PayloadCsum: gvchecksum.Checksum(icmp6[header.ICMPv6EchoMinimumSize:], 0),
		PayloadLen:  len(icmp6) - header.ICMPv6EchoMinimumSize,
	})
	if got := binary.BigEndian.Uint16(icmp6[2:]); got != want || icmp6.Type() != header.ICMPv6EchoRequest || icmp6.Ident() != probeID {
		t.Errorf("ICMPv6: type %d id %#x checksum %#x, want %#x", icmp6.Type(), icmp6.Ident(), got, want)
	}
}
