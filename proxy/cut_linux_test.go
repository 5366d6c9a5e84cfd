package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// A client that half-closes its connection while the destination stays
// open keeps the relay running; Shutdown still ends it at once, and resets
// both sides.
func TestSOCKS5ShutdownEndsHalfClosedRelay(t *testing.T) {
	h := newSOCKS(t)
	dest := h.tunnel.halfCloseDestination()
	h.gate.Apply(connected)
	rep, c := rawConnect(t, h.addr, 1, []byte{10, 77, 0, 1}, 80)
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	defer c.Close()
	io.WriteString(c, "request")
	dest.checkShutdownCuts(t, h.srv.Shutdown, c)
}

// The same for a CONNECT tunnel of the HTTP proxy.
func TestHTTPShutdownEndsHalfClosedTunnel(t *testing.T) {
	h := newHTTPProxy(t)
	dest := h.tunnel.halfCloseDestination()
	h.gate.Apply(connected)
	resp, _, c := rawConnectHTTP(t, h.addr, "10.77.0.1:443", "", "request")
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %s", resp.Status)
	}
	c.SetDeadline(time.Time{})
	dest.checkShutdownCuts(t, h.srv.Shutdown, c)
}

// The same for a TCP forward.
func TestForwardShutdownEndsHalfClosedRelay(t *testing.T) {
	h := newForward(t, "10.77.0.9:5432")
	dest := h.tunnel.halfCloseDestination()
	h.gate.Apply(connected)
	c, err := net.Dial("tcp", h.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "request")
	dest.checkShutdownCuts(t, h.fwd.Shutdown, c)
}

// A flow cut on the client's side is reset on the destination's too: an
// upload cut short must not look finished there.
func TestSOCKS5ClientResetResetsDestination(t *testing.T) {
	h := newSOCKS(t)
	h.tunnel.loopback = true
	cut := make(chan error, 1)
	h.tunnel.serve = func(_ netip.AddrPort, c net.Conn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		cut <- err
	}
	h.gate.Apply(connected)
	rep, c := rawConnect(t, h.addr, 1, []byte{10, 77, 0, 1}, 80)
	if rep != 0 {
		t.Fatalf("reply %#x", rep)
	}
	io.WriteString(c, "the start of an upload")
	abort(c)
	select {
	case err := <-cut:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the destination's read ended with %v, want a reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the destination's connection is still open")
	}
}

// halfCloseDest is a destination that reads until the client's half-close
// (and closes halfClosed), then stays open without a word until its
// connection is reset (it sends cut the socket's error, or
// os.ErrDeadlineExceeded after 10 s).
type halfCloseDest struct {
	halfClosed chan struct{}
	cut        chan error
}

// halfCloseDestination makes every connection through f a halfCloseDest's,
// over loopback TCP, which can half-close and be reset.
func (f *fakeTunnel) halfCloseDestination() *halfCloseDest {
	d := &halfCloseDest{halfClosed: make(chan struct{}), cut: make(chan error, 1)}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loopback = true
	f.serve = func(_ netip.AddrPort, c net.Conn) {
		io.Copy(io.Discard, c)
		close(d.halfClosed)
		d.cut <- waitReset(c)
	}
	return d
}

// waitReset waits until c, a TCP connection that has read its peer's FIN
// (so that every read returns EOF), is reset: its socket then has an
// error, which Linux makes EPIPE rather than ECONNRESET for a connection
// its peer had half-closed. It gives up after 10 s.
func waitReset(c net.Conn) error {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var soErr int
		cerr := rc.Control(func(fd uintptr) {
			soErr, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
		})
		if cerr != nil {
			return cerr
		}
		if err != nil {
			return err
		}
		if soErr != 0 {
			return syscall.Errno(soErr)
		}
	}
	return os.ErrDeadlineExceeded
}

// checkShutdownCuts half-closes c, the client's connection to d, and once d
// has seen it calls shutdown, checking that it returns at once, that c is
// reset and that d's connection is too.
func (d *halfCloseDest) checkShutdownCuts(t *testing.T, shutdown func(context.Context) error, c net.Conn) {
	t.Helper()
	c.(*net.TCPConn).CloseWrite()
	select {
	case <-d.halfClosed:
	case <-time.After(5 * time.Second):
		t.Fatal("the destination did not see the client's half-close")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v after %v", err, time.Since(start))
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Shutdown took %v", took)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the client's connection ended with %v, want a reset", err)
	}
	select {
	case err := <-d.cut:
		if !errors.Is(err, syscall.EPIPE) {
			t.Errorf("the destination's connection ended with %v, want a reset (EPIPE, see waitReset)", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("the destination's connection is still open")
	}
}
