package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// forwardHarness runs a Forward on loopback TCP and UDP over a fake tunnel.
type forwardHarness struct {
	tunnel *fakeTunnel
	gate   *Gate
	fwd    *Forward
	tcp    string
	udp    *net.UDPAddr
}

func newForward(t *testing.T, target string, configure ...func(*Forward)) *forwardHarness {
	t.Helper()
	h := &forwardHarness{tunnel: &fakeTunnel{}}
	h.gate = NewGate(h.tunnel)
	res := &fakeResolver{names: map[string][]netip.Addr{"db.warren": {netip.MustParseAddr("10.77.0.9")}}}
	h.fwd = &Forward{Gate: h.gate, Resolver: res, Target: target}
	for _, f := range configure {
		f(h.fwd)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	h.tcp, h.udp = l.Addr().String(), pc.LocalAddr().(*net.UDPAddr)
	served := make(chan error, 2)
	go func() { served <- h.fwd.ServeTCP(l) }()
	go func() { served <- h.fwd.ServeUDP(pc) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.fwd.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for range 2 {
			if err := <-served; !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		}
		h.tunnel.close()
	})
	return h
}

func TestForwardTCP(t *testing.T) {
	h := newForward(t, "db.warren:5432")
	h.gate.Apply(connected)
	c, err := net.Dial("tcp", h.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "through the forward")
	if got := h.tunnel.lastDialed(); got != netip.MustParseAddrPort("10.77.0.9:5432") {
		t.Errorf("dialed %v, want db.warren's address 10.77.0.9:5432", got)
	}
	// The gate closes: the forwarded connection is cut.
	h.gate.Apply(connecting)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("read after the gate closed: %v, want the connection cut", err)
	}
}

func TestForwardTCPRefusedWhileBlocked(t *testing.T) {
	h := newForward(t, "10.77.0.9:5432")
	h.gate.Apply(connecting)
	begin := time.Now()
	c, err := net.Dial("tcp", h.tcp)
	if err == nil { // else reset before the dial returned
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v, want a reset", err)
	}
	t.Logf("reset after %v", time.Since(begin))
	if d := h.tunnel.lastDialed(); d.IsValid() {
		t.Errorf("dialed %v while blocked", d)
	}
}

func TestForwardUDP(t *testing.T) {
	h := newForward(t, "10.77.0.9:53", func(f *Forward) { f.UDPIdleTimeout = 300 * time.Millisecond })
	h.gate.Apply(connected)
	exchange := func(c *net.UDPConn, msg string) error {
		if _, err := c.WriteToUDP([]byte(msg), h.udp); err != nil {
			return err
		}
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:n]) != msg {
			t.Errorf("got %q, want %q", buf[:n], msg)
		}
		return nil
	}
	a, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	b, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer a.Close()
	defer b.Close()
	for _, c := range []*net.UDPConn{a, b, a} {
		if err := exchange(c, "hello from "+c.LocalAddr().String()); err != nil {
			t.Fatal(err)
		}
	}
	if n := h.gate.Flows(); n != 2 {
		t.Errorf("%d flows, want 2 (one session per client)", n)
	}
	waitFor(t, "idle sessions to end", func() bool { return h.gate.Flows() == 0 })
	if err := exchange(a, "a new session"); err != nil {
		t.Fatal(err)
	}
	// Blocked: dropped, no reply.
	h.gate.Apply(connecting)
	waitFor(t, "the session to be cut", func() bool { return h.gate.Flows() == 0 })
	if err := exchange(a, "blocked"); err == nil {
		t.Error("a datagram was forwarded while blocked")
	}
}

// fakeTunnel listens on loopback for Expose: the test connects there as if
// from inside the tunnel.
func (f *fakeTunnel) Listen(ctx context.Context, network string, port uint16) (net.Listener, error) {
	if network == "tcp6" {
		return nil, syscall.EADDRNOTAVAIL // this fake tunnel has IPv4 only
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.listening = append(f.listening, l.Addr().String())
	f.mu.Unlock()
	return l, nil
}

func (f *fakeTunnel) lastListening() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.listening) == 0 {
		return ""
	}
	return f.listening[len(f.listening)-1]
}

func TestExpose(t *testing.T) {
	// The local service: an echo server on loopback.
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var svcWG sync.WaitGroup
	defer svcWG.Wait()
	defer svc.Close()
	svcWG.Add(1)
	go func() {
		defer svcWG.Done()
		for {
			c, err := svc.Accept()
			if err != nil {
				return
			}
			svcWG.Add(1)
			go func() {
				defer svcWG.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()

	tun := &fakeTunnel{}
	gate := NewGate(tun)
	e := &Expose{Gate: gate, Port: 8080, Target: svc.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v", err)
		}
	}()

	time.Sleep(50 * time.Millisecond)
	if l := tun.lastListening(); l != "" {
		t.Fatalf("listening in the tunnel (%s) while it is down", l)
	}
	gate.Apply(connected)
	waitFor(t, "the tunnel listener", func() bool { return tun.lastListening() != "" })
	first := tun.lastListening()
	c, err := net.Dial("tcp", first)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "from inside the tunnel")

	// The tunnel goes down: connections are cut, the listener closed.
	gate.Apply(connecting)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("read after the gate closed: %v, want the connection cut", err)
	}
	waitFor(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", first)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// Up again: a new listener.
	gate.Apply(connected)
	waitFor(t, "a new tunnel listener", func() bool { return tun.lastListening() != first })
	c2, err := net.Dial("tcp", tun.lastListening())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	echo(t, c2, "again")
}
