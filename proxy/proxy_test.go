package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	xproxy "golang.org/x/net/proxy"

	"github.com/warren-vpn/warren/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	connected  = state.Snapshot{State: state.Connected}
	connecting = state.Snapshot{State: state.Connecting, Attempt: 2, Cause: state.CauseHandshakeTimeout}
)

// fakeTunnel is a Dialer that "dials" in memory: each connection is one end
// of a net.Pipe whose other end is served by serve. It never touches a
// network.
type fakeTunnel struct {
	mu     sync.Mutex
	dialed []netip.AddrPort
	err    error                               // returned by every dial, if set
	block  bool                                // dials wait for ctx to end
	serve  func(to netip.AddrPort, c net.Conn) // default: echo
	// loopback makes dials return a loopback TCP connection rather than a
	// net.Pipe: one that can half-close and be reset, as the tunnel's can.
	loopback bool
	wg       sync.WaitGroup
	conns    []net.Conn

	packetConns []*memPacketConn // see udp_test.go
	sent        []string         // datagrams written to packetConns: "to data"
	listening   []string         // addresses of Listen's listeners (forward_test.go)
}

func (f *fakeTunnel) DialContext(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	f.mu.Lock()
	f.dialed = append(f.dialed, to)
	err, block, serve, loopback := f.err, f.block, f.serve, f.loopback
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	if serve == nil {
		serve = func(_ netip.AddrPort, c net.Conn) { io.Copy(c, c) }
	}
	var a, b net.Conn
	if loopback {
		if a, b, err = loopbackPair(); err != nil {
			return nil, err
		}
	} else {
		a, b = net.Pipe()
	}
	f.mu.Lock()
	f.conns = append(f.conns, b)
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer b.Close()
		serve(to, b)
	}()
	return a, nil
}

func (f *fakeTunnel) close() {
	f.mu.Lock()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *fakeTunnel) lastDialed() netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.dialed) == 0 {
		return netip.AddrPort{}
	}
	return f.dialed[len(f.dialed)-1]
}

// fakeResolver answers from a table and counts its queries.
type fakeResolver struct {
	mu      sync.Mutex
	names   map[string][]netip.Addr
	queries []string
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queries = append(r.queries, host)
	if a, ok := r.names[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *fakeResolver) numQueries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queries)
}

type socksHarness struct {
	t      *testing.T
	tunnel *fakeTunnel
	gate   *Gate
	res    *fakeResolver
	srv    *SOCKS5
	addr   string
}

// newSOCKS starts a SOCKS5 server on loopback over a fake tunnel. configure,
// if given, adjusts the server before it starts serving.
func newSOCKS(t *testing.T, configure ...func(*SOCKS5)) *socksHarness {
	t.Helper()
	h := &socksHarness{t: t, tunnel: &fakeTunnel{}}
	h.gate = NewGate(h.tunnel)
	h.res = &fakeResolver{names: map[string][]netip.Addr{
		"demo.warren": {netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd77::1")},
	}}
	h.srv = &SOCKS5{Gate: h.gate, Resolver: h.res}
	for _, f := range configure {
		f(h.srv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		h.tunnel.close()
	})
	return h
}

// rawConnect speaks SOCKS5 by hand and returns the reply code and, on
// success, the open connection.
func rawConnect(t *testing.T, proxyAddr string, atyp byte, addr []byte, port uint16) (byte, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := []byte{5, 1, 0, 5, 1, 0, atyp}
	if atyp == 3 {
		req = append(req, byte(len(addr)))
	}
	req = append(req, addr...)
	req = append(req, byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var method [2]byte
	if _, err := io.ReadFull(c, method[:]); err != nil || method != [2]byte{5, 0} {
		t.Fatalf("method reply %v, %v", method, err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	// Skip the bound address.
	skip := map[byte]int{1: 4 + 2, 4: 16 + 2}[hdr[3]]
	if _, err := io.ReadFull(c, make([]byte, skip)); err != nil {
		t.Fatalf("read bound address: %v", err)
	}
	c.SetDeadline(time.Time{})
	if hdr[1] != 0 {
		c.Close()
		return hdr[1], nil
	}
	return hdr[1], c
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func TestSOCKS5ConnectThroughOpenGate(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	tests := []struct {
		name string
		atyp byte
		addr []byte
		want netip.AddrPort
	}{
		{"IPv4", 1, []byte{10, 77, 0, 1}, netip.MustParseAddrPort("10.77.0.1:80")},
		{"IPv6", 4, netip.MustParseAddr("fd77::1").AsSlice(), netip.MustParseAddrPort("[fd77::1]:80")},
		{"name", 3, []byte("demo.warren"), netip.MustParseAddrPort("10.77.0.1:80")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, c := rawConnect(t, h.addr, tt.atyp, tt.addr, 80)
			if rep != 0 {
				t.Fatalf("reply %#x", rep)
			}
			defer c.Close()
			echo(t, c, "hello through the tunnel")
			if got := h.tunnel.lastDialed(); got != tt.want {
				t.Errorf("tunnel dialed %v, want %v", got, tt.want)
			}
		})
	}
}

// The same through a real client library.
func TestSOCKS5WithXNetProxy(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	d, err := xproxy.SOCKS5("tcp", h.addr, nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial("tcp", "demo.warren:443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "x/net/proxy")
	if got := h.tunnel.lastDialed(); got != netip.MustParseAddrPort("10.77.0.1:443") {
		t.Errorf("tunnel dialed %v", got)
	}
	if got := h.res.numQueries(); got != 1 {
		t.Errorf("%d queries to the tunnel resolver, want 1", got)
	}
}

func TestSOCKS5RefusesWhileBlocked(t *testing.T) {
	for _, s := range []state.Snapshot{
		{State: state.Disconnected},
		connecting,
		{State: state.Disconnecting, After: state.AfterReconnect},
		{State: state.Error, Cause: state.CauseTunnelDevice},
	} {
		t.Run(s.State.String(), func(t *testing.T) {
			h := newSOCKS(t)
			h.gate.Apply(s)
			for _, tc := range []struct {
				atyp byte
				addr []byte
			}{{1, []byte{10, 77, 0, 1}}, {3, []byte("demo.warren")}} {
				rep, _ := rawConnect(t, h.addr, tc.atyp, tc.addr, 80)
				if rep != 0x02 {
					t.Fatalf("reply %#x, want 0x02", rep)
				}
			}
			// Nothing was looked up or dialed.
			if n := h.res.numQueries(); n != 0 {
				t.Errorf("%d name lookups while blocked", n)
			}
			if d := h.tunnel.lastDialed(); d.IsValid() {
				t.Errorf("dialed %v while blocked", d)
			}
		})
	}
}

func TestSOCKS5ReplyCodes(t *testing.T) {
	tests := []struct {
		name    string
		dialErr error
		atyp    byte
		addr    []byte
		want    byte
	}{
		{"refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, 1, []byte{10, 0, 0, 1}, 0x05},
		{"network unreachable", &net.OpError{Op: "dial", Err: syscall.ENETUNREACH}, 1, []byte{10, 0, 0, 1}, 0x03},
		{"host unreachable", &net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, 1, []byte{10, 0, 0, 1}, 0x04},
		{"no such host", nil, 3, []byte("nowhere.example"), 0x04},
		{"other", errors.New("something odd"), 1, []byte{10, 0, 0, 1}, 0x01},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newSOCKS(t)
			h.gate.Apply(connected)
			h.tunnel.err = tt.dialErr
			if rep, _ := rawConnect(t, h.addr, tt.atyp, tt.addr, 80); rep != tt.want {
				t.Fatalf("reply %#x, want %#x", rep, tt.want)
			}
		})
	}
}

func TestSOCKS5BindNotSupported(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	for _, cmd := range []byte{2} {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{5, 1, 0, 5, cmd, 0, 1, 127, 0, 0, 1, 0, 80})
		reply := make([]byte, 2+4)
		if _, err := io.ReadFull(c, reply); err != nil {
			t.Fatal(err)
		}
		if reply[3] != 0x07 {
			t.Errorf("command %d: reply %#x, want 0x07", cmd, reply[3])
		}
		c.Close()
	}
	if d := h.tunnel.lastDialed(); d.IsValid() {
		t.Errorf("dialed %v", d)
	}
}

// A client that sends garbage loses its connection; the server goes on
// serving everyone else.
func TestSOCKS5Garbage(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	for _, garbage := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", // SOCKS4
		"\x05\x01\x00\x05\x01\x00\x09\x01\x02", // unknown address type
		"\x05\xff",                             // method count larger than what follows, then EOF
	} {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte(garbage))
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%q: connection not closed cleanly: %v", garbage, err)
		}
		c.Close()
	}
	rep, c := rawConnect(t, h.addr, 1, []byte{10, 77, 0, 1}, 80)
	if rep != 0 {
		t.Fatalf("after garbage, reply %#x", rep)
	}
	echo(t, c, "still serving")
	c.Close()
}

// A client that never finishes its request is disconnected after
// HandshakeTimeout.
func TestSOCKS5HandshakeTimeout(t *testing.T) {
	h := newSOCKS(t, func(s *SOCKS5) { s.HandshakeTimeout = 100 * time.Millisecond })
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{5, 1}) // and nothing more
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("not disconnected: %v", err)
	}
}

// Leaving Connected cuts live flows: the client sees its connection reset
// rather than hang or end cleanly.
func TestSOCKS5FlowsCutWhenGateCloses(t *testing.T) {
	h := newSOCKS(t)
	h.tunnel.serve = func(_ netip.AddrPort, c net.Conn) { // an endless download
		buf := make([]byte, 1024)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
	h.gate.Apply(connected)
	rep, c := rawConnect(t, h.addr, 1, []byte{10, 77, 0, 1}, 80)
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := io.ReadFull(r, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if n := h.gate.Flows(); n != 2 {
		t.Errorf("%d flows registered, want 2 (client and tunnel side)", n)
	}
	h.gate.Apply(connecting)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, r)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("download ended with %v, want a reset", err)
	}
	if n := h.gate.Flows(); n != 0 {
		t.Errorf("%d flows left", n)
	}
}

func TestGateBlockedError(t *testing.T) {
	g := NewGate(&fakeTunnel{})
	_, err := g.DialContext(context.Background(), "tcp", netip.MustParseAddrPort("10.0.0.1:80"))
	var be *state.BlockedError
	if !errors.As(err, &be) || be.State != state.Disconnected {
		t.Fatalf("new gate: %v", err)
	}
	g.Apply(connecting)
	_, err = g.DialContext(context.Background(), "tcp", netip.MustParseAddrPort("10.0.0.1:80"))
	if !errors.As(err, &be) || be.State != state.Connecting || be.Cause != state.CauseHandshakeTimeout {
		t.Fatalf("connecting: %v", err)
	}
	if !errors.Is(err, state.ErrBlocked) {
		t.Fatalf("%v is not ErrBlocked", err)
	}
}

// A dial in progress when the gate closes is cancelled and refused.
func TestGateCancelsDialsInProgress(t *testing.T) {
	ft := &fakeTunnel{block: true}
	g := NewGate(ft)
	g.Apply(connected)
	errc := make(chan error, 1)
	go func() {
		_, err := g.DialContext(context.Background(), "tcp", netip.MustParseAddrPort("10.0.0.1:80"))
		errc <- err
	}()
	for !ft.lastDialed().IsValid() {
		time.Sleep(time.Millisecond)
	}
	g.Apply(connecting)
	select {
	case err := <-errc:
		if !errors.Is(err, state.ErrBlocked) {
			t.Fatalf("dial ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dial still running after the gate closed")
	}
}

// A flow opened before the gate closed and opened again must not register
// under the new opening.
func TestGateRefusesFlowFromEarlierOpening(t *testing.T) {
	g := NewGate(&fakeTunnel{})
	g.Apply(connected)
	p := g.policy.Load()
	g.Apply(connecting)
	g.Apply(connected)
	if err := g.register(p, &flow{abort: func() {}}); !errors.Is(err, state.ErrBlocked) {
		t.Fatalf("register = %v", err)
	}
	if g.Flows() != 0 {
		t.Fatal("flow registered")
	}
}

// Staying Connected (a snapshot that changes only, say, Lockdown) keeps flows.
func TestGateKeepsFlowsWhileConnected(t *testing.T) {
	ft := &fakeTunnel{}
	defer ft.close()
	g := NewGate(ft)
	g.Apply(connected)
	c, err := g.DialContext(context.Background(), "tcp", netip.MustParseAddrPort("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g.Apply(state.Snapshot{State: state.Connected, Lockdown: true})
	echo(t, c, "still here")
	c.Close()
	if g.Flows() != 0 {
		t.Fatal("closing a flow did not unregister it")
	}
}

func TestReplyCodeNames(t *testing.T) {
	// Guard the mapping the README documents.
	got := []string{}
	for _, err := range []error{&state.BlockedError{}, syscall.ECONNREFUSED, syscall.ENETUNREACH, syscall.EHOSTUNREACH} {
		got = append(got, string('0'+rune(replyCode(err))))
	}
	sort.Strings(got)
	if strings.Join(got, "") != "2345" {
		t.Fatalf("reply codes %v", got)
	}
}

func TestGateHold(t *testing.T) {
	disconnected := state.Snapshot{State: state.Disconnected}
	errorState := state.Snapshot{State: state.Error, Cause: state.CauseTunnelDevice}
	reconnecting := state.Snapshot{State: state.Disconnecting, After: state.AfterReconnect}
	tests := []struct {
		name     string
		start    state.Snapshot
		then     []state.Snapshot // applied one after another while a flow waits
		wantOpen bool
	}{
		{"connecting then connected", connecting, []state.Snapshot{connected}, true},
		{"reconnecting then connecting then connected", reconnecting, []state.Snapshot{connecting, connected}, true},
		{"connecting then error", connecting, []state.Snapshot{errorState}, false},
		{"connecting then disconnected", connecting, []state.Snapshot{{State: state.Disconnecting}, disconnected}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewGate(&fakeTunnel{})
			g.Hold = time.Minute
			g.Apply(tt.start)
			errc := make(chan error, 1)
			go func() { errc <- g.Wait(context.Background()) }()
			for _, s := range tt.then {
				time.Sleep(20 * time.Millisecond)
				g.Apply(s)
			}
			select {
			case err := <-errc:
				if (err == nil) != tt.wantOpen {
					t.Fatalf("Wait = %v, want open=%v", err, tt.wantOpen)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Wait still waiting, with a minute's hold, after the state settled")
			}
		})
	}
}

// Hold never applies in Disconnected or Error: the refusal is immediate.
func TestGateHoldNotInDisconnectedOrError(t *testing.T) {
	for _, s := range []state.Snapshot{{State: state.Disconnected}, {State: state.Error}, {State: state.Disconnecting, After: state.AfterNothing}} {
		g := NewGate(&fakeTunnel{})
		g.Hold = time.Hour
		g.Apply(s)
		done := make(chan error, 1)
		go func() { done <- g.Wait(context.Background()) }()
		select {
		case err := <-done:
			if !errors.Is(err, state.ErrBlocked) {
				t.Fatalf("%v: Wait = %v", s, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%v: a flow is held", s)
		}
	}
}

// A held flow that the tunnel does not open for is refused when Hold ends,
// not before.
func TestGateHoldExpires(t *testing.T) {
	g := NewGate(&fakeTunnel{})
	g.Hold = 100 * time.Millisecond
	g.Apply(connecting)
	begin := time.Now()
	err := g.Wait(context.Background())
	if !errors.Is(err, state.ErrBlocked) {
		t.Fatalf("Wait = %v", err)
	}
	if d := time.Since(begin); d < g.Hold {
		t.Fatalf("refused after %v, before the hold of %v", d, g.Hold)
	}
	// Attempts moving on (Connecting(n) -> Connecting(n+1)) keep a flow held.
	g.Hold = time.Minute
	errc := make(chan error, 1)
	go func() { errc <- g.Wait(context.Background()) }()
	g.Apply(state.Snapshot{State: state.Connecting, Attempt: 3})
	select {
	case err := <-errc:
		t.Fatalf("Wait returned %v on a new attempt", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.Apply(connected)
	if err := <-errc; err != nil {
		t.Fatalf("Wait = %v after Connected", err)
	}
}

// A SOCKS5 CONNECT made while connecting waits for the tunnel, with Hold.
func TestSOCKS5Hold(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Hold = time.Minute
	h.gate.Apply(connecting)
	go func() {
		time.Sleep(50 * time.Millisecond)
		h.gate.Apply(connected)
	}()
	rep, c := rawConnect(t, h.addr, 3, []byte("demo.warren"), 80)
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	echo(t, c, "held, then through")
	c.Close()
}

// flowLog records what a gate's Observe learns.
type flowLog struct {
	mu   sync.Mutex
	seen []string // "frontend outcome"
}

func (l *flowLog) observe(frontend, outcome string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, frontend+" "+outcome)
}

func (l *flowLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.seen
	l.seen = nil
	return s
}

// Every flow a front-end tries is reported once, with why it was refused.
func TestFlowsObserved(t *testing.T) {
	var log flowLog
	h := newSOCKS(t, func(s *SOCKS5) { s.Gate.Observe = log.observe })
	want := func(what string, wantSeen ...string) {
		t.Helper()
		var got []string
		for deadline := time.Now().Add(5 * time.Second); len(got) < len(wantSeen) && time.Now().Before(deadline); {
			got = append(got, log.take()...)
			time.Sleep(time.Millisecond)
		}
		if !slices.Equal(got, wantSeen) {
			t.Errorf("%s: observed %q, want %q", what, got, wantSeen)
		}
	}
	rawConnect(t, h.addr, 1, []byte{10, 77, 0, 1}, 80)
	want("while blocked", "socks5 blocked")
	h.gate.Apply(connected)
	rep, c := rawConnect(t, h.addr, 3, []byte("demo.warren"), 80)
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	c.Close()
	want("connected", "socks5 accepted")
	rawConnect(t, h.addr, 3, []byte("nowhere.example"), 80)
	want("unknown name", "socks5 resolve")
	h.tunnel.mu.Lock()
	h.tunnel.err = &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	h.tunnel.mu.Unlock()
	rawConnect(t, h.addr, 1, []byte{10, 77, 0, 1}, 80)
	want("refused", "socks5 dial")
}

func TestFlowOutcome(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, "accepted"},
		{connecting.Blocked(), "blocked"},
		{errAuth, "auth"},
		{&net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, "resolve"},
		{context.DeadlineExceeded, "timeout"},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, "dial"},
		{ErrNotAllowed, "not-allowed"},
		{&LimitError{Limit: 4096}, "limit"},
		{&LimitError{Limit: 512, PerClient: true}, "client-limit"},
	} {
		if got := FlowOutcome(tt.err); got != tt.want {
			t.Errorf("FlowOutcome(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
