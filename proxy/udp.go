package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	socks5 "github.com/things-go/go-socks5"
	"github.com/things-go/go-socks5/statute"
)

// SOCKS5 UDP ASSOCIATE (RFC 1928, section 7).
//
// An association is a UDP relay socket on the address the client reached
// the SOCKS5 listener at (never 0.0.0.0), and up to two UDP sockets in the
// tunnel, one per address family, opened through the gate when the first
// datagram of that family is relayed. It lives as long as its TCP control
// connection: when the client closes that connection, or the gate closes
// and aborts it, every socket of the association is closed. An association
// that sees no datagram either way for UDPIdleTimeout ends too: warren
// closes the control connection.
//
// Datagrams are accepted only from the client's IP address (the source of
// the control connection), and from the port the client announced in its
// request or, if it announced none, the port of its first datagram.
// Fragmented datagrams (FRAG != 0), malformed ones and those that cannot be
// sent are dropped, as RFC 1928 allows; the association goes on. Names in
// datagrams are resolved through the tunnel. Replies carry the IP address
// they came from.

// maxDatagram is the largest UDP payload there is.
const maxDatagram = 65535

// datagram is one SOCKS5 UDP request or reply.
type datagram struct {
	host string // an IP address or a name
	port uint16
	data []byte
}

// errFragmented is returned for a datagram with a fragment number.
var errFragmented = errors.New("proxy: fragmented SOCKS5 datagram (FRAG != 0), not supported")

// parseDatagram reads a SOCKS5 UDP datagram: RSV(2) FRAG(1) ATYP(1)
// DST.ADDR DST.PORT(2) DATA. data aliases b.
func parseDatagram(b []byte) (datagram, error) {
	var d datagram
	if len(b) < 4 {
		return d, fmt.Errorf("proxy: SOCKS5 datagram of %d bytes, shorter than its header", len(b))
	}
	if b[2] != 0 {
		return d, errFragmented
	}
	rest := b[4:]
	switch atyp := b[3]; atyp {
	case statute.ATYPIPv4, statute.ATYPIPv6:
		n := 4
		if atyp == statute.ATYPIPv6 {
			n = 16
		}
		if len(rest) < n+2 {
			return d, fmt.Errorf("proxy: SOCKS5 datagram truncated in its address")
		}
		a, _ := netip.AddrFromSlice(rest[:n])
		d.host, rest = a.Unmap().String(), rest[n:]
	case statute.ATYPDomain:
		if len(rest) < 1 || len(rest) < 1+int(rest[0])+2 {
			return d, fmt.Errorf("proxy: SOCKS5 datagram truncated in its host name")
		}
		n := int(rest[0])
		if n == 0 {
			return d, fmt.Errorf("proxy: SOCKS5 datagram with an empty host name")
		}
		d.host, rest = string(rest[1:1+n]), rest[1+n:]
	default:
		return d, fmt.Errorf("proxy: SOCKS5 datagram with unknown address type %d", atyp)
	}
	d.port, d.data = binary.BigEndian.Uint16(rest), rest[2:]
	if d.port == 0 {
		return d, fmt.Errorf("proxy: SOCKS5 datagram to port 0")
	}
	return d, nil
}

// appendDatagramHeader appends the header of a reply from from.
func appendDatagramHeader(b []byte, from netip.AddrPort) []byte {
	a := from.Addr().Unmap()
	atyp := statute.ATYPIPv4
	if a.Is6() {
		atyp = statute.ATYPIPv6
	}
	b = append(b, 0, 0, 0, atyp)
	b = append(b, a.AsSlice()...)
	return binary.BigEndian.AppendUint16(b, from.Port())
}

// associate handles UDP ASSOCIATE.
func (s *SOCKS5) associate(ctx context.Context, w io.Writer, req *socks5.Request) error {
	ctrl, ok := w.(net.Conn)
	if !ok {
		return fmt.Errorf("proxy: UDP ASSOCIATE on a %T, not a connection", w)
	}
	refuse := func(err error) error {
		s.Gate.observe("socks5-udp", err)
		rep := replyCode(err)
		s.log.Debug("associate refused", "client", ctrl.RemoteAddr().String(), "reply", rep, "err", err)
		return socks5.SendReply(w, rep, nil)
	}
	if err := refusal(w); err != nil {
		return refuse(err)
	}
	if err := s.Gate.Wait(ctx); err != nil {
		return refuse(err)
	}
	local, ok1 := ctrl.LocalAddr().(*net.TCPAddr)
	remote, ok2 := ctrl.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return refuse(fmt.Errorf("proxy: UDP ASSOCIATE needs a TCP control connection"))
	}
	relay, err := net.ListenUDP("udp", &net.UDPAddr{IP: local.IP, Zone: local.Zone})
	if err != nil {
		return refuse(fmt.Errorf("proxy: open UDP relay: %w", err))
	}
	release, err := s.Gate.Track(ctrl)
	if err != nil {
		relay.Close()
		return refuse(err)
	}
	defer release()
	s.Gate.observe("socks5-udp", nil)
	a := &association{
		s:      s,
		relay:  relay,
		client: remote.AddrPort(),
		log:    s.log.With("client", remote.String()),
		born:   time.Now(),
	}
	a.client = netip.AddrPortFrom(a.client.Addr().Unmap(), 0)
	if dst := req.RawDestAddr; dst != nil && dst.Port != 0 {
		// The client said where it will send from: only that port.
		a.client = netip.AddrPortFrom(a.client.Addr(), uint16(dst.Port))
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	defer a.close()
	if err := socks5.SendReply(w, statute.RepSuccess, relay.LocalAddr()); err != nil {
		return err
	}
	s.log.Debug("associate", "client", remote.String(), "relay", relay.LocalAddr().String())
	ctrl.SetDeadline(time.Time{})
	a.touch()
	a.wg.Add(1)
	go a.fromClient()
	if idle := s.UDPIdleTimeout; idle >= 0 {
		if idle == 0 {
			idle = DefaultUDPIdleTimeout
		}
		a.wg.Add(1)
		go a.expire(ctrl, idle)
	}
	// The association lives until the control connection ends. Whatever
	// the client sends on it now is meaningless, and dropped.
	_, err = io.Copy(io.Discard, req.Reader)
	return err
}

// association is one UDP ASSOCIATE.
type association struct {
	s      *SOCKS5
	relay  *net.UDPConn
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // fromClient, expire and the fromTunnel goroutines
	// active is when a datagram last came from the client or the tunnel,
	// as the time since born (monotonic, unlike a wall-clock time).
	born   time.Time
	active atomic.Int64

	// client is where datagrams must come from. Its port is 0 until known;
	// only fromClient writes it, and fromTunnel reads it under mu.
	client netip.AddrPort

	// mu guards the fields below.
	mu      sync.Mutex
	tunnels map[bool]net.PacketConn // by "is IPv6"
	closed  bool
}

// fromClient relays datagrams from the client into the tunnel until the
// relay socket is closed.
func (a *association) fromClient() {
	defer a.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := a.relay.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		a.mu.Lock()
		client := a.client
		a.mu.Unlock()
		if from.Addr() != client.Addr() || client.Port() != 0 && from.Port() != client.Port() {
			a.log.Debug("datagram from a stranger dropped", "from", from.String())
			continue
		}
		a.touch()
		if client.Port() == 0 {
			a.mu.Lock()
			a.client = from
			a.mu.Unlock()
		}
		d, err := parseDatagram(buf[:n])
		if err != nil {
			a.log.Debug("datagram dropped", "err", err)
			continue
		}
		if err := a.send(d); err != nil {
			a.log.Debug("datagram dropped", "to", net.JoinHostPort(d.host, fmt.Sprint(d.port)), "err", err)
		}
	}
}

// send relays one datagram into the tunnel.
func (a *association) send(d datagram) error {
	timeout := a.s.DialTimeout
	if timeout == 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(a.ctx, timeout)
	defer cancel()
	addrs, err := resolveHost(ctx, a.s.Resolver, d.host)
	if err != nil {
		return err
	}
	to := netip.AddrPortFrom(addrs[0], d.port)
	pc, err := a.tunnel(ctx, to.Addr().Is6())
	if err != nil {
		return err
	}
	_, err = pc.WriteTo(d.data, net.UDPAddrFromAddrPort(to))
	return err
}

// tunnel returns the association's tunnel socket of one family, opening it
// through the gate the first time.
func (a *association) tunnel(ctx context.Context, v6 bool) (net.PacketConn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, net.ErrClosed
	}
	if pc := a.tunnels[v6]; pc != nil {
		return pc, nil
	}
	network := "udp4"
	if v6 {
		network = "udp6"
	}
	pc, err := a.s.Gate.ListenPacket(ctx, network)
	if err != nil {
		return nil, err
	}
	if a.tunnels == nil {
		a.tunnels = make(map[bool]net.PacketConn)
	}
	a.tunnels[v6] = pc
	a.wg.Add(1)
	go a.fromTunnel(pc)
	return pc, nil
}

// fromTunnel relays datagrams from one tunnel socket to the client until
// the socket is closed.
func (a *association) fromTunnel(pc net.PacketConn) {
	defer a.wg.Done()
	buf := make([]byte, maxDatagram)
	out := make([]byte, 0, maxDatagram+22)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		a.touch()
		a.mu.Lock()
		client := a.client
		a.mu.Unlock()
		out = append(appendDatagramHeader(out[:0], ua.AddrPort()), buf[:n]...)
		if _, err := a.relay.WriteToUDPAddrPort(out, client); err != nil {
			a.log.Debug("reply dropped", "from", ua.String(), "err", err)
		}
	}
}

// touch notes that a datagram came, either way.
func (a *association) touch() { a.active.Store(int64(time.Since(a.born))) }

// expire closes ctrl, and so ends the association, once no datagram has
// come either way for idle; or returns when the association ends.
func (a *association) expire(ctrl net.Conn, idle time.Duration) {
	defer a.wg.Done()
	timer := time.NewTimer(idle)
	defer timer.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-timer.C:
			if left := idle - (time.Since(a.born) - time.Duration(a.active.Load())); left > 0 {
				timer.Reset(left)
				continue
			}
			a.log.Debug("UDP association idle; closed", "idle", idle)
			ctrl.Close()
			return
		}
	}
}

// close ends the association: every socket closed, every goroutine done.
func (a *association) close() {
	a.cancel()
	a.mu.Lock()
	a.closed = true
	a.relay.Close()
	for _, pc := range a.tunnels {
		pc.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}
