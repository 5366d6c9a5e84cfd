package netstack

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// tcpPacket builds an outbound TCP packet as gVisor's TCP hands it to a
// link endpoint with host GSO: headers pushed, and the TCP checksum field
// holding only the pseudo-header's sum.
func tcpPacket(v6 bool, gso stack.GSOType, mss int, payload []byte, flags header.TCPFlags) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv6MinimumSize + header.TCPMinimumSize + 12,
		Payload:            buffer.MakeWithData(payload),
	})
	opts := []byte{1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8} // NOP NOP timestamps
	tcp := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize + len(opts)))
	tcp.Encode(&header.TCPFields{
		SrcPort: 40000, DstPort: 80, SeqNum: 0xfffff000, AckNum: 77,
		DataOffset: uint8(len(tcp)), Flags: flags, WindowSize: 1000,
	})
	copy(tcp[header.TCPMinimumSize:], opts)
	tcpLen := uint16(len(tcp) + len(payload))
	var src, dst tcpip.Address
	if v6 {
		src = tcpip.AddrFrom16([16]byte{0xfd, 15: 2})
		dst = tcpip.AddrFrom16([16]byte{0xfd, 15: 1})
		header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize)).Encode(&header.IPv6Fields{
			PayloadLength: tcpLen, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src, DstAddr: dst,
		})
	} else {
		src = tcpip.AddrFrom4([4]byte{10, 79, 0, 2})
		dst = tcpip.AddrFrom4([4]byte{10, 79, 0, 1})
		ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(header.IPv4MinimumSize) + tcpLen, ID: 65534, Flags: header.IPv4FlagDontFragment,
			TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, tcpLen))
	pkt.GSOOptions = stack.GSO{Type: gso, NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, MSS: uint16(mss)}
	return pkt
}

// checkTCP parses an IPv4 or IPv6 packet with a TCP segment and checks its
// lengths and checksums.
func checkTCP(t *testing.T, p []byte) (header.TCP, []byte) {
	t.Helper()
	var tcp header.TCP
	var src, dst tcpip.Address
	if p[0]>>4 == 4 {
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || !ip.IsChecksumValid() {
			t.Fatalf("bad IPv4 header % x", p[:20])
		}
		tcp, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv6(p)
		if !ip.IsValid(len(p)) {
			t.Fatalf("bad IPv6 header % x", p[:40])
		}
		tcp, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
	}
	payload := tcp[tcp.DataOffset():]
	if !tcp.IsChecksumValid(src, dst, checksum.Checksum(payload, 0), uint16(len(payload))) {
		t.Fatalf("bad TCP checksum")
	}
	return tcp, payload
}

// Read cuts a GSO segment into packets of the MSS, each with its own
// headers and checksums, over as many Reads as it takes.
func TestOutPacketSegments(t *testing.T) {
	for _, tc := range []struct {
		name    string
		v6      bool
		gso     stack.GSOType
		mss     int
		size    int
		perRead int // bufs per Read
	}{
		{name: "v4 one segment", gso: stack.GSOTCPv4, mss: 1368, size: 1000, perRead: 64},
		{name: "v4 exact", gso: stack.GSOTCPv4, mss: 1368, size: 4 * 1368, perRead: 64},
		{name: "v4 remainder over reads", gso: stack.GSOTCPv4, mss: 1368, size: 65000, perRead: 7},
		{name: "v6 remainder", v6: true, gso: stack.GSOTCPv6, mss: 1348, size: 30001, perRead: 3},
		{name: "v4 no payload", gso: stack.GSOTCPv4, mss: 1368, size: 0, perRead: 1},
		{name: "not GSO", gso: stack.GSONone, mss: 1368, size: 500, perRead: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := make([]byte, tc.size)
			for i := range payload {
				payload[i] = byte(rand.IntN(256))
			}
			pkt := tcpPacket(tc.v6, tc.gso, tc.mss, payload, header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagFin)
			if tc.gso == stack.GSONone {
				// The stack computes the checksum itself without GSO.
				tcp := header.TCP(pkt.TransportHeader().Slice())
				pseudo := tcp.Checksum()
				tcp.SetChecksum(0)
				tcp.SetChecksum(^checksum.Checksum(tcp, checksum.Checksum(payload, pseudo)))
				pkt.GSOOptions = stack.GSO{}
			}
			const offset = 16
			var o outPacket
			o.start(pkt)
			var got []byte
			var segs [][]byte
			for reads := 0; ; reads++ {
				if reads > 100 {
					t.Fatal("too many reads")
				}
				bufs := make([][]byte, tc.perRead)
				for i := range bufs {
					bufs[i] = make([]byte, offset+1500)
				}
				sizes := make([]int, tc.perRead)
				n := o.next(bufs, sizes, offset)
				if n == 0 {
					t.Fatal("Read handed out nothing")
				}
				for i := range n {
					segs = append(segs, bufs[i][offset:offset+sizes[i]])
				}
				if o.done() {
					break
				}
			}
			o.release()
			wantSegs := max(1, (tc.size+tc.mss-1)/tc.mss)
			if len(segs) != wantSegs {
				t.Fatalf("%d packets, want %d", len(segs), wantSegs)
			}
			for i, s := range segs {
				tcp, p := checkTCP(t, s)
				if len(p) > tc.mss {
					t.Errorf("packet %d: %d bytes of payload, MSS %d", i, len(p), tc.mss)
				}
				if want := uint32(0xfffff000) + uint32(len(got)); tcp.SequenceNumber() != want {
					t.Errorf("packet %d: seq %#x, want %#x", i, tcp.SequenceNumber(), want)
				}
				last := i == len(segs)-1
				if fin := tcp.Flags()&(header.TCPFlagFin|header.TCPFlagPsh) != 0; fin != last {
					t.Errorf("packet %d of %d: flags %v", i, len(segs), tcp.Flags())
				}
				if !tc.v6 && len(segs) > 1 {
					if id := header.IPv4(s).ID(); id != uint16(65534+i) {
						t.Errorf("packet %d: IPv4 ID %d", i, id)
					}
				}
				got = append(got, p...)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("payload differs")
			}
		})
	}
}

// A Write's batch reaches the stack whole: the segments of each flow
// merged, and nothing left in the GRO, however many flows share its
// buckets.
func TestInboundDeliversEverything(t *testing.T) {
	var got []int // payload bytes of each packet delivered
	in := newInbound(func(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
		b := pkt.ToView().AsSlice()
		tcp := header.TCP(b[header.IPv4MinimumSize:])
		got = append(got, len(b)-header.IPv4MinimumSize-int(tcp.DataOffset()))
	})
	const flows, perFlow, size = 40, 3, 1000
	for i := range perFlow {
		for f := range flows {
			pkt := tcpPacket(false, stack.GSONone, 0, make([]byte, size), header.TCPFlagAck)
			b := pkt.ToView().AsSlice()
			pkt.DecRef()
			tcp := header.TCP(b[header.IPv4MinimumSize:])
			tcp.SetSourcePort(uint16(1000 + f))
			tcp.SetSequenceNumber(uint32(i * size))
			pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
			pb.NetworkProtocolNumber = header.IPv4ProtocolNumber
			pb.RXChecksumValidated = true
			in.gro.Enqueue(pb)
			pb.DecRef()
		}
	}
	in.flush()
	total := 0
	for _, n := range got {
		total += n
	}
	if total != flows*perFlow*size {
		t.Errorf("delivered %d bytes in %d packets, want %d", total, len(got), flows*perFlow*size)
	}
	if len(got) >= flows*perFlow {
		t.Errorf("%d packets delivered for %d flows: nothing merged", len(got), flows)
	}
}

// BenchmarkOutPacket cuts a 32 KiB IPv4 GSO segment (what the relay's
// writes make) into packets, as Read does.
func BenchmarkOutPacket(b *testing.B) {
	payload := make([]byte, 32<<10)
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, 16+1500)
	}
	sizes := make([]int, len(bufs))
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		pkt := tcpPacket(false, stack.GSOTCPv4, 1368, payload, header.TCPFlagAck)
		var o outPacket
		o.start(pkt)
		for !o.done() {
			o.next(bufs, sizes, 16)
		}
		o.release()
	}
}
