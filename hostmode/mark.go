//go:build linux

package hostmode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// endpointResolver resolves the endpoints' host names in host mode. It is
// the host's resolver (the Go one: /etc/hosts, then DNS), with two
// differences. Its sockets are marked, so that the firewall lets them out
// while it blocks everything else and the routing rules keep them out of
// the tunnel (the endpoint is outside it). And it asks the servers the host
// had before warren, never warren's own: warren answers only through the
// tunnel, which cannot find its own endpoint. So with --manage-resolv-conf
// it reads the backup of the original file, and it skips a nameserver that
// is warren's DNS server; --bootstrap-dns replaces all of that.
//
// A container runtime's resolver (Docker's 127.0.0.11) forwards from inside
// the namespace with unmarked sockets, which the firewall blocks: there the
// endpoint needs an IP address, or --bootstrap-dns.
type endpointResolver struct {
	mark       uint32
	bootstrap  []netip.AddrPort // if set, the only servers asked
	resolvConf string           // else the nameservers of this file (or of warren's backup of it)
	own        netip.Addr       // warren's own DNS server (port 53), never asked; may be invalid
}

// errNoBootstrapDNS says why an endpoint's name cannot be resolved.
var errNoBootstrapDNS = errors.New("no DNS server outside the tunnel to resolve the endpoint's name with: resolv.conf names only warren's own; give --bootstrap-dns, or an IP address in Endpoint")

// LookupNetIP implements netstack.Resolver.
func (r *endpointResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	servers, err := r.servers()
	if err != nil {
		return nil, err
	}
	if len(servers) == 0 {
		return nil, errNoBootstrapDNS
	}
	d := &net.Dialer{Control: markControl(r.mark)}
	var next atomic.Uint32
	res := &net.Resolver{
		PreferGo: true, // the cgo resolver would not use our dialer
		// The Go resolver dials the servers of /etc/resolv.conf in turn;
		// each of its dials goes to the next of ours instead.
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			s := servers[int(next.Add(1)-1)%len(servers)]
			return d.DialContext(ctx, network, s.String())
		},
	}
	return res.LookupNetIP(ctx, network, host)
}

// servers returns the DNS servers to ask.
func (r *endpointResolver) servers() ([]netip.AddrPort, error) {
	if len(r.bootstrap) > 0 {
		return r.bootstrap, nil
	}
	path := r.resolvConf
	if path == "" {
		path = "/etc/resolv.conf"
	}
	rc := resolvConf{path: path}
	data, err := os.ReadFile(rc.backupPath()) // the original, while warren manages the file
	if errors.Is(err, fs.ErrNotExist) {
		data, err = os.ReadFile(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hostmode: servers to resolve the endpoint with: %w", err)
	}
	return nameservers(data, r.own), nil
}

// nameservers returns the servers of a resolv.conf, on port 53, but for
// skip.
func nameservers(data []byte, skip netip.Addr) []netip.AddrPort {
	var servers []netip.AddrPort
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || a.Unmap() == skip {
			continue
		}
		servers = append(servers, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return servers
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
