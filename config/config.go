// Package config reads WireGuard configuration files, in wg-quick's format
// or in wireproxy's (https://github.com/whyvl/wireproxy), into one validated
// Config value.
//
// It owns parsing and validation only: it opens no sockets and resolves no
// names (an Endpoint's host name is kept as written and resolved by the
// backend at every connection attempt). Every error names the file, the line
// and the key, and no error or warning ever contains the value of a secret:
// a private or preshared key, a proxy password, or anything taken from an
// environment variable (but for the path of a WGConfig file that exists,
// which its own messages name).
//
// What is accepted, and what was decided where wg-quick is silent:
//
//   - Section and key names are case-insensitive, as in wg(8). A '#' starts a
//     comment. Blank lines are ignored.
//   - [Interface]: PrivateKey (required), Address (one or more, comma-separated
//     or on several lines; IPv4 and IPv6; without a prefix length an address is
//     a single host), DNS (IP addresses; a name there is a search domain, which
//     is ignored with a warning), MTU (default 1420), ListenPort (default 0,
//     any free port).
//   - [Peer] (one or more): PublicKey (required), PresharedKey, Endpoint
//     (host:port, a host name or an IP address, IPv6 in brackets), AllowedIPs,
//     PersistentKeepalive (seconds, or "off"). At least one peer must have an
//     Endpoint: warren is a client and has to know where to connect.
//   - wg-quick and wg keys that mean nothing to warren (Table, PreUp, PostUp,
//     PreDown, PostDown, SaveConfig, FwMark) are accepted with a warning.
//     Any other key is an error, as is a single-valued key given twice, a
//     second [Interface] section, or a key outside a section.
//   - Load warns when a file that its group or others can read holds a
//     secret written out.
//
// # Wireproxy
//
// A file is in wireproxy's format when, before its first section, it has
// one of wireproxy's keys (WGConfig, CheckAlive, CheckAliveInterval), or
// when it has one of wireproxy's sections ([Socks5], [http],
// [TCPClientTunnel], [TCPServerTunnel], [STDIOTunnel], [UDPProxyTunnel]),
// in any case. Any other file is read as wg-quick's, exactly as above.
// Config.Wireproxy tells which it was. A wireproxy file is read as wireproxy
// (with go-ini) reads it, and as wg-quick's otherwise:
//
//   - '#' and ';' start a comment, even after a value. A value in `backquotes`
//     or """triple quotes""" (on one line) is taken as it is, comment
//     characters included; one in "double" or 'single' quotes loses them.
//     Keys are "key = value" only (not go-ini's "key: value").
//   - A value that starts with '$' is the value of an environment variable:
//     $NAME or ${NAME}, the whole value; "$$" at the start stands for a
//     literal '$'. This applies to every key's value (wireproxy's own
//     code skips some keys); a bad name, or a variable that is not set, is an
//     error naming the variable. The variable's value is then checked as if
//     written, and a message about it names the variable, never the value.
//   - Before the first section: WGConfig names a wg-quick file that holds
//     [Interface] and [Peer]. It is relative to the wireproxy file's own
//     directory (wireproxy takes it relative to its working directory; the
//     file's directory does not change with where warren is started), or
//     absolute; no '~'. It is read as a wireproxy file's own [Interface] and
//     [Peer] are (comments, quotes, $NAME, AllowedIPs), and its errors name
//     it and its lines. WGConfig with an inline [Interface] or [Peer] is an
//     error (wireproxy silently ignores the inline ones).
//   - CheckAlive and CheckAliveInterval, before the first section or in
//     [Interface] (where wireproxy reads them), are accepted with a warning:
//     warren's own liveness monitor replaces them. Any other key before the
//     first section is an error.
//   - [Peer]: a peer without AllowedIPs gets 0.0.0.0/0 and ::/0, as in
//     wireproxy. Multi-line keys (Address on two lines) accumulate, as in
//     wg-quick (wireproxy keeps the first line only). Unknown keys in
//     [Interface] and [Peer] are errors, as in a wg-quick file (wireproxy
//     ignores them).
//   - [Socks5] and [http]: BindAddress (required), and Username and Password
//     together or not at all. [TCPClientTunnel]: BindAddress and Target.
//     [TCPServerTunnel]: ListenPort and Target. Each may appear any number
//     of times, and fills Config.Frontends. A BindAddress is host:port; the
//     host may be empty (every address), an IP address or a host name, and
//     the port is a number from 1 to 65535 (not 0: a random port no client
//     would know). A Target is host:port with a host and a port from 1 to
//     65535; an IP address in a TCPClientTunnel Target (inside the tunnel)
//     cannot have a zone. A ListenPort is from 1 to 65535. A missing
//     required key is an error at the section's header, as is any other key.
//   - [STDIOTunnel] (warren runs as a service, with no stdin to relay),
//     [UDPProxyTunnel] and unknown sections are errors naming the section.
//
// Reading a wireproxy file may read the environment and a second file:
// ParseOptions supplies both, and Parse and Load use the process's own.
package config

import (
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/crypto/curve25519"
)

// DefaultMTU is the MTU used when a config gives none (wg-quick's default for
// an IPv4-and-IPv6 tunnel over an Ethernet link).
const DefaultMTU = 1420

// Config is a validated WireGuard client configuration.
type Config struct {
	// Path is the file the config was read from, or the name given to Parse.
	Path      string
	Interface Interface
	// Peers has at least one element, and at least one peer has an Endpoint.
	Peers []Peer
	// Frontends are the listeners a wireproxy file asks for. A wg-quick
	// file has none.
	Frontends Frontends
	// Wireproxy is true when the file was in wireproxy's format.
	Wireproxy bool
	// WGConfig is the wg-quick file that a wireproxy file's WGConfig key
	// names, as read (absolute, or relative to where Path is), or "". When
	// set, Interface and Peers come from it, and Peer.Line is a line of it.
	WGConfig string
}

// Frontends are the listeners of a wireproxy file: its [Socks5], [http],
// [TCPClientTunnel] and [TCPServerTunnel] sections, each in file order.
type Frontends struct {
	SOCKS5   []ProxyListener
	HTTP     []ProxyListener
	Forwards []Forward // [TCPClientTunnel]
	Exposes  []Expose  // [TCPServerTunnel]
}

// IsZero reports whether no listener is asked for.
func (f *Frontends) IsZero() bool {
	return len(f.SOCKS5) == 0 && len(f.HTTP) == 0 && len(f.Forwards) == 0 && len(f.Exposes) == 0
}

// ProxyListener is a [Socks5] or [http] section.
type ProxyListener struct {
	// BindAddress is host:port as written (the host may be empty or a
	// name, as net.Listen accepts).
	BindAddress string
	// Username and Password are both set, or both empty (no
	// authentication).
	Username string
	Password Password
	// Line is the line of the section header.
	Line int
}

// Forward is a [TCPClientTunnel]: a local TCP listener whose connections go
// to Target inside the tunnel.
type Forward struct {
	BindAddress string // host:port, as net.Listen accepts
	// Target is host:port; the host may be a name, resolved through the
	// tunnel.
	Target string
	Line   int
}

// Expose is a [TCPServerTunnel]: a TCP listener on the tunnel's addresses
// whose connections go to Target on the local network.
type Expose struct {
	ListenPort uint16
	Target     string // host:port
	Line       int
}

// Password is a proxy password. Like a key, it never prints itself; use
// string(p) where the password itself is needed.
type Password string

func (Password) String() string       { return redacted }
func (Password) GoString() string     { return redacted }
func (Password) LogValue() slog.Value { return slog.StringValue(redacted) }

// Interface is the [Interface] section.
type Interface struct {
	PrivateKey PrivateKey
	// Addresses are the tunnel's own addresses, with their prefix lengths
	// (a single host when the file gave none). There is at least one.
	Addresses []netip.Prefix
	// DNS are the DNS servers to use inside the tunnel. It may be empty.
	DNS []netip.Addr
	// MTU is the tunnel's MTU; DefaultMTU when the file gave none.
	MTU int
	// ListenPort is the local UDP port; 0 means any free port.
	ListenPort uint16
}

// Peer is one [Peer] section.
type Peer struct {
	PublicKey PublicKey
	// PresharedKey is the zero key when the file gave none.
	PresharedKey PresharedKey
	// Endpoint is where to send the first handshake. Its zero value means the
	// peer has none.
	Endpoint Endpoint
	// AllowedIPs are masked to their prefix length.
	AllowedIPs []netip.Prefix
	// PersistentKeepalive is 0 when off.
	PersistentKeepalive time.Duration
	// Line is the line of the [Peer] header, for messages about this peer.
	Line int
}

// Endpoint is a peer's address as written: a host name or an IP address, and
// a port. Host names are resolved by the backend at every attempt.
type Endpoint struct {
	// Host is an IP address (without brackets) or a host name.
	Host string
	Port uint16
}

// IsZero reports whether the endpoint is unset.
func (e Endpoint) IsZero() bool { return e.Host == "" }

// String returns host:port, with an IPv6 address in brackets.
func (e Endpoint) String() string {
	if e.IsZero() {
		return ""
	}
	return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// Addr returns the endpoint as an address and port when its host is an IP
// address, and false when it is a host name (or unset).
func (e Endpoint) Addr() (netip.AddrPort, bool) {
	a, err := netip.ParseAddr(e.Host)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, e.Port), true
}

// KeyLen is the length of every WireGuard key.
const KeyLen = 32

// PublicKey is a Curve25519 public key. It is not secret: String shows it.
type PublicKey [KeyLen]byte

// String returns the key in base64, as wg(8) shows it.
func (k PublicKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// PrivateKey is a Curve25519 private key. Its String, GoString and
// LogValue never show it; use Bytes where the key itself is needed.
type PrivateKey [KeyLen]byte

// PresharedKey is a symmetric key mixed into the handshake. Like a
// PrivateKey, it never prints itself.
type PresharedKey [KeyLen]byte

const redacted = "(redacted)"

func (PrivateKey) String() string         { return redacted }
func (PrivateKey) GoString() string       { return redacted }
func (PrivateKey) LogValue() slog.Value   { return slog.StringValue(redacted) }
func (PresharedKey) String() string       { return redacted }
func (PresharedKey) GoString() string     { return redacted }
func (PresharedKey) LogValue() slog.Value { return slog.StringValue(redacted) }

// PublicKey derives the public key that goes with k.
func (k PrivateKey) PublicKey() PublicKey {
	var pub PublicKey
	curve25519.ScalarBaseMult((*[KeyLen]byte)(&pub), (*[KeyLen]byte)(&k))
	return pub
}

// NewPrivateKey returns a new random private key, clamped as Curve25519
// requires. It is for tests and the demo; real keys come from files.
func NewPrivateKey() (PrivateKey, error) {
	var k PrivateKey
	if _, err := rand.Read(k[:]); err != nil {
		return PrivateKey{}, err
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// IsZero reports whether no preshared key is set.
func (k PresharedKey) IsZero() bool { return k == PresharedKey{} }
