package proxy

import (
	"bufio"
	"io"
	"net"
	"sync"
	"syscall"
)

// relayBufSize is the size of the relay's buffers.
const relayBufSize = 32 << 10

// relayBufs holds the relay's buffers (*[]byte of relayBufSize), shared by
// every connection.
var relayBufs = sync.Pool{New: func() any {
	b := make([]byte, relayBufSize)
	return &b
}}

// copyPooled copies from src to dst until src's EOF (it returns nil) or an
// error, as io.Copy does, through a buffer from relayBufs. It holds the
// buffer only while data moves: once a read does not fill it, it puts it
// back and waits until src has something to read again (see waitReadable),
// so that a connection that idles costs no buffer.
func copyPooled(dst io.Writer, src io.Reader) error {
	for {
		if err := waitReadable(src); err != nil {
			return err
		}
		bp := relayBufs.Get().(*[]byte)
		err := copySome(dst, src, *bp)
		relayBufs.Put(bp)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// copySome copies through buf until a read does not fill it; it returns
// the read's or the write's error, or nil.
func copySome(dst io.Writer, src io.Reader, buf []byte) error {
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil || n < len(buf) {
			return err
		}
	}
}

// readWaiter is a connection that can wait until it has something to read
// without reading it: netstack's TCPConn through the gate, and readAhead.
type readWaiter interface {
	WaitReadable() error
}

// waitReadable waits until a Read of r would not block: it has data, EOF or
// an error. It returns at once, and the Read may block, for a reader that
// cannot tell.
func waitReadable(r io.Reader) error {
	switch c := r.(type) {
	case readWaiter:
		return c.WaitReadable()
	case syscall.Conn: // the client's socket
		return waitFD(c)
	}
	return nil
}

// WaitReadable waits for the connection the gate opened, if it can tell
// (see readWaiter).
func (c *flowConn) WaitReadable() error { return waitReadable(c.Conn) }

// readAhead reads what a client sent: first what r, a bufio.Reader over c,
// read ahead of the request it parsed, then c itself, which waitReadable
// can wait on.
type readAhead struct {
	r *bufio.Reader // nil once it is empty
	c net.Conn
}

func (ra *readAhead) Read(p []byte) (int, error) {
	if ra.r != nil && ra.r.Buffered() > 0 {
		return ra.r.Read(p)
	}
	ra.r = nil
	return ra.c.Read(p)
}

func (ra *readAhead) WaitReadable() error {
	if ra.r != nil && ra.r.Buffered() > 0 {
		return nil
	}
	return waitReadable(ra.c)
}
