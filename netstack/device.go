package netstack

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/warren-vpn/warren/config"
)

// DeviceOptions configures a Device.
type DeviceOptions struct {
	// Config gives the interface (key, addresses, MTU, listen port) and the
	// peers. Required.
	Config *config.Config
	// Endpoints holds the resolved endpoint of each peer, by index into
	// Config.Peers; a missing or zero entry leaves that peer without one (it
	// may still be learned from the peer's first packet).
	Endpoints []netip.AddrPort
	// Bind is the UDP transport; nil means wireguard-go's default, a UDP
	// socket on the host.
	Bind conn.Bind
	// Logger receives wireguard-go's log; nil discards it.
	Logger *slog.Logger
	// TUN, if set, is the tunnel side instead of the userspace stack: host
	// mode's kernel TUN. Such a device cannot dial or listen (those are the
	// host's to do), and pings through TUN.Ping. The device owns it and
	// closes it.
	TUN HostTUN
	// Mark, if not 0, is the fwmark of the device's UDP socket, so that
	// host mode's policy routing and firewall can tell it apart.
	Mark uint32
}

// HostTUN is a tunnel side other than the userspace stack: a kernel TUN.
type HostTUN interface {
	tun.Device
	// Ping sends an ICMP echo request from the tunnel's own address to
	// to into the device, as if the host had sent it, to make the peer
	// answer.
	Ping(to netip.Addr) error
}

// errHostTUN is returned by a device on a HostTUN asked to dial or listen.
var errHostTUN = errors.New("netstack: the device is on a kernel TUN: the host dials and listens, not warren")

// Device is a WireGuard device whose tunnel side is a userspace TCP/IP stack.
// Dialing and listening through it never touch the host's network: the
// packets are encrypted and sent to the peer, or they go nowhere.
type Device struct {
	wg   *device.Device
	ts   *tunStack // nil on a HostTUN
	host HostTUN   // or nil

	closeOnce sync.Once
}

// NewDevice creates a device from opts and brings it up. On error, nothing of
// it is left.
func NewDevice(opts DeviceOptions) (d *Device, err error) {
	cfg := opts.Config
	var td tun.Device = opts.TUN
	var ts *tunStack
	if opts.TUN == nil {
		if ts, err = newTunStack(cfg.Interface.Addresses, cfg.Interface.MTU); err != nil {
			return nil, err
		}
		td = ts
	}
	bind := opts.Bind
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	wg := device.NewDevice(td, bind, wgLogger(opts.Logger))
	dev := &Device{wg: wg, ts: ts, host: opts.TUN}
	defer func() {
		if err != nil {
			dev.Close() // not d: a return statement has set it to nil
		}
	}()
	conf := uapiConfig(cfg, opts.Endpoints)
	if opts.Mark != 0 {
		conf = fmt.Sprintf("fwmark=%d\n", opts.Mark) + conf
	}
	if err := wg.IpcSet(conf); err != nil {
		return nil, fmt.Errorf("netstack: configure device: %v", err)
	}
	if err := wg.Up(); err != nil {
		return nil, fmt.Errorf("netstack: bring device up: %v", err)
	}
	return dev, nil
}

// uapiConfig renders cfg in wireguard-go's configuration protocol. The text
// holds keys: it goes to the device and nowhere else.
func uapiConfig(cfg *config.Config, endpoints []netip.AddrPort) string {
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(cfg.Interface.PrivateKey[:]))
	fmt.Fprintf(&b, "listen_port=%d\n", cfg.Interface.ListenPort)
	b.WriteString("replace_peers=true\n")
	for i, p := range cfg.Peers {
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(p.PublicKey[:]))
		if !p.PresharedKey.IsZero() {
			fmt.Fprintf(&b, "preshared_key=%s\n", hex.EncodeToString(p.PresharedKey[:]))
		}
		if i < len(endpoints) && endpoints[i].IsValid() {
			fmt.Fprintf(&b, "endpoint=%s\n", endpoints[i])
		}
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepalive/time.Second))
		b.WriteString("replace_allowed_ips=true\n")
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	return b.String()
}

// Close takes the device down, closes its socket and stack, and waits for
// their goroutines. It is safe to call more than once.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.wg.Close() // closes the tunStack or HostTUN too
		<-d.wg.Wait()
		if d.ts != nil {
			d.ts.Close()
		}
	})
	return nil
}

// PeerStats is what the device knows of one peer.
type PeerStats struct {
	PublicKey     config.PublicKey
	Endpoint      netip.AddrPort // zero until known
	LastHandshake time.Time      // zero before the first handshake
	RxBytes       uint64
	TxBytes       uint64
}

// Stats returns every peer's counters, in no particular order.
func (d *Device) Stats() ([]PeerStats, error) {
	text, err := d.wg.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("netstack: read device state: %v", err)
	}
	return parseStats(text)
}

// parseStats reads the peers out of a UAPI "get" answer.
func parseStats(text string) ([]PeerStats, error) {
	var peers []PeerStats
	var sec, nsec int64
	flush := func() {
		if len(peers) > 0 && sec != 0 {
			peers[len(peers)-1].LastHandshake = time.Unix(sec, nsec)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if key == "public_key" {
			flush()
			var pk config.PublicKey
			if _, err := hex.Decode(pk[:], []byte(value)); err != nil {
				return nil, fmt.Errorf("netstack: device state: bad public_key")
			}
			peers = append(peers, PeerStats{PublicKey: pk})
			continue
		}
		if len(peers) == 0 {
			continue // interface keys
		}
		p := &peers[len(peers)-1]
		var err error
		switch key {
		case "endpoint":
			p.Endpoint, err = netip.ParseAddrPort(value)
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(value, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(value, 10, 64)
		case "rx_bytes":
			p.RxBytes, err = strconv.ParseUint(value, 10, 64)
		case "tx_bytes":
			p.TxBytes, err = strconv.ParseUint(value, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("netstack: device state: bad %s: %v", key, err)
		}
	}
	flush()
	return peers, sc.Err()
}

// ListenPort returns the UDP port the device listens on.
func (d *Device) ListenPort() (uint16, error) {
	text, err := d.wg.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("netstack: read device state: %v", err)
	}
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			return uint16(p), err
		}
	}
	return 0, errors.New("netstack: device has no listen port")
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	if ap.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	var addr tcpip.Address
	if ap.Addr().IsValid() && !ap.Addr().IsUnspecified() {
		addr = tcpip.AddrFromSlice(ap.Addr().Unmap().AsSlice())
	}
	return tcpip.FullAddress{NIC: nicID, Addr: addr, Port: ap.Port()}, proto
}

// DialTCP opens a TCP connection through the tunnel. The connection's Abort
// method resets it.
func (d *Device) DialTCP(ctx context.Context, to netip.AddrPort) (*TCPConn, error) {
	if d.ts == nil {
		return nil, errHostTUN
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	fa, proto := fullAddr(to)
	var wq waiter.Queue
	ep, e := d.ts.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if e != nil {
		return nil, opError("dial", "tcp", to, e)
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	e = ep.Connect(fa)
	if _, ok := e.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Abort()
			return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(to), Err: ctx.Err()}
		case <-notify:
		}
		e = ep.LastError()
	}
	if e != nil {
		ep.Close()
		return nil, opError("dial", "tcp", to, e)
	}
	return &TCPConn{TCPConn: gonet.NewTCPConn(&wq, ep), ep: ep, wq: &wq}, nil
}

// TCPConn is a TCP connection through the tunnel.
type TCPConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue
}

// Abort resets the connection (an RST rather than a FIN) and releases it.
func (c *TCPConn) Abort() { c.ep.Abort() }

// WaitReadable blocks until a Read would not block: there is data to read,
// the peer has closed its side, or the connection has failed or been
// closed. It ignores deadlines. A relay waits with it before it takes a
// buffer to read into, so that an idle connection holds none.
func (c *TCPConn) WaitReadable() error {
	const mask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	if c.ep.Readiness(mask) != 0 {
		return nil
	}
	entry, notify := waiter.NewChannelEntry(mask)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	for c.ep.Readiness(mask) == 0 {
		<-notify
	}
	return nil
}

// DialUDP opens a connected UDP socket through the tunnel.
func (d *Device) DialUDP(to netip.AddrPort) (net.Conn, error) {
	if d.ts == nil {
		return nil, errHostTUN
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	fa, proto := fullAddr(to)
	c, err := gonet.DialUDP(d.ts.stack, nil, &fa, proto)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenTCP listens for TCP connections on the tunnel side, at one of the
// device's own addresses (or all of them, with an unspecified address).
func (d *Device) ListenTCP(at netip.AddrPort) (net.Listener, error) {
	if d.ts == nil {
		return nil, errHostTUN
	}
	fa, proto := fullAddr(at)
	l, err := gonet.ListenTCP(d.ts.stack, fa, proto)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// ListenUDP opens a UDP socket on the tunnel side.
func (d *Device) ListenUDP(at netip.AddrPort) (net.PacketConn, error) {
	if d.ts == nil {
		return nil, errHostTUN
	}
	fa, proto := fullAddr(at)
	c, err := gonet.DialUDP(d.ts.stack, &fa, nil, proto)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// SendPing sends one ICMP echo request through the tunnel and does not wait
// for the answer; the device's received-bytes counter shows whether one came.
func (d *Device) SendPing(to netip.Addr) error {
	to = to.Unmap()
	if d.host != nil {
		return d.host.Ping(to)
	}
	var wq waiter.Queue
	tp, np := icmp.ProtocolNumber4, tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	echo := []byte{8, 0, 0, 0, 0, 0, 0, 1} // type 8 (echo request); checksum and id filled in by the stack
	if to.Is6() {
		tp, np = icmp.ProtocolNumber6, ipv6.ProtocolNumber
		echo[0] = 128
	}
	ep, e := d.ts.stack.NewEndpoint(tp, np, &wq)
	if e != nil {
		return opError("ping", "ip", netip.AddrPortFrom(to, 0), e)
	}
	defer ep.Close()
	fa, _ := fullAddr(netip.AddrPortFrom(to, 0))
	var r strings.Reader
	r.Reset(string(echo))
	if _, e := ep.Write(&r, tcpip.WriteOptions{To: &fa}); e != nil {
		return opError("ping", "ip", netip.AddrPortFrom(to, 0), e)
	}
	return nil
}

// opError converts a gVisor error where it enters our code: to a *net.OpError
// whose Err is the matching errno where there is one, so callers can test
// for, e.g., syscall.ECONNREFUSED.
func opError(op, network string, to netip.AddrPort, e tcpip.Error) error {
	var err error = errors.New(e.String())
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		err = syscall.ECONNREFUSED
	case *tcpip.ErrNetworkUnreachable:
		err = syscall.ENETUNREACH
	case *tcpip.ErrHostUnreachable:
		err = syscall.EHOSTUNREACH
	case *tcpip.ErrTimeout:
		err = syscall.ETIMEDOUT
	case *tcpip.ErrConnectionReset:
		err = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		err = syscall.ECONNABORTED
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive:
		err = errClosed
	}
	var addr net.Addr
	if network == "tcp" {
		addr = net.TCPAddrFromAddrPort(to)
	} else {
		addr = &net.IPAddr{IP: to.Addr().AsSlice()}
	}
	return &net.OpError{Op: op, Net: network, Addr: addr, Err: err}
}

// wgLogger adapts wireguard-go's logger to slog: its verbose lines at debug,
// its errors at warn.
func wgLogger(l *slog.Logger) *device.Logger {
	if l == nil {
		return &device.Logger{Verbosef: device.DiscardLogf, Errorf: device.DiscardLogf}
	}
	l = l.With("component", "wireguard")
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { l.Warn(fmt.Sprintf(format, args...)) },
	}
}

// sendKeepalive makes the device send a keepalive to the peer, which starts
// a handshake if there is no session yet.
func (d *Device) sendKeepalive(pk config.PublicKey) {
	if p := d.wg.LookupPeer(device.NoisePublicKey(pk)); p != nil {
		p.SendKeepalive()
	}
}

// sendHandshake makes the device send a handshake initiation to the peer
// (wireguard-go sends at most one every 5 s).
func (d *Device) sendHandshake(pk config.PublicKey) {
	if p := d.wg.LookupPeer(device.NoisePublicKey(pk)); p != nil {
		p.SendHandshakeInitiation(false)
	}
}

// rehandshake sends the peer a new handshake initiation now. wireguard-go
// retries an unanswered handshake only every 5 s; restarting the peer resets
// that limit. It is for a peer with no session yet: a restart forgets
// whatever the peer had queued.
func (d *Device) rehandshake(pk config.PublicKey) {
	if p := d.wg.LookupPeer(device.NoisePublicKey(pk)); p != nil {
		p.Stop()
		p.Start()
		p.SendHandshakeInitiation(false)
	}
}

// counters returns the bytes received from and sent to all peers.
func (d *Device) counters() (rx, tx uint64, err error) {
	stats, err := d.Stats()
	for _, s := range stats {
		rx += s.RxBytes
		tx += s.TxBytes
	}
	return rx, tx, err
}
