package netstack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const (
	nicID = 1
	// batchSize is the most packets one Read hands to wireguard-go, which
	// encrypts and sends them as a batch. wireguard-go reads with the
	// larger of this and its UDP bind's batch size, which is this on Linux.
	batchSize = conn.IdealBatchSize
	// queueLen is how many outbound packets (each TCP one a GSO segment of
	// up to 64 KiB, see offload.go) the stack may queue for wireguard-go
	// before it drops (TCP then backs off).
	queueLen = 1024

	// TCP buffer sizes. gVisor's defaults (1 MiB max) cap a single stream's
	// throughput over a tunnel with any latency; the receive buffer is
	// auto-tuned up to its maximum.
	tcpRecvBufMax = 8 << 20
	tcpSendBufMax = 6 << 20

	// tcpCongestionControl is CUBIC, whose HyStart leaves slow start when
	// the round trip grows, that is when packets queue inside warren for
	// wireguard-go; gVisor's default, Reno, grows until a loss, and each
	// packet queued pins one of wireguard-go's 64 KiB buffers.
	tcpCongestionControl = "cubic"
)

// tunStack is a tun.Device whose other side is a gVisor network stack: what
// wireguard-go writes to it (decrypted packets from the peer) is injected
// into the stack, and what the stack sends is read by wireguard-go. It
// replaces wireguard-go's tun/netstack, which neither waits for the stack's
// goroutines on Close nor guards a Write racing a Close.
type tunStack struct {
	stack *stack.Stack
	ep    *channel.Endpoint
	mtu   int
	v4    bool // has an IPv4 address
	v6    bool // has an IPv6 address

	events chan tun.Event

	// ctx is cancelled by Close to end a blocked Read.
	ctx    context.Context
	cancel context.CancelFunc

	// out is the packet Read is handing out; only Read touches it
	// (wireguard-go reads from one goroutine). What is left in it when the
	// device closes is left to the garbage collector.
	out outPacket

	// inbound holds the *inbound of Writes: one per Write in progress, as
	// wireguard-go writes from one goroutine per peer.
	inbound sync.Pool

	// closeMu guards closed; Write holds it for reading while it injects.
	closeMu sync.RWMutex
	closed  bool
}

var _ tun.Device = (*tunStack)(nil)

// newTunStack creates a stack with the given addresses (each a host address
// with its prefix length) and MTU, and routes to it everything of each
// address family it has an address in.
func newTunStack(addrs []netip.Prefix, mtu int) (ts *tunStack, err error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	ep := channel.New(queueLen, uint32(mtu), "")
	// Segmentation offload both ways (see offload.go); what WireGuard
	// decrypted is what the peer sent (see Write).
	ep.SupportedGSOKind = stack.HostGSOSupported
	ep.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
	defer func() {
		if err != nil {
			s.Close()
			ep.Close()
			s.Wait()
		}
	}()
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	cc := tcpip.CongestionControlOption(tcpCongestionControl)
	opts := []tcpip.SettableTransportProtocolOption{
		&cc,
		&sack,
		&moderate,
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultReceiveBufferSize, Max: tcpRecvBufMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultSendBufferSize, Max: tcpSendBufMax},
	}
	for _, o := range opts {
		if e := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); e != nil {
			return nil, fmt.Errorf("netstack: set TCP option %T: %v", o, e)
		}
	}
	if e := s.CreateNIC(nicID, linkEndpoint{ep}); e != nil {
		return nil, fmt.Errorf("netstack: create NIC: %v", e)
	}
	ts = &tunStack{stack: s, ep: ep, mtu: mtu, events: make(chan tun.Event, 1)}
	ts.inbound.New = func() any { return newInbound(ep.InjectInbound) }
	for _, p := range addrs {
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		if p.Addr().Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{
			Protocol: proto,
			AddressWithPrefix: tcpip.AddressWithPrefix{
				Address:   tcpip.AddrFromSlice(p.Addr().AsSlice()),
				PrefixLen: p.Bits(),
			},
		}
		if e := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); e != nil {
			return nil, fmt.Errorf("netstack: add address %v: %v", p, e)
		}
		ts.v4 = ts.v4 || p.Addr().Is4()
		ts.v6 = ts.v6 || p.Addr().Is6()
	}
	if ts.v4 {
		s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if ts.v6 {
		s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	ts.ctx, ts.cancel = context.WithCancel(context.Background())
	// No tun.EventUp: wireguard-go would bring the device up on it at once,
	// racing the configuration and binding a random port before listen_port
	// is set. NewDevice calls Up itself once the device is configured.
	return ts, nil
}

func (ts *tunStack) File() *os.File           { return nil }
func (ts *tunStack) Name() (string, error)    { return "warren-netstack", nil }
func (ts *tunStack) MTU() (int, error)        { return ts.mtu, nil }
func (ts *tunStack) BatchSize() int           { return batchSize }
func (ts *tunStack) Events() <-chan tun.Event { return ts.events }

// Read hands wireguard-go the packets the stack wants to send: it blocks for
// the first and takes whatever else is already queued, up to len(bufs). A
// GSO segment is cut into packets of the MTU (see offload.go), and what
// does not fit in bufs is left for the next Read.
func (ts *tunStack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) {
		if ts.out.pkt == nil {
			var pkt *stack.PacketBuffer
			if n == 0 {
				if pkt = ts.ep.ReadContext(ts.ctx); pkt == nil {
					return 0, os.ErrClosed
				}
			} else if pkt = ts.ep.Read(); pkt == nil {
				break
			}
			ts.out.start(pkt)
		}
		n += ts.out.next(bufs[n:], sizes[n:], offset)
		if ts.out.done() {
			ts.out.release()
		}
	}
	return n, nil
}

// Write injects packets from the peer into the stack. Their TCP, UDP and
// ICMP checksums are not checked again: WireGuard authenticated each packet
// as the peer sent it, which is why the kernel's WireGuard marks what it
// decrypts CHECKSUM_UNNECESSARY. An IPv4 header's checksum is checked here,
// before GRO changes the header.
func (ts *tunStack) Write(bufs [][]byte, offset int) (int, error) {
	ts.closeMu.RLock()
	defer ts.closeMu.RUnlock()
	if ts.closed {
		return 0, os.ErrClosed
	}
	// gVisor's GRO merges consecutive TCP segments of a flow in the batch,
	// and flush delivers everything to the stack.
	in := ts.inbound.Get().(*inbound)
	defer ts.inbound.Put(in)
	for _, b := range bufs {
		pkt := b[offset:]
		if len(pkt) == 0 {
			continue
		}
		var proto tcpip.NetworkProtocolNumber
		switch pkt[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
			if h := header.IPv4(pkt); len(pkt) < header.IPv4MinimumSize ||
				int(h.HeaderLength()) > len(pkt) || !h.IsChecksumValid() {
				continue
			}
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			in.flush()
			return 0, syscall.EAFNOSUPPORT
		}
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
		pb.NetworkProtocolNumber = proto
		pb.RXChecksumValidated = true
		in.gro.Enqueue(pb)
		pb.DecRef()
	}
	in.flush()
	return len(bufs), nil
}

// Close aborts every endpoint of the stack and waits for the stack's
// goroutines to end. It is safe to call more than once.
func (ts *tunStack) Close() error {
	ts.closeMu.Lock()
	if ts.closed {
		ts.closeMu.Unlock()
		return nil
	}
	ts.closed = true
	ts.closeMu.Unlock()
	ts.cancel()
	ts.stack.Close()
	ts.ep.Close()
	ts.stack.Wait()
	close(ts.events)
	return nil
}

// errClosed is returned by a dial or listen on a closed stack.
var errClosed = errors.New("netstack: closed")
