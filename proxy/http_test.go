package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-vpn/warren/state"
)

type httpHarness struct {
	t      *testing.T
	tunnel *fakeTunnel
	gate   *Gate
	res    *fakeResolver
	srv    *HTTP
	addr   string
	url    *url.URL

	served   chan struct{} // closed when Serve has returned
	serveErr error
}

// newHTTPProxy starts an HTTP proxy on loopback over a fake tunnel.
// configure, if given, adjusts the server before it starts serving.
func newHTTPProxy(t *testing.T, configure ...func(*HTTP)) *httpHarness {
	t.Helper()
	h := &httpHarness{t: t, tunnel: &fakeTunnel{}, served: make(chan struct{})}
	h.gate = NewGate(h.tunnel)
	h.res = &fakeResolver{names: map[string][]netip.Addr{
		"demo.warren": {netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd77::1")},
	}}
	h.srv = &HTTP{Gate: h.gate, Resolver: h.res}
	for _, f := range configure {
		f(h.srv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	h.url = &url.URL{Scheme: "http", Host: h.addr}
	go func() {
		h.serveErr = h.srv.Serve(l)
		close(h.served)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-h.served
		if !errors.Is(h.serveErr, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", h.serveErr)
		}
		h.tunnel.close()
	})
	return h
}

// upstream makes every connection through the tunnel an HTTP server
// running handler.
func (h *httpHarness) upstream(handler http.HandlerFunc) {
	h.tunnel.mu.Lock()
	defer h.tunnel.mu.Unlock()
	h.tunnel.serve = func(_ netip.AddrPort, c net.Conn) { serveHTTPOn(c, handler) }
}

// serveHTTPOn serves HTTP with handler on the one connection c, until it
// closes.
func serveHTTPOn(c net.Conn, handler http.HandlerFunc) {
	l := newPipeListener(c)
	srv := &http.Server{
		Handler:  handler,
		ErrorLog: log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.Close()
			}
		},
	}
	srv.Serve(l)
}

// pipeListener hands out one connection, then waits to be closed.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener(c net.Conn) *pipeListener {
	l := &pipeListener{conns: make(chan net.Conn, 1), done: make(chan struct{})}
	l.conns <- c
	return l
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 77, 0, 1), Port: 80} }

// client is a real net/http client that uses the proxy, with user's
// credentials if given.
func (h *httpHarness) client(user *url.Userinfo) *http.Client {
	u := *h.url
	u.User = user
	tr := &http.Transport{Proxy: http.ProxyURL(&u), DisableCompression: true}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// rawHTTP sends req as it is on a new connection to the proxy, and reads
// one response.
func rawHTTP(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response to %q: %v", req, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of the response to %q: %v", req, err)
	}
	return resp, string(body)
}

// rawConnectHTTP sends CONNECT target, with extra header lines and then
// early bytes in the same write, and reads the response's head.
func rawConnectHTTP(t *testing.T, addr, target, headers, early string) (*http.Response, *bufio.Reader, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n" + headers + "\r\n" + early
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("read CONNECT response: %v", err)
	}
	return resp, r, c
}

func testPayload(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{'w', 'a', 'r', 'r', 'e', 'n'}).Read(b)
	return b
}

func digest(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// digestHandler answers with its method and the digest of the body it got.
func digestHandler(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	if _, err := io.Copy(h, r.Body); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "%s %x", r.Method, h.Sum(nil))
}

// headersHandler answers with the request's headers in wire format.
func headersHandler(w http.ResponseWriter, r *http.Request) { r.Header.Write(w) }

func parseHeaders(t *testing.T, wire string) http.Header {
	t.Helper()
	h, err := textproto.NewReader(bufio.NewReader(strings.NewReader(wire + "\r\n"))).ReadMIMEHeader()
	if err != nil {
		t.Fatalf("parse %q: %v", wire, err)
	}
	return http.Header(h)
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHTTPGet(t *testing.T) {
	h := newHTTPProxy(t)
	payload := testPayload(3<<20 + 17)
	h.upstream(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/big" {
			http.NotFound(w, r)
			return
		}
		w.Write(payload)
	})
	h.gate.Apply(connected)
	resp, err := h.client(nil).Get("http://demo.warren/big")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	if got := readBody(t, resp); digest([]byte(got)) != digest(payload) {
		t.Fatalf("got %d bytes with digest %s, want %d bytes with %s", len(got), digest([]byte(got)), len(payload), digest(payload))
	}
	if got := h.tunnel.lastDialed(); got != netip.MustParseAddrPort("10.77.0.1:80") {
		t.Errorf("tunnel dialed %v", got)
	}
	if n := h.res.numQueries(); n != 1 {
		t.Errorf("%d queries to the tunnel's resolver, want 1", n)
	}
}

// A request body is streamed: upstream gets its beginning while the client
// is still holding back the rest.
func TestHTTPPostStreamsBody(t *testing.T) {
	h := newHTTPProxy(t)
	const head = 1024
	payload := testPayload(2<<20 + 3)
	gotHead := make(chan struct{})
	h.upstream(func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		if _, err := io.CopyN(sum, r.Body, head); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		close(gotHead)
		if _, err := io.Copy(sum, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%s %x", r.Method, sum.Sum(nil))
	})
	h.gate.Apply(connected)
	pr, pw := io.Pipe()
	defer pr.Close()
	go func() {
		if _, err := pw.Write(payload[:head]); err != nil {
			return
		}
		select {
		case <-gotHead:
		case <-time.After(5 * time.Second):
			pw.CloseWithError(errors.New("upstream did not get the body's beginning: the proxy holds the body back"))
			return
		}
		pw.Write(payload[head:])
		pw.Close()
	}()
	req, err := http.NewRequest(http.MethodPost, "http://demo.warren/upload", pr)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.client(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readBody(t, resp), "POST "+digest(payload); got != want {
		t.Fatalf("upstream answered %q, want %q", got, want)
	}
}

func TestHTTPMethods(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(digestHandler)
	h.gate.Apply(connected)
	c := h.client(nil)
	payload := testPayload(1<<20 + 5)
	for _, tt := range []struct {
		name string
		body []byte
	}{
		{http.MethodPut, payload},
		{http.MethodPost, payload[:100]},
		{http.MethodPatch, payload[:10]},
		{http.MethodDelete, nil},
		{http.MethodOptions, nil},
		{"PROPFIND", []byte("<propfind/>")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.name, "http://demo.warren/thing", bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := readBody(t, resp), tt.name+" "+digest(tt.body); got != want {
				t.Fatalf("upstream answered %q, want %q", got, want)
			}
		})
	}
}

func TestHTTPHead(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodHead {
			http.Error(w, "not HEAD", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Length", "12345")
		w.Header().Set("X-Seen", r.Method)
	})
	h.gate.Apply(connected)
	resp, err := h.client(nil).Head("http://demo.warren/file")
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != 12345 || resp.Header.Get("X-Seen") != "HEAD" || body != "" {
		t.Fatalf("HEAD: %s, length %d, X-Seen %q, body %q", resp.Status, resp.ContentLength, resp.Header.Get("X-Seen"), body)
	}
}

// A streaming response reaches the client as upstream flushes it, not when
// it ends.
func TestHTTPStreamsResponse(t *testing.T) {
	h := newHTTPProxy(t)
	next := make(chan struct{})
	h.upstream(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	})
	h.gate.Apply(connected)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://demo.warren/events", nil)
	resp, err := h.client(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); line != "first\n" {
		t.Fatalf("first line %q, %v: the proxy held the stream back", line, err)
	}
	close(next)
	if rest, err := io.ReadAll(r); string(rest) != "second\n" || err != nil {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

func TestHTTPConnect(t *testing.T) {
	h := newHTTPProxy(t)
	h.gate.Apply(connected) // the tunnel echoes
	const early = "sent with the CONNECT|"
	resp, r, c := rawConnectHTTP(t, h.addr, "demo.warren:443", "", early)
	if resp.StatusCode != http.StatusOK || resp.Status != "200 Connection established" {
		t.Fatalf("CONNECT: %q", resp.Status)
	}
	got := make([]byte, len(early))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != early {
		t.Fatalf("early bytes came back as %q, %v", got, err)
	}
	for _, msg := range []string{"then this", strings.Repeat("and a lot more ", 10000)} {
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(r, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
		}
	}
	if got := h.tunnel.lastDialed(); got != netip.MustParseAddrPort("10.77.0.1:443") {
		t.Errorf("tunnel dialed %v", got)
	}
	if n := h.gate.Flows(); n != 2 {
		t.Errorf("%d flows, want 2 (client and tunnel side)", n)
	}
}

func TestHTTPConnectCutWhenGateCloses(t *testing.T) {
	h := newHTTPProxy(t)
	h.gate.Apply(connected)
	resp, r, c := rawConnectHTTP(t, h.addr, "10.77.0.1:22", "", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %s", resp.Status)
	}
	io.WriteString(c, "ping")
	if _, err := io.ReadFull(r, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	h.gate.Apply(connecting)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, r)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("tunnel ended with %v, want a reset", err)
	}
	waitForHTTP(t, "flows to end", func() bool { return h.gate.Flows() == 0 })
}

// Leaving Connected cuts a forwarded download: the client's read fails,
// rather than hang or end as if the body were complete.
func TestHTTPForwardCutWhenGateCloses(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(func(w http.ResponseWriter, r *http.Request) { // an endless download
		buf := make([]byte, 32<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	})
	h.gate.Apply(connected)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://demo.warren/endless", nil)
	resp, err := h.client(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	h.gate.Apply(connecting)
	_, err = io.Copy(io.Discard, resp.Body)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("download ended with %v (context: %v), want it cut", err, ctx.Err())
	}
	waitForHTTP(t, "flows to end", func() bool { return h.gate.Flows() == 0 })
}

// A request cut by the gate before upstream answered gets 503 and the
// gate's reason, not an error from the severed connection.
func TestHTTPGateClosesBeforeResponse(t *testing.T) {
	h := newHTTPProxy(t)
	arrived := make(chan struct{})
	h.upstream(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server notices the connection close
		close(arrived)
		<-r.Context().Done() // never answers
	})
	h.gate.Apply(connected)
	go func() {
		<-arrived
		h.gate.Apply(connecting)
	}()
	resp, err := h.client(nil).Post("http://demo.warren/slow", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	want := "warren: " + connecting.Blocked().Error() + "\n"
	if body := readBody(t, resp); resp.StatusCode != http.StatusServiceUnavailable || body != want {
		t.Fatalf("%s %q, want 503 %q", resp.Status, body, want)
	}
}

// While blocked, both CONNECT and forwarding are refused with 503 and the
// gate's reason on one line, at once, and nothing is resolved or dialed.
func TestHTTPRefusesWhileBlocked(t *testing.T) {
	for _, s := range []state.Snapshot{
		{State: state.Disconnected},
		connecting,
		{State: state.Disconnecting, After: state.AfterReconnect},
		{State: state.Error, Cause: state.CauseTunnelDevice},
	} {
		t.Run(s.State.String(), func(t *testing.T) {
			h := newHTTPProxy(t)
			h.upstream(digestHandler)
			h.gate.Apply(s)
			want := "warren: " + s.Blocked().Error() + "\n"

			begin := time.Now()
			resp, err := h.client(nil).Get("http://demo.warren/")
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if d := time.Since(begin); d > time.Second {
				t.Errorf("GET refused after %v", d)
			}
			if resp.StatusCode != http.StatusServiceUnavailable || body != want {
				t.Errorf("GET: %s %q, want 503 %q", resp.Status, body, want)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type %q", ct)
			}

			begin = time.Now()
			resp, r, _ := rawConnectHTTP(t, h.addr, "demo.warren:443", "", "")
			if d := time.Since(begin); d > time.Second {
				t.Errorf("CONNECT refused after %v", d)
			}
			body, err = r.ReadString('\n')
			if resp.StatusCode != http.StatusServiceUnavailable || body != want {
				t.Errorf("CONNECT: %s %q (%v), want 503 %q", resp.Status, body, err, want)
			}

			if n := h.res.numQueries(); n != 0 {
				t.Errorf("%d name lookups while blocked", n)
			}
			if d := h.tunnel.lastDialed(); d.IsValid() {
				t.Errorf("dialed %v while blocked", d)
			}
		})
	}
}

// A request made while connecting waits for the tunnel, with Hold.
func TestHTTPHold(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(digestHandler)
	h.gate.Hold = time.Minute
	h.gate.Apply(connecting)
	go func() {
		time.Sleep(50 * time.Millisecond)
		h.gate.Apply(connected)
	}()
	resp, err := h.client(nil).Get("http://demo.warren/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != "GET "+digest(nil) {
		t.Fatalf("%s %q", resp.Status, body)
	}
}

func TestHTTPErrors(t *testing.T) {
	tests := []struct {
		name      string
		host      string
		dialErr   error
		block     bool // the tunnel's dials hang until the dial timeout
		noResolve bool
		want      int
		wantIn    string
	}{
		{name: "no such host", host: "nowhere.example", want: 502, wantIn: "cannot resolve nowhere.example"},
		{name: "no resolver", host: "demo.warren", noResolve: true, want: 502, wantIn: "cannot resolve demo.warren"},
		{name: "refused", host: "10.0.0.1", dialErr: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, want: 502, wantIn: "refused"},
		{name: "network unreachable", host: "10.0.0.1", dialErr: &net.OpError{Op: "dial", Err: syscall.ENETUNREACH}, want: 502, wantIn: "unreachable"},
		{name: "host unreachable", host: "10.0.0.1", dialErr: &net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, want: 502, wantIn: "unreachable"},
		{name: "dial timeout", host: "10.0.0.1", block: true, want: 504, wantIn: "timed out"},
		{name: "other", host: "10.0.0.1", dialErr: errors.New("something odd"), want: 502, wantIn: "something odd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHTTPProxy(t, func(s *HTTP) {
				s.DialTimeout = 100 * time.Millisecond
				if tt.noResolve {
					s.Resolver = nil
				}
			})
			h.gate.Apply(connected)
			h.tunnel.err, h.tunnel.block = tt.dialErr, tt.block
			check := func(what string, resp *http.Response, body string) {
				t.Helper()
				if resp.StatusCode != tt.want || !strings.HasPrefix(body, "warren: ") ||
					!strings.Contains(body, tt.wantIn) || strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "\n") {
					t.Errorf("%s: %s %q, want %d and one line with %q", what, resp.Status, body, tt.want, tt.wantIn)
				}
			}
			resp, err := h.client(nil).Get("http://" + tt.host + "/")
			if err != nil {
				t.Fatal(err)
			}
			check("GET", resp, readBody(t, resp))
			resp, r, _ := rawConnectHTTP(t, h.addr, tt.host+":443", "", "")
			body, _ := r.ReadString('\n')
			check("CONNECT", resp, body)
		})
	}
}

func TestHTTPCredentials(t *testing.T) {
	h := newHTTPProxy(t, func(s *HTTP) { s.Credentials = &Credentials{User: "alice", Password: "s3cret"} })
	h.upstream(headersHandler)
	h.gate.Apply(connected)
	basic := func(userpass string) string {
		return "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(userpass)) + "\r\n"
	}
	tests := []struct {
		name   string
		header string
		want   int
	}{
		{"none", "", 407},
		{"wrong password", basic("alice:secret"), 407},
		{"wrong user", basic("bob:s3cret"), 407},
		{"no colon", basic("alices3cret"), 407},
		{"not basic", "Proxy-Authorization: Bearer s3cret\r\n", 407},
		{"not base64", "Proxy-Authorization: Basic !!!\r\n", 407},
		{"right", basic("alice:s3cret"), 200},
		{"right, lower-case scheme", "Proxy-Authorization: basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret")) + "\r\n", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawHTTP(t, h.addr, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\n"+tt.header+"\r\n")
			if resp.StatusCode != tt.want {
				t.Fatalf("GET: %s %q, want %d", resp.Status, body, tt.want)
			}
			if tt.want == 407 {
				if got := resp.Header.Get("Proxy-Authenticate"); got != `Basic realm="warren"` {
					t.Errorf("Proxy-Authenticate %q", got)
				}
			} else if seen := parseHeaders(t, body); seen.Get("Proxy-Authorization") != "" {
				t.Errorf("upstream saw Proxy-Authorization %q", seen.Get("Proxy-Authorization"))
			}
			resp, _, _ = rawConnectHTTP(t, h.addr, "demo.warren:443", tt.header, "")
			if resp.StatusCode != tt.want {
				t.Fatalf("CONNECT: %s, want %d", resp.Status, tt.want)
			}
		})
	}

	// A real client, with credentials in the proxy URL.
	resp, err := h.client(url.UserPassword("alice", "s3cret")).Get("http://demo.warren/")
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("net/http client with credentials: %s", resp.Status)
	}
	if seen := parseHeaders(t, body); seen.Get("Proxy-Authorization") != "" {
		t.Errorf("upstream saw Proxy-Authorization %q", seen.Get("Proxy-Authorization"))
	}
	resp, err = h.client(url.UserPassword("alice", "wrong")).Get("http://demo.warren/")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if resp.StatusCode != http.StatusProxyAuthRequired {
		t.Fatalf("net/http client with wrong credentials: %s", resp.Status)
	}
}

func TestHTTPHopByHopHeaders(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", `Basic realm="upstream"`)
		w.Header().Set("X-Resp-End", "kept")
		r.Header.Write(w)
	})
	h.gate.Apply(connected)
	resp, body := rawHTTP(t, h.addr, "GET http://demo.warren/ HTTP/1.1\r\n"+
		"Host: demo.warren\r\n"+
		"Connection: keep-alive, X-Hop\r\n"+
		"X-Hop: secret\r\n"+
		"Proxy-Connection: keep-alive\r\n"+
		"Keep-Alive: timeout=5\r\n"+
		"TE: trailers\r\n"+
		"Upgrade: websocket\r\n"+
		"Proxy-Authorization: Basic YTpi\r\n"+
		"X-Forwarded-For: 192.0.2.1\r\n"+
		"Forwarded: for=192.0.2.1\r\n"+
		"X-End: kept\r\n"+
		"\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %q", resp.Status, body)
	}
	seen := parseHeaders(t, body)
	for _, name := range []string{"Connection", "X-Hop", "Proxy-Connection", "Keep-Alive", "Te", "Upgrade",
		"Proxy-Authorization", "X-Forwarded-For", "Forwarded", "Via",
		"Accept-Encoding", "User-Agent"} { // the last two: nothing added
		if v, ok := seen[name]; ok {
			t.Errorf("upstream saw %s: %q", name, v)
		}
	}
	if got := seen.Get("X-End"); got != "kept" {
		t.Errorf("end-to-end header X-End = %q", got)
	}
	for _, name := range []string{"X-Resp-Hop", "Keep-Alive", "Proxy-Authenticate", "Via"} {
		if v, ok := resp.Header[name]; ok {
			t.Errorf("client got %s: %q", name, v)
		}
	}
	if got := resp.Header.Get("X-Resp-End"); got != "kept" {
		t.Errorf("end-to-end response header X-Resp-End = %q", got)
	}
}

// The request target reaches upstream as the client wrote it.
func TestHTTPKeepsRequestURI(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RequestURI) })
	h.gate.Apply(connected)
	const uri = "/a%2Fb/c?x=1;y=%zz&z"
	resp, body := rawHTTP(t, h.addr, "GET http://demo.warren"+uri+" HTTP/1.1\r\nHost: demo.warren\r\n\r\n")
	if resp.StatusCode != http.StatusOK || body != uri {
		t.Fatalf("upstream got %q (%s), want %q", body, resp.Status, uri)
	}
}

// Requests that are not for a proxy are 400, with a one-line reason, and
// open nothing.
func TestHTTPNotAProxyRequest(t *testing.T) {
	h := newHTTPProxy(t)
	h.gate.Apply(connected)
	for _, tt := range []struct {
		req    string
		wantIn string
	}{
		{"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "this is a proxy"},
		{"POST /submit HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi", "this is a proxy"},
		{"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", "this is a proxy"},
		{"GET ftp://demo.warren/file HTTP/1.1\r\nHost: demo.warren\r\n\r\n", "only http and https"},
		{"GET http:///nohost HTTP/1.1\r\nHost: demo.warren\r\n\r\n", "this is a proxy"},
		{"CONNECT demo.warren HTTP/1.1\r\nHost: demo.warren\r\n\r\n", "host:port"},
		{"CONNECT demo.warren:0 HTTP/1.1\r\nHost: demo.warren:0\r\n\r\n", "bad port"},
		{"GET http://demo.warren:99999999/ HTTP/1.1\r\nHost: demo.warren\r\n\r\n", "bad port"},
	} {
		resp, body := rawHTTP(t, h.addr, tt.req)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, tt.wantIn) || strings.Count(body, "\n") != 1 {
			t.Errorf("%q: %s %q, want 400 with %q", tt.req, resp.Status, body, tt.wantIn)
		}
	}
	if d := h.tunnel.lastDialed(); d.IsValid() {
		t.Errorf("dialed %v", d)
	}
}

// A malformed request gets 400 from net/http; the proxy goes on serving.
func TestHTTPMalformedRequests(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(digestHandler)
	h.gate.Apply(connected)
	for _, garbage := range []string{
		"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT demo.warren:http HTTP/1.1\r\nHost: demo.warren:http\r\n\r\n",
		"\x00\x01\x02\x03 garbage\r\n\r\n",
		"GET http://demo.warren/ HTTP/1.1\r\nHost: demo.warren\r\nBad Header Line\r\n\r\n",
	} {
		resp, body := rawHTTP(t, h.addr, garbage)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: %s %q, want 400", garbage, resp.Status, body)
		}
	}
	resp, err := h.client(nil).Get("http://demo.warren/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != "GET "+digest(nil) {
		t.Fatalf("after garbage: %s %q", resp.Status, body)
	}
}

// A client that never finishes its request headers is disconnected after
// HandshakeTimeout.
func TestHTTPHandshakeTimeout(t *testing.T) {
	h := newHTTPProxy(t, func(s *HTTP) { s.HandshakeTimeout = 100 * time.Millisecond })
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://demo.warren/ HTTP/1.1\r\nHost: demo") // and nothing more
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("not disconnected")
	}
}

// Shutdown ends every client connection, CONNECT tunnels and downloads
// included, and Serve returns ErrServerClosed.
func TestHTTPShutdown(t *testing.T) {
	h := newHTTPProxy(t)
	h.upstream(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 32<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	})
	h.gate.Apply(connected)
	// Tunnel to an echo server.
	h.tunnel.mu.Lock()
	serveHTTP := h.tunnel.serve
	h.tunnel.serve = func(to netip.AddrPort, c net.Conn) {
		if to.Port() == 7 {
			io.Copy(c, c)
			return
		}
		serveHTTP(to, c)
	}
	h.tunnel.mu.Unlock()
	resp, r, c := rawConnectHTTP(t, h.addr, "10.77.0.1:7", "", "hi")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %s", resp.Status)
	}
	if _, err := io.ReadFull(r, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://demo.warren/endless", nil)
	download, err := h.client(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer download.Body.Close()
	if _, err := io.ReadFull(download.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := h.srv.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-h.served:
		if !errors.Is(h.serveErr, ErrServerClosed) {
			t.Errorf("Serve returned %v", h.serveErr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running after Shutdown")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, r); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Error("CONNECT tunnel still open after Shutdown")
	}
	if _, err := io.Copy(io.Discard, download.Body); err == nil || ctx.Err() != nil {
		t.Errorf("download ended with %v (context: %v), want it cut", err, ctx.Err())
	}
	if err := h.srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// A closed server serves nothing, and closes what it is given.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener not closed: Accept = %v", err)
	}
}

// The upstream transport never takes a proxy from the environment.
func TestHTTPIgnoresProxyEnvironment(t *testing.T) {
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:9")
	t.Setenv("http_proxy", "http://127.0.0.1:9")
	t.Setenv("HTTPS_PROXY", "http://127.0.0.1:9")
	t.Setenv("NO_PROXY", "")
	h := newHTTPProxy(t)
	h.upstream(digestHandler)
	h.gate.Apply(connected)
	resp, err := h.client(nil).Get("http://demo.warren/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != "GET "+digest(nil) {
		t.Fatalf("%s %q", resp.Status, body)
	}
	if got := h.tunnel.lastDialed(); got != netip.MustParseAddrPort("10.77.0.1:80") {
		t.Errorf("tunnel dialed %v", got)
	}
	if h.srv.transport.Proxy != nil || h.srv.transport.DialTLSContext != nil {
		t.Error("the transport has a Proxy or its own TLS dialer")
	}
}

// lockedBuffer is a log destination safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// One debug line per request, with neither credentials nor the path.
func TestHTTPLogsNoSecrets(t *testing.T) {
	var logs lockedBuffer
	h := newHTTPProxy(t, func(s *HTTP) {
		s.Credentials = &Credentials{User: "alice", Password: "s3cret"}
		s.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	h.upstream(digestHandler)
	h.gate.Apply(connected)
	good := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	bad := base64.StdEncoding.EncodeToString([]byte("alice:hunter2"))
	for _, auth := range []string{good, bad} {
		rawHTTP(t, h.addr, "GET http://demo.warren/private-path?token=xyzzy HTTP/1.1\r\nHost: demo.warren\r\nProxy-Authorization: Basic "+auth+"\r\n\r\n")
		rawConnectHTTP(t, h.addr, "demo.warren:443", "Proxy-Authorization: Basic "+auth+"\r\n", "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, secret := range []string{"s3cret", "hunter2", good, bad, "private-path", "xyzzy"} {
		if strings.Contains(out, secret) {
			t.Errorf("log shows %q:\n%s", secret, out)
		}
	}
	if n := strings.Count(out, "component=http-proxy"); n != 4 || strings.Count(out, "\n") != 4 {
		t.Errorf("%d lines from the proxy, want 4:\n%s", n, out)
	}
}

func FuzzHTTPProxyAuth(f *testing.F) {
	f.Add("Basic YWxpY2U6czNjcmV0")
	f.Add("basic   YTpi  ")
	f.Add("Bearer x")
	f.Add("Basic !!!")
	f.Add("Basic Og==")
	f.Fuzz(func(t *testing.T, v string) {
		user, password, ok := parseProxyAuth(v)
		if !ok {
			return
		}
		if strings.Contains(user, ":") {
			t.Fatalf("%q: user %q has a colon", v, user)
		}
		again := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
		if u, p, ok := parseProxyAuth(again); !ok || u != user || p != password {
			t.Fatalf("%q: %q, %q does not round-trip: %q, %q, %v", v, user, password, u, p, ok)
		}
	})
}

func waitForHTTP(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHTTPFlowsObserved(t *testing.T) {
	var log flowLog
	h := newHTTPProxy(t, func(s *HTTP) {
		s.Credentials = &Credentials{User: "alice", Password: "secret"}
		s.Gate.Observe = log.observe
	})
	h.upstream(digestHandler)
	get := func(user *url.Userinfo) {
		t.Helper()
		resp, err := h.client(user).Get("http://demo.warren/")
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
	}
	alice := url.UserPassword("alice", "secret")
	get(alice)                              // blocked
	get(url.UserPassword("alice", "wrong")) // auth
	h.gate.Apply(connected)
	get(alice) // accepted
	want := []string{"http blocked", "http auth", "http accepted"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("observed %q, want %q", got, want)
	}
}
