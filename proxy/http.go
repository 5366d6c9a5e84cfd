package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/warren-vpn/warren/state"
)

// httpIdleTimeout is how long the HTTP proxy keeps an idle client
// connection open between two requests.
const httpIdleTimeout = 2 * time.Minute

// HTTP is an HTTP proxy whose every flow goes through a Gate.
//
// CONNECT host:port opens a TCP tunnel to host. A request for an absolute
// URI (GET http://host/path, and likewise every other method) is forwarded
// to host over HTTP/1.1, with its body and the response's streamed both
// ways. Hop-by-hop headers (Connection and the headers it names,
// Proxy-Connection, Keep-Alive, Proxy-Authorization, TE, Trailer,
// Transfer-Encoding, Upgrade) are not forwarded, and nothing is added: no
// Via, no X-Forwarded-For. Names are resolved by Resolver, through the
// tunnel.
//
// While the gate is blocked every request is answered 503 with the state
// and cause on one line, at once or after the gate's Hold. A name that does
// not resolve, or a destination that refuses or cannot be reached, is 502;
// a dial that times out is 504. A request that is not for a proxy (GET /)
// is 400. Every error body is one line of text/plain.
//
// A client that does not send its request headers within HandshakeTimeout
// is disconnected. A client that Admission does not allow is disconnected
// as it is accepted; a connection over a limit of flows has its request
// answered 503, with the limit, and is closed.
//
// The client side is net/http's server; the upstream side is
// httputil.ReverseProxy with an http.Transport that dials only through the
// gate and never reads a proxy from the environment.
type HTTP struct {
	// Gate is how flows leave. Required.
	Gate *Gate
	// Resolver resolves names in requests. If nil, requests by name fail
	// with 502.
	Resolver Resolver
	// Credentials, if set, must be given by every request as Basic
	// Proxy-Authorization; a request without them, or with others, is
	// answered 407. If nil, no authentication is asked for.
	Credentials *Credentials
	// Logger gets one debug line per request, without credentials; nil
	// discards.
	Logger *slog.Logger
	// HandshakeTimeout bounds the time to read a request's headers; 0
	// means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DialTimeout bounds resolving and connecting; 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// Admission, if set, says which clients are served and bounds their
	// flows: each client connection holds a place from accept to close
	// (for a CONNECT, to the end of its tunnel). nil serves every client,
	// without bound.
	Admission *Admission

	initOnce  sync.Once
	log       *slog.Logger
	srv       *http.Server
	rp        *httputil.ReverseProxy
	transport *http.Transport
	// ctx ends when the server closes, which cuts the CONNECT tunnels.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards the fields below.
	mu     sync.Mutex
	closed bool
	// conns are the client connections srv serves, until they close or a
	// CONNECT hijacks them; tunnels are the hijacked ones.
	conns   map[net.Conn]struct{}
	tunnels map[net.Conn]struct{}
	// active counts the connections in conns and the running handlers. A
	// connection is added (with mu held) before srv.Serve can return, and
	// a handler while its connection still counts, so no Add races Wait.
	active sync.WaitGroup
}

func (s *HTTP) init() {
	s.initOnce.Do(func() {
		s.log = s.Logger
		if s.log == nil {
			s.log = slog.New(slog.DiscardHandler)
		}
		s.log = s.log.With("component", "http-proxy")
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.conns = make(map[net.Conn]struct{})
		s.tunnels = make(map[net.Conn]struct{})
		var http1 http.Protocols
		http1.SetHTTP1(true)
		s.transport = &http.Transport{
			Proxy:       nil, // never HTTP_PROXY from the environment
			DialContext: s.dialContext,
			// TLS for https:// URIs runs over DialContext: there is no
			// DialTLSContext.
			Protocols:             &http1,
			DisableCompression:    true, // pass bodies as they are
			MaxIdleConns:          100,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
		s.rp = &httputil.ReverseProxy{
			Rewrite:        rewriteForward,
			Transport:      s.transport,
			ErrorHandler:   s.forwardFailed,
			ModifyResponse: s.forwarded,
			ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		timeout := s.HandshakeTimeout
		if timeout == 0 {
			timeout = DefaultHandshakeTimeout
		}
		s.srv = &http.Server{
			Handler:                      http.HandlerFunc(s.serveHTTP),
			ReadHeaderTimeout:            timeout,
			IdleTimeout:                  httpIdleTimeout,
			ConnState:                    s.connState,
			ConnContext:                  connRefusal,
			DisableGeneralOptionsHandler: true, // OPTIONS * is not for us
			Protocols:                    &http1,
			ErrorLog:                     slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
	})
}

// Serve accepts connections on l and serves each in its own goroutine. It
// owns l and closes it. It returns ErrServerClosed after Shutdown or Close,
// or the error that made Accept fail.
func (s *HTTP) Serve(l net.Listener) error {
	s.init()
	if s.isClosed() {
		l.Close()
		return ErrServerClosed
	}
	if s.Admission != nil {
		l = &admitListener{Listener: l, s: s}
	}
	err := s.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting, closes every client connection (ending their
// flows, CONNECT tunnels included) and waits for their handlers to return,
// or for ctx to end.
func (s *HTTP) Shutdown(ctx context.Context) error {
	s.Close()
	done := make(chan struct{})
	go func() {
		s.active.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.transport.CloseIdleConnections()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops accepting and closes every client connection, without waiting
// for their handlers; CONNECT tunnels are cut (reset).
func (s *HTTP) Close() error {
	s.init()
	s.cancel()
	s.mu.Lock()
	s.closed = true
	for c := range s.tunnels {
		abort(c)
	}
	s.mu.Unlock()
	// Not under mu: srv.Close waits for Serve, whose connState takes mu.
	err := s.srv.Close()
	s.transport.CloseIdleConnections()
	return err
}

func (s *HTTP) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// connState counts srv's connections, from accepted to closed or hijacked.
func (s *HTTP) connState(c net.Conn, cs http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch cs {
	case http.StateNew:
		if s.closed {
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.active.Add(1)
	case http.StateHijacked, http.StateClosed:
		if _, ok := s.conns[c]; ok {
			delete(s.conns, c)
			s.active.Done()
		}
	}
}

func (s *HTTP) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.active.Add(1)
	defer s.active.Done()
	defer func() {
		// A request that ends after Close may have put its upstream
		// connection back in the idle pool.
		if s.isClosed() {
			s.transport.CloseIdleConnections()
		}
	}()
	if r.Method == http.MethodConnect {
		s.connect(w, r)
		return
	}
	s.forward(w, r)
}

// connect handles CONNECT host:port: dial through the gate, hijack the
// client's connection, answer 200, relay.
func (s *HTTP) connect(w http.ResponseWriter, r *http.Request) {
	host, port, err := connectTarget(r)
	if err != nil {
		s.reply(w, r, http.StatusBadRequest, "warren: "+err.Error(), nil)
		return
	}
	if !s.authorized(w, r) || s.overLimit(w, r, r.Host) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.dialTimeout())
	target, err := dialHost(ctx, s.Gate, s.Resolver, "tcp", host, port)
	cancel()
	if err != nil {
		s.Gate.observe("http", err)
		// What the client sent after CONNECT is not for us.
		w.Header().Set("Connection", "close")
		code, msg := httpFailure(err, r.Host)
		s.reply(w, r, code, msg, err)
		return
	}
	defer target.Close()
	client, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.reply(w, r, http.StatusInternalServerError, "warren: cannot take over the connection", err)
		return
	}
	defer client.Close()
	release, err := s.Gate.Track(client)
	s.Gate.observe("http", err)
	if err != nil {
		code, msg := httpFailure(err, r.Host)
		writeRawHTTPError(client, code, msg)
		s.logRequest(r, code, err)
		return
	}
	defer release()
	if !s.addTunnel(client) {
		return
	}
	defer s.removeTunnel(client)
	client.SetDeadline(time.Time{})
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	s.logRequest(r, http.StatusOK, nil)
	// Bytes the client sent after the request (a TLS ClientHello, say)
	// may already be in the server's buffer: they go first.
	relay(s.ctx, client, &readAhead{r: buf.Reader, c: client}, target)
}

// connectTarget returns the host and port a CONNECT request asks for.
func connectTarget(r *http.Request) (string, uint16, error) {
	if r.URL.Host == "" || r.URL.Path != "" {
		return "", 0, errors.New("CONNECT needs host:port")
	}
	host, p, err := net.SplitHostPort(r.URL.Host)
	if err != nil || host == "" {
		return "", 0, errors.New("CONNECT needs host:port")
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("CONNECT to a bad port %q", p)
	}
	return host, uint16(port), nil
}

func (s *HTTP) addTunnel(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.tunnels[c] = struct{}{}
	return true
}

func (s *HTTP) removeTunnel(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tunnels, c)
}

// forward handles a request for an absolute URI.
func (s *HTTP) forward(w http.ResponseWriter, r *http.Request) {
	if !r.URL.IsAbs() || r.URL.Host == "" {
		s.reply(w, r, http.StatusBadRequest,
			"warren: this is a proxy: ask it for an absolute URI (GET http://host/path) or CONNECT host:port", nil)
		return
	}
	if r.URL.Scheme != "http" && r.URL.Scheme != "https" {
		s.reply(w, r, http.StatusBadRequest,
			fmt.Sprintf("warren: cannot forward %q URIs, only http and https", r.URL.Scheme), nil)
		return
	}
	if p := r.URL.Port(); p != "" {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			s.reply(w, r, http.StatusBadRequest, fmt.Sprintf("warren: bad port %q", p), nil)
			return
		}
	}
	if !s.authorized(w, r) || s.overLimit(w, r, r.URL.Host) {
		return
	}
	// Refuse at once while blocked, even if the transport holds an idle
	// connection from before.
	if err := s.Gate.Wait(r.Context()); err != nil {
		s.Gate.observe("http", err)
		code, msg := httpFailure(err, r.URL.Host)
		s.reply(w, r, code, msg, err)
		return
	}
	s.rp.ServeHTTP(w, r)
}

// rewriteForward makes the upstream request. ReverseProxy has already
// removed the hop-by-hop headers and the client's Forwarded and
// X-Forwarded-* headers; this removes what it adds back (Upgrade, TE) and
// undoes its tidying of the query: a proxy passes the URI as it is.
func rewriteForward(pr *httputil.ProxyRequest) {
	removeHopHeaders(pr.Out.Header, pr.In.Header)
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
}

// hopHeaders are the hop-by-hop headers, besides those Connection names.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders removes from h the hop-by-hop headers, and those that
// in's Connection header names.
func removeHopHeaders(h, in http.Header) {
	for _, v := range in["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// dialContext is the transport's only way out: through the gate, names
// resolved through the tunnel.
func (s *HTTP) dialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("proxy: bad port in %q", addr)
	}
	ctx, cancel := context.WithTimeout(ctx, s.dialTimeout())
	defer cancel()
	return dialHost(ctx, s.Gate, s.Resolver, "tcp", host, uint16(port))
}

func (s *HTTP) dialTimeout() time.Duration {
	if s.DialTimeout == 0 {
		return DefaultDialTimeout
	}
	return s.DialTimeout
}

// forwarded logs a forwarded request once upstream has answered.
func (s *HTTP) forwarded(res *http.Response) error {
	s.Gate.observe("http", nil)
	s.logRequest(res.Request, res.StatusCode, nil)
	return nil
}

// forwardFailed answers a request that got no response from upstream.
func (s *HTTP) forwardFailed(w http.ResponseWriter, r *http.Request, err error) {
	if !errors.Is(err, state.ErrBlocked) {
		if blocked := s.Gate.Blocked(); blocked != nil {
			err = blocked // the gate closed under the request, and cut it
		}
	}
	s.Gate.observe("http", err)
	code, msg := httpFailure(err, r.URL.Host)
	s.reply(w, r, code, msg, err)
}

// authorized reports whether r carries the right credentials, and answers
// 407 if not.
func (s *HTTP) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.Credentials == nil {
		return true
	}
	if user, password, ok := parseProxyAuth(r.Header.Get("Proxy-Authorization")); ok && s.Credentials.Valid(user, password) {
		return true
	}
	s.Gate.observe("http", errAuth)
	w.Header().Set("Proxy-Authenticate", `Basic realm="warren"`)
	s.reply(w, r, http.StatusProxyAuthRequired, "warren: proxy authentication required", nil)
	return false
}

// parseProxyAuth parses a Basic Proxy-Authorization value (RFC 7617).
func parseProxyAuth(v string) (user, password string, ok bool) {
	scheme, creds, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(creds))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(b), ":")
}

// reply answers r with code and a one-line text body, and logs it.
func (s *HTTP) reply(w http.ResponseWriter, r *http.Request, code int, msg string, err error) {
	http.Error(w, httpOneLine(msg), code)
	s.logRequest(r, code, err)
}

// logRequest is the one debug line per request. It names the destination,
// never the path or query (which may hold secrets), nor credentials.
func (s *HTTP) logRequest(r *http.Request, code int, err error) {
	attrs := []any{"client", r.RemoteAddr, "method", r.Method, "to", r.URL.Host, "status", code}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	s.log.Debug("request", attrs...)
}

// httpFailure maps a failure to reach dest to a status and a one-line
// reason.
func httpFailure(err error, dest string) (int, string) {
	var blocked *state.BlockedError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &blocked):
		return http.StatusServiceUnavailable, "warren: " + blocked.Error()
	case errors.Is(err, state.ErrBlocked):
		return http.StatusServiceUnavailable, "warren: " + err.Error()
	case errors.Is(err, ErrTooManyFlows):
		return http.StatusServiceUnavailable, "warren: " + err.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &dnsErr) && dnsErr.IsTimeout:
		return http.StatusGatewayTimeout, "warren: timed out reaching " + dest
	case errors.As(err, &dnsErr):
		return http.StatusBadGateway, fmt.Sprintf("warren: cannot resolve %s: %s", dnsErr.Name, dnsErr.Err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return http.StatusBadGateway, "warren: " + dest + " refused the connection"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return http.StatusBadGateway, "warren: " + dest + " is unreachable"
	}
	return http.StatusBadGateway, fmt.Sprintf("warren: %s: %v", dest, err)
}

// overLimit reports whether r came on a connection over a limit of flows,
// and answers it 503 if so.
func (s *HTTP) overLimit(w http.ResponseWriter, r *http.Request, dest string) bool {
	err, _ := r.Context().Value(refusalKey{}).(error)
	if err == nil {
		return false
	}
	s.Gate.observe("http", err)
	w.Header().Set("Connection", "close")
	code, msg := httpFailure(err, dest)
	s.reply(w, r, code, msg, err)
	return true
}

// refusalKey is the context key of a connection's refusal (an Admission's
// *LimitError).
type refusalKey struct{}

// connRefusal is the server's ConnContext: it puts in a connection's
// context the refusal that admitListener gave it, if any.
func connRefusal(ctx context.Context, c net.Conn) context.Context {
	if ac, ok := c.(*admittedConn); ok && ac.refusal != nil {
		return context.WithValue(ctx, refusalKey{}, ac.refusal)
	}
	return ctx
}

// admitListener asks the server's Admission about every connection it
// accepts: one from a client not allowed is closed at once; the others
// are handed out as *admittedConn, which hold their place until closed,
// or carry the refusal of a limit for the handler to answer.
type admitListener struct {
	net.Listener
	s *HTTP
}

func (l *admitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, err := l.s.Admission.Admit(c.RemoteAddr())
		if errors.Is(err, ErrNotAllowed) {
			l.s.Gate.observe("http", err)
			l.s.log.Debug("client not allowed; disconnected", "client", c.RemoteAddr().String())
			c.Close()
			continue
		}
		return &admittedConn{Conn: c, release: release, refusal: err}, nil
	}
}

// admittedConn is a client connection that holds a place of an Admission
// (release gives it back when the connection closes), or that a limit
// refuses (refusal).
type admittedConn struct {
	net.Conn
	release func() // nil if refused
	refusal error
}

func (c *admittedConn) Close() error {
	err := c.Conn.Close()
	c.done()
	return err
}

// Abort resets the connection, as abort does.
func (c *admittedConn) Abort() {
	abort(c.Conn)
	c.done()
}

func (c *admittedConn) done() {
	if c.release != nil {
		c.release() // safe to call more than once
	}
}

// CloseWrite half-closes the connection, if it can.
func (c *admittedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("proxy: connection cannot half-close")
}

// WaitReadable waits for the client's socket (see readWaiter).
func (c *admittedConn) WaitReadable() error { return waitReadable(c.Conn) }

// ReadFrom and WriteTo let io.Copy use the connection's own (a
// *net.TCPConn splices).
func (c *admittedConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }
func (c *admittedConn) WriteTo(w io.Writer) (int64, error)  { return io.Copy(w, c.Conn) }

// writeRawHTTPError answers on a hijacked connection.
func writeRawHTTPError(c net.Conn, code int, msg string) {
	body := httpOneLine(msg) + "\n"
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
}

// httpOneLine keeps an error body to one line.
func httpOneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}
