package control

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warren-vpn/warren/state"
)

func connectedSnapshot() state.Snapshot {
	return state.Snapshot{State: state.Connected, Config: "/etc/warren/wg0.conf", Endpoint: "203.0.113.7:51820", Since: t0.Add(-3 * time.Minute), Seq: 7}
}

// The status JSON has every documented field, with the statistics, and
// leaves out the handshake fields before the first handshake.
func TestStatus(t *testing.T) {
	handshake := t0.Add(-41 * time.Second)
	stats := TunnelStats{LastHandshake: handshake, RxBytes: 1234, TxBytes: 5678}
	s := &Server{
		Machine:   newFakeMachine(connectedSnapshot()),
		Stats:     func() TunnelStats { return stats },
		Flows:     func() int { return 3 },
		Listeners: func() []Listener { return []Listener{{"socks5", "127.0.0.1:1080"}, {"dns", "127.0.0.1:5353"}} },
		Now:       func() time.Time { return t0 },
	}
	ts := serveUnix(t, s)
	code, h, body := ts.do(t, http.MethodGet, "/v1/status", "")
	if code != http.StatusOK || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /v1/status: %d, Content-Type %q", code, h.Get("Content-Type"))
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"state":                 "connected",
		"cause":                 "",
		"detail":                "",
		"attempt":               0.0,
		"since":                 t0.Add(-3 * time.Minute).Format(time.RFC3339Nano),
		"config":                "/etc/warren/wg0.conf",
		"endpoint":              "203.0.113.7:51820",
		"lockdown":              false,
		"block_failed":          false,
		"last_handshake":        handshake.Format(time.RFC3339Nano),
		"handshake_age_seconds": 41.0,
		"bytes_in":              1234.0,
		"bytes_out":             5678.0,
		"flows":                 3.0,
		"listeners":             []any{map[string]any{"name": "socks5", "addr": "127.0.0.1:1080"}, map[string]any{"name": "dns", "addr": "127.0.0.1:5353"}},
		"seq":                   7.0,
	}
	for k, v := range want {
		if gv, ok := got[k]; !ok {
			t.Errorf("%s missing", k)
		} else if gb, _ := json.Marshal(gv); string(gb) != mustJSON(t, v) {
			t.Errorf("%s = %s, want %s", k, gb, mustJSON(t, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected field %s", k)
		}
	}

	// Before the first handshake, and without statistics at all.
	stats = TunnelStats{}
	st := ts.status(t)
	if st.LastHandshake != nil || st.HandshakeAgeSeconds != nil {
		t.Errorf("no handshake: last_handshake %v, age %v; want both omitted", st.LastHandshake, st.HandshakeAgeSeconds)
	}
	if strings.Contains(ts.mustGet(t, "/v1/status"), "handshake") {
		t.Errorf("no handshake: the JSON names one")
	}
	bare := serveUnix(t, &Server{Machine: newFakeMachine(state.Snapshot{State: state.Disconnecting, After: state.AfterBlock, Cause: state.CauseFirewall})})
	st = bare.status(t)
	if st.State != "disconnecting" || st.After != "block" || st.Cause != "firewall" || st.Listeners == nil || len(st.Listeners) != 0 || st.Flows != 0 {
		t.Errorf("bare server: %+v", st)
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (ts *testServer) mustGet(t *testing.T, path string) string {
	t.Helper()
	code, _, body := ts.do(t, http.MethodGet, path, "")
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	return body
}

// Each command runs on the machine and answers with the snapshot it led
// to; a failed command is 503.
func TestCommands(t *testing.T) {
	tests := []struct {
		name      string
		wantState string
		wantAfter string
	}{
		{"connect", "connecting", ""},
		{"disconnect", "disconnected", ""},
		{"reconnect", "disconnecting", "reconnect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newFakeMachine(connectedSnapshot())
			ts := serveUnix(t, &Server{Machine: m})
			code, h, body := ts.do(t, http.MethodPost, "/v1/"+tt.name, "")
			if code != http.StatusOK || h.Get("Content-Type") != "application/json" {
				t.Fatalf("POST: %d %s", code, body)
			}
			var st Status
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatal(err)
			}
			if st.State != tt.wantState || st.After != tt.wantAfter || st.Seq != 8 {
				t.Errorf("answer %+v, want state %s after %q seq 8", st, tt.wantState, tt.wantAfter)
			}
			if got := m.commands(); !slices.Equal(got, []string{tt.name}) {
				t.Errorf("machine got %v", got)
			}

			m.mu.Lock()
			m.err = state.ErrClosed
			m.mu.Unlock()
			code, _, body = ts.do(t, http.MethodPost, "/v1/"+tt.name, "")
			var e ErrorResponse
			if code != http.StatusServiceUnavailable || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, "machine closed") {
				t.Errorf("failed command: %d %s", code, body)
			}
		})
	}
}

// A wrong method is 405 with Allow; an unknown path is 404; both in JSON.
func TestMethodsAndPaths(t *testing.T) {
	ts := serveUnix(t, &Server{Machine: newFakeMachine(state.Snapshot{}), Metrics: NewMetrics()})
	tests := []struct {
		method, path, allow string
	}{
		{http.MethodPost, "/v1/status", "GET"},
		{http.MethodGet, "/v1/connect", "POST"},
		{http.MethodGet, "/v1/disconnect", "POST"},
		{http.MethodPut, "/v1/reconnect", "POST"},
		{http.MethodGet, "/v1/reload", "POST"},
		{http.MethodPost, "/v1/events", "GET"},
		{http.MethodPost, "/healthz", "GET"},
		{http.MethodDelete, "/readyz", "GET"},
		{http.MethodPost, "/metrics", "GET"},
	}
	for _, tt := range tests {
		code, h, body := ts.do(t, tt.method, tt.path, "")
		var e ErrorResponse
		if code != http.StatusMethodNotAllowed || h.Get("Allow") != tt.allow || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s %s: %d, Allow %q, body %s", tt.method, tt.path, code, h.Get("Allow"), body)
		}
	}
	code, _, body := ts.do(t, http.MethodGet, "/v2/status", "")
	if code != http.StatusNotFound || !strings.Contains(body, `"error"`) {
		t.Errorf("GET /v2/status: %d %s", code, body)
	}
}

func TestReload(t *testing.T) {
	m := newFakeMachine(connectedSnapshot())
	t.Run("unsupported", func(t *testing.T) {
		ts := serveUnix(t, &Server{Machine: m})
		if code, _, body := ts.do(t, http.MethodPost, "/v1/reload", ""); code != http.StatusNotImplemented || !strings.Contains(body, "not supported") {
			t.Errorf("%d %s", code, body)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		ts := serveUnix(t, &Server{Machine: m, Reload: func(context.Context) (state.Snapshot, error) {
			return state.Snapshot{}, errors.New("wg0.conf:3: PrivateKey: not a valid key\nwg0.conf: no [Peer] section\n")
		}})
		code, _, body := ts.do(t, http.MethodPost, "/v1/reload", "")
		var e ErrorResponse
		if err := json.Unmarshal([]byte(body), &e); err != nil || code != http.StatusUnprocessableEntity {
			t.Fatalf("%d %s", code, body)
		}
		want := []string{"wg0.conf:3: PrivateKey: not a valid key", "wg0.conf: no [Peer] section"}
		if !slices.Equal(e.Problems, want) || !strings.Contains(e.Error, "not applied") {
			t.Errorf("answer %+v, want problems %q", e, want)
		}
	})
	t.Run("valid", func(t *testing.T) {
		ts := serveUnix(t, &Server{Machine: m, Reload: func(context.Context) (state.Snapshot, error) {
			return state.Snapshot{State: state.Disconnecting, After: state.AfterReconnect, Seq: 9}, nil
		}})
		code, _, body := ts.do(t, http.MethodPost, "/v1/reload", "")
		var st Status
		if err := json.Unmarshal([]byte(body), &st); err != nil || code != http.StatusOK || st.State != "disconnecting" || st.Seq != 9 {
			t.Errorf("%d %s", code, body)
		}
	})
}

// With a token, every path wants it; without, the unix socket serves all.
func TestAuth(t *testing.T) {
	const token = "s3cret-token"
	m := newFakeMachine(connectedSnapshot())
	s := &Server{Machine: m, Metrics: NewMetrics()}
	tcp := serveTCP(t, s, token)
	unix := serveUnix(t, s) // the same Server, on a second listener

	for _, path := range []string{"/v1/status", "/v1/events", "/healthz", "/readyz", "/metrics"} {
		for _, auth := range []string{"", "Bearer wrong", "Bearer " + token + "x", "Basic " + token, token} {
			code, h, body := tcp.do(t, http.MethodGet, path, auth)
			if code != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("GET %s with %q: %d, WWW-Authenticate %q", path, auth, code, h.Get("WWW-Authenticate"))
			}
			if strings.Contains(body, token) {
				t.Errorf("the answer shows the token: %s", body)
			}
		}
	}
	if code, _, body := tcp.do(t, http.MethodPost, "/v1/connect", ""); code != http.StatusUnauthorized {
		t.Errorf("POST /v1/connect without token: %d %s", code, body)
	}
	if len(m.commands()) != 0 {
		t.Errorf("an unauthorized command ran: %v", m.commands())
	}
	for _, auth := range []string{"Bearer " + token, "bearer " + token} {
		if code, _, body := tcp.do(t, http.MethodGet, "/v1/status", auth); code != http.StatusOK {
			t.Errorf("with %q: %d %s", auth, code, body)
		}
	}
	if code, _, _ := tcp.do(t, http.MethodGet, "/healthz", "Bearer "+token); code != http.StatusOK {
		t.Errorf("/healthz with the token: %d", code)
	}
	if code, _, body := unix.do(t, http.MethodGet, "/v1/status", ""); code != http.StatusOK {
		t.Errorf("unix socket: %d %s", code, body)
	}
}

func TestHealthz(t *testing.T) {
	m := newFakeMachine(state.Snapshot{})
	ts := serveUnix(t, &Server{Machine: m})
	code, h, body := ts.do(t, http.MethodGet, "/healthz", "")
	if code != http.StatusOK || body != "ok\n" || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		t.Errorf("healthy: %d %q %q", code, body, h.Get("Content-Type"))
	}

	m.mu.Lock()
	m.ping = func() error { return state.ErrClosed }
	m.mu.Unlock()
	if code, _, body := ts.do(t, http.MethodGet, "/healthz", ""); code != http.StatusServiceUnavailable || body != "unhealthy: state: machine closed\n" {
		t.Errorf("closed machine: %d %q", code, body)
	}

	// A machine that does not answer: 503 after HealthTimeout.
	ts2 := serveUnix(t, &Server{Machine: &stuckMachine{fakeMachine: m}})
	start := time.Now()
	code, _, body = ts2.do(t, http.MethodGet, "/healthz", "")
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "unhealthy: the state machine did not answer within 2s") || strings.Count(body, "\n") != 1 {
		t.Errorf("stuck machine: %d %q", code, body)
	}
	if d := time.Since(start); d < HealthTimeout || d > HealthTimeout+3*time.Second {
		t.Errorf("stuck machine: answered after %v, want about %v", d, HealthTimeout)
	}
}

// stuckMachine's Ping waits until its context ends, as a machine whose loop
// is stuck makes its callers do.
type stuckMachine struct{ *fakeMachine }

func (m *stuckMachine) Ping(ctx context.Context) (state.Snapshot, error) {
	<-ctx.Done()
	return state.Snapshot{}, ctx.Err()
}

func TestReadyz(t *testing.T) {
	tests := []struct {
		name      string
		snap      state.Snapshot
		handshake time.Duration // how long ago; 0 for none
		noStats   bool
		wantCode  int
		wantBody  string
	}{
		{"disconnected", state.Snapshot{State: state.Disconnected}, 0, false, 503, "not ready: tunnel is disconnected\n"},
		{"connecting", state.Snapshot{State: state.Connecting, Cause: state.CauseHandshakeTimeout}, 0, false, 503, "not ready: tunnel is connecting (handshake-timeout)\n"},
		{"error", state.Snapshot{State: state.Error, Cause: state.CauseTunnelDevice}, 0, false, 503, "not ready: tunnel is error (tunnel-device)\n"},
		{"connected, no handshake", connectedSnapshot(), 0, false, 503, "not ready: no handshake yet\n"},
		{"connected, no stats", connectedSnapshot(), 0, true, 503, "not ready: no handshake yet\n"},
		{"connected, stale handshake", connectedSnapshot(), 200 * time.Second, false, 503, "not ready: last handshake 200s ago\n"},
		{"connected, handshake at the limit", connectedSnapshot(), ReadyHandshakeAge, false, 503, "not ready: last handshake 180s ago\n"},
		{"connected, fresh handshake", connectedSnapshot(), 41 * time.Second, false, 200, "ready\n"},
		{"connected, handshake just under the limit", connectedSnapshot(), ReadyHandshakeAge - time.Second, false, 200, "ready\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Server{Machine: newFakeMachine(tt.snap), Now: func() time.Time { return t0 }}
			if !tt.noStats {
				s.Stats = func() TunnelStats {
					if tt.handshake == 0 {
						return TunnelStats{}
					}
					return TunnelStats{LastHandshake: t0.Add(-tt.handshake)}
				}
			}
			ts := serveUnix(t, s)
			if code, _, body := ts.do(t, http.MethodGet, "/readyz", ""); code != tt.wantCode || body != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

// Against a real state machine: the event stream shows a connect and a
// disconnect in order, and /readyz follows the state.
func TestEventsAndReadyzWithRealMachine(t *testing.T) {
	m := newRealMachine(t)
	s := &Server{
		Machine: m,
		Stats: func() TunnelStats {
			if m.Current().State == state.Connected {
				return TunnelStats{LastHandshake: time.Now().Add(-time.Second)}
			}
			return TunnelStats{}
		},
	}
	ts := serveUnix(t, s)
	es := ts.openEvents(t)
	st, ev, ok := es.next(t)
	if !ok || st.State != "disconnected" || ev.name != "state" || ev.id != "1" || st.Seq != 1 {
		t.Fatalf("first event: %+v %+v", ev, st)
	}

	code, _, body := ts.do(t, http.MethodPost, "/v1/connect", "")
	if code != http.StatusOK || !strings.Contains(body, `"state":"connecting"`) {
		t.Fatalf("connect: %d %s", code, body)
	}
	var got []string
	for len(got) == 0 || got[len(got)-1] != "connected" {
		st, ev, ok := es.next(t)
		if !ok {
			t.Fatal("the stream ended")
		}
		if ev.id != strconv.FormatUint(st.Seq, 10) {
			t.Errorf("event id %s for seq %d", ev.id, st.Seq)
		}
		got = append(got, st.State)
	}
	waitFor(t, time.Second, "/readyz 200 once connected", func() bool {
		code, _, _ := ts.do(t, http.MethodGet, "/readyz", "")
		return code == http.StatusOK
	})

	if code, _, body := ts.do(t, http.MethodPost, "/v1/disconnect", ""); code != http.StatusOK {
		t.Fatalf("disconnect: %d %s", code, body)
	}
	start := time.Now()
	waitFor(t, time.Second, "/readyz 503 after Disconnect", func() bool {
		code, _, _ := ts.do(t, http.MethodGet, "/readyz", "")
		return code == http.StatusServiceUnavailable
	})
	t.Logf("/readyz went 503 %v after Disconnect answered", time.Since(start))
	for got[len(got)-1] != "disconnected" {
		st, _, ok := es.next(t)
		if !ok {
			t.Fatal("the stream ended")
		}
		got = append(got, st.State)
	}
	want := []string{"connecting", "connected", "disconnecting", "disconnected"}
	if !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// Shutdown ends an open event stream, and Serve returns ErrServerClosed.
func TestShutdownEndsEvents(t *testing.T) {
	m := newFakeMachine(state.Snapshot{})
	s := &Server{Machine: m}
	ts := serveUnix(t, s)
	es := ts.openEvents(t)
	if _, _, ok := es.next(t); !ok {
		t.Fatal("no first event")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, _, ok := es.next(t); ok {
		t.Error("an event after Shutdown")
	}
	select {
	case err := <-ts.served:
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve = %v", err)
		}
		ts.served <- err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	// Serve after Shutdown refuses, and closes its listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l, ""); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v", err)
	}
	if _, err := l.Accept(); err == nil {
		t.Error("Serve after Shutdown left its listener open")
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

// The stream follows the machine's snapshots, skips none it was given,
// keeps alive, and ends when the machine closes the subscription.
func TestEventsStream(t *testing.T) {
	m := newFakeMachine(state.Snapshot{})
	s := &Server{Machine: m, keepalive: 20 * time.Millisecond}
	ts := serveUnix(t, s)
	es := ts.openEvents(t)
	if st, _, _ := es.next(t); st.Seq != 1 {
		t.Fatalf("first event seq %d", st.Seq)
	}
	m.publish(state.Snapshot{State: state.Connecting, Attempt: 0})
	m.publish(state.Snapshot{State: state.Connecting, Attempt: 1, Cause: state.CauseHandshakeTimeout})
	for _, want := range []Status{{State: "connecting", Seq: 2}, {State: "connecting", Attempt: 1, Cause: "handshake-timeout", Seq: 3}} {
		st, _, ok := es.next(t)
		if !ok || st.State != want.State || st.Attempt != want.Attempt || st.Cause != want.Cause || st.Seq != want.Seq {
			t.Errorf("event %+v, want %+v", st, want)
		}
	}
	keepalive := time.After(5 * time.Second)
	for seen := false; !seen; {
		select {
		case ev := <-es.events:
			seen = ev.comment
		case <-keepalive:
			t.Fatal("no keepalive")
		}
	}
	m.closeSubscriptions()
	if _, _, ok := es.next(t); ok {
		t.Error("an event after the machine closed the subscription")
	}
}

// The server gives up on an events client that goes away.
func TestEventsClientGoes(t *testing.T) {
	m := newFakeMachine(state.Snapshot{})
	ts := serveUnix(t, &Server{Machine: m})
	es := ts.openEvents(t)
	es.next(t)
	es.close()
	waitFor(t, 5*time.Second, "the handler unsubscribes", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.subs) == 0
	})
}
