package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// ListenPacket makes fakeTunnel a PacketListener: its sockets live in
// memory, and every datagram written to one is answered by the fake's
// udpServe (default: echoed back from the address it was sent to).
func (f *fakeTunnel) ListenPacket(ctx context.Context, network string) (net.PacketConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	pc := &memPacketConn{f: f, in: make(chan memDatagram, 16), done: make(chan struct{})}
	f.packetConns = append(f.packetConns, pc)
	return pc, nil
}

// openPacketConns counts the fake's UDP sockets not yet closed.
func (f *fakeTunnel) openPacketConns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, pc := range f.packetConns {
		select {
		case <-pc.done:
		default:
			n++
		}
	}
	return n
}

func (f *fakeTunnel) udpSent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.sent...)
}

type memDatagram struct {
	from netip.AddrPort
	data []byte
}

// memPacketConn is an in-memory UDP socket of fakeTunnel.
type memPacketConn struct {
	f         *fakeTunnel
	in        chan memDatagram
	done      chan struct{}
	closeOnce sync.Once
}

func (c *memPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	to := addr.(*net.UDPAddr).AddrPort()
	c.f.mu.Lock()
	c.f.sent = append(c.f.sent, to.String()+" "+string(b))
	c.f.mu.Unlock()
	select {
	case c.in <- memDatagram{from: to, data: bytes.Clone(b)}:
	default: // full: dropped, as UDP does
	}
	return len(b), nil
}

func (c *memPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-c.in:
		return copy(b, d.data), net.UDPAddrFromAddrPort(d.from), nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

func (c *memPacketConn) Close() error {
	c.closeOnce.Do(func() { close(c.done) })
	return nil
}

func (c *memPacketConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(10, 77, 0, 2), Port: 40000}
}
func (c *memPacketConn) SetDeadline(t time.Time) error      { return nil }
func (c *memPacketConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *memPacketConn) SetWriteDeadline(t time.Time) error { return nil }

// udpClient is a SOCKS5 UDP client made by hand: its control connection,
// its UDP socket and the relay address the server gave.
type udpClient struct {
	t     *testing.T
	ctrl  net.Conn
	conn  *net.UDPConn
	relay *net.UDPAddr
}

// associate asks for an association, and returns the reply code and, on
// success, the client.
func associate(t *testing.T, proxyAddr string, auth ...string) (byte, *udpClient) {
	t.Helper()
	ctrl, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrl.Close() })
	ctrl.SetDeadline(time.Now().Add(5 * time.Second))
	if len(auth) == 2 {
		ctrl.Write([]byte{5, 1, 2})
		up := append([]byte{1, byte(len(auth[0]))}, auth[0]...)
		up = append(append(up, byte(len(auth[1]))), auth[1]...)
		ctrl.Write(up)
		var r [4]byte
		if _, err := io.ReadFull(ctrl, r[:]); err != nil || r != [4]byte{5, 2, 1, 0} {
			t.Fatalf("authentication: %v, %v", r, err)
		}
	} else {
		ctrl.Write([]byte{5, 1, 0})
		var m [2]byte
		if _, err := io.ReadFull(ctrl, m[:]); err != nil || m != [2]byte{5, 0} {
			t.Fatalf("method reply %v, %v", m, err)
		}
	}
	ctrl.Write([]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	var hdr [4]byte
	if _, err := io.ReadFull(ctrl, hdr[:]); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if hdr[1] != 0 {
		return hdr[1], nil
	}
	if hdr[3] != 1 {
		t.Fatalf("relay address type %d, want IPv4", hdr[3])
	}
	var a [6]byte
	if _, err := io.ReadFull(ctrl, a[:]); err != nil {
		t.Fatal(err)
	}
	ctrl.SetDeadline(time.Time{})
	relay := &net.UDPAddr{IP: net.IP(a[:4]), Port: int(binary.BigEndian.Uint16(a[4:]))}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return 0, &udpClient{t: t, ctrl: ctrl, conn: conn, relay: relay}
}

// datagramTo builds a request datagram; host is an IP address or a name.
func datagramTo(host string, port uint16, data string) []byte {
	b := []byte{0, 0, 0}
	if a, err := netip.ParseAddr(host); err == nil {
		b = appendDatagramHeader(b[:0], netip.AddrPortFrom(a, port))
	} else {
		b = append(b, 3, byte(len(host)))
		b = append(b, host...)
		b = binary.BigEndian.AppendUint16(b, port)
	}
	return append(b, data...)
}

func (c *udpClient) send(b []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDP(b, c.relay); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next datagram from the relay, or an error after wait.
func (c *udpClient) recv(wait time.Duration) (datagram, error) {
	buf := make([]byte, maxDatagram)
	c.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.conn.ReadFromUDP(buf)
	if err != nil {
		return datagram{}, err
	}
	if from.String() != c.relay.String() {
		return datagram{}, errors.New("datagram from " + from.String() + ", not the relay")
	}
	return parseDatagram(buf[:n])
}

func (c *udpClient) exchange(host string, port uint16, msg string) datagram {
	c.t.Helper()
	c.send(datagramTo(host, port, msg))
	d, err := c.recv(5 * time.Second)
	if err != nil {
		c.t.Fatalf("no reply to %q: %v", msg, err)
	}
	if string(d.data) != msg {
		c.t.Fatalf("reply %q, want %q", d.data, msg)
	}
	return d
}

func TestSOCKS5UDPAssociate(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	rep, c := associate(t, h.addr)
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	if !c.relay.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("relay bound to %v, want the listener's own address 127.0.0.1", c.relay)
	}
	d := c.exchange("10.77.0.1", 7, "by address")
	if d.host != "10.77.0.1" || d.port != 7 {
		t.Errorf("reply from %s:%d, want 10.77.0.1:7", d.host, d.port)
	}
	d = c.exchange("demo.warren", 53, "by name")
	if d.host != "10.77.0.1" || d.port != 53 {
		t.Errorf("reply from %s:%d, want 10.77.0.1:53 (demo.warren's first address)", d.host, d.port)
	}
	d = c.exchange("fd77::1", 7, "IPv6")
	if d.host != "fd77::1" {
		t.Errorf("reply from %s, want fd77::1", d.host)
	}
	if n := h.tunnel.openPacketConns(); n != 2 {
		t.Errorf("%d tunnel sockets open, want 2 (one per family)", n)
	}
	if h.gate.Flows() != 3 {
		t.Errorf("gate has %d flows, want 3 (control connection, two sockets)", h.gate.Flows())
	}
	// Closing the control connection ends the association.
	c.ctrl.Close()
	waitFor(t, "the tunnel sockets to close", func() bool { return h.tunnel.openPacketConns() == 0 && h.gate.Flows() == 0 })
	c.send(datagramTo("10.77.0.1", 7, "after the end"))
	if _, err := c.recv(200 * time.Millisecond); err == nil {
		t.Error("a datagram was relayed after the association ended")
	}
}

func TestSOCKS5UDPRefusedWhileBlocked(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connecting)
	begin := time.Now()
	rep, _ := associate(t, h.addr)
	if rep != 0x02 {
		t.Fatalf("reply %#x, want 0x02", rep)
	}
	t.Logf("refused in %v", time.Since(begin))
	if n := len(h.tunnel.udpSent()); n != 0 {
		t.Errorf("%d datagrams reached the tunnel", n)
	}
}

// When the gate closes, the association ends at once: its control
// connection is reset and nothing more is relayed.
func TestSOCKS5UDPEndsWhenGateCloses(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	_, c := associate(t, h.addr)
	c.exchange("10.77.0.1", 7, "before")
	h.gate.Apply(connecting)
	c.ctrl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.ctrl.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("control connection: %v, want it cut", err)
	}
	waitFor(t, "the tunnel sockets to close", func() bool { return h.tunnel.openPacketConns() == 0 })
	sent := len(h.tunnel.udpSent())
	c.send(datagramTo("10.77.0.1", 7, "after"))
	time.Sleep(100 * time.Millisecond)
	if n := len(h.tunnel.udpSent()); n != sent {
		t.Errorf("a datagram reached the tunnel after the gate closed")
	}
}

// Datagrams from anyone but the client are dropped; so are malformed ones,
// and the association carries on.
func TestSOCKS5UDPDropsStrangersAndBadDatagrams(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	_, c := associate(t, h.addr)
	c.exchange("10.77.0.1", 7, "first") // fixes the client's port

	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	stranger.WriteToUDP(datagramTo("10.77.0.1", 7, "stranger"), c.relay)

	long := strings.Repeat("x", 255)
	for _, bad := range [][]byte{
		{},
		{0, 0},
		{0, 0, 1, 1, 10, 77, 0, 1, 0, 7, 'f'},    // fragmented
		{0, 0, 0, 9, 1, 2, 3},                    // unknown address type
		{0, 0, 0, 1, 10, 77, 0},                  // truncated IPv4 address
		{0, 0, 0, 4, 0xfd, 0x77},                 // truncated IPv6 address
		append([]byte{0, 0, 0, 3, 255}, long...), // name without a port
		{0, 0, 0, 3, 0, 0, 7},                    // empty name
		{0, 0, 0, 1, 10, 77, 0, 1, 0, 0, 'x'},    // port 0
		datagramTo("no-such-name.warren", 7, "unknown name"),
	} {
		c.send(bad)
	}
	c.exchange("10.77.0.1", 7, "still served")
	for _, s := range h.tunnel.udpSent() {
		if !strings.HasSuffix(s, " first") && !strings.HasSuffix(s, " still served") {
			t.Errorf("relayed into the tunnel: %q", s)
		}
	}
	if _, err := c.recv(100 * time.Millisecond); err == nil {
		t.Error("an extra reply came")
	}
}

// A client that announced its port is heard only from that port.
func TestSOCKS5UDPAnnouncedPort(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	port := conn.LocalAddr().(*net.UDPAddr).Port
	ctrl, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	ctrl.SetDeadline(time.Now().Add(5 * time.Second))
	ctrl.Write([]byte{5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 1, byte(port >> 8), byte(port)})
	reply := make([]byte, 2+10)
	if _, err := io.ReadFull(ctrl, reply); err != nil || reply[3] != 0 {
		t.Fatalf("reply %v, %v", reply, err)
	}
	relay := &net.UDPAddr{IP: net.IP(reply[6:10]), Port: int(binary.BigEndian.Uint16(reply[10:]))}

	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.WriteToUDP(datagramTo("10.77.0.1", 7, "wrong port"), relay)
	conn.WriteToUDP(datagramTo("10.77.0.1", 7, "right port"), relay)
	c := &udpClient{t: t, ctrl: ctrl, conn: conn, relay: relay}
	if d, err := c.recv(5 * time.Second); err != nil || string(d.data) != "right port" {
		t.Fatalf("got %q, %v; want the reply to the announced port", d.data, err)
	}
	if sent := h.tunnel.udpSent(); len(sent) != 1 {
		t.Errorf("relayed %q; want only the datagram from the announced port", sent)
	}
}

func TestSOCKS5Credentials(t *testing.T) {
	h := newSOCKS(t, func(s *SOCKS5) { s.Credentials = &Credentials{User: "alice", Password: "s3cret"} })
	h.gate.Apply(connected)

	auth := func(methods []byte, user, pass string) []byte {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(append([]byte{5, byte(len(methods))}, methods...))
		var m [2]byte
		if _, err := io.ReadFull(c, m[:]); err != nil {
			t.Fatal(err)
		}
		if m[1] != 2 {
			return m[:]
		}
		up := append([]byte{1, byte(len(user))}, user...)
		c.Write(append(append(up, byte(len(pass))), pass...))
		var r [2]byte
		if _, err := io.ReadFull(c, r[:]); err != nil {
			t.Fatal(err)
		}
		if r[1] != 0 {
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Error("the connection stayed open after a failed authentication")
			}
			return r[:]
		}
		c.Write([]byte{5, 1, 0, 1, 10, 77, 0, 1, 0, 80})
		rep := make([]byte, 10)
		if _, err := io.ReadFull(c, rep); err != nil {
			t.Fatal(err)
		}
		echo(t, c, "authenticated")
		return rep[:2]
	}
	if got := auth([]byte{0}, "", ""); !bytes.Equal(got, []byte{5, 0xff}) {
		t.Errorf("no authentication offered: %v, want [5 255] (no acceptable method)", got)
	}
	if got := auth([]byte{0, 2}, "alice", "wrong"); !bytes.Equal(got, []byte{1, 1}) {
		t.Errorf("wrong password: %v, want [1 1] (failure)", got)
	}
	if got := auth([]byte{2}, "bob", "s3cret"); !bytes.Equal(got, []byte{1, 1}) {
		t.Errorf("wrong user: %v, want [1 1]", got)
	}
	if got := auth([]byte{0, 2}, "alice", "s3cret"); !bytes.Equal(got, []byte{5, 0}) {
		t.Errorf("right credentials: %v, want [5 0] (CONNECT succeeded)", got)
	}
	if rep, c := associate(t, h.addr, "alice", "s3cret"); rep != 0 {
		t.Errorf("UDP ASSOCIATE with credentials: reply %#x", rep)
	} else {
		c.exchange("10.77.0.1", 7, "authenticated UDP")
	}
	if s := (&Credentials{User: "alice", Password: "s3cret"}).String(); strings.Contains(s, "s3cret") {
		t.Errorf("Credentials print their password: %s", s)
	}
}

func TestParseDatagram(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want datagram
		err  string
	}{
		{"IPv4", []byte{0, 0, 0, 1, 10, 0, 0, 1, 0, 53, 'q'}, datagram{"10.0.0.1", 53, []byte("q")}, ""},
		{"IPv6", append(append([]byte{0, 0, 0, 4}, netip.MustParseAddr("fd77::1").AsSlice()...), 0, 7), datagram{"fd77::1", 7, []byte{}}, ""},
		{"IPv4-mapped", append(append([]byte{0, 0, 0, 4}, netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()...), 0, 7), datagram{"10.0.0.1", 7, []byte{}}, ""},
		{"name", []byte{0, 0, 0, 3, 3, 'a', '.', 'b', 1, 0, 'x', 'y'}, datagram{"a.b", 256, []byte("xy")}, ""},
		{"short", []byte{0, 0, 0}, datagram{}, "shorter than its header"},
		{"fragment", []byte{0, 0, 2, 1, 10, 0, 0, 1, 0, 53}, datagram{}, "fragmented"},
		{"bad type", []byte{0, 0, 0, 2, 1}, datagram{}, "unknown address type 2"},
		{"truncated IPv4", []byte{0, 0, 0, 1, 10, 0, 0, 1, 0}, datagram{}, "truncated in its address"},
		{"truncated name", []byte{0, 0, 0, 3, 9, 'a'}, datagram{}, "truncated in its host name"},
		{"no name length", []byte{0, 0, 0, 3}, datagram{}, "truncated in its host name"},
		{"port 0", []byte{0, 0, 0, 1, 10, 0, 0, 1, 0, 0}, datagram{}, "port 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDatagram(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got.host != tc.want.host || got.port != tc.want.port || !bytes.Equal(got.data, tc.want.data) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func FuzzParseDatagram(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 10, 0, 0, 1, 0, 53, 'q'})
	f.Add([]byte{0, 0, 0, 3, 3, 'a', '.', 'b', 1, 0, 'x'})
	f.Add(append(append([]byte{0, 0, 0, 4}, netip.MustParseAddr("fd77::1").AsSlice()...), 0, 7))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseDatagram(b)
		if len(b) >= 4 && b[2] != 0 && !errors.Is(err, errFragmented) {
			t.Fatalf("a fragment (FRAG %d) not refused: %v", b[2], err)
		}
		if err != nil {
			return
		}
		if d.host == "" || d.port == 0 {
			t.Fatalf("%x: accepted with host %q, port %d", b, d.host, d.port)
		}
		if b[3] == 3 && d.host != string(b[5:5+int(b[4])]) {
			t.Fatalf("%x: host %q", b, d.host)
		}
		// An address re-encodes to the same header (but for the ignored
		// RSV, and IPv4-mapped IPv6 addresses, which become IPv4).
		if a, err := netip.ParseAddr(d.host); err == nil && b[3] != 3 && !(b[3] == 4 && a.Is4()) {
			h := appendDatagramHeader(nil, netip.AddrPortFrom(a, d.port))
			if !bytes.Equal(append(h, d.data...)[2:], b[2:]) {
				t.Fatalf("%x re-encodes as %x", b, append(h, d.data...))
			}
		}
		if len(d.data) > len(b) {
			t.Fatalf("data longer than the datagram")
		}
	})
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
