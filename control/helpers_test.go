package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the fake time of the tests that set Server.Now.
var t0 = time.Date(2026, 11, 25, 10, 46, 32, 0, time.UTC)

// fakeMachine is a Machine whose commands set the state a test expects,
// and which publishes what the test tells it to.
type fakeMachine struct {
	mu    sync.Mutex
	snap  state.Snapshot
	err   error        // returned by every command, if set
	ping  func() error // Ping's answer; nil answers at once
	calls []string     // the commands, in order
	subs  map[chan state.Snapshot]struct{}
}

func newFakeMachine(s state.Snapshot) *fakeMachine {
	if s.Seq == 0 {
		s.Seq = 1
	}
	return &fakeMachine{snap: s, subs: make(map[chan state.Snapshot]struct{})}
}

func (f *fakeMachine) Current() state.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

// publish makes s (with the next Seq) the current snapshot and sends it to
// the subscribers.
func (f *fakeMachine) publish(s state.Snapshot) state.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.publishLocked(s)
}

func (f *fakeMachine) publishLocked(s state.Snapshot) state.Snapshot {
	s.Seq = f.snap.Seq + 1
	f.snap = s
	for ch := range f.subs {
		select {
		case ch <- s:
		default:
		}
	}
	return s
}

func (f *fakeMachine) command(name string, s state.Snapshot) (state.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	if f.err != nil {
		return state.Snapshot{}, f.err
	}
	return f.publishLocked(s), nil
}

func (f *fakeMachine) Connect(context.Context) (state.Snapshot, error) {
	return f.command("connect", state.Snapshot{State: state.Connecting, Config: "wg0.conf", Since: t0})
}

func (f *fakeMachine) Disconnect(context.Context) (state.Snapshot, error) {
	return f.command("disconnect", state.Snapshot{State: state.Disconnected, Since: t0})
}

func (f *fakeMachine) Reconnect(context.Context) (state.Snapshot, error) {
	return f.command("reconnect", state.Snapshot{State: state.Disconnecting, After: state.AfterReconnect, Since: t0})
}

func (f *fakeMachine) Ping(ctx context.Context) (state.Snapshot, error) {
	f.mu.Lock()
	ping := f.ping
	f.mu.Unlock()
	if ping != nil {
		if err := ping(); err != nil {
			return state.Snapshot{}, err
		}
	}
	return f.Current(), nil
}

func (f *fakeMachine) Subscribe() (<-chan state.Snapshot, func()) {
	ch := make(chan state.Snapshot, 16)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.subs[ch]; ok {
			delete(f.subs, ch)
			close(ch)
		}
	}
}

// closeSubscriptions closes every subscription, as a machine that shuts
// down does.
func (f *fakeMachine) closeSubscriptions() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		delete(f.subs, ch)
		close(ch)
	}
}

func (f *fakeMachine) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// upTunnel is a state.Tunnel that comes up at once and closes at once.
type upTunnel struct{}

func (upTunnel) Start(a state.Attempt, r state.Reporter) { r.Up("203.0.113.7:51820") }
func (upTunnel) Stop(r state.Reporter)                   { r.Closed() }

type allowAll struct{}

func (allowAll) Apply(state.Snapshot) error { return nil }

// newRealMachine returns a real state machine over upTunnel, shut down at
// the end of the test.
func newRealMachine(t *testing.T) *state.Machine {
	t.Helper()
	m, err := state.New(state.Options{Tunnel: upTunnel{}, Policy: allowAll{}, Configs: []*config.Config{{Path: "wg0.conf"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("machine Shutdown: %v", err)
		}
	})
	return m
}

// testServer is a Server serving on one listener, with a client for it.
type testServer struct {
	srv    *Server
	client *http.Client
	base   string
	served chan error // what Serve returned
}

// serveUnix serves s on a unix socket in a temporary directory.
func serveUnix(t *testing.T, s *Server) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "warren.sock")
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, s, l, "", "unix", path, "http://warren")
}

// serveTCP serves s on a loopback TCP port with token.
func serveTCP(t *testing.T, s *Server, token string) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, s, l, token, "tcp", l.Addr().String(), "http://"+l.Addr().String())
}

func serveOn(t *testing.T, s *Server, l net.Listener, token, network, addr, base string) *testServer {
	ts := &testServer{srv: s, base: base, served: make(chan error, 1)}
	go func() { ts.served <- s.Serve(l, token) }()
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	ts.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-ts.served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve = %v, want ErrServerClosed", err)
			}
			ts.served <- err
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return ts
}

// do makes a request with an optional Authorization header and returns the
// status, the headers and the body.
func (ts *testServer) do(t *testing.T, method, path, auth string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, ts.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// status gets /v1/status and decodes it.
func (ts *testServer) status(t *testing.T) Status {
	t.Helper()
	code, _, body := ts.do(t, http.MethodGet, "/v1/status", "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/status: %d %s", code, body)
	}
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("GET /v1/status: %v in %s", err, body)
	}
	return st
}

// event is one server-sent event.
type event struct {
	name, id, data string
	comment        bool // a comment line (a keepalive)
}

// eventStream reads /v1/events in a goroutine.
type eventStream struct {
	events chan event // closed when the stream ends
	body   io.Closer
	done   chan struct{}
}

func (ts *testServer) openEvents(t *testing.T) *eventStream {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, ts.base+"/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	// No client timeout: the stream stays open.
	resp, err := (&http.Client{Transport: ts.client.Transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		resp.Body.Close()
		t.Fatalf("GET /v1/events: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	es := &eventStream{events: make(chan event, 100), body: resp.Body, done: make(chan struct{})}
	go func() {
		defer close(es.done)
		defer close(es.events)
		sc := bufio.NewScanner(resp.Body)
		var ev event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev != (event{}) {
					es.events <- ev
				}
				ev = event{}
			case strings.HasPrefix(line, ":"):
				ev.comment = true
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "id: "):
				ev.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	t.Cleanup(es.close)
	return es
}

func (es *eventStream) close() {
	es.body.Close()
	<-es.done
}

// next returns the next event that is not a comment, failing the test if
// none comes within 5 seconds. ok is false if the stream ended.
func (es *eventStream) next(t *testing.T) (st Status, ev event, ok bool) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok = <-es.events:
			if !ok {
				return Status{}, event{}, false
			}
			if ev.comment && ev.data == "" {
				continue
			}
			if err := json.Unmarshal([]byte(ev.data), &st); err != nil {
				t.Fatalf("event data %q: %v", ev.data, err)
			}
			return st, ev, true
		case <-timeout:
			t.Fatal("no event within 5s")
		}
	}
}

// waitFor polls cond every 10ms until it holds, failing the test after
// within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
