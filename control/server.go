package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/warren-vpn/warren/state"
)

// Machine is what the API steers: *state.Machine satisfies it.
type Machine interface {
	// Current returns the latest published snapshot.
	Current() state.Snapshot
	// Connect, Disconnect and Reconnect are commands; each returns the
	// snapshot it led to.
	Connect(ctx context.Context) (state.Snapshot, error)
	Disconnect(ctx context.Context) (state.Snapshot, error)
	Reconnect(ctx context.Context) (state.Snapshot, error)
	// Ping answers from the machine's own goroutine, proving it is not stuck.
	Ping(ctx context.Context) (state.Snapshot, error)
	// Subscribe returns every published snapshot; a slow reader loses the
	// oldest but always gets the latest. The channel is closed by cancel or
	// when the machine shuts down.
	Subscribe() (<-chan state.Snapshot, func())
}

var _ Machine = (*state.Machine)(nil)

// TunnelStats is what the tunnel that is up has done; the zero value when
// none is up.
type TunnelStats struct {
	LastHandshake    time.Time // zero before the first
	RxBytes, TxBytes uint64
}

// Listener is one front-end's listening address, for status: {"socks5",
// "127.0.0.1:1080"}, {"http", ...}, {"dns", ...}, {"forward",
// "127.0.0.1:5432=db:5432"}.
type Listener struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
}

// Timings of the API.
const (
	// ReadyHandshakeAge is how old the last handshake may be for /readyz to
	// answer ready. WireGuard rekeys every 2 minutes while traffic flows, and
	// warren's liveness probes make some at least every 2 minutes; 3 minutes
	// (WireGuard's RejectAfterTime) leaves room.
	ReadyHandshakeAge = 180 * time.Second
	// HealthTimeout is how long /healthz waits for the state machine.
	HealthTimeout = 2 * time.Second
	// KeepaliveInterval is how often /v1/events writes a comment when nothing
	// else happens.
	KeepaliveInterval = 15 * time.Second
	// commandTimeout bounds one command, in case the machine is stuck.
	commandTimeout = 10 * time.Second
	// eventWriteTimeout bounds writing one event to a client that does not
	// read.
	eventWriteTimeout = 10 * time.Second
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("control: server closed")

// Server serves the API. Set its fields before the first Serve and do not
// change them afterwards. Serve may be called several times, with different
// listeners (the unix socket, a TCP address); Shutdown stops them all.
type Server struct {
	// Machine is the state machine the API reports on and steers. Required.
	Machine Machine
	// Stats returns the statistics of the tunnel that is up. nil: none are
	// known, and /readyz never answers ready, since it cannot see a
	// handshake.
	Stats func() TunnelStats
	// Flows returns how many flows are live. nil: reported as 0.
	Flows func() int
	// Listeners returns the front-ends' addresses. nil: none are reported.
	Listeners func() []Listener
	// Reload re-reads the config. On error the running tunnel is left as it
	// was and the error lists the problems, one per line; on success it
	// returns the snapshot the reload led to. nil: reloading is not
	// supported, and /v1/reload answers 501.
	Reload func(ctx context.Context) (state.Snapshot, error)
	// Metrics is served on /metrics. nil: /metrics answers 404.
	Metrics *Metrics
	// Logger gets a line per command and per failed request; nil discards.
	// The token is never logged.
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now. Tests set it.
	Now func() time.Time

	// keepalive overrides KeepaliveInterval; tests shorten it.
	keepalive time.Duration

	initOnce sync.Once
	log      *slog.Logger
	mux      *http.ServeMux
	quit     chan struct{} // closed by Shutdown: ends the event streams

	// mu guards the fields below.
	mu      sync.Mutex
	closed  bool
	servers map[*http.Server]struct{}
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.log = s.Logger
		if s.log == nil {
			s.log = slog.New(slog.DiscardHandler)
		}
		s.log = s.log.With("component", "api")
		s.quit = make(chan struct{})
		s.servers = make(map[*http.Server]struct{})
		mux := http.NewServeMux()
		mux.HandleFunc("/v1/status", s.handleStatus)
		mux.HandleFunc("/v1/connect", s.command("connect", func(ctx context.Context) (state.Snapshot, error) { return s.Machine.Connect(ctx) }))
		mux.HandleFunc("/v1/disconnect", s.command("disconnect", func(ctx context.Context) (state.Snapshot, error) { return s.Machine.Disconnect(ctx) }))
		mux.HandleFunc("/v1/reconnect", s.command("reconnect", func(ctx context.Context) (state.Snapshot, error) { return s.Machine.Reconnect(ctx) }))
		mux.HandleFunc("/v1/reload", s.handleReload)
		mux.HandleFunc("/v1/events", s.handleEvents)
		mux.HandleFunc("/healthz", s.handleHealthz)
		mux.HandleFunc("/readyz", s.handleReadyz)
		mux.HandleFunc("/metrics", s.handleMetrics)
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusNotFound, "no such path: "+r.URL.Path)
		})
		s.mux = mux
	})
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Serve serves the API on l until Shutdown, and then returns
// ErrServerClosed; it owns l and closes it. If token is not empty, every
// request must carry "Authorization: Bearer <token>" or gets 401, /healthz
// and /readyz too, since they are on the same listener. Serve(l, "") is for
// the unix socket, which its file mode protects.
func (s *Server) Serve(l net.Listener, token string) error {
	s.init()
	if s.Machine == nil {
		l.Close()
		return errors.New("control: Server.Machine is nil")
	}
	hs := &http.Server{
		Handler:           s.authenticate(token, s.mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.servers[hs] = struct{}{}
	s.mu.Unlock()

	err := hs.Serve(l)

	s.mu.Lock()
	delete(s.servers, hs)
	s.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return fmt.Errorf("control: %w", err)
}

// Shutdown stops the server: it closes the listeners, ends the open event
// streams, and waits for the requests being answered to finish, until ctx is
// done. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	var servers []*http.Server
	for hs := range s.servers {
		servers = append(servers, hs)
	}
	s.mu.Unlock()
	var errs []error
	for _, hs := range servers {
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// authenticate lets through only requests that carry token, if there is one.
// Both sides are hashed before they are compared, so that the comparison
// takes the same time whatever the length of the guess.
func (s *Server) authenticate(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		sum := sha256.Sum256([]byte(got))
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			s.log.Debug("unauthorized request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="warren"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ErrorResponse is the body of every error answer of the /v1 paths.
type ErrorResponse struct {
	Error string `json:"error"`
	// Problems lists, for a failed reload, each problem of the config.
	Problems []string `json:"problems,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorResponse{Error: msg})
}

func writeText(w http.ResponseWriter, code int, line string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, line)
}

// allow reports whether r uses method, and otherwise answers 405.
func allow(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	w.Header().Set("Allow", method)
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s takes %s, not %s", r.URL.Path, method, r.Method))
	return false
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	writeJSON(w, http.StatusOK, s.status(s.Machine.Current()))
}

// command returns the handler of a command: it runs do and answers with the
// status of the snapshot it led to.
func (s *Server) command(name string, do func(context.Context) (state.Snapshot, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !allow(w, r, http.MethodPost) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), commandTimeout)
		defer cancel()
		snap, err := do(ctx)
		if err != nil {
			s.log.Warn(name+" failed", "err", err)
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("%s: %v", name, err))
			return
		}
		s.log.Info(name+" requested", "state", snap.String())
		writeJSON(w, http.StatusOK, s.status(snap))
	}
}

func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodPost) {
		return
	}
	if s.Reload == nil {
		writeError(w, http.StatusNotImplemented, "reload is not supported by this warren")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), commandTimeout)
	defer cancel()
	snap, err := s.Reload(ctx)
	if err != nil {
		var problems []string
		for _, line := range strings.Split(err.Error(), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				problems = append(problems, line)
			}
		}
		s.log.Info("reload refused; the tunnel is left as it was", "problems", len(problems))
		writeJSON(w, http.StatusUnprocessableEntity, ErrorResponse{
			Error:    "reload: the config was not applied: " + strings.Join(problems, "; "),
			Problems: problems,
		})
		return
	}
	s.log.Info("reload requested", "state", snap.String())
	writeJSON(w, http.StatusOK, s.status(snap))
}

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), HealthTimeout)
	defer cancel()
	if _, err := s.Machine.Ping(ctx); err != nil {
		reason := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			reason = fmt.Sprintf("the state machine did not answer within %v", HealthTimeout)
		}
		writeText(w, http.StatusServiceUnavailable, "unhealthy: "+reason)
		return
	}
	writeText(w, http.StatusOK, "ok")
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	if reason := s.notReady(); reason != "" {
		writeText(w, http.StatusServiceUnavailable, "not ready: "+reason)
		return
	}
	writeText(w, http.StatusOK, "ready")
}

// notReady says why the tunnel is not ready, or returns "" if it is:
// Connected, with a handshake younger than ReadyHandshakeAge.
func (s *Server) notReady() string {
	snap := s.Machine.Current()
	if snap.State != state.Connected {
		if snap.Cause != state.CauseNone {
			return fmt.Sprintf("tunnel is %s (%s)", snap.State, snap.Cause)
		}
		return fmt.Sprintf("tunnel is %s", snap.State)
	}
	var last time.Time
	if s.Stats != nil {
		last = s.Stats().LastHandshake
	}
	if last.IsZero() {
		return "no handshake yet"
	}
	if age := s.now().Sub(last); age >= ReadyHandshakeAge {
		return fmt.Sprintf("last handshake %ds ago", int(age.Seconds()))
	}
	return ""
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	s.Metrics.Handler().ServeHTTP(w, r)
}

// handleEvents streams the status of every published snapshot, starting
// with the current one, until the client goes, the server shuts down, or the
// machine ends the subscription.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	rc := http.NewResponseController(w)
	defer rc.SetWriteDeadline(time.Time{}) // writeFlush's deadline must not outlive the stream
	snaps, cancel := s.Machine.Subscribe()
	defer cancel()
	// Subscribe first, then read Current: every snapshot published after
	// Current comes on snaps; those before it are skipped by Seq.
	last := s.Machine.Current()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if s.writeEvent(w, rc, last) != nil {
		return
	}
	interval := s.keepalive
	if interval == 0 {
		interval = KeepaliveInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		var err error
		select {
		case snap, ok := <-snaps:
			if !ok {
				return
			}
			if snap.Seq <= last.Seq {
				continue
			}
			last = snap
			err = s.writeEvent(w, rc, snap)
		case <-tick.C:
			err = writeFlush(w, rc, ": keepalive\n\n")
		case <-r.Context().Done():
			return
		case <-s.quit:
			return
		}
		if err != nil {
			return
		}
	}
}

func (s *Server) writeEvent(w http.ResponseWriter, rc *http.ResponseController, snap state.Snapshot) error {
	data, err := json.Marshal(s.status(snap))
	if err != nil {
		return err
	}
	return writeFlush(w, rc, fmt.Sprintf("event: state\nid: %d\ndata: %s\n\n", snap.Seq, data))
}

// writeFlush writes text and sends it at once, giving up on a client that
// does not read it within eventWriteTimeout.
func writeFlush(w http.ResponseWriter, rc *http.ResponseController, text string) error {
	rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
	if _, err := fmt.Fprint(w, text); err != nil {
		return err
	}
	return rc.Flush()
}
