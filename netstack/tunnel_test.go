package netstack_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/netstack"
	"github.com/warren-vpn/warren/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// event is one report from the tunnel.
type event struct {
	kind     string // "up", "down", "failed", "closed"
	endpoint string
	cause    state.Cause
	rec      bool
	err      error
}

// reporter is a state.Reporter that sends what it is told on a channel.
type reporter struct{ ch chan event }

func newReporter() *reporter { return &reporter{ch: make(chan event, 16)} }

func (r *reporter) Up(ep string)       { r.ch <- event{kind: "up", endpoint: ep} }
func (r *reporter) Down(detail string) { r.ch <- event{kind: "down"} }
func (r *reporter) Closed()            { r.ch <- event{kind: "closed"} }
func (r *reporter) Failed(c state.Cause, rec bool, err error) {
	r.ch <- event{kind: "failed", cause: c, rec: rec, err: err}
}

func (r *reporter) next(t *testing.T, within time.Duration) event {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-time.After(within):
		t.Fatalf("no report within %v", within)
		return event{}
	}
}

// openFDs counts this process's open file descriptors, after making sure
// the runtime's network poller (which holds two for the life of the process)
// exists.
func openFDs(t *testing.T) int {
	t.Helper()
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// checkFDs fails the test if more than want file descriptors stay open.
// wireguard-go closes its route listener's socket from a goroutine of its
// own after Close returns, so this waits a little for that.
func checkFDs(t *testing.T, want int) {
	t.Helper()
	var got int
	for range 100 {
		if got = openFDs(t); got <= want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		t.Logf("fd %s -> %s", e.Name(), l)
	}
	t.Errorf("%d file descriptors open after Close, %d before", got, want)
}

func startDemo(t *testing.T) *demo.Server {
	t.Helper()
	s, err := demo.Start(demo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// upTunnel starts a demo peer and a tunnel to it, waits until the tunnel
// is up, and closes both when the test ends.
func upTunnel(t *testing.T) (*demo.Server, *netstack.Tunnel, *reporter) {
	t.Helper()
	srv := startDemo(t)
	tun := netstack.NewTunnel(netstack.TunnelOptions{})
	t.Cleanup(func() { tun.Close() })
	r := newReporter()
	tun.Start(attempt(srv.ClientConfig(), 5*time.Second), r)
	if e := r.next(t, 10*time.Second); e.kind != "up" {
		t.Fatalf("got %+v, want up", e)
	}
	return srv, tun, r
}

func attempt(cfg *config.Config, d time.Duration) state.Attempt {
	return state.Attempt{Config: cfg, Deadline: time.Now().Add(d)}
}

// httpGet fetches path from the demo server through the tunnel.
func httpGet(t *testing.T, tun *netstack.Tunnel, path string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return tun.DialContext(ctx, network, netip.AddrPortFrom(demo.ServerIPv4, 80))
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + demo.Name + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTunnelConnectsDialsAndStops(t *testing.T) {
	fds := openFDs(t)
	srv := startDemo(t)
	tun := netstack.NewTunnel(netstack.TunnelOptions{})
	if _, err := tun.DialContext(context.Background(), "tcp", netip.AddrPortFrom(demo.ServerIPv4, 80)); !errors.Is(err, netstack.ErrNotConnected) {
		t.Fatalf("dial before Up: %v", err)
	}
	if st := tun.Stats(); st != (netstack.Stats{}) {
		t.Errorf("Stats before Up: %+v, want zero", st)
	}
	r := newReporter()
	tun.Start(attempt(srv.ClientConfig(), 5*time.Second), r)
	e := r.next(t, 10*time.Second)
	if e.kind != "up" {
		t.Fatalf("got %+v, want up", e)
	}
	if want := fmt.Sprintf("127.0.0.1:%d", srv.Port()); e.endpoint != want {
		t.Errorf("endpoint %q, want %q", e.endpoint, want)
	}
	page := httpGet(t, tun, "/")
	if !strings.Contains(page, demo.ClientIPv4.String()) {
		t.Errorf("page does not show the tunnel address: %q", page)
	}
	st := tun.Stats()
	if age := time.Since(st.LastHandshake); st.LastHandshake.IsZero() || age < 0 || age > 10*time.Second {
		t.Errorf("Stats: last handshake %v", st.LastHandshake)
	}
	if st.RxBytes < uint64(len(page)) || st.TxBytes == 0 {
		t.Errorf("Stats: received %d bytes (the page alone is %d), sent %d", st.RxBytes, len(page), st.TxBytes)
	}

	// Stop closes the device: dialing fails, Closed is reported.
	stop := newReporter()
	tun.Stop(stop)
	if e := stop.next(t, 5*time.Second); e.kind != "closed" {
		t.Fatalf("got %+v, want closed", e)
	}
	if _, err := tun.DialContext(context.Background(), "tcp", netip.AddrPortFrom(demo.ServerIPv4, 80)); !errors.Is(err, netstack.ErrNotConnected) {
		t.Fatalf("dial after Stop: %v", err)
	}
	if st := tun.Stats(); st != (netstack.Stats{}) {
		t.Errorf("Stats after Stop: %+v, want zero", st)
	}
	tun.Close()
	srv.Close()
	// Nothing is left: goroutines are checked by TestMain, sockets here.
	checkFDs(t, fds)
}

func TestTunnelHandshakeTimeout(t *testing.T) {
	srv := startDemo(t)
	cfg := srv.ClientConfig()
	srv.Close() // nothing answers at the endpoint now
	tun := netstack.NewTunnel(netstack.TunnelOptions{})
	defer tun.Close()
	r := newReporter()
	begin := time.Now()
	tun.Start(attempt(cfg, 300*time.Millisecond), r)
	e := r.next(t, 5*time.Second)
	if e.kind != "failed" || e.cause != state.CauseHandshakeTimeout || !e.rec {
		t.Fatalf("got %+v, want a recoverable handshake-timeout", e)
	}
	if d := time.Since(begin); d < 300*time.Millisecond {
		t.Errorf("failed after %v, before the deadline", d)
	}
}

// A peer that completes the handshake but drops what we send (here: our
// tunnel address is not among the server's AllowedIPs for us) is not
// verified.
func TestTunnelVerificationTimeout(t *testing.T) {
	srv := startDemo(t)
	cfg := srv.ClientConfig()
	cfg.Interface.Addresses = []netip.Prefix{netip.MustParsePrefix("10.77.0.99/32")}
	tun := netstack.NewTunnel(netstack.TunnelOptions{})
	defer tun.Close()
	r := newReporter()
	tun.Start(attempt(cfg, 1500*time.Millisecond), r)
	e := r.next(t, 5*time.Second)
	if e.kind != "failed" || e.cause != state.CauseVerificationTimeout || !e.rec {
		t.Fatalf("got %+v, want a recoverable verification-timeout", e)
	}
}

// countingResolver resolves every name to the address it holds now.
type countingResolver struct {
	mu    sync.Mutex
	addr  netip.Addr
	calls int
}

func (c *countingResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if !c.addr.IsValid() {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return []netip.Addr{c.addr}, nil
}

func TestTunnelResolvesEndpointAtEveryAttempt(t *testing.T) {
	srv := startDemo(t)
	cfg := srv.ClientConfig()
	cfg.Peers[0].Endpoint.Host = "peer.example"
	res := &countingResolver{}
	tun := netstack.NewTunnel(netstack.TunnelOptions{Resolver: res})
	defer tun.Close()

	r := newReporter()
	tun.Start(attempt(cfg, 2*time.Second), r)
	e := r.next(t, 5*time.Second)
	if e.kind != "failed" || e.cause != state.CauseEndpointResolution || !e.rec {
		t.Fatalf("got %+v, want a recoverable endpoint-resolution", e)
	}
	if !strings.Contains(e.err.Error(), "peer.example") {
		t.Errorf("error does not name the endpoint: %v", e.err)
	}

	// The name now resolves: the next attempt looks it up again and connects.
	res.mu.Lock()
	res.addr = netip.MustParseAddr("127.0.0.1")
	res.mu.Unlock()
	r = newReporter()
	tun.Start(attempt(cfg, 5*time.Second), r)
	e = r.next(t, 10*time.Second)
	if e.kind != "up" {
		t.Fatalf("got %+v, want up", e)
	}
	if want := fmt.Sprintf("peer.example:%d (127.0.0.1:%d)", srv.Port(), srv.Port()); e.endpoint != want {
		t.Errorf("endpoint %q, want %q", e.endpoint, want)
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.calls != 2 {
		t.Errorf("resolved %d times in 2 attempts", res.calls)
	}
}

// A Start replaces the run before it: the old device is closed first.
func TestTunnelStartReplacesPreviousRun(t *testing.T) {
	srv := startDemo(t)
	tun := netstack.NewTunnel(netstack.TunnelOptions{})
	defer tun.Close()
	for i := 0; i < 3; i++ {
		r := newReporter()
		tun.Start(attempt(srv.ClientConfig(), 5*time.Second), r)
		if e := r.next(t, 10*time.Second); e.kind != "up" {
			t.Fatalf("attempt %d: %+v", i, e)
		}
	}
	if page := httpGet(t, tun, "/"); !strings.Contains(page, "Hello") {
		t.Fatalf("page %q", page)
	}
}

// Bulk transfers both ways, over IPv4 and IPv6, arrive whole: the segments
// that the stacks cut and merge (offload.go) carry the right bytes.
func TestTunnelBulkTransfer(t *testing.T) {
	_, tun, _ := upTunnel(t)
	const size = 4 << 20
	h := sha256.New()
	io.Copy(h, demo.Bytes(size))
	want := hex.EncodeToString(h.Sum(nil))
	for _, server := range []netip.Addr{demo.ServerIPv4, demo.ServerIPv6} {
		t.Run(server.String(), func(t *testing.T) {
			client := &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return tun.DialContext(ctx, network, netip.AddrPortFrom(server, 80))
				},
			}}
			defer client.CloseIdleConnections()
			resp, err := client.Get(fmt.Sprintf("http://%s/bytes/%d", demo.Name, size))
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			resp.Body.Close()
			if got := hex.EncodeToString(h.Sum(nil)); err != nil || n != size || got != want {
				t.Errorf("download: %d bytes, %v, digest %s; want %d bytes, digest %s", n, err, got, size, want)
			}
			resp, err = client.Post("http://"+demo.Name+"/upload", "application/octet-stream", demo.Bytes(size))
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if wantAnswer := fmt.Sprintf("POST %d %s\n", size, want); err != nil || string(b) != wantAnswer {
				t.Errorf("upload: the server got %q (%v), want %q", b, err, wantAnswer)
			}
		})
	}
}

// A connection to the tunnel's own address stays inside the stack, whose
// large segments (offload.go) then never reach wireguard-go: it carries
// bulk data whole too.
func TestTunnelLocalBulkTransfer(t *testing.T) {
	_, tun, _ := upTunnel(t)
	l, err := tun.Listen(context.Background(), "tcp4", 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const size = 4 << 20
	got := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := tun.DialContext(context.Background(), "tcp", netip.AddrPortFrom(demo.ClientIPv4, 8080))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := io.ReadAll(demo.Bytes(size))
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case b := <-got:
		if !bytes.Equal(b, want) {
			t.Errorf("received %d bytes, not the %d sent", len(b), len(want))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing received")
	}
}

// WaitReadable returns once there is something to read, without taking
// it, and when the connection is closed under it.
func TestTCPConnWaitReadable(t *testing.T) {
	_, tun, _ := upTunnel(t)
	dial := func() *netstack.TCPConn {
		c, err := tun.DialContext(context.Background(), "tcp", netip.AddrPortFrom(demo.ServerIPv4, 80))
		if err != nil {
			t.Fatal(err)
		}
		return c.(*netstack.TCPConn)
	}
	wait := func(c *netstack.TCPConn) chan error {
		done := make(chan error, 1)
		go func() { done <- c.WaitReadable() }()
		return done
	}

	c := dial()
	defer c.Close()
	done := wait(c)
	select {
	case err := <-done:
		t.Fatalf("WaitReadable returned %v with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", demo.Name)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReadable did not return once the answer came")
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "HTTP" {
		t.Errorf("read %q (%v) after WaitReadable, want the answer's start", b, err)
	}

	idle := dial()
	done = wait(idle)
	idle.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReadable did not return when the connection was closed")
	}
}
