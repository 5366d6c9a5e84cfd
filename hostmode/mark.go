//go:build linux

package hostmode

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// markedResolver is the host's resolver with its sockets marked, so that
// the firewall lets warren resolve the endpoint's host name while it
// blocks everything else, and the routing rules send the queries outside
// the tunnel (the endpoint is outside it).
func markedResolver(mark uint32) *net.Resolver {
	d := &net.Dialer{Control: markControl(mark)}
	return &net.Resolver{
		PreferGo: true, // the cgo resolver would not use our dialer
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		},
	}
}

// markControl sets SO_MARK on a socket before it is used.
func markControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		})
		if err != nil {
			return err
		}
		return serr
	}
}
