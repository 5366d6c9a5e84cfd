package netstack

// This file holds the segmentation offload between the gVisor stack and
// wireguard-go: what a kernel TUN with TSO and GRO does for the kernel's
// TCP.
//
// Outbound, the stack's TCP hands the link endpoint segments of up to
// gsoMaxSize bytes (gVisor's host GSO: one packet, its checksum left to the
// link), and tunStack.Read cuts each into MTU-sized packets as it copies it
// into wireguard-go's buffers: the stack does its per-segment work once per
// 64 KiB instead of once per 1.4 KiB.
//
// Inbound, tunStack.Write hands each batch of packets that wireguard-go
// decrypted to gVisor's GRO, which merges consecutive TCP segments of a flow
// before the stack sees them. GRO needs the link to vouch for the
// checksums (the merged packet's are not recomputed): WireGuard does, as
// tunStack.Write says.

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// gsoMaxSize is the largest TCP segment the stack hands the link endpoint:
// the most an IPv4 packet can hold.
const gsoMaxSize = 1<<16 - 1

// linkEndpoint is the channel endpoint, with host GSO of up to gsoMaxSize.
type linkEndpoint struct{ *channel.Endpoint }

func (linkEndpoint) GSOMaxSize() uint32 { return gsoMaxSize }

var _ stack.GSOEndpoint = linkEndpoint{}

// outPacket is the packet that tunStack.Read is handing to wireguard-go,
// which may take more than one Read when it is a GSO segment.
type outPacket struct {
	pkt  *stack.PacketBuffer // nil when there is none
	cur  pktCursor           // the next bytes of pkt to copy
	gso  bool                // pkt is to be cut into segments of mss
	mss  int
	hdr  []byte // the IP and TCP headers of pkt; IPv4's length, ID and checksum zeroed
	l3   int    // the IP header's length
	id   uint16 // IPv4: the first segment's ID
	ipv4 uint16 // IPv4: the checksum of hdr's IP header as it is
	left int    // payload bytes not yet handed out
	seg  int    // segments handed out

	hdrBuf [128]byte // hdr, unless the headers are longer
}

// start makes pkt the packet to hand out; o takes the caller's reference.
func (o *outPacket) start(pkt *stack.PacketBuffer) {
	o.pkt, o.cur, o.gso, o.left, o.seg = pkt, newPktCursor(pkt), false, 0, 0
	g := pkt.GSOOptions
	if g.Type != stack.GSOTCPv4 && g.Type != stack.GSOTCPv6 {
		return
	}
	o.l3 = len(pkt.NetworkHeader().Slice())
	l4 := len(pkt.TransportHeader().Slice())
	o.left = pkt.Size() - o.l3 - l4
	o.mss = int(g.MSS)
	// A segment that needs no cutting only needs its checksum (in next).
	o.gso = o.mss > 0 && o.left > o.mss && o.l3 > 0 && l4 >= header.TCPMinimumSize
	if o.gso {
		if o.hdr = o.hdrBuf[:]; o.l3+l4 > len(o.hdr) {
			o.hdr = make([]byte, o.l3+l4)
		}
		o.hdr = o.hdr[:o.l3+l4]
		o.cur.read(o.hdr)
		if g.Type == stack.GSOTCPv4 {
			// Each segment's header differs only in these fields.
			h := header.IPv4(o.hdr)
			o.id = h.ID()
			h.SetTotalLength(0)
			h.SetID(0)
			h.SetChecksum(0)
			o.ipv4 = h.CalculateChecksum()
		}
	}
}

// next copies the packet, or as many of its segments as fit, into bufs
// (each from offset on), sets their sizes, and returns how many it filled.
func (o *outPacket) next(bufs [][]byte, sizes []int, offset int) int {
	if !o.gso {
		b := bufs[0][offset:]
		n := o.cur.read(b[:min(len(b), o.pkt.Size())])
		if g := o.pkt.GSOOptions; g.Type != stack.GSONone && g.NeedsCsum {
			// The stack left the transport checksum to us: the field
			// holds the pseudo-header's sum.
			l3 := len(o.pkt.NetworkHeader().Slice())
			if at := l3 + int(g.CsumOffset); at+2 <= n {
				binary.BigEndian.PutUint16(b[at:], ^checksum.Checksum(b[l3:n], 0))
			}
		}
		sizes[0] = n
		o.left = 0
		return 1
	}
	i := 0
	for ; i < len(bufs) && o.left > 0; i++ {
		sizes[i] = o.segment(bufs[i][offset:])
	}
	return i
}

// done reports whether all of the packet has been handed out.
func (o *outPacket) done() bool { return o.left == 0 }

// release drops the packet.
func (o *outPacket) release() {
	o.pkt.DecRef()
	o.pkt, o.cur = nil, pktCursor{}
}

// segment writes the next segment of a GSO packet into b, a full IPv4 or
// IPv6 packet with its checksums, and returns its length.
func (o *outPacket) segment(b []byte) int {
	n := min(o.mss, o.left)
	o.left -= n
	last := o.left == 0
	hl := len(o.hdr)
	copy(b, o.hdr)
	o.cur.read(b[hl : hl+n])
	b = b[:hl+n]

	ip, tcp := b[:o.l3], header.TCP(b[o.l3:])
	var pseudo uint16
	if o.pkt.GSOOptions.Type == stack.GSOTCPv4 {
		h := header.IPv4(ip)
		id := o.id + uint16(o.seg)
		h.SetTotalLength(uint16(len(b)))
		h.SetID(id)
		h.SetChecksum(^checksum.Combine(o.ipv4, checksum.Combine(uint16(len(b)), id)))
		pseudo = checksum.Checksum(ip[12:20], 0) // source and destination
	} else {
		header.IPv6(ip).SetPayloadLength(uint16(len(b) - header.IPv6MinimumSize))
		pseudo = checksum.Checksum(ip[8:40], 0)
	}
	pseudo = checksum.Combine(pseudo, uint16(header.TCPProtocolNumber))
	pseudo = checksum.Combine(pseudo, uint16(len(tcp)))

	tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(o.seg*o.mss))
	flags := tcp.Flags()
	if !last {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if o.seg > 0 {
		flags &^= header.TCPFlagCwr
	}
	tcp.SetFlags(uint8(flags))
	tcp.SetChecksum(0)
	tcp.SetChecksum(^checksum.Checksum(tcp, pseudo))
	o.seg++
	return len(b)
}

// pktCursor reads a packet's bytes in order, straight from the views that
// hold them.
type pktCursor struct {
	v   *buffer.View
	off int // into v's bytes
}

func newPktCursor(pkt *stack.PacketBuffer) pktCursor {
	vl, off := pkt.AsViewList()
	c := pktCursor{v: vl.Front()}
	for c.v != nil && off >= c.v.Size() {
		off -= c.v.Size()
		c.v = c.v.Next()
	}
	c.off = off
	return c
}

// read fills dst from the packet and returns how much it copied: less than
// len(dst) only at the packet's end.
func (c *pktCursor) read(dst []byte) int {
	n := 0
	for n < len(dst) && c.v != nil {
		k := copy(dst[n:], c.v.AsSlice()[c.off:])
		n += k
		c.off += k
		if c.off == c.v.Size() {
			c.v, c.off = c.v.Next(), 0
		}
	}
	return n
}

// inbound merges the TCP segments of one Write with gVisor's GRO and
// delivers the result into the stack.
type inbound struct {
	gro     gro.GRO
	deliver func(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)
	// delivered counts the packets delivered since it was last reset, to
	// tell when a Flush has nothing left to deliver.
	delivered int
}

func newInbound(deliver func(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)) *inbound {
	in := &inbound{deliver: deliver}
	in.gro.Init(true)
	in.gro.Dispatcher = in
	return in
}

// flush delivers every packet the GRO holds. gVisor's GRO.Flush delivers
// only the oldest packet of each of its buckets (it steps to the next
// packet of the list after removing the one before, which clears its
// links), and flows share buckets; so it is called until it delivers
// nothing.
func (in *inbound) flush() {
	for {
		in.delivered = 0
		in.gro.Flush()
		if in.delivered == 0 {
			return
		}
	}
}

func (in *inbound) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	in.delivered++
	in.deliver(proto, pkt)
}

func (*inbound) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
