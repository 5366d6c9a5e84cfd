package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	socks5 "github.com/things-go/go-socks5"
	"github.com/things-go/go-socks5/statute"

	"github.com/warren-vpn/warren/state"
)

// Defaults for SOCKS5's optional fields.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 30 * time.Second
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// SOCKS5 is a SOCKS5 server (RFC 1928) whose every flow goes through a Gate.
//
// CONNECT and UDP ASSOCIATE are supported with IPv4, IPv6 and domain-name
// addresses; names are resolved by Resolver, through the tunnel. While the
// gate is blocked, every CONNECT and ASSOCIATE is answered with reply 0x02
// (connection not allowed by ruleset), at once or after the gate's Hold, and
// its connection closed. BIND is answered 0x07 (command not supported). A
// client that sends anything but SOCKS5, or wrong credentials, or does not
// finish its request within HandshakeTimeout, is disconnected; other
// clients are not affected. A client that Admission does not allow is
// disconnected as it is accepted; one over a limit of flows is answered
// 0x02 too, once it has authenticated and sent its request. See udp.go for
// how UDP associations work.
//
// The protocol itself is github.com/things-go/go-socks5's, with its name
// resolution (which would use the host's resolver) and its dialing (which
// would use the host's network) replaced.
type SOCKS5 struct {
	// Gate is how flows leave. Required.
	Gate *Gate
	// Resolver resolves names in CONNECT requests. If nil, requests by name
	// fail with reply 0x04 (host unreachable).
	Resolver Resolver
	// Credentials, if set, are required (RFC 1929 username/password
	// authentication); clients that offer no other method are refused.
	// If nil, no authentication is asked for.
	Credentials *Credentials
	// Logger gets one debug line per request; nil discards.
	Logger *slog.Logger
	// HandshakeTimeout bounds the time from accepting a connection to the
	// end of the SOCKS5 request; 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DialTimeout bounds resolving and connecting; 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// Admission, if set, says which clients are served and bounds their
	// flows: each connection holds a place from accept to close. nil
	// serves every client, without bound.
	Admission *Admission
	// UDPIdleTimeout ends a UDP association, closing its control
	// connection, after this long without a datagram either way; 0 means
	// DefaultUDPIdleTimeout, and a negative value never.
	UDPIdleTimeout time.Duration

	initOnce sync.Once
	srv      *socks5.Server
	log      *slog.Logger
	// ctx ends when the server closes, which cuts the relays.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards the fields below.
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	handlers  sync.WaitGroup
}

func (s *SOCKS5) init() {
	s.initOnce.Do(func() {
		s.log = s.Logger
		if s.log == nil {
			s.log = slog.New(slog.DiscardHandler)
		}
		s.log = s.log.With("component", "socks5")
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[net.Conn]struct{})
		opts := []socks5.Option{
			socks5.WithResolver(keepNames{}),
			socks5.WithConnectHandle(s.connect),
			socks5.WithAssociateHandle(s.associate),
			socks5.WithBindHandle(notSupported),
			socks5.WithDial(func(context.Context, string, string) (net.Conn, error) {
				return nil, errors.New("proxy: no dialing outside the gate")
			}),
			socks5.WithLogger(socksLogger{s.log}),
		}
		if s.Credentials != nil {
			opts = append(opts, socks5.WithAuthMethods([]socks5.Authenticator{
				socks5.UserPassAuthenticator{Credentials: credentialStore{s.Credentials, s.Gate, s.log}},
			}))
		}
		s.srv = socks5.NewServer(opts...)
	})
}

// Serve accepts connections on l and serves each in its own goroutine. It
// owns l and closes it. It returns ErrServerClosed after Shutdown or Close,
// or the error that made Accept fail.
func (s *SOCKS5) Serve(l net.Listener) error {
	s.init()
	if !s.track(l, nil) {
		l.Close()
		return ErrServerClosed
	}
	defer s.untrack(l, nil)
	defer l.Close()
	return acceptLoop(l, s.isClosed, s.log, func(c net.Conn) bool {
		release, refusal := s.Admission.Admit(c.RemoteAddr())
		if errors.Is(refusal, ErrNotAllowed) {
			s.Gate.observe("socks5", refusal)
			s.log.Debug("client not allowed; disconnected", "client", c.RemoteAddr().String())
			c.Close()
			return true
		}
		if !s.track(nil, c) {
			if release != nil {
				release()
			}
			c.Close()
			return false
		}
		go s.serveConn(c, release, refusal)
		return true
	})
}

// serveConn serves one client connection. If refusal is set (a limit is
// reached), the client's request is answered with it; release, if set,
// gives the connection's place back to the Admission.
func (s *SOCKS5) serveConn(c net.Conn, release func(), refusal error) {
	defer s.handlers.Done()
	defer s.untrack(nil, c)
	if release != nil {
		defer release()
	}
	timeout := s.HandshakeTimeout
	if timeout == 0 {
		timeout = DefaultHandshakeTimeout
	}
	c.SetDeadline(time.Now().Add(timeout))
	served := c
	if refusal != nil {
		served = &refusedConn{Conn: c, err: refusal}
	}
	if err := s.srv.ServeConn(served); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("request failed", "client", c.RemoteAddr().String(), "err", err)
	}
}

// refusedConn is a client connection whose request is to be refused with
// err, once it has come: the client learns why.
type refusedConn struct {
	net.Conn
	err error
}

// refusal returns the error a client's request is to be refused with, if
// any, and ends the handshake's deadline: the request has come.
func refusal(w io.Writer) error {
	if rc, ok := w.(*refusedConn); ok {
		return rc.err
	}
	if c, ok := w.(net.Conn); ok {
		c.SetDeadline(time.Time{})
	}
	return nil
}

// transientAcceptError reports whether an Accept error passes by itself.
func transientAcceptError(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

// acceptLoop accepts connections on l and hands each to handle, until
// handle returns false or Accept fails for good: it returns
// ErrServerClosed if closed reports true by then, and Accept's error
// otherwise. Out of file descriptors, or a client gone during accept, it
// waits a little and goes on, as net/http does.
func acceptLoop(l net.Listener, closed func() bool, log *slog.Logger, handle func(net.Conn) bool) error {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if closed() {
				return ErrServerClosed
			}
			if !transientAcceptError(err) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("accept failed; retrying", "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !handle(c) {
			return ErrServerClosed
		}
	}
}

// track adds a listener or a connection to the server's sets, unless the
// server is closed. A connection counts as a running handler.
func (s *SOCKS5) track(l net.Listener, c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if l != nil {
		s.listeners[l] = struct{}{}
	}
	if c != nil {
		s.conns[c] = struct{}{}
		s.handlers.Add(1)
	}
	return true
}

func (s *SOCKS5) untrack(l net.Listener, c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, l)
	delete(s.conns, c)
}

func (s *SOCKS5) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Shutdown stops accepting, resets every client connection (cutting their
// flows) and waits for their handlers to return, or for ctx to end.
func (s *SOCKS5) Shutdown(ctx context.Context) error {
	s.Close()
	done := make(chan struct{})
	go func() {
		s.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops accepting and resets every client connection, cutting their
// flows, without waiting for their handlers.
func (s *SOCKS5) Close() error {
	s.init()
	s.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		abort(c)
	}
	return nil
}

// connect handles CONNECT: dial through the gate, answer, relay.
func (s *SOCKS5) connect(ctx context.Context, w io.Writer, req *socks5.Request) error {
	client, ok := w.(net.Conn)
	if !ok {
		return fmt.Errorf("proxy: CONNECT on a %T, not a connection", w)
	}
	dest := req.DestAddr
	timeout := s.DialTimeout
	if timeout == 0 {
		timeout = DefaultDialTimeout
	}
	var target net.Conn
	err := refusal(w)
	if err == nil {
		dctx, cancel := context.WithTimeout(ctx, timeout)
		target, err = s.dial(dctx, dest)
		cancel()
	}
	var release func()
	if err == nil {
		if release, err = s.Gate.Track(client); err != nil {
			target.Close()
		}
	}
	s.Gate.observe("socks5", err)
	if err != nil {
		rep := replyCode(err)
		s.log.Debug("connect refused", "client", client.RemoteAddr().String(), "to", dest.Address(), "reply", rep, "err", err)
		if werr := socks5.SendReply(w, rep, nil); werr != nil {
			return werr
		}
		return nil // answered; ServeConn closes the connection
	}
	defer release()
	defer target.Close()
	s.log.Debug("connect", "client", client.RemoteAddr().String(), "to", dest.Address())
	if err := socks5.SendReply(w, statute.RepSuccess, boundAddr(target)); err != nil {
		return err
	}
	client.SetDeadline(time.Time{})
	fromClient := req.Reader
	if br, ok := fromClient.(*bufio.Reader); ok {
		fromClient = &readAhead{r: br, c: client} // go-socks5's, over client
	}
	return relay(s.ctx, client, fromClient, target)
}

// dial dials dest through the gate, resolving a name through the tunnel.
func (s *SOCKS5) dial(ctx context.Context, dest *statute.AddrSpec) (net.Conn, error) {
	host := dest.FQDN
	if host == "" {
		ip, ok := netip.AddrFromSlice(dest.IP)
		if !ok {
			return nil, fmt.Errorf("proxy: bad address %v", dest.IP)
		}
		host = ip.String()
	}
	return dialHost(ctx, s.Gate, s.Resolver, "tcp", host, uint16(dest.Port))
}

// replyCode maps a failure to open a flow to a SOCKS5 reply.
func replyCode(err error) uint8 {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, state.ErrBlocked), errors.Is(err, ErrTooManyFlows):
		return statute.RepRuleFailure
	case errors.Is(err, syscall.ECONNREFUSED):
		return statute.RepConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return statute.RepNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, context.DeadlineExceeded), errors.As(err, &dnsErr):
		return statute.RepHostUnreachable
	}
	return statute.RepServerFailure
}

// boundAddr is the address a CONNECT reply reports: the tunnel-side local
// address of the flow, or 0.0.0.0:0 when it has none that SOCKS5 can carry.
func boundAddr(c net.Conn) net.Addr {
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		return a
	}
	return &net.TCPAddr{IP: net.IPv4zero}
}

// relay copies both ways until both are done. A direction that ends cleanly
// half-closes the other side, or closes both if that side cannot half-close;
// an error on either side resets both (see abort), and so does the end of
// ctx (the server's closing), even after one direction has ended. It copies
// one way in the calling goroutine and the other in one more, through
// buffers that an idle connection does not hold (see copyPooled).
func relay(ctx context.Context, client net.Conn, fromClient io.Reader, target net.Conn) error {
	var (
		once  sync.Once
		first error
	)
	// A goroutine only once ctx ends. After a half-close, nothing else
	// would end a relay whose destination stays open and silent.
	defer context.AfterFunc(ctx, func() {
		abort(client)
		abort(target)
	})()
	pipe := func(dst net.Conn, src io.Reader) {
		err := copyPooled(dst, src)
		if err == nil {
			cw, ok := dst.(interface{ CloseWrite() error })
			if !ok || cw.CloseWrite() != nil {
				client.Close()
				target.Close()
			}
			return
		}
		once.Do(func() {
			// A flow cut on one side is reset on the other, so that a
			// cut download never looks like a complete one.
			first = err
			abort(client)
			abort(target)
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(target, fromClient)
	}()
	pipe(client, target)
	<-done
	return first
}

// keepNames is a go-socks5 resolver that resolves nothing: names stay in the
// request for connect to resolve through the tunnel.
type keepNames struct{}

func (keepNames) Resolve(ctx context.Context, name string) (context.Context, net.IP, error) {
	return ctx, nil, nil
}

// credentialStore adapts Credentials to go-socks5, logging and counting
// failures.
type credentialStore struct {
	c    *Credentials
	gate *Gate
	log  *slog.Logger
}

func (cs credentialStore) Valid(user, password, client string) bool {
	if cs.c.Valid(user, password) {
		return true
	}
	cs.log.Warn("authentication failed", "client", client, "user", user)
	cs.gate.observe("socks5", errAuth)
	return false
}

func notSupported(ctx context.Context, w io.Writer, req *socks5.Request) error {
	return socks5.SendReply(w, statute.RepCommandNotSupported, nil)
}

// socksLogger adapts go-socks5's logger to slog, at debug level.
type socksLogger struct{ l *slog.Logger }

func (s socksLogger) Errorf(format string, args ...any) { s.l.Debug(fmt.Sprintf(format, args...)) }
