//go:build linux

package hostmode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// kernelTUN is a kernel TUN device for wireguard-go, into whose stream of
// packets from the host warren can slip its own probes: an ICMP echo
// request from the tunnel's address, as if the host had sent it. The probe
// needs no route and no firewall rule on the host: it never passes through
// the host's stack on the way out. The reply comes back to the host, which
// drops it; the device has counted its bytes, which is what verification
// and the liveness monitor look at.
type kernelTUN struct {
	tun.Device
	file *os.File

	// mu guards the fields below.
	mu         sync.Mutex
	src4, src6 netip.Addr // the tunnel's own addresses, or invalid
	queue      [][]byte
	seq        uint16
}

// createTUN creates the kernel TUN name with mtu. Give it the sources of
// its probes with setSources before the device reads from it.
func createTUN(name string, mtu int) (*kernelTUN, error) {
	d, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN %s: %w", name, err)
	}
	nt, ok := d.(*tun.NativeTun)
	if !ok {
		d.Close()
		return nil, fmt.Errorf("create TUN %s: not a native TUN (%T)", name, d)
	}
	return &kernelTUN{Device: d, file: nt.File()}, nil
}

// setSources takes the tunnel's addresses: the first of each family is
// the source of the probes to that family.
func (t *kernelTUN) setSources(addrs []netip.Prefix) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.src4, t.src6 = netip.Addr{}, netip.Addr{}
	for _, p := range addrs {
		switch a := p.Addr(); {
		case a.Is4() && !t.src4.IsValid():
			t.src4 = a
		case a.Is6() && !t.src6.IsValid():
			t.src6 = a
		}
	}
}

// Read returns a queued probe if there is one, and otherwise what the host
// sends. Ping wakes a Read that waits for the host with a read deadline in
// the past; that is not an error here.
func (t *kernelTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		if p := t.pop(); p != nil {
			sizes[0] = copy(bufs[0][offset:], p)
			return 1, nil
		}
		n, err := t.Device.Read(bufs, sizes, offset)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.file.SetReadDeadline(time.Time{})
			continue
		}
		return n, err
	}
}

func (t *kernelTUN) pop() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) == 0 {
		return nil
	}
	p := t.queue[0]
	t.queue = t.queue[1:]
	return p
}

// maxQueued bounds the probes waiting to be read: a device that is not
// reading drops the rest.
const maxQueued = 16

// Ping queues an ICMP echo request to to, from the tunnel's address of
// its family, and wakes Read.
func (t *kernelTUN) Ping(to netip.Addr) error {
	t.mu.Lock()
	t.seq++
	seq := t.seq
	var p []byte
	switch {
	case to.Is4() && t.src4.IsValid():
		p = echo4(t.src4, to, seq)
	case to.Is6() && t.src6.IsValid():
		p = echo6(t.src6, to, seq)
	}
	if p != nil && len(t.queue) < maxQueued {
		t.queue = append(t.queue, p)
	}
	t.mu.Unlock()
	if p == nil {
		return fmt.Errorf("hostmode: ping %v: the tunnel has no address of its family", to)
	}
	// Queued first, then the wake-up: a Read that sees the deadline finds
	// the probe.
	return t.file.SetReadDeadline(time.Now())
}

// probeID is the ICMP identifier of warren's probes.
const probeID = 0x5752

var probePayload = []byte("warren liveness probe")

// echo4 is an IPv4 ICMP echo request packet.
func echo4(src, dst netip.Addr, seq uint16) []byte {
	icmp := make([]byte, 8+len(probePayload))
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], probeID)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], probePayload)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, 0))

	p := make([]byte, 20+len(icmp))
	p[0] = 0x45 // version 4, 20-byte header
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], seq) // identification
	p[8] = 64                              // TTL
	p[9] = 1                               // ICMP
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20], 0))
	copy(p[20:], icmp)
	return p
}

// echo6 is an IPv6 ICMPv6 echo request packet.
func echo6(src, dst netip.Addr, seq uint16) []byte {
	icmp := make([]byte, 8+len(probePayload))
	icmp[0] = 128 // echo request
	binary.BigEndian.PutUint16(icmp[4:], probeID)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], probePayload)

	p := make([]byte, 40+len(icmp))
	p[0] = 0x60 // version 6
	binary.BigEndian.PutUint16(p[4:], uint16(len(icmp)))
	p[6] = 58 // ICMPv6
	p[7] = 64 // hop limit
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	// The checksum covers a pseudo-header: addresses, length, next header.
	var sum uint32
	for i := 8; i < 40; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum += uint32(len(icmp)) + 58
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, sum))
	copy(p[40:], icmp)
	return p
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
