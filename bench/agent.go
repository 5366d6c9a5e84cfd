package main

// The agent: this binary with the role "agent", in a client's namespace. It
// is that client's application: it reads requests, one JSON object a line,
// on stdin, carries each out and answers on stdout. Both clients run this
// same code; only the dialer differs (-socks5 or -dns).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/proxy"
)

// request is one thing for an agent to do.
type request struct {
	// Op is what to do:
	//	download  GET URL/bytes/Size once, on a new connection
	//	upload    POST Size bytes to URL/upload once, on a new connection
	//	parallel  N GETs of URL/bytes/Size at once, each on its own connection
	//	ttfb      N GETs of URL/bytes/Size one after the other, each on a new
	//	          connection (so a name is resolved each time); Samples are
	//	          the times to the response's first byte
	//	open      open N connections to Addr, Workers at a time, and hold them
	//	close     close the held connections
	//	refuse    N SOCKS5 CONNECTs to Addr, one after the other; each must be
	//	          refused with reply 0x02; Samples are the times to the reply
	Op      string `json:"op"`
	URL     string `json:"url,omitempty"`
	Addr    string `json:"addr,omitempty"`
	Size    int64  `json:"size,omitempty"`
	N       int    `json:"n,omitempty"`
	Workers int    `json:"workers,omitempty"`
}

// response is what came of a request.
type response struct {
	Err     string    `json:"err,omitempty"`
	Bytes   int64     `json:"bytes"`   // payload moved
	Seconds float64   `json:"seconds"` // wall time of the whole op
	Samples []float64 `json:"samples,omitempty"`
	// DigestsOK and DigestsBad count the files and uploads whose SHA-256
	// was checked.
	DigestsOK  int `json:"digests_ok"`
	DigestsBad int `json:"digests_bad"`
	// UserCPU and SysCPU are the agent's own CPU time during the op, in
	// seconds (getrusage).
	UserCPU float64 `json:"user_cpu"`
	SysCPU  float64 `json:"sys_cpu"`
}

// dialFunc dials a connection for the agent's HTTP client.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

type agent struct {
	dial    dialFunc
	socks5  string // the proxy's address, for refuse; "" when direct
	content []byte // the files' bytes (see makeContent)

	// digests are those of content's prefixes, by length.
	digests map[int64][sha256.Size]byte

	held []net.Conn // the connections of open, until close
}

// agentMain serves requests from stdin until it is closed.
func agentMain(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	socks5 := fs.String("socks5", "", "dial through the SOCKS5 proxy at this address, passing it host names")
	dnsAddr := fs.String("dns", "", "dial directly, resolving names with the DNS server at this address")
	maxSize := fs.Int64("max", 0, "the largest file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	a := &agent{content: makeContent(*maxSize), digests: map[int64][sha256.Size]byte{}}
	switch {
	case *socks5 != "" && *dnsAddr == "":
		d, err := proxy.SOCKS5("tcp", *socks5, nil, &net.Dialer{})
		if err != nil {
			return err
		}
		cd, ok := d.(proxy.ContextDialer)
		if !ok {
			return errors.New("the SOCKS5 dialer has no DialContext")
		}
		a.dial, a.socks5 = plain(cd.DialContext), *socks5
	case *dnsAddr != "" && *socks5 == "":
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, *dnsAddr)
		}}
		d := &net.Dialer{Resolver: r}
		a.dial = plain(d.DialContext)
	default:
		return errors.New("want one of -socks5 and -dns")
	}
	defer a.closeHeld()

	dec := json.NewDecoder(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := enc.Encode(a.do(req)); err != nil {
			return err
		}
	}
}

// plainConn hides what the dialer's connection type has besides net.Conn
// (a *net.TCPConn's ReadFrom and WriteTo), so that the HTTP client copies
// data the same way over either dialer.
type plainConn struct{ net.Conn }

func plain(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return plainConn{c}, nil
	}
}

// opTimeout bounds every op.
const opTimeout = 10 * time.Minute

func (a *agent) do(req request) response {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	u0, s0 := selfCPU()
	var resp response
	var err error
	switch req.Op {
	case "download":
		err = a.download(ctx, req, &resp)
	case "upload":
		err = a.upload(ctx, req, &resp)
	case "parallel":
		err = a.parallel(ctx, req, &resp)
	case "ttfb":
		err = a.ttfb(ctx, req, &resp)
	case "open":
		err = a.open(ctx, req, &resp)
	case "close":
		a.closeHeld()
	case "refuse":
		err = a.refuse(ctx, req, &resp)
	default:
		err = fmt.Errorf("unknown op %q", req.Op)
	}
	u1, s1 := selfCPU()
	resp.UserCPU, resp.SysCPU = (u1 - u0).Seconds(), (s1 - s0).Seconds()
	if err != nil {
		resp.Err = fmt.Sprintf("%s: %v", req.Op, err)
	}
	return resp
}

// client is an HTTP client over the agent's dialer, with no proxy from the
// environment and no compression; with keepAlive false, every request has
// a new connection.
func (a *agent) client(conns int, keepAlive bool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         a.dial,
		DisableCompression:  true,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: conns,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}}
}

// digest returns the SHA-256 of the file of n bytes.
func (a *agent) digest(n int64) [sha256.Size]byte {
	d, ok := a.digests[n]
	if !ok {
		d = sha256.Sum256(a.content[:n])
		a.digests[n] = d
	}
	return d
}

// get fetches the file of size bytes from url and checks its length and
// digest, counting the check in resp.
func (a *agent) get(ctx context.Context, c *http.Client, url string, size int64, resp *response) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	r, err := c.Do(req)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, r.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		return fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	resp.Bytes += n
	if want := a.digest(size); n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		resp.DigestsBad++
	} else {
		resp.DigestsOK++
	}
	return nil
}

func (a *agent) fileURL(req request) string {
	return req.URL + "/bytes/" + strconv.FormatInt(req.Size, 10)
}

func (a *agent) download(ctx context.Context, req request, resp *response) error {
	c := a.client(1, true)
	defer c.CloseIdleConnections()
	start := time.Now()
	err := a.get(ctx, c, a.fileURL(req), req.Size, resp)
	resp.Seconds = time.Since(start).Seconds()
	return err
}

func (a *agent) upload(ctx context.Context, req request, resp *response) error {
	if req.Size > int64(len(a.content)) {
		return fmt.Errorf("size %d: the agent has only %d bytes", req.Size, len(a.content))
	}
	c := a.client(1, true)
	defer c.CloseIdleConnections()
	start := time.Now()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, req.URL+"/upload", bytes.NewReader(a.content[:req.Size]))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/octet-stream")
	r, err := c.Do(hreq)
	if err != nil {
		return err
	}
	answer, err := io.ReadAll(r.Body)
	r.Body.Close()
	resp.Seconds = time.Since(start).Seconds()
	if err != nil {
		return err
	}
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("POST: %s: %s", r.Status, answer)
	}
	resp.Bytes = req.Size
	d := a.digest(req.Size)
	if strings.TrimSpace(string(answer)) == fmt.Sprintf("%d %x", req.Size, d) {
		resp.DigestsOK++
	} else {
		resp.DigestsBad++
	}
	return nil
}

func (a *agent) parallel(ctx context.Context, req request, resp *response) error {
	c := a.client(req.N, true)
	defer c.CloseIdleConnections()
	url := a.fileURL(req)
	results := make([]response, req.N)
	errs := make([]error, req.N)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range req.N {
		wg.Go(func() { errs[i] = a.get(ctx, c, url, req.Size, &results[i]) })
	}
	wg.Wait()
	resp.Seconds = time.Since(start).Seconds()
	for _, r := range results {
		resp.Bytes += r.Bytes
		resp.DigestsOK += r.DigestsOK
		resp.DigestsBad += r.DigestsBad
	}
	return errors.Join(errs...)
}

func (a *agent) ttfb(ctx context.Context, req request, resp *response) error {
	c := a.client(0, false)
	defer c.CloseIdleConnections()
	url := a.fileURL(req)
	start := time.Now()
	for range req.N {
		var began time.Time
		var first time.Duration
		trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { first = time.Since(began) }}
		began = time.Now()
		if err := a.get(httptrace.WithClientTrace(ctx, trace), c, url, req.Size, resp); err != nil {
			return err
		}
		resp.Samples = append(resp.Samples, first.Seconds())
	}
	resp.Seconds = time.Since(start).Seconds()
	return nil
}

// openTimeout bounds the opening of one connection of the scale phase.
const openTimeout = 30 * time.Second

func (a *agent) open(ctx context.Context, req request, resp *response) error {
	a.closeHeld()
	conns := make([]net.Conn, req.N)
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for range min(req.Workers, req.N) {
		wg.Go(func() {
			for failed.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= req.N {
					return
				}
				dctx, cancel := context.WithTimeout(ctx, openTimeout)
				c, err := a.dial(dctx, "tcp", req.Addr)
				cancel()
				if err != nil {
					err = fmt.Errorf("connection %d: %w", i, err)
					failed.CompareAndSwap(nil, &err)
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	resp.Seconds = time.Since(start).Seconds()
	a.held = conns
	if err := failed.Load(); err != nil {
		a.closeHeld()
		return *err
	}
	return nil
}

func (a *agent) closeHeld() {
	for _, c := range a.held {
		if c != nil {
			c.Close()
		}
	}
	a.held = nil
}

func (a *agent) refuse(ctx context.Context, req request, resp *response) error {
	if a.socks5 == "" {
		return errors.New("not a SOCKS5 client")
	}
	to, err := netip.ParseAddrPort(req.Addr)
	if err != nil || !to.Addr().Is4() {
		return fmt.Errorf("want IPv4:port, not %q", req.Addr)
	}
	start := time.Now()
	for i := range req.N {
		began := time.Now()
		rep, err := socks5Connect(ctx, a.socks5, to)
		took := time.Since(began)
		if err != nil {
			return fmt.Errorf("CONNECT %d: %w", i, err)
		}
		if rep != 0x02 {
			return fmt.Errorf("CONNECT %d: reply %#x, want 0x02 (not allowed by ruleset)", i, rep)
		}
		resp.Samples = append(resp.Samples, took.Seconds())
	}
	resp.Seconds = time.Since(start).Seconds()
	return nil
}

// socks5Connect asks the SOCKS5 proxy at proxyAddr to CONNECT to an IPv4
// address, as a client does (greeting, then request), and returns the
// reply code.
func socks5Connect(ctx context.Context, proxyAddr string, to netip.AddrPort) (byte, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{5, 1, 0}); err != nil { // version 5, one method: no authentication
		return 0, err
	}
	var buf [10]byte // a reply with an IPv4 address
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return 0, fmt.Errorf("greeting: %w", err)
	}
	if buf[0] != 5 || buf[1] != 0 {
		return 0, fmt.Errorf("greeting answered %x", buf[:2])
	}
	ip, port := to.Addr().As4(), to.Port()
	if _, err := c.Write([]byte{5, 1, 0, 1, ip[0], ip[1], ip[2], ip[3], byte(port >> 8), byte(port)}); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return 0, fmt.Errorf("request: %w", err)
	}
	return buf[1], nil
}
