package proxy

// Fuzz targets that give the SOCKS5 server and the HTTP proxy whole client
// connections of arbitrary bytes, over a fake tunnel that never touches a
// network. The parsers alone are fuzzed by FuzzParseDatagram (udp_test.go)
// and FuzzHTTPProxyAuth (http_test.go).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/things-go/go-socks5/statute"
)

// fuzzTimeout bounds one fuzz input: the server must have answered and
// closed the connection, and shut down, within it.
const fuzzTimeout = 10 * time.Second

// scriptOutMax bounds what a server may write to a scriptConn.
const scriptOutMax = 1 << 20

// scriptConn is a client connection that sends a script and then
// half-closes: once the script is read, reads return io.EOF. It keeps what
// the server writes, up to scriptOutMax bytes, and notes when the server
// closes it. Its addresses are loopback TCP addresses, so that UDP
// ASSOCIATE takes it for a real client.
//
// With hold set, it stands for a client that waits for its answer before it
// leaves: a read with no deadline (net/http's background read while a
// handler runs, or a handler reading a body) that finds the script read
// waits, up to hold, for the server to write something first. Reads with a
// deadline (net/http reading a request's head, or waiting for the next
// one) get io.EOF at once.
type scriptConn struct {
	hold      time.Duration
	closed    chan struct{}
	closeOnce sync.Once

	// mu guards the fields below.
	mu       sync.Mutex
	in       []byte
	out      []byte
	overflow bool // the server wrote more than scriptOutMax
	answered bool // the server wrote after the script was read
	deadline time.Time
	wake     chan struct{} // closed and replaced on a write or a new deadline
}

func newScriptConn(script []byte, hold time.Duration) *scriptConn {
	return &scriptConn{in: script, hold: hold, closed: make(chan struct{}), wake: make(chan struct{})}
}

func (c *scriptConn) Read(b []byte) (int, error) {
	giveUp := time.Now().Add(c.hold)
	for {
		c.mu.Lock()
		select {
		case <-c.closed:
			c.mu.Unlock()
			return 0, net.ErrClosed
		default:
		}
		if len(c.in) > 0 {
			n := copy(b, c.in)
			c.in = c.in[n:]
			c.mu.Unlock()
			return n, nil
		}
		now := time.Now()
		if !c.deadline.IsZero() && !now.Before(c.deadline) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		if c.answered || !c.deadline.IsZero() || !now.Before(giveUp) {
			c.mu.Unlock()
			return 0, io.EOF
		}
		wake := c.wake
		c.mu.Unlock()
		timer := time.NewTimer(giveUp.Sub(now))
		select {
		case <-wake:
		case <-c.closed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

func (c *scriptConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	if len(c.out)+len(b) > scriptOutMax {
		c.overflow = true
		return 0, errors.New("scriptConn: the server wrote too much")
	}
	c.out = append(c.out, b...)
	if len(c.in) == 0 && len(b) > 0 {
		c.answered = true
		c.wakeLocked()
	}
	return len(b), nil
}

func (c *scriptConn) wakeLocked() {
	close(c.wake)
	c.wake = make(chan struct{})
}

func (c *scriptConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *scriptConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	c.wakeLocked()
	return nil
}

func (c *scriptConn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil } // writes never block

// written returns what the server wrote, and whether it wrote too much.
func (c *scriptConn) written() ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.out), c.overflow
}

func (c *scriptConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1080}
}
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

// serveOne serves c (as the one connection of a listener), waits until the
// server has closed it, and shuts the server down; serve must return
// ErrServerClosed. It fails the test if that takes longer than fuzzTimeout.
func serveOne(t *testing.T, c *scriptConn, serve func(net.Listener) error, shutdown func(context.Context) error) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- serve(newPipeListener(c)) }()
	timer := time.NewTimer(fuzzTimeout)
	defer timer.Stop()
	select {
	case <-c.closed:
	case <-timer.C:
		t.Fatalf("the connection was not closed within %v\n%s", fuzzTimeout, allStacks())
	}
	ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v\n%s", err, allStacks())
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
}

func allStacks() []byte {
	buf := make([]byte, 1<<20)
	return buf[:runtime.Stack(buf, true)]
}

// guardHostResolver replaces net.DefaultResolver, until the fuzz target
// ends, with one that refuses every query and counts them: a proxied name
// must never be given to the host's resolver. (It catches go-socks5's
// default resolver, net.Dial with a name, and the like.)
func guardHostResolver(f *testing.F) *atomic.Int64 {
	var n atomic.Int64
	saved := net.DefaultResolver
	net.DefaultResolver = &net.Resolver{
		PreferGo: true,
		Dial: func(context.Context, string, string) (net.Conn, error) {
			n.Add(1)
			return nil, errors.New("fuzz: the host's resolver was asked")
		},
	}
	f.Cleanup(func() { net.DefaultResolver = saved })
	return &n
}

// fuzzMode is what a fuzz input's first argument picks: whether the gate is
// open (bit 0 clear) or blocked, whether the server asks for credentials
// (bit 1), and whether the tunnel refuses every connection (bit 2).
type fuzzMode struct{ open, auth, refuse bool }

func fuzzModeOf(b uint8) fuzzMode {
	return fuzzMode{open: b&1 == 0, auth: b&2 != 0, refuse: b&4 != 0}
}

// fuzzNames is the fake resolver's table in the fuzz targets.
func fuzzNames() map[string][]netip.Addr {
	return map[string][]netip.Addr{
		"demo.warren": {netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd77::1")},
	}
}

// fuzzTunnel returns a fake tunnel and a gate over it, set as m says.
func fuzzTunnel(m fuzzMode) (*fakeTunnel, *Gate) {
	tun := &fakeTunnel{}
	if m.refuse {
		tun.err = syscall.ECONNREFUSED
	}
	gate := NewGate(tun)
	if m.open {
		gate.Apply(connected)
	} else {
		gate.Apply(connecting)
	}
	return tun, gate
}

// FuzzSOCKS5Conn gives the SOCKS5 server a client connection that sends
// arbitrary bytes and then half-closes. The server must not panic, must
// answer within the protocol or not at all, and must close the connection
// in bounded time; and it must fail closed: no flow while the gate is
// blocked or the client has not authenticated, no dial but through the
// gate to the address asked for, no name to the host's resolver.
func FuzzSOCKS5Conn(f *testing.F) {
	connect := func(atyp byte, addr []byte, port uint16) []byte {
		b := []byte{5, 1, 0, atyp}
		if atyp == statute.ATYPDomain {
			b = append(b, byte(len(addr)))
		}
		b = append(b, addr...)
		return append(b, byte(port>>8), byte(port))
	}
	noAuth := []byte{5, 1, 0}
	userPass := []byte{5, 1, 2, 1, 1, 'u', 1, 'p'}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	v4 := connect(statute.ATYPIPv4, []byte{10, 77, 0, 1}, 80)
	name := connect(statute.ATYPDomain, []byte("demo.warren"), 443)
	f.Add(uint8(0), cat(noAuth, v4, []byte("hello")))
	f.Add(uint8(0), cat(noAuth, name, []byte("GET / HTTP/1.0\r\n\r\n")))
	f.Add(uint8(0), cat(noAuth, connect(statute.ATYPIPv6, netip.MustParseAddr("::ffff:10.77.0.1").AsSlice(), 1)))
	f.Add(uint8(0), cat(noAuth, connect(statute.ATYPDomain, []byte("fe80::1%eth0"), 22)))
	f.Add(uint8(0), cat(noAuth, connect(statute.ATYPDomain, []byte("unknown.example"), 80)))
	f.Add(uint8(0), cat(noAuth, []byte{5, 3, 0, 1, 127, 0, 0, 1, 0, 0})) // UDP ASSOCIATE
	f.Add(uint8(0), cat(noAuth, []byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0}))   // BIND
	f.Add(uint8(0), cat(noAuth, []byte{5, 9, 0, 1, 0, 0, 0, 0, 0, 0}))   // unknown command
	f.Add(uint8(0), cat(noAuth, []byte{5, 1, 0, 9, 1, 2}))               // unknown address type
	f.Add(uint8(1), cat(noAuth, name))                                   // blocked
	f.Add(uint8(1), cat(noAuth, []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}))
	f.Add(uint8(2), cat(userPass, v4, []byte("x")))
	f.Add(uint8(2), cat([]byte{5, 1, 2, 1, 1, 'u', 1, 'q'}, v4))    // wrong password
	f.Add(uint8(2), cat(noAuth, v4))                                // no acceptable method
	f.Add(uint8(4), cat(noAuth, name))                              // the tunnel refuses
	f.Add(uint8(0), []byte("\x04\x01\x00\x50\x7f\x00\x00\x01\x00")) // SOCKS4
	f.Add(uint8(0), []byte("\x05\xff"))
	hostLookups := guardHostResolver(f)
	f.Fuzz(func(t *testing.T, mode uint8, in []byte) {
		m := fuzzModeOf(mode)
		tun, gate := fuzzTunnel(m)
		res := &fakeResolver{names: fuzzNames()}
		srv := &SOCKS5{Gate: gate, Resolver: res}
		if m.auth {
			srv.Credentials = &Credentials{User: "u", Password: "p"}
		}
		c := newScriptConn(slices.Clone(in), 0)
		serveOne(t, c, srv.Serve, srv.Shutdown)
		tun.close()

		out, dialed := checkFailClosed(t, m, c, tun, res, hostLookups)
		tun.mu.Lock()
		packetConns := len(tun.packetConns)
		tun.mu.Unlock()
		if packetConns != 0 {
			t.Fatalf("%d UDP sockets opened in the tunnel, with no datagram sent", packetConns)
		}
		checkSOCKS5Answer(t, m, in, out, dialed)
	})
}

// checkFailClosed checks what every run of a front-end must hold once its
// connection is done (the tunnel closed): at most 1 MiB written, nothing
// asked of the host's resolver, nothing dialed or resolved while the gate
// is blocked. It returns what the server wrote and what it dialed.
func checkFailClosed(t *testing.T, m fuzzMode, c *scriptConn, tun *fakeTunnel, res *fakeResolver, hostLookups *atomic.Int64) (out []byte, dialed []netip.AddrPort) {
	t.Helper()
	out, overflow := c.written()
	if overflow {
		t.Fatal("the server wrote more than 1 MiB")
	}
	tun.mu.Lock()
	dialed = slices.Clone(tun.dialed)
	tun.mu.Unlock()
	if n := hostLookups.Load(); n != 0 {
		t.Fatalf("%d queries to the host's resolver", n)
	}
	if !m.open && (len(dialed) > 0 || res.numQueries() > 0) {
		t.Fatalf("while blocked: dialed %v, resolved %q", dialed, res.queries)
	}
	return out, dialed
}

// checkSOCKS5Answer checks out, what the server wrote to a client that sent
// in, against the protocol, and the tunnel's dials against what the client
// asked for.
func checkSOCKS5Answer(t *testing.T, m fuzzMode, in, out []byte, dialed []netip.AddrPort) {
	t.Helper()
	noFlow := func(why string) {
		t.Helper()
		if len(dialed) > 0 {
			t.Fatalf("%s, yet dialed %v", why, dialed)
		}
	}
	if len(out) == 0 {
		noFlow("no answer")
		return
	}
	// The method request: VER NMETHODS METHODS.
	if len(in) < 2 || in[0] != statute.VersionSocks5 || len(in) < 2+int(in[1]) {
		t.Fatalf("answered %x to a client that did not send a SOCKS5 method request", out)
	}
	methods, pos := in[2:2+int(in[1])], 2+int(in[1])
	want := statute.MethodNoAuth
	if m.auth {
		want = statute.MethodUserPassAuth
	}
	if len(out) < 2 || out[0] != statute.VersionSocks5 {
		t.Fatalf("method reply %x", out)
	}
	switch out[1] {
	case statute.MethodNoAcceptable:
		if slices.Contains(methods, want) {
			t.Fatalf("refused methods %x, which include %#x", methods, want)
		}
		if len(out) != 2 {
			t.Fatalf("wrote %x after refusing every method", out)
		}
		noFlow("no method accepted")
		return
	case want:
		if !slices.Contains(methods, want) {
			t.Fatalf("chose method %#x, not among %x", want, methods)
		}
	default:
		t.Fatalf("chose method %#x, want %#x or none", out[1], want)
	}
	out = out[2:]
	if m.auth {
		// RFC 1929: VER ULEN UNAME PLEN PASSWD, answered VER STATUS.
		if len(out) == 0 {
			noFlow("no answer to the authentication")
			return
		}
		good := bytes.HasPrefix(in[pos:], []byte{1, 1, 'u', 1, 'p'})
		if len(out) < 2 || out[0] != 1 || out[1] > 1 {
			t.Fatalf("authentication reply %x", out)
		}
		if (out[1] == 0) != good {
			t.Fatalf("authentication reply %x to %x", out[:2], in[pos:])
		}
		if !good {
			if len(out) != 2 {
				t.Fatalf("wrote %x after a failed authentication", out)
			}
			noFlow("authentication failed")
			return
		}
		pos += 5
		out = out[2:]
	}
	if len(out) == 0 {
		noFlow("no reply to the request")
		return
	}
	// The request, as go-socks5 reads it, and the reply: VER REP RSV ATYP
	// BND.ADDR BND.PORT.
	r := bytes.NewReader(in[pos:])
	req, reqErr := statute.ParseRequest(r)
	rest := in[len(in)-r.Len():]
	if len(out) < 4 || out[0] != statute.VersionSocks5 || out[2] != 0 {
		t.Fatalf("reply %x", out)
	}
	n := map[byte]int{statute.ATYPIPv4: 4, statute.ATYPIPv6: 16}[out[3]]
	if n == 0 || len(out) < 4+n+2 {
		t.Fatalf("reply %x", out)
	}
	rep, extra := out[1], out[4+n+2:]
	switch {
	case errors.Is(reqErr, statute.ErrUnrecognizedAddrType):
		if rep != statute.RepAddrTypeNotSupported {
			t.Fatalf("reply %#x to an unknown address type", rep)
		}
	case reqErr != nil:
		t.Fatalf("reply %x to a request go-socks5 cannot read: %v", out, reqErr)
	}
	if rep != statute.RepSuccess {
		if len(extra) > 0 {
			t.Fatalf("wrote %x after reply %#x", extra, rep)
		}
		if len(dialed) > 0 && !m.refuse {
			t.Fatalf("reply %#x, yet dialed %v through a tunnel that does not refuse", rep, dialed)
		}
		return
	}
	if !m.open {
		t.Fatal("success while the gate is blocked")
	}
	switch req.Command {
	case statute.CommandConnect:
		target, ok := socksTarget(req.DstAddr)
		if !ok || len(dialed) != 1 || dialed[0] != target {
			t.Fatalf("CONNECT to %v dialed %v", req.DstAddr.Address(), dialed)
		}
		// What follows the reply is the echo of what followed the request,
		// or a part of it (the flow ends when the client's side does).
		if !bytes.HasPrefix(rest, extra) {
			t.Fatalf("relayed %q, not a prefix of what the client sent, %q", extra, rest)
		}
	case statute.CommandAssociate:
		if len(extra) > 0 || len(dialed) > 0 {
			t.Fatalf("UDP ASSOCIATE: wrote %x after the reply, dialed %v", extra, dialed)
		}
	default:
		t.Fatalf("success for command %#x", req.Command)
	}
}

// socksTarget is where a CONNECT to a must go through the tunnel: its IP
// address, or the first address the fuzz targets' resolver gives its name.
func socksTarget(a statute.AddrSpec) (netip.AddrPort, bool) {
	var ip netip.Addr
	switch {
	case a.FQDN == "":
		ip, _ = netip.AddrFromSlice(a.IP)
	case fuzzNames()[a.FQDN] != nil:
		ip = fuzzNames()[a.FQDN][0]
	default:
		ip, _ = netip.ParseAddr(a.FQDN)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port)), ip.IsValid() && ip.Zone() == ""
}

// FuzzHTTPProxyRequest gives the HTTP proxy a client connection that sends
// arbitrary bytes (requests for absolute URIs, CONNECT, and anything else)
// and then half-closes. The server must not panic, must answer with HTTP
// responses or not at all, and must close the connection in bounded time;
// and it must fail closed: no flow while the gate is blocked or without
// the credentials, no dial but through the gate, no name to the host's
// resolver, no credentials passed upstream or logged.
func FuzzHTTPProxyRequest(f *testing.F) {
	goodAuth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cretPW")) + "\r\n"
	for _, seed := range []struct {
		mode uint8
		req  string
	}{
		{0, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{0, "GET http://demo.warren/a?b=c%20d HTTP/1.1\r\nHost: demo.warren\r\nConnection: close\r\n\r\n"},
		{0, "CONNECT demo.warren:443 HTTP/1.1\r\nHost: demo.warren:443\r\n\r\n\x16\x03\x01early bytes"},
		{0, "CONNECT [fd77::1]:22 HTTP/1.1\r\nHost: [fd77::1]:22\r\n\r\nSSH-2.0-x\r\n"},
		{0, "CONNECT 10.77.0.1:0 HTTP/1.1\r\nHost: 10.77.0.1:0\r\n\r\n"},
		{0, "POST http://10.77.0.1:8080/p HTTP/1.1\r\nHost: 10.77.0.1:8080\r\nContent-Length: 5\r\n" +
			"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\n\r\nhello"},
		{0, "PUT http://demo.warren/up HTTP/1.1\r\nHost: demo.warren\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"},
		{0, "HEAD http://demo.warren/ HTTP/1.0\r\n\r\nGET http://demo.warren/2 HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{0, "GET https://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{0, "GET ftp://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{0, "GET http://demo.warren:99999/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{0, "GET / HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{0, "OPTIONS * HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{0, "GET http://[fe80::1%25eth0]/ HTTP/1.1\r\nHost: x\r\n\r\n"},
		{0, "\x00\x01\x02\x03 garbage\r\n\r\n"},
		{1, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n"},
		{1, "CONNECT demo.warren:443 HTTP/1.1\r\nHost: demo.warren:443\r\n\r\n"},
		{2, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n" + goodAuth + "\r\n"},
		{2, "CONNECT demo.warren:443 HTTP/1.1\r\nHost: demo.warren:443\r\n" + goodAuth + "\r\nx"},
		{2, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\nProxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n"},
		{4, "GET http://unknown.example/ HTTP/1.1\r\nHost: unknown.example\r\n\r\nCONNECT demo.warren:1 HTTP/1.1\r\n\r\n"},
	} {
		f.Add(seed.mode, []byte(seed.req))
	}
	hostLookups := guardHostResolver(f)
	f.Fuzz(func(t *testing.T, mode uint8, in []byte) {
		m := fuzzModeOf(mode)
		tun, gate := fuzzTunnel(m)
		var upstream recordedHeaders
		tun.serve = func(_ netip.AddrPort, c net.Conn) { serveHTTPOn(c, upstream.handler) }
		res := &fakeResolver{names: fuzzNames()}
		logs := new(lockedBuffer)
		srv := &HTTP{
			Gate:     gate,
			Resolver: res,
			Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		if m.auth {
			srv.Credentials = &Credentials{User: "alice", Password: "s3cretPW"}
		}
		c := newScriptConn(slices.Clone(in), 100*time.Millisecond)
		serveOne(t, c, srv.Serve, srv.Shutdown)
		tun.close()

		out, dialed := checkFailClosed(t, m, c, tun, res, hostLookups)
		// Basic credentials that decode to alice:s3cretPW start so, in
		// any encoding the proxy accepts.
		authPrefix := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
		if m.auth && !bytes.Contains(in, []byte(authPrefix)) && (len(dialed) > 0 || res.numQueries() > 0) {
			t.Fatalf("without credentials: dialed %v, resolved %q", dialed, res.queries)
		}
		for _, h := range upstream.all() {
			for _, name := range []string{"Proxy-Authorization", "Proxy-Connection"} {
				if h.Get(name) != "" {
					t.Fatalf("%s passed upstream: %v", name, h)
				}
			}
		}
		logged := logs.String()
		if strings.Contains(logged, "panic") && !bytes.Contains(in, []byte("panic")) {
			t.Fatalf("a handler panicked:\n%s", logged)
		}
		if strings.Contains(logged, "s3cretPW") && !bytes.Contains(in, []byte("s3cretPW")) {
			t.Fatalf("the password is logged:\n%s", logged)
		}
		checkHTTPAnswer(t, m, in, out)
	})
}

// checkHTTPAnswer checks that out, what the proxy wrote to a client that
// sent in, is nothing or starts with an HTTP response, and that no CONNECT
// was answered 200 while the gate was blocked.
func checkHTTPAnswer(t *testing.T, m fuzzMode, in, out []byte) {
	t.Helper()
	if len(out) == 0 {
		return
	}
	if !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) && !bytes.HasPrefix(out, []byte("HTTP/1.0 ")) {
		t.Fatalf("answered %q", out)
	}
	// The first request as the client meant it, for the response's
	// framing (a HEAD, a CONNECT); the server may have read it otherwise.
	req, _ := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), req)
	if err != nil {
		t.Fatalf("answered %q: %v", out, err)
	}
	if resp.StatusCode < 100 || resp.StatusCode > 599 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if !m.open && resp.StatusCode < 400 && resp.StatusCode != http.StatusContinue {
		t.Fatalf("%s while the gate is blocked", resp.Status)
	}
	const established = "200 Connection established"
	if !m.open && bytes.Contains(out, []byte(established)) && !bytes.Contains(in, []byte(established)) {
		t.Fatalf("a CONNECT established while the gate is blocked: %q", out)
	}
}

// recordedHeaders keeps the headers of every request the fake upstream
// server gets.
type recordedHeaders struct {
	mu      sync.Mutex
	headers []http.Header
}

func (r *recordedHeaders) handler(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.headers = append(r.headers, req.Header.Clone())
	r.mu.Unlock()
	io.Copy(io.Discard, req.Body)
	w.Header().Set("X-Fake-Upstream", "1")
	io.WriteString(w, "from upstream\n")
}

func (r *recordedHeaders) all() []http.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.headers)
}
