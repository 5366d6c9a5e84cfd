package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a TCP connection on loopback, closed when
// the test ends.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	a, b, err := loopbackPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// loopbackPair returns both ends of a TCP connection on loopback.
func loopbackPair() (net.Conn, net.Conn, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	b, err := l.Accept()
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// waitReadable on a socket returns when there is data, without taking it,
// and at EOF.
func TestWaitReadableSocket(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("waits on sockets only on Linux")
	}
	a, b := tcpPair(t)
	done := make(chan error, 1)
	go func() { done <- waitReadable(b) }()
	select {
	case err := <-done:
		t.Fatalf("waitReadable returned %v with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	a.Write([]byte("x"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitReadable did not return once there was data")
	}
	var got [2]byte
	if n, err := b.Read(got[:]); n != 1 || got[0] != 'x' || err != nil {
		t.Fatalf("read %q, %v after waiting: the wait took the data", got[:n], err)
	}
	a.CloseWrite()
	if err := waitReadable(b); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Read(got[:]); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
}

// A reset is not lost to the wait: peeking takes the socket's error, so
// waitReadable returns it, and the relay does not take the reset for EOF
// (a cut upload would look finished to the destination).
func TestWaitReadableSocketReset(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("waits on sockets only on Linux")
	}
	a, b := tcpPair(t)
	a.Write([]byte("x"))
	var got [1]byte
	if _, err := io.ReadFull(b, got[:]); err != nil {
		t.Fatal(err)
	}
	abort(a)
	if err := waitReadable(b); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("waitReadable after a reset: %v, want ECONNRESET", err)
	}
}

// A SOCKS5 client may send data right behind its request: go-socks5 has
// read it ahead, and the relay sends it first. Then a megabyte goes each
// way through the pooled buffers. (The fake tunnel's net.Pipe cannot
// half-close, so the relay would close both ways at the client's
// CloseWrite: the test reads the echo whole instead.)
func TestSOCKS5DataBehindRequest(t *testing.T) {
	h := newSOCKS(t)
	h.gate.Apply(connected)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := []byte{5, 1, 0, 5, 1, 0, 1, 10, 77, 0, 1, 0, 80}
	if _, err := c.Write(append(req, "early"...)); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2+10)
	if _, err := io.ReadFull(c, reply); err != nil || reply[3] != 0 {
		t.Fatalf("reply % x, %v", reply, err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "early" {
		t.Fatalf("echo %q, %v; want early", got, err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	go c.Write(data)
	echoed := make([]byte, len(data))
	if n, err := io.ReadFull(c, echoed); err != nil || !bytes.Equal(echoed, data) {
		t.Fatalf("echoed %d bytes (%v), want the %d sent", n, err, len(data))
	}
}
