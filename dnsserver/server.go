package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/state"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("dnsserver: server closed")

// DefaultQueryTimeout bounds answering one query; see Server.Timeout.
const DefaultQueryTimeout = 5 * time.Second

const (
	// udpReadSize is the largest query read over UDP. Queries are small;
	// it is also the payload size the server's own EDNS0 answers offer.
	udpReadSize = 4096
	// writeTimeout bounds writing one answer to a TCP client.
	writeTimeout = 5 * time.Second
)

// Server is the local DNS server that applications ask: it answers over UDP
// and TCP through a Resolver, so only ever through the tunnel. A query is
// answered
//
//   - REFUSED at once if Allow does not allow its client (whose TCP
//     connections are closed as they are accepted);
//   - NOTIMP if its opcode is not QUERY, and FORMERR if it does not have
//     exactly one question or cannot be parsed; a message too short for a
//     DNS header, or that is itself a response, gets no answer;
//   - REFUSED at once while the tunnel is not Connected (the gate is
//     blocked), even if the answer is cached;
//   - REFUSED if the config names no DNS server, with a warning logged each
//     time that becomes so, not for every query;
//   - SERVFAIL if the servers fail or time out, or, at once, if the
//     Resolver's MaxInFlight queries are in flight already (a passing
//     overload, not a policy: a client may well try again, or another
//     server), with a warning logged at most every 10 s;
//   - otherwise with the servers' answer (or the cache's) under the
//     client's ID.
//
// Refusals and failures carry, for a client that sent EDNS0, an Extended DNS
// Error (RFC 8914) that says why. The client's OPT record goes upstream as it
// is. Over UDP, an answer larger than the client's buffer (512 bytes, or its
// EDNS0 payload size) is truncated with TC set, so that the client asks again
// over TCP.
//
// The protocol is github.com/miekg/dns's server, one per socket.
type Server struct {
	// Resolver answers the queries. Required.
	Resolver *Resolver
	// Logger gets one debug line per query and a warning when queries are
	// refused for want of a DNS server; nil discards.
	Logger *slog.Logger
	// Timeout bounds answering one query; 0 means DefaultQueryTimeout.
	Timeout time.Duration
	// Observe, if set, learns every answer: its rcode, and whether it came
	// from the cache. It is called from many goroutines.
	Observe func(rcode int, cached bool)
	// Allow, if set, says whether a client (its address) may ask; a query
	// from any other is answered REFUSED, and its TCP connections are
	// closed as they are accepted. nil allows
	// every client. It is called once for each query, and once for each
	// TCP connection as it is accepted, from many goroutines.
	Allow func(client net.Addr) bool

	initOnce sync.Once
	log      *slog.Logger
	// ctx is the parent of every query's context; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	// noServers is set once the warning that the config has no DNS server
	// is logged, and cleared when a query finds servers again.
	noServers atomic.Bool
	// busyWarned is when the warning that too many queries are in flight
	// was last logged, in Unix nanoseconds.
	busyWarned atomic.Int64

	// mu guards the fields below.
	mu     sync.Mutex
	closed bool // by Shutdown or Close
	killed bool // by Close: TCP connections are closed as they come
	runs   map[*run]struct{}
	conns  map[*trackedConn]struct{}
}

// run is one miekg server, serving one socket for Serve.
type run struct {
	srv      *dns.Server
	started  chan struct{} // closed once srv is serving
	done     chan struct{} // closed once srv.ActivateAndServe has returned
	stopping atomic.Bool
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.log = s.Logger
		if s.log == nil {
			s.log = slog.New(slog.DiscardHandler)
		}
		s.log = s.log.With("component", "dns")
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.runs = make(map[*run]struct{})
		s.conns = make(map[*trackedConn]struct{})
	})
}

// Serve answers queries that come on pc (UDP) and l (TCP), usually bound to
// the same address; either may be nil, not both. It owns both and closes
// them. It returns when both are done: ErrServerClosed after Shutdown or
// Close, or else the error that made one fail (the other is then shut down
// too). Serve may be called more than once, with other sockets.
func (s *Server) Serve(pc net.PacketConn, l net.Listener) error {
	s.init()
	defer func() {
		// miekg's server closes them too, except when it fails to start.
		if pc != nil {
			pc.Close()
		}
		if l != nil {
			l.Close()
		}
	}()
	if pc == nil && l == nil {
		return errors.New("dnsserver: Serve: no socket to serve")
	}
	var runs []*run
	if pc != nil {
		runs = append(runs, s.newRun(&dns.Server{PacketConn: pc, UDPSize: udpReadSize, Handler: s.handler("udp")}))
	}
	if l != nil {
		runs = append(runs, s.newRun(&dns.Server{Listener: &trackingListener{Listener: l, s: s}, Handler: s.handler("tcp")}))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	for _, r := range runs {
		s.runs[r] = struct{}{}
	}
	s.mu.Unlock()

	errc := make(chan error, len(runs))
	for _, r := range runs {
		go func() {
			err := r.srv.ActivateAndServe()
			close(r.done)
			errc <- err
		}()
	}
	var errs []error
	for range runs {
		if err := <-errc; err != nil {
			errs = append(errs, err)
			for _, r := range runs {
				r.stop(context.Background())
			}
		}
	}

	s.mu.Lock()
	for _, r := range runs {
		delete(s.runs, r)
	}
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrServerClosed
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dnsserver: %w", err)
	}
	return nil
}

func (s *Server) newRun(srv *dns.Server) *run {
	r := &run{srv: srv, started: make(chan struct{}), done: make(chan struct{})}
	srv.NotifyStartedFunc = func() { close(r.started) }
	srv.MsgAcceptFunc = acceptQuery
	srv.MsgInvalidFunc = func(m []byte, err error) {
		s.log.Debug("malformed query", "len", len(m), "err", err)
	}
	return r
}

// stop shuts r's server down, waiting up to ctx for queries being answered,
// unless it is stopping already.
func (r *run) stop(ctx context.Context) {
	select {
	case <-r.started: // miekg's Shutdown fails on a server not yet started
	case <-r.done:
		return
	}
	if r.stopping.CompareAndSwap(false, true) {
		r.srv.ShutdownContext(ctx)
	}
}

// Shutdown stops the server: it closes the sockets, lets the queries being
// answered finish and waits for them, until ctx is done. Then it closes what
// is left as Close does, and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	runs := s.shut(false)
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Go(func() { r.stop(ctx) })
	}
	wg.Wait()
	for _, r := range runs {
		select {
		case <-r.done:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
	return nil
}

// Close stops the server at once: it closes the sockets and TCP
// connections, cancels the queries being answered and waits for them to
// end. It may be called more than once.
func (s *Server) Close() error {
	s.init()
	runs := s.shut(true)
	s.cancel()
	for _, r := range runs {
		r.stop(doneCtx)
	}
	for _, r := range runs {
		<-r.done
	}
	return nil
}

// shut marks the server closed, and killed too if kill, closing the TCP
// connections. It returns the servers running.
func (s *Server) shut(kill bool) []*run {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if kill {
		s.killed = true
		for c := range s.conns {
			c.Conn.Close()
		}
	}
	runs := make([]*run, 0, len(s.runs))
	for r := range s.runs {
		runs = append(runs, r)
	}
	return runs
}

// acceptQuery is the MsgAcceptFunc: it lets through queries with one
// question and rejects everything else before the message is parsed.
func acceptQuery(h dns.Header) dns.MsgAcceptAction {
	const qr = 1 << 15
	switch {
	case h.Bits&qr != 0:
		return dns.MsgIgnore // a response: answering it could feed a loop
	case int(h.Bits>>11)&0xF != dns.OpcodeQuery:
		return dns.MsgRejectNotImplemented
	case h.Qdcount != 1, h.Ancount > 0, h.Nscount > 0, h.Arcount > 2:
		return dns.MsgReject // more than an OPT and a TSIG: not a query we answer
	}
	return dns.MsgAccept
}

func (s *Server) handler(network string) dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		start := time.Now()
		remote := w.RemoteAddr()
		var m *dns.Msg
		var src source
		var err error
		if s.allowed(remote) {
			m, src, err = s.answer(q)
		} else {
			m, err = errorReply(q, dns.RcodeRefused, dns.ExtendedErrorCodeProhibited, "client not allowed"), errNotAllowed
		}
		if s.Observe != nil {
			s.Observe(m.Rcode, src == fromCache)
		}
		if network == "udp" {
			m.Truncate(udpSize(q))
		} else {
			m.Compress = true
		}
		werr := w.WriteMsg(m)
		if s.log.Enabled(s.ctx, slog.LevelDebug) {
			var name, qtype string
			if len(q.Question) > 0 {
				name, qtype = q.Question[0].Name, dns.TypeToString[q.Question[0].Qtype]
			}
			var client string
			if remote != nil {
				client = remote.String()
			}
			attrs := []any{"net", network, "client", client, "name", name, "type", qtype, "rcode", dns.RcodeToString[m.Rcode],
				"cached", src == fromCache, "took", time.Since(start)}
			if m.Truncated {
				attrs = append(attrs, "truncated", true)
			}
			if err != nil {
				attrs = append(attrs, "err", err)
			}
			if werr != nil {
				attrs = append(attrs, "write_err", werr)
			}
			s.log.Debug("query", attrs...)
		}
	})
}

// answer returns the answer to q, where it came from, and the error that
// made it a refusal or a failure.
func (s *Server) answer(q *dns.Msg) (*dns.Msg, source, error) {
	switch {
	case q.Opcode != dns.OpcodeQuery:
		return errorReply(q, dns.RcodeNotImplemented, dns.ExtendedErrorCodeOther, ""), 0, nil
	case len(q.Question) != 1:
		return errorReply(q, dns.RcodeFormatError, dns.ExtendedErrorCodeOther, ""), 0, nil
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultQueryTimeout
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	m, src, err := s.Resolver.resolve(ctx, q)
	switch {
	case err == nil:
		s.noServers.Store(false)
		return m, src, nil
	case errors.Is(err, state.ErrBlocked):
		return errorReply(q, dns.RcodeRefused, dns.ExtendedErrorCodeNotReady, err.Error()), src, err
	case errors.Is(err, ErrNoServers):
		if s.noServers.CompareAndSwap(false, true) {
			s.log.Warn("the tunnel's config has no DNS server: DNS queries are refused (warren never asks the host's resolver)")
		}
		return errorReply(q, dns.RcodeRefused, dns.ExtendedErrorCodeProhibited, "the tunnel's config has no DNS server"), src, err
	case errors.Is(err, ErrTooManyQueries):
		now := time.Now().UnixNano()
		if last := s.busyWarned.Load(); now-last >= int64(busyWarnInterval) && s.busyWarned.CompareAndSwap(last, now) {
			s.log.Warn("too many DNS queries in flight: answering SERVFAIL at once until some are answered")
		}
		return errorReply(q, dns.RcodeServerFailure, dns.ExtendedErrorCodeOther, "too many queries in flight"), src, err
	default:
		s.noServers.Store(false)
		return errorReply(q, dns.RcodeServerFailure, dns.ExtendedErrorCodeNetworkError, "the tunnel's DNS servers did not answer"), src, err
	}
}

// errorReply is an answer to q with rcode and no records. If q has an OPT
// record, so does the answer, with an Extended DNS Error if text is set.
func errorReply(q *dns.Msg, rcode int, ede uint16, text string) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(q, rcode)
	m.RecursionAvailable = true
	if opt := q.IsEdns0(); opt != nil {
		m.SetEdns0(udpReadSize, opt.Do())
		if text != "" {
			o := m.IsEdns0()
			o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: ede, ExtraText: text})
		}
	}
	return m
}

// udpSize is the largest answer q's client takes over UDP.
func udpSize(q *dns.Msg) int {
	size := dns.MinMsgSize
	if opt := q.IsEdns0(); opt != nil {
		size = max(size, int(opt.UDPSize()))
	}
	return size
}

// trackingListener hands out connections the server can close all at once,
// and that time out writing to a client that does not read.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil && transientAcceptError(err) && !l.s.isClosed() {
			// Out of file descriptors, say: miekg's server would retry at
			// once, in a busy loop. Wait a little, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		if err != nil {
			return nil, err
		}
		if !l.s.allowed(c.RemoteAddr()) {
			l.s.log.Debug("client not allowed; disconnected", "net", "tcp", "client", c.RemoteAddr().String())
			c.Close()
			continue
		}
		tc := &trackedConn{Conn: c, s: l.s}
		l.s.mu.Lock()
		if l.s.killed {
			c.Close() // miekg's server will fail to read it, and drop it
		} else {
			l.s.conns[tc] = struct{}{}
		}
		l.s.mu.Unlock()
		return tc, nil
	}
}

// busyWarnInterval is how often, at most, the server warns that too many
// queries are in flight.
const busyWarnInterval = 10 * time.Second

// errNotAllowed is why a query from a client that Allow refuses is REFUSED.
var errNotAllowed = errors.New("dnsserver: client not allowed")

// allowed reports whether Allow lets client ask.
func (s *Server) allowed(client net.Addr) bool {
	return s.Allow == nil || s.Allow(client)
}

func transientAcceptError(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

type trackedConn struct {
	net.Conn
	s *Server
}

func (c *trackedConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return c.Conn.Write(b)
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}
