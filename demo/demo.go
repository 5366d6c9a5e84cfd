// Package demo runs a WireGuard server peer inside the process: its own
// wireguard-go device over its own userspace stack, listening on loopback
// UDP, serving a small web site and DNS inside its tunnel. `warren demo`
// connects warren to it, and the end-to-end tests use it as the peer, so
// both run anywhere without root, a kernel module or a network.
//
// Inside the tunnel the server is 10.77.0.1 and fd77::1. The client it
// expects is 10.77.0.2 and fd77::2. Its DNS server (port 53, UDP and TCP)
// answers for demo.warren (A, AAAA and TXT), for big.demo.warren (TXT
// records too large for a 512-byte UDP answer, so that clients must retry
// over TCP), and NXDOMAIN for everything else (see DNSHandler). Port 7
// echoes UDP datagrams back to their sender. Its web site:
//
//	/                 a page saying which tunnel address the request came from
//	/bytes/N          N bytes of deterministic, incompressible data (see Bytes)
//	/upload           POST or PUT a body; the answer is the method, the
//	                  body's length and its SHA-256
//
// Its UDP socket is wireguard-go's default: it listens on every interface of
// the host, on a random port unless one is asked for. It accepts nothing but
// handshakes made with the client key it was started with.
package demo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/netstack"
)

// Name is the host name the demo's DNS server answers for.
const Name = "demo.warren"

// Addresses inside the demo tunnel.
var (
	ServerIPv4 = netip.MustParseAddr("10.77.0.1")
	ServerIPv6 = netip.MustParseAddr("fd77::1")
	ClientIPv4 = netip.MustParseAddr("10.77.0.2")
	ClientIPv6 = netip.MustParseAddr("fd77::2")
)

// EchoPort is the UDP port on which the server echoes datagrams.
const EchoPort = 7

// MaxBytes is the largest /bytes/N the server serves.
const MaxBytes = 1 << 32

// Options configures a Server. The zero value is usable.
type Options struct {
	// ServerKey and ClientKey are the two sides' private keys; zero keys
	// are generated.
	ServerKey, ClientKey config.PrivateKey
	// PresharedKey, if not zero, is mixed into both sides' handshakes.
	PresharedKey config.PresharedKey
	// ListenPort is the server's UDP port on the host; 0 picks a free one.
	ListenPort uint16
	// Logger gets the server's log; nil discards it.
	Logger *slog.Logger
}

// Server is a running demo server peer.
type Server struct {
	dev       *netstack.Device
	bind      *blackholeBind
	port      uint16
	clientCfg *config.Config

	http *http.Server
	dns  []*dns.Server
	echo []net.PacketConn
	wg   sync.WaitGroup // the serving goroutines

	closeOnce sync.Once
}

// Start starts a server. Close it when done.
func Start(opts Options) (_ *Server, err error) {
	var zero config.PrivateKey
	for _, k := range []*config.PrivateKey{&opts.ServerKey, &opts.ClientKey} {
		if *k == zero {
			if *k, err = config.NewPrivateKey(); err != nil {
				return nil, fmt.Errorf("demo: generate key: %v", err)
			}
		}
	}
	serverCfg := &config.Config{
		Path: "demo server",
		Interface: config.Interface{
			PrivateKey: opts.ServerKey,
			Addresses:  []netip.Prefix{netip.PrefixFrom(ServerIPv4, 32), netip.PrefixFrom(ServerIPv6, 128)},
			MTU:        config.DefaultMTU,
			ListenPort: opts.ListenPort,
		},
		Peers: []config.Peer{{
			PublicKey:    opts.ClientKey.PublicKey(),
			PresharedKey: opts.PresharedKey,
			AllowedIPs:   []netip.Prefix{netip.PrefixFrom(ClientIPv4, 32), netip.PrefixFrom(ClientIPv6, 128)},
		}},
	}
	bind := &blackholeBind{Bind: conn.NewDefaultBind()}
	dev, err := netstack.NewDevice(netstack.DeviceOptions{Config: serverCfg, Bind: bind, Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	srv := &Server{dev: dev, bind: bind}
	defer func() {
		if err != nil {
			srv.Close()
		}
	}()
	if srv.port, err = dev.ListenPort(); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	srv.clientCfg = &config.Config{
		Path: "demo",
		Interface: config.Interface{
			PrivateKey: opts.ClientKey,
			Addresses:  []netip.Prefix{netip.PrefixFrom(ClientIPv4, 32), netip.PrefixFrom(ClientIPv6, 128)},
			DNS:        []netip.Addr{ServerIPv4},
			MTU:        config.DefaultMTU,
		},
		Peers: []config.Peer{{
			PublicKey:    opts.ServerKey.PublicKey(),
			PresharedKey: opts.PresharedKey,
			Endpoint:     config.Endpoint{Host: "127.0.0.1", Port: srv.port},
			AllowedIPs:   []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
			Line:         1,
		}},
	}

	srv.http = &http.Server{Handler: Handler(), ReadHeaderTimeout: 10 * time.Second}
	if opts.Logger != nil {
		srv.http.ErrorLog = slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug)
	}
	mux := DNSHandler(Name, ServerIPv4, ServerIPv6)
	for _, ip := range []netip.Addr{ServerIPv4, ServerIPv6} {
		l, err := dev.ListenTCP(netip.AddrPortFrom(ip, 80))
		if err != nil {
			return nil, fmt.Errorf("demo: listen HTTP: %w", err)
		}
		srv.serve(func() error { return srv.http.Serve(l) })

		pc, err := dev.ListenUDP(netip.AddrPortFrom(ip, 53))
		if err != nil {
			return nil, fmt.Errorf("demo: listen DNS/UDP: %w", err)
		}
		udp := &dns.Server{PacketConn: pc, Handler: mux}
		tl, err := dev.ListenTCP(netip.AddrPortFrom(ip, 53))
		if err != nil {
			pc.Close()
			return nil, fmt.Errorf("demo: listen DNS/TCP: %w", err)
		}
		tcp := &dns.Server{Listener: tl, Handler: mux}
		srv.dns = append(srv.dns, udp, tcp)
		srv.serve(udp.ActivateAndServe)
		srv.serve(tcp.ActivateAndServe)

		echo, err := dev.ListenUDP(netip.AddrPortFrom(ip, EchoPort))
		if err != nil {
			return nil, fmt.Errorf("demo: listen UDP echo: %w", err)
		}
		srv.echo = append(srv.echo, echo)
		srv.serve(func() error { return serveEcho(echo) })
	}
	return srv, nil
}

func (s *Server) serve(f func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// ClientConfig returns a configuration with which a client connects to this
// server: the client key, the tunnel addresses, the server's DNS, and the
// server's endpoint on 127.0.0.1.
func (s *Server) ClientConfig() *config.Config {
	c := *s.clientCfg
	c.Interface.Addresses = append([]netip.Prefix(nil), c.Interface.Addresses...)
	c.Interface.DNS = append([]netip.Addr(nil), c.Interface.DNS...)
	c.Peers = append([]config.Peer(nil), c.Peers...)
	return &c
}

// Port returns the server's UDP port on the host.
func (s *Server) Port() uint16 { return s.port }

// DialTunnel opens a TCP connection from the server's side of the tunnel,
// as a host inside the tunnel would: how a test reaches a service that the
// client exposes in the tunnel.
func (s *Server) DialTunnel(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	c, err := s.dev.DialTCP(ctx, to)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Stats returns the server's view of its peer (the client).
func (s *Server) Stats() ([]netstack.PeerStats, error) { return s.dev.Stats() }

// Close stops the servers and the device and waits for their goroutines.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.http != nil {
			s.http.Close()
		}
		for _, d := range s.dns {
			d.Shutdown()
		}
		for _, e := range s.echo {
			e.Close()
		}
		s.dev.Close()
		s.wg.Wait()
	})
	return nil
}

// SetBlackhole makes the server drop every datagram it receives or would
// send, as a peer behind a dead link would, until it is called with false.
func (s *Server) SetBlackhole(on bool) { s.bind.drop.Store(on) }

// blackholeBind is a UDP transport that can be made to drop everything.
type blackholeBind struct {
	conn.Bind
	drop atomic.Bool
}

func (b *blackholeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, f := range fns {
		fns[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			for {
				n, err := f(packets, sizes, eps)
				if err != nil || n == 0 || !b.drop.Load() {
					return n, err
				}
			}
		}
	}
	return fns, actual, err
}

func (b *blackholeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.drop.Load() {
		return nil
	}
	return b.Bind.Send(bufs, ep)
}

// Handler serves the demo's web site (see the package doc).
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from %s, through warren's WireGuard tunnel.\n", Name)
		fmt.Fprintf(w, "Your request came from %s, your address inside the tunnel.\n", r.RemoteAddr)
	})
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil || n < 0 || n > MaxBytes {
			http.Error(w, "want /bytes/N with 0 <= N <= 4294967296", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, Bytes(n))
	})
	upload := func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s %d %s\n", r.Method, n, hex.EncodeToString(h.Sum(nil)))
	}
	mux.HandleFunc("POST /upload", upload)
	mux.HandleFunc("PUT /upload", upload)
	return mux
}

// Bytes returns the n bytes /bytes/n serves: a ChaCha8 stream with a fixed
// seed, so a test can compute the same bytes (and their digest) itself.
func Bytes(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{'w', 'a', 'r', 'r', 'e', 'n'}), n)
}

// serveEcho sends every datagram back to where it came from, until pc is
// closed.
func serveEcho(pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		pc.WriteTo(buf[:n], from)
	}
}

// The TXT records DNSHandler serves.
var (
	// TXT is demo.warren's one TXT record.
	TXT = "warren demo peer"
	// BigTXT are the TXT records of big.<name>: 20 strings of 100 bytes,
	// more than a 512-byte UDP answer holds.
	BigTXT = func() []string {
		s := make([]string, 20)
		for i := range s {
			s[i] = fmt.Sprintf("%02d", i) + strings.Repeat("x", 98)
		}
		return s
	}()
)

// DNSHandler answers for name (A and AAAA with v4 and v6, TXT with TXT) and
// for big.<name> (TXT with BigTXT, truncated over UDP unless the query's
// EDNS0 buffer is large enough), and NXDOMAIN, with an SOA whose minimum
// TTL is 30 s, for any other name. Positive answers have a TTL of 60 s.
func DNSHandler(name string, v4, v6 netip.Addr) dns.Handler {
	fqdn := dns.CanonicalName(name)
	big := "big." + fqdn
	return dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		m.RecursionAvailable = true
		if len(q.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			w.WriteMsg(m)
			return
		}
		question := q.Question[0]
		qname := dns.CanonicalName(question.Name)
		hdr := dns.RR_Header{Name: question.Name, Class: dns.ClassINET, Ttl: 60}
		switch {
		case qname == fqdn && question.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: v4.AsSlice()})
		case qname == fqdn && question.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: v6.AsSlice()})
		case qname == fqdn && question.Qtype == dns.TypeTXT:
			hdr.Rrtype = dns.TypeTXT
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{TXT}})
		case qname == big && question.Qtype == dns.TypeTXT:
			hdr.Rrtype = dns.TypeTXT
			for _, t := range BigTXT {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{t}})
			}
		case qname == fqdn || qname == big:
			// The name exists, with no record of this type: NODATA.
		default:
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, &dns.SOA{
				Hdr: dns.RR_Header{Name: fqdn, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 30},
				Ns:  "ns." + fqdn, Mbox: "hostmaster." + fqdn,
				Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 30,
			})
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			size := dns.MinMsgSize
			if opt := q.IsEdns0(); opt != nil {
				size = max(int(opt.UDPSize()), dns.MinMsgSize)
			}
			m.Truncate(size)
		}
		w.WriteMsg(m)
	})
}
