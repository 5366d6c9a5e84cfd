package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/warren-vpn/warren/state"
)

// dialHost waits for the gate (at most its Hold), resolves host through r
// if it is a name, and dials it on network ("tcp" or "udp") through the
// gate, trying each address in turn. Nothing is resolved while the gate is
// blocked.
func dialHost(ctx context.Context, g *Gate, r Resolver, network, host string, port uint16) (net.Conn, error) {
	if err := g.Wait(ctx); err != nil {
		return nil, err
	}
	addrs, err := resolveHost(ctx, r, host)
	if err != nil {
		return nil, err
	}
	var firstErr error
	for _, a := range addrs {
		c, err := g.DialContext(ctx, network, netip.AddrPortFrom(a, port))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if errors.Is(err, state.ErrBlocked) || ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}

// resolveHost returns host's addresses: host itself if it is an IP address
// (IPv4-mapped IPv6 addresses unmapped), or what r finds for the name.
func resolveHost(ctx context.Context, r Resolver, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return nil, fmt.Errorf("proxy: an address with a zone (%s) cannot be reached through the tunnel", host)
		}
		return []netip.Addr{a.Unmap()}, nil
	}
	if r == nil {
		return nil, &net.DNSError{Err: "no resolver for names", Name: host}
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err == nil && len(addrs) == 0 {
		err = &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return addrs, err
}

// Credentials are the user name and password a client must give. The
// password never prints itself.
type Credentials struct {
	User     string
	Password string
}

// String names the user only.
func (c *Credentials) String() string { return fmt.Sprintf("user %q, password (redacted)", c.User) }

// GoString is String, so that %#v does not show the password either.
func (c *Credentials) GoString() string { return c.String() }

// Valid reports whether user and password are these credentials, in time
// that does not depend on where they differ.
func (c *Credentials) Valid(user, password string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(c.User))
	p := subtle.ConstantTimeCompare([]byte(password), []byte(c.Password))
	return u&p == 1
}
