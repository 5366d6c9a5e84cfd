package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// DefaultUDPIdleTimeout is how long a forwarded UDP session, or a SOCKS5 UDP
// association, lives without traffic either way.
const DefaultUDPIdleTimeout = 2 * time.Minute

// Forward is a port forward into the tunnel (--forward, wireproxy's
// TCPClientTunnel): connections to a local listener, and datagrams to a
// local UDP socket, go to Target inside the tunnel, through the gate.
//
// While the gate is blocked, a TCP connection is reset as soon as it is
// accepted and a datagram is dropped. So are a connection, and the
// datagrams of a new UDP session, from a client that Admission does not
// allow or that is over a limit of flows. Target's host, if it is a name,
// is resolved through the tunnel for each new connection or UDP session.
type Forward struct {
	// Gate is how flows leave. Required.
	Gate *Gate
	// Resolver resolves Target's host if it is a name. Required then.
	Resolver Resolver
	// Target is host:port inside the tunnel. Required.
	Target string
	// Logger gets one debug line per connection or session; nil discards.
	Logger *slog.Logger
	// DialTimeout bounds resolving and connecting; 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP session (one local client address) after
	// this long without a datagram either way; 0 means
	// DefaultUDPIdleTimeout, and a negative value never.
	UDPIdleTimeout time.Duration
	// Admission, if set, says which clients are served and bounds their
	// flows: each TCP connection and UDP session holds a place while it
	// lasts. nil serves every client, without bound.
	Admission *Admission

	initOnce sync.Once
	log      *slog.Logger
	host     string
	port     uint16
	initErr  error
	// ctx ends when the forward closes, which cuts the relays.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards the fields below.
	mu       sync.Mutex
	closers  map[any]func() // listeners, sockets and connections to close
	closed   bool
	handlers sync.WaitGroup
}

func (f *Forward) init() error {
	f.initOnce.Do(func() {
		f.log = orDiscard(f.Logger).With("component", "forward", "to", f.Target)
		f.closers = make(map[any]func())
		f.ctx, f.cancel = context.WithCancel(context.Background())
		f.host, f.port, f.initErr = splitHostPort(f.Target)
	})
	return f.initErr
}

// splitHostPort splits a host:port whose port is a number from 1 to 65535.
func splitHostPort(hostport string) (string, uint16, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, fmt.Errorf("proxy: %q is not host:port", hostport)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 || host == "" {
		return "", 0, fmt.Errorf("proxy: %q is not host:port with a port from 1 to 65535", hostport)
	}
	return host, uint16(port), nil
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// track registers something to close on Close; it returns false if the
// forward is closed already. A handler counts as running until untrack.
func (f *Forward) track(key any, close func(), handler bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.closers[key] = close
	if handler {
		f.handlers.Add(1)
	}
	return true
}

func (f *Forward) untrack(key any, handler bool) {
	f.mu.Lock()
	delete(f.closers, key)
	f.mu.Unlock()
	if handler {
		f.handlers.Done()
	}
}

func (f *Forward) dialTimeout() time.Duration {
	if f.DialTimeout == 0 {
		return DefaultDialTimeout
	}
	return f.DialTimeout
}

// ServeTCP accepts connections on l and forwards each to Target. It owns l
// and closes it; it returns ErrServerClosed after Close or Shutdown.
func (f *Forward) ServeTCP(l net.Listener) error {
	if err := f.init(); err != nil {
		l.Close()
		return err
	}
	if !f.track(l, func() { l.Close() }, false) {
		l.Close()
		return ErrServerClosed
	}
	defer f.untrack(l, false)
	defer l.Close()
	return acceptLoop(l, f.isClosed, f.log, func(c net.Conn) bool {
		release, err := f.Admission.Admit(c.RemoteAddr())
		if err != nil {
			f.Gate.observe("forward", err)
			f.log.Debug("connection refused", "client", c.RemoteAddr().String(), "err", err)
			abort(c)
			return true
		}
		if !f.track(c, func() { abort(c) }, true) {
			release()
			c.Close()
			return false
		}
		go f.forwardTCP(c, release)
		return true
	})
}

// forwardTCP forwards c, which holds the place admitted gives back.
func (f *Forward) forwardTCP(c net.Conn, admitted func()) {
	defer f.untrack(c, true)
	defer admitted()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), f.dialTimeout())
	target, err := dialHost(ctx, f.Gate, f.Resolver, "tcp", f.host, f.port)
	cancel()
	var release func()
	if err == nil {
		if release, err = f.Gate.Track(c); err != nil {
			target.Close()
		}
	}
	f.Gate.observe("forward", err)
	if err != nil {
		f.log.Debug("connection refused", "client", c.RemoteAddr().String(), "err", err)
		abort(c) // a reset: the client learns at once
		return
	}
	defer release()
	defer target.Close()
	f.log.Debug("connection", "client", c.RemoteAddr().String())
	relay(f.ctx, c, c, target)
}

// ServeUDP reads datagrams from pc and forwards them to Target, one tunnel
// socket per client address; replies go back to that client. It owns pc
// and closes it; it returns ErrServerClosed after Close or Shutdown.
func (f *Forward) ServeUDP(pc net.PacketConn) error {
	if err := f.init(); err != nil {
		pc.Close()
		return err
	}
	if !f.track(pc, func() { pc.Close() }, false) {
		pc.Close()
		return ErrServerClosed
	}
	defer f.untrack(pc, false)
	defer pc.Close()
	sessions := make(map[string]*udpSession) // by client address; only this goroutine uses it
	var mu sync.Mutex                        // guards sessions against the sessions' own removal
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if f.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue // e.g. an ICMP error from an earlier reply
		}
		key := from.String()
		mu.Lock()
		s := sessions[key]
		mu.Unlock()
		if s == nil {
			release, err := f.Admission.Admit(from)
			if err != nil {
				f.Gate.observe("forward-udp", err)
				f.log.Debug("datagram dropped", "client", key, "err", err)
				continue
			}
			if s, err = f.newUDPSession(pc, from, release); err != nil {
				f.log.Debug("datagram dropped", "client", key, "err", err)
				continue
			}
			mu.Lock()
			sessions[key] = s
			mu.Unlock()
			go func() {
				s.run()
				mu.Lock()
				delete(sessions, key)
				mu.Unlock()
			}()
		}
		s.touch()
		if _, err := s.tunnel.Write(buf[:n]); err != nil {
			f.log.Debug("datagram dropped", "client", key, "err", err)
		}
	}
}

// udpSession is one client's datagrams through the tunnel.
type udpSession struct {
	f      *Forward
	local  net.PacketConn
	client net.Addr
	tunnel net.Conn
	last   chan struct{} // signalled on traffic, to push back the idle timeout
	// release gives the session's place back to the Admission.
	release func()
}

// newUDPSession opens a session for client, which holds the place release
// gives back: when the session ends, or at once if it cannot begin.
func (f *Forward) newUDPSession(local net.PacketConn, client net.Addr, release func()) (*udpSession, error) {
	ctx, cancel := context.WithTimeout(context.Background(), f.dialTimeout())
	defer cancel()
	tunnel, err := dialHost(ctx, f.Gate, f.Resolver, "udp", f.host, f.port)
	f.Gate.observe("forward-udp", err)
	if err != nil {
		release()
		return nil, err
	}
	s := &udpSession{f: f, local: local, client: client, tunnel: tunnel, last: make(chan struct{}, 1), release: release}
	if !f.track(s, func() { tunnel.Close() }, true) {
		tunnel.Close()
		release()
		return nil, ErrServerClosed
	}
	f.log.Debug("UDP session", "client", client.String())
	return s, nil
}

func (s *udpSession) touch() {
	select {
	case s.last <- struct{}{}:
	default:
	}
}

// run relays replies to the client until the session is idle too long, its
// tunnel socket fails (the gate closed) or the forward is closed.
func (s *udpSession) run() {
	defer s.f.untrack(s, true)
	defer s.release()
	defer s.tunnel.Close()
	idle := s.f.UDPIdleTimeout
	if idle == 0 {
		idle = DefaultUDPIdleTimeout
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, err := s.tunnel.Read(buf)
			if err != nil {
				if !errors.Is(err, syscall.ECONNREFUSED) {
					return
				}
				continue // an ICMP port unreachable: UDP goes on
			}
			s.touch()
			s.local.WriteTo(buf[:n], s.client)
		}
	}()
	var timer *time.Timer
	var expired <-chan time.Time // nil: the session never idles out
	if idle > 0 {
		timer = time.NewTimer(idle)
		defer timer.Stop()
		expired = timer.C
	}
	for {
		select {
		case <-s.last:
			if timer != nil {
				timer.Reset(idle)
			}
		case <-expired:
			s.f.log.Debug("UDP session idle; closed", "client", s.client.String())
			s.tunnel.Close()
			<-done
			return
		case <-done:
			return
		}
	}
}

func (f *Forward) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Close stops the listeners and closes every connection and session,
// without waiting.
func (f *Forward) Close() error {
	f.init()
	f.cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for _, c := range f.closers {
		c()
	}
	return nil
}

// Shutdown closes everything, as Close does, and waits for the handlers
// to return, or for ctx to end.
func (f *Forward) Shutdown(ctx context.Context) error {
	f.Close()
	return waitGroup(ctx, &f.handlers)
}

func waitGroup(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Expose makes a local service reachable from inside the tunnel (--expose,
// wireproxy's TCPServerTunnel): it listens on Port of warren's own tunnel
// addresses (IPv4 and IPv6, as the tunnel has them) whenever the tunnel is
// connected, and connects each connection to Target on the host's network.
// That is its purpose: it lets the tunnel in to one service of the user's
// choosing; it is not a way out for applications. Connections are flows of
// the gate, cut when it closes.
type Expose struct {
	// Gate says when the tunnel is up, and listens in it. Required.
	Gate *Gate
	// Port is the port in the tunnel. Required.
	Port uint16
	// Target is the local service, host:port. Required.
	Target string
	// Dial connects to Target; nil means a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Logger gets a line when the listeners come up or fail, and a debug
	// line per connection; nil discards.
	Logger *slog.Logger
	// DialTimeout bounds connecting to Target; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// Admission, if set, bounds the connections' flows (each holds a place
	// while it lasts); its AllowFrom does not apply, since they come from
	// the tunnel. A connection over a limit is reset. nil: no bound.
	Admission *Admission
}

// Run listens in the tunnel each time the gate opens, until ctx ends. It
// returns ctx's error, after closing its listeners and connections and
// waiting for their goroutines.
func (e *Expose) Run(ctx context.Context) error {
	log := orDiscard(e.Logger).With("component", "expose", "port", e.Port, "to", e.Target)
	dial := e.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	timeout := e.DialTimeout
	if timeout == 0 {
		timeout = DefaultDialTimeout
	}
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		if err := e.Gate.WaitOpen(ctx); err != nil {
			return err
		}
		changed := e.Gate.Changed()
		var ls []net.Listener
		var errs []error
		for _, network := range []string{"tcp4", "tcp6"} {
			l, err := e.Gate.Listen(ctx, network, e.Port)
			if err != nil {
				if !errors.Is(err, syscall.EADDRNOTAVAIL) {
					errs = append(errs, err)
				}
				continue
			}
			ls = append(ls, l)
		}
		if len(errs) > 0 || len(ls) == 0 {
			log.Error("cannot listen in the tunnel", "err", errors.Join(errs...))
		} else {
			log.Info("listening in the tunnel")
		}
		var accepting sync.WaitGroup
		for _, l := range ls {
			accepting.Add(1)
			go func() {
				defer accepting.Done()
				for {
					c, err := l.Accept()
					if err != nil {
						return // the gate closed it, or ctx ended
					}
					conns.Add(1)
					go func() {
						defer conns.Done()
						e.serve(ctx, c, dial, timeout, log)
					}()
				}
			}()
		}
		select {
		case <-ctx.Done():
		case <-changed:
		}
		for _, l := range ls {
			l.Close()
		}
		accepting.Wait()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func (e *Expose) serve(ctx context.Context, c net.Conn, dial func(context.Context, string, string) (net.Conn, error), timeout time.Duration, log *slog.Logger) {
	defer c.Close()
	admitted, err := e.Admission.admit(c.RemoteAddr(), false)
	if err != nil {
		e.Gate.observe("expose", err)
		log.Debug("connection refused", "from", c.RemoteAddr().String(), "err", err)
		abort(c)
		return
	}
	defer admitted()
	release, err := e.Gate.Track(c)
	if err != nil {
		e.Gate.observe("expose", err)
		abort(c)
		return
	}
	defer release()
	stop := context.AfterFunc(ctx, func() { abort(c) })
	defer stop()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	target, err := dial(dctx, "tcp", e.Target)
	cancel()
	e.Gate.observe("expose", err)
	if err != nil {
		log.Debug("cannot reach the local service", "from", c.RemoteAddr().String(), "err", err)
		abort(c)
		return
	}
	defer target.Close()
	log.Debug("connection", "from", c.RemoteAddr().String())
	relay(ctx, c, c, target)
}
