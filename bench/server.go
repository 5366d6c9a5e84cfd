package main

// The server helper: this binary with the role "server", in the server
// namespace, listening on the server's tunnel address.

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/miekg/dns"
)

// The server's ports inside the tunnel, and the name its DNS server answers.
const (
	httpPort   = 80
	sinkPort   = 9 // the discard port: accepts connections and reads until EOF
	dnsPort    = 53
	serverName = "files.warren-bench"
	dnsTTL     = 60 // seconds
)

// contentSeed is the seed of the files' bytes.
var contentSeed = [32]byte([]byte("warren-bench fixed file content!"))

// makeContent returns the first n bytes of a ChaCha8 stream with a fixed
// seed: incompressible, and the same in every process. The file of size k
// is its first k bytes.
func makeContent(n int64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8(contentSeed).Read(b)
	return b
}

// serverMain serves, on -addr (an address of the server's tunnel):
//
//	HTTP :80  GET /bytes/N   the file of N bytes (N up to -max)
//	          POST /upload   reads the body; answers "N SHA256HEX\n"
//	TCP  :9   accepts and reads until EOF (the scale phase's idle connections)
//	DNS  :53  UDP and TCP: A of files.warren-bench is -addr; it has no
//	          other record; any other name is NXDOMAIN
//
// It prints "ready" once listening, and serves until its stdin is closed
// (the benchmark ended) or it is killed.
func serverMain(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	addrFlag := fs.String("addr", "", "the tunnel address to listen on")
	maxSize := fs.Int64("max", 0, "the largest file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, err := netip.ParseAddr(*addrFlag)
	if err != nil || !addr.Is4() {
		return fmt.Errorf("-addr %q: want an IPv4 address", *addrFlag)
	}
	content := makeContent(*maxSize)

	web, err := net.Listen("tcp", netip.AddrPortFrom(addr, httpPort).String())
	if err != nil {
		return err
	}
	sink, err := net.Listen("tcp", netip.AddrPortFrom(addr, sinkPort).String())
	if err != nil {
		return err
	}
	dnsAddr := netip.AddrPortFrom(addr, dnsPort).String()
	dnsUDP, err := net.ListenPacket("udp", dnsAddr)
	if err != nil {
		return err
	}
	dnsTCP, err := net.Listen("tcp", dnsAddr)
	if err != nil {
		return err
	}
	h := dnsHandler(addr)
	srv := &http.Server{Handler: fileHandler(content), ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 5)
	go func() { errc <- srv.Serve(web) }()
	go func() { errc <- serveSink(sink) }()
	go func() { errc <- (&dns.Server{PacketConn: dnsUDP, Handler: h}).ActivateAndServe() }()
	go func() { errc <- (&dns.Server{Listener: dnsTCP, Handler: h}).ActivateAndServe() }()
	go func() {
		io.Copy(io.Discard, os.Stdin)
		errc <- nil
	}()
	fmt.Println("ready")
	return <-errc // the process ends here, and its listeners with it
}

// fileHandler serves the files, prefixes of content, and takes uploads.
func fileHandler(content []byte) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil || n < 0 || n > int64(len(content)) {
			http.Error(w, fmt.Sprintf("want /bytes/N with 0 <= N <= %d", len(content)), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Write(content[:n])
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x\n", n, h.Sum(nil))
	})
	return mux
}

// serveSink accepts connections and reads each until EOF, until l fails.
func serveSink(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return fmt.Errorf("sink: %w", err)
		}
		go func() {
			io.Copy(io.Discard, c)
			c.Close()
		}()
	}
}

// dnsHandler answers for serverName (see serverMain) as an authoritative
// server of its zone does: a negative answer carries the zone's SOA, so
// that a resolver may cache it (RFC 2308).
func dnsHandler(addr netip.Addr) dns.Handler {
	fqdn := dns.Fqdn(serverName)
	zone := fqdn[len("files."):]
	soa := &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: dnsTTL},
		Ns:      "ns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  dnsTTL,
	}
	return dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		m.RecursionAvailable = true
		switch {
		case len(q.Question) != 1:
			m.Rcode = dns.RcodeFormatError
		case dns.CanonicalName(q.Question[0].Name) != fqdn:
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, soa)
		case q.Question[0].Qtype == dns.TypeA:
			hdr := dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL}
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: addr.AsSlice()})
		default: // the name has no other record
			m.Ns = append(m.Ns, soa)
		}
		w.WriteMsg(m)
	})
}
