package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/state"
)

// The front-ends end to end: warren connected to the in-process demo peer,
// with every front-end on a free loopback port.

// allFrontends adds the HTTP proxy and the DNS server to an app.
func allFrontends(o *appOptions) {
	o.http = []listenSpec{{addr: "127.0.0.1:0"}}
	o.dns = "127.0.0.1:0"
}

func connect(t *testing.T, a *app) {
	t.Helper()
	a.machine.Connect(context.Background())
	waitState(t, a, 10*time.Second, is(state.Connected))
}

func disconnect(t *testing.T, a *app) {
	t.Helper()
	a.machine.Disconnect(context.Background())
	waitState(t, a, 10*time.Second, is(state.Disconnected))
}

func query(t *testing.T, network, server, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	if edns > 0 {
		q.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: max(edns, dns.MinMsgSize)}
	m, _, err := c.Exchange(q, server)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return m
}

func TestDNSServerEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig(), allFrontends)
	server := a.dnsAddr.String()

	// Not connected: REFUSED, at once.
	begin := time.Now()
	if m := query(t, "udp", server, demo.Name, dns.TypeA, 0); m.Rcode != dns.RcodeRefused {
		t.Fatalf("before connecting: %s, want REFUSED", dns.RcodeToString[m.Rcode])
	}
	t.Logf("REFUSED in %v before connecting", time.Since(begin))

	connect(t, a)
	for _, tc := range []struct {
		qtype uint16
		want  string
	}{
		{dns.TypeA, demo.ServerIPv4.String()},
		{dns.TypeAAAA, demo.ServerIPv6.String()},
		{dns.TypeTXT, demo.TXT},
	} {
		for _, network := range []string{"udp", "tcp"} {
			m := query(t, network, server, demo.Name, tc.qtype, 0)
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), tc.want) {
				t.Errorf("%s %s: %v, want an answer with %s", network, dns.TypeToString[tc.qtype], m.Answer, tc.want)
			}
		}
	}
	if m := query(t, "udp", server, "nothing.warren", dns.TypeA, 0); m.Rcode != dns.RcodeNameError {
		t.Errorf("unknown name: %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
	// Too big for 512 bytes: truncated over UDP, whole over TCP or with a
	// large enough EDNS0 buffer.
	big := "big." + demo.Name
	if m := query(t, "udp", server, big, dns.TypeTXT, 0); !m.Truncated || len(m.Answer) == len(demo.BigTXT) {
		t.Errorf("big answer over UDP: truncated %v with %d records; want it truncated", m.Truncated, len(m.Answer))
	}
	for _, tc := range []struct {
		network string
		edns    uint16
	}{{"tcp", 0}, {"udp", 4096}} {
		if m := query(t, tc.network, server, big, dns.TypeTXT, tc.edns); m.Truncated || len(m.Answer) != len(demo.BigTXT) {
			t.Errorf("big answer over %s (EDNS0 %d): truncated %v with %d records, want %d", tc.network, tc.edns, m.Truncated, len(m.Answer), len(demo.BigTXT))
		}
	}

	// Malformed packets: the server goes on answering.
	for _, garbage := range [][]byte{{1, 2, 3}, make([]byte, 12), []byte("GET / HTTP/1.1\r\n\r\n")} {
		c, err := net.Dial("udp", server)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(garbage)
		c.Close()
	}
	if m := query(t, "udp", server, demo.Name, dns.TypeA, 0); m.Rcode != dns.RcodeSuccess {
		t.Errorf("after garbage: %s", dns.RcodeToString[m.Rcode])
	}

	// Disconnected: REFUSED at once, even for a name just answered (and
	// cached).
	disconnect(t, a)
	var took []time.Duration
	for range 5 {
		begin := time.Now()
		if m := query(t, "udp", server, demo.Name, dns.TypeA, 0); m.Rcode != dns.RcodeRefused {
			t.Fatalf("after Disconnect: %s, want REFUSED", dns.RcodeToString[m.Rcode])
		}
		took = append(took, time.Since(begin))
	}
	t.Logf("REFUSED after Disconnect in %v", took)
	if m := median(took); m > 50*time.Millisecond {
		t.Errorf("median REFUSED took %v, want under 50ms", m)
	}
}

// The SOCKS5 proxy and the HTTP proxy resolve through the same cache as the
// DNS server: a name looked up by one is not asked again for the other.
func TestOneResolverForAll(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig(), allFrontends)
	connect(t, a)
	get(t, socksClient(t, a.socks5Addr.String()), "http://"+demo.Name+"/")
	before := a.resolver.CacheStats()
	query(t, "udp", a.dnsAddr.String(), demo.Name, dns.TypeA, 0)
	get(t, httpProxyClient(t, a.httpAddr.String(), nil), "http://"+demo.Name+"/")
	after := a.resolver.CacheStats()
	if after.Misses != before.Misses || after.Hits <= before.Hits {
		t.Errorf("cache before %+v, after %+v: want only hits after the first lookup", before, after)
	}
}

// socksUDP is a SOCKS5 UDP association made by hand.
type socksUDP struct {
	ctrl  net.Conn
	conn  *net.UDPConn
	relay *net.UDPAddr
}

// socksAssociate returns the reply code and, on success, an association.
func socksAssociate(t *testing.T, proxyAddr string) (byte, *socksUDP) {
	t.Helper()
	ctrl, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrl.Close() })
	ctrl.SetDeadline(time.Now().Add(5 * time.Second))
	ctrl.Write([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	reply := make([]byte, 2+4)
	if _, err := io.ReadFull(ctrl, reply); err != nil {
		t.Fatal(err)
	}
	if reply[3] != 0 {
		return reply[3], nil
	}
	addr := make([]byte, 6)
	if _, err := io.ReadFull(ctrl, addr); err != nil {
		t.Fatal(err)
	}
	ctrl.SetDeadline(time.Time{})
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return 0, &socksUDP{ctrl: ctrl, conn: conn, relay: &net.UDPAddr{IP: net.IP(addr[:4]), Port: int(binary.BigEndian.Uint16(addr[4:]))}}
}

// exchange sends data to host:port (an IPv4 address or a name) and returns
// the reply's source and data.
func (u *socksUDP) exchange(t *testing.T, host string, port uint16, data []byte) (netip.AddrPort, []byte) {
	t.Helper()
	var b []byte
	if a, err := netip.ParseAddr(host); err == nil {
		ip := a.As4()
		b = append([]byte{0, 0, 0, 1}, ip[:]...)
	} else {
		b = append([]byte{0, 0, 0, 3, byte(len(host))}, host...)
	}
	b = binary.BigEndian.AppendUint16(b, port)
	u.conn.WriteToUDP(append(b, data...), u.relay)
	buf := make([]byte, 65535)
	u.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := u.conn.Read(buf)
	if err != nil {
		t.Fatalf("no reply from %s:%d: %v", host, port, err)
	}
	if n < 10 || buf[3] != 1 {
		t.Fatalf("reply %x", buf[:n])
	}
	from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), binary.BigEndian.Uint16(buf[8:10]))
	return from, buf[10:n]
}

func TestSOCKS5UDPEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig())
	connect(t, a)
	rep, u := socksAssociate(t, a.socks5Addr.String())
	if rep != 0 {
		t.Fatalf("UDP ASSOCIATE: reply %#x", rep)
	}
	if !u.relay.IP.IsLoopback() {
		t.Errorf("relay on %v, want the listener's loopback address", u.relay)
	}
	echoAt := netip.AddrPortFrom(demo.ServerIPv4, demo.EchoPort)
	for _, host := range []string{demo.ServerIPv4.String(), demo.Name} {
		msg := []byte("echo via " + host)
		from, got := u.exchange(t, host, demo.EchoPort, msg)
		if from != echoAt || string(got) != string(msg) {
			t.Errorf("to %s: reply %q from %v, want %q from %v", host, got, from, msg, echoAt)
		}
	}
	// A DNS query as a datagram, to the peer's DNS server.
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(demo.Name), dns.TypeTXT)
	b, _ := q.Pack()
	_, ans := u.exchange(t, demo.ServerIPv4.String(), 53, b)
	m := new(dns.Msg)
	if err := m.Unpack(ans); err != nil || len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), demo.TXT) {
		t.Errorf("DNS over SOCKS5 UDP: %v, %v", m.Answer, err)
	}

	// Bad datagrams are dropped, and the association goes on: truncated
	// headers, and one as large as a UDP datagram can be, which the tunnel
	// (MTU 1420) carries in fragments, or not at all, but never cut short.
	for _, bad := range [][]byte{{0, 0}, {0, 0, 0, 1, 10, 77}, {0, 0, 0, 3, 200, 'x'}} {
		u.conn.WriteToUDP(bad, u.relay)
	}
	huge := make([]byte, 65507-10)
	for i := range huge {
		huge[i] = byte(i)
	}
	hdr := append([]byte{0, 0, 0, 1}, demo.ServerIPv4.AsSlice()...)
	hdr = binary.BigEndian.AppendUint16(hdr, demo.EchoPort)
	if _, err := u.conn.WriteToUDP(append(hdr, huge...), u.relay); err != nil {
		t.Fatalf("sending the largest datagram: %v", err)
	}
	buf := make([]byte, 65535)
	u.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := u.conn.Read(buf); err == nil {
		if n != 10+len(huge) || string(buf[10:n]) != string(huge) {
			t.Errorf("the largest datagram came back as %d bytes, not intact", n)
		}
		t.Logf("the largest datagram (%d bytes) came back intact", len(huge))
	} else {
		t.Logf("the largest datagram was dropped: %v", err)
	}
	if _, got := u.exchange(t, demo.Name, demo.EchoPort, []byte("after the bad ones")); string(got) != "after the bad ones" {
		t.Errorf("after bad datagrams: %q", got)
	}

	// Disconnected: the association ends, and a new one is refused.
	disconnect(t, a)
	u.ctrl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := u.ctrl.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Errorf("control connection after Disconnect: %v, want it cut", err)
	}
	if rep, _ := socksAssociate(t, a.socks5Addr.String()); rep != 0x02 {
		t.Errorf("UDP ASSOCIATE while disconnected: reply %#x, want 0x02", rep)
	}
}

// httpProxyClient is an HTTP client that uses the HTTP proxy at addr.
func httpProxyClient(t *testing.T, addr string, user *url.Userinfo) *http.Client {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: addr, User: user}
	tr := &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func TestHTTPProxyEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig(), allFrontends)
	connect(t, a)
	c := httpProxyClient(t, a.httpAddr.String(), nil)

	if page := string(get(t, c, "http://"+demo.Name+"/")); !strings.Contains(page, demo.ClientIPv4.String()) {
		t.Errorf("page %q", page)
	}
	const n = 1<<20 + 7
	body := get(t, c, fmt.Sprintf("http://%s/bytes/%d", demo.ServerIPv4, n))
	if got, want := digest(strings.NewReader(string(body))), digest(demo.Bytes(n)); got != want {
		t.Errorf("1 MiB by IP: digest %s, want %s", got, want)
	}
	for _, method := range []string{http.MethodPost, http.MethodPut} {
		const size = 5 << 20
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(copyN(pw, demo.Bytes(size), size)) }()
		req, _ := http.NewRequest(method, "http://"+demo.Name+"/upload", pr)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("%s %d %s\n", method, size, digest(demo.Bytes(size)))
		if string(got) != want {
			t.Errorf("%s: answer %q, want %q", method, got, want)
		}
	}

	// CONNECT, then HTTP inside it by hand.
	conn, err := net.Dial("tcp", a.httpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s:80 HTTP/1.1\r\nHost: %s:80\r\n\r\n", demo.Name, demo.Name)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	fmt.Fprintf(conn, "GET /bytes/1000 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", demo.Name)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner, _ := io.ReadAll(resp.Body)
	if digest(strings.NewReader(string(inner))) != digest(demo.Bytes(1000)) {
		t.Errorf("through CONNECT: %d bytes, not /bytes/1000's", len(inner))
	}

	// Blocked: 503 with the state and cause in one line.
	disconnect(t, a)
	resp, err = c.Get("http://" + demo.Name + "/")
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Count(strings.TrimSpace(string(msg)), "\n") != 0 || !strings.Contains(string(msg), "disconnected") {
		t.Errorf("while disconnected: %s %q, want 503 and one line naming the state", resp.Status, msg)
	}
}

func copyN(w io.Writer, r io.Reader, n int64) error {
	_, err := io.CopyN(w, r, n)
	return err
}

// freePort returns a loopback address with a port free for both TCP and
// UDP right now.
func freePort(t *testing.T) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

// localEcho runs a TCP echo server on loopback: a local service to expose.
func localEcho(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return l.Addr().String()
}

// checkForwards checks a TCP forward to the demo's web site, a UDP forward
// to its echo port, and an expose of a local echo service on port 8080.
func checkForwards(t *testing.T, srv *demo.Server, tcpLocal, udpLocal string) {
	t.Helper()
	c, err := net.Dial("tcp", tcpLocal)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", demo.Name)
	page, _ := io.ReadAll(c)
	if !strings.Contains(string(page), "Hello from "+demo.Name) {
		t.Errorf("TCP forward: %q", page)
	}

	if udpLocal != "" {
		u, err := net.Dial("udp", udpLocal)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		u.SetDeadline(time.Now().Add(5 * time.Second))
		u.Write([]byte("ping through the forward"))
		buf := make([]byte, 100)
		if n, err := u.Read(buf); err != nil || string(buf[:n]) != "ping through the forward" {
			t.Errorf("UDP forward: %q, %v", buf[:n], err)
		}
	}

	// From inside the tunnel, the peer reaches the exposed local service,
	// on both of warren's tunnel addresses.
	for _, to := range []netip.Addr{demo.ClientIPv4, demo.ClientIPv6} {
		checkExposed(t, srv, netip.AddrPortFrom(to, 8080))
	}
}

// checkExposed dials to from inside the tunnel and expects an echo.
func checkExposed(t *testing.T, srv *demo.Server, to netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var in net.Conn
	var err error
	for {
		in, err = srv.DialTunnel(ctx, to)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond) // the tunnel listener comes up just after Connected
	}
	if err != nil {
		t.Fatalf("expose: dial %v from the peer: %v", to, err)
	}
	defer in.Close()
	in.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "hello from the peer to " + to.String()
	in.Write([]byte(msg))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(in, buf); err != nil || string(buf) != msg {
		t.Errorf("expose on %v: %q, %v", to, buf, err)
	}
}

func TestForwardsEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	tcpLocal, udpLocal := freePort(t), freePort(t)
	a := startTestApp(t, srv.ClientConfig(), func(o *appOptions) {
		o.forwards = []forwardSpec{
			{local: tcpLocal, target: demo.Name + ":80", tcp: true},
			{local: udpLocal, target: netip.AddrPortFrom(demo.ServerIPv4, demo.EchoPort).String(), udp: true},
		}
		o.exposes = []exposeSpec{{port: 8080, target: localEcho(t)}}
	})
	// Blocked: the TCP forward resets at once.
	c, err := net.Dial("tcp", tcpLocal)
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil || strings.Contains(err.Error(), "timeout") {
		t.Errorf("TCP forward while disconnected: %v, want a reset", err)
	}
	connect(t, a)
	checkForwards(t, srv, tcpLocal, udpLocal)
}

// A wireproxy config file, with every section warren supports, works as it
// is: `warren up -c wireproxy.conf`.
func TestWireproxyConfigEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	socksAddr, httpAddr, fwdAddr := freePort(t), freePort(t), freePort(t)
	cfg := srv.ClientConfig()
	key := base64Key(cfg.Interface.PrivateKey)
	// The private key comes from the environment, as wireproxy allows.
	text := strings.Replace(wgQuick(cfg), key, "$WARREN_TEST_WG_KEY", 1)
	text += fmt.Sprintf(`
[Socks5]
BindAddress = %s

[http]
BindAddress = %s
Username = alice
Password = $WARREN_TEST_HTTP_PASSWORD

[TCPClientTunnel]
BindAddress = %s
Target = %s:80

[TCPServerTunnel]
ListenPort = 8080
Target = %s
`, socksAddr, httpAddr, fwdAddr, demo.Name, localEcho(t))
	conf := writeFile(t, "wireproxy.conf", text)
	t.Setenv("WARREN_TEST_WG_KEY", key)
	t.Setenv("WARREN_TEST_HTTP_PASSWORD", "correct horse")

	p := startWarren(t, "up", "-c", conf, "--dns", "off")
	p.waitLog(t, 15*time.Second, msg("tunnel connected"))
	get(t, socksClient(t, socksAddr), "http://"+demo.Name+"/")
	get(t, httpProxyClient(t, httpAddr, url.UserPassword("alice", "correct horse")), "http://"+demo.Name+"/")
	resp, err := httpProxyClient(t, httpAddr, url.UserPassword("alice", "wrong")).Get("http://" + demo.Name + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusProxyAuthRequired {
		t.Errorf("wrong password: %s, want 407", resp.Status)
	}
	checkForwards(t, srv, fwdAddr, "")
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Errorf("exit code %d", code)
	}
}
