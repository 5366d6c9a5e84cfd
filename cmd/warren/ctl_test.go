package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warren-vpn/warren/control"
	"github.com/warren-vpn/warren/state"
)

// ctlMachine is a control.Machine whose commands set a state at once.
type ctlMachine struct {
	mu   sync.Mutex
	snap state.Snapshot
	subs map[chan state.Snapshot]struct{}
}

func newCtlMachine(s state.Snapshot) *ctlMachine {
	s.Seq = 1
	return &ctlMachine{snap: s, subs: make(map[chan state.Snapshot]struct{})}
}

func (m *ctlMachine) Current() state.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap
}

func (m *ctlMachine) publish(s state.Snapshot) state.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	s.Seq = m.snap.Seq + 1
	m.snap = s
	for ch := range m.subs {
		select {
		case ch <- s:
		default:
		}
	}
	return s
}

func (m *ctlMachine) Connect(context.Context) (state.Snapshot, error) {
	return m.publish(state.Snapshot{State: state.Connecting, Config: "wg0.conf", Since: time.Now()}), nil
}

func (m *ctlMachine) Disconnect(context.Context) (state.Snapshot, error) {
	return m.publish(state.Snapshot{State: state.Disconnected, Since: time.Now()}), nil
}

func (m *ctlMachine) Reconnect(context.Context) (state.Snapshot, error) {
	return m.publish(state.Snapshot{State: state.Disconnecting, After: state.AfterReconnect, Since: time.Now()}), nil
}

func (m *ctlMachine) Ping(context.Context) (state.Snapshot, error) { return m.Current(), nil }

func (m *ctlMachine) Subscribe() (<-chan state.Snapshot, func()) {
	ch := make(chan state.Snapshot, 16)
	m.mu.Lock()
	m.subs[ch] = struct{}{}
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[ch]; ok {
			delete(m.subs, ch)
			close(ch)
		}
	}
}

func (m *ctlMachine) subscribers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.subs)
}

// ctlServer is a control.Server for m on a unix socket in a temporary
// directory, connected with a handshake 41s ago.
type ctlServer struct {
	srv  *control.Server
	api  string // "unix:PATH"
	done chan error
}

func startCtlServer(t *testing.T, m *ctlMachine) *ctlServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "warren.sock")
	l, err := control.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	s := &control.Server{
		Machine: m,
		Stats: func() control.TunnelStats {
			if m.Current().State != state.Connected {
				return control.TunnelStats{}
			}
			return control.TunnelStats{LastHandshake: time.Now().Add(-41 * time.Second), RxBytes: 1_234_567_890, TxBytes: 80_300_000}
		},
		Flows: func() int { return 3 },
		Listeners: func() []control.Listener {
			return []control.Listener{{Name: "socks5", Addr: "127.0.0.1:1080"}, {Name: "dns", Addr: "127.0.0.1:5353"}}
		},
		Logger: testLogger(t),
	}
	cs := &ctlServer{srv: s, api: "unix:" + path, done: make(chan error, 2)}
	go func() { cs.done <- s.Serve(l, "") }()
	t.Cleanup(func() { cs.stop(t) })
	return cs
}

// serveTCP serves the server on a loopback port too, with token.
func (cs *ctlServer) serveTCP(t *testing.T, token string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { cs.done <- cs.srv.Serve(l, token) }()
	return "tcp:" + l.Addr().String()
}

// stop shuts the server down and waits for its Serve calls.
func (cs *ctlServer) stop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cs.srv.Shutdown(ctx)
	for {
		select {
		case err := <-cs.done:
			if !errors.Is(err, control.ErrServerClosed) {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(100 * time.Millisecond):
			return // no Serve left
		}
	}
}

func ctlEnv(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// runCtl runs a ctl command with args and env, and returns its output.
func runCtl(t *testing.T, cmd func(context.Context, []string, func(string) string, io.Writer, io.Writer) error, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := cmd(ctx, args, ctlEnv(env), &out, &errb)
	if errb.Len() > 0 {
		t.Logf("stderr: %s", errb.String())
	}
	return out.String(), err
}

func TestCtlStatus(t *testing.T) {
	m := newCtlMachine(state.Snapshot{State: state.Connected, Config: "/etc/warren/wg0.conf", Endpoint: "203.0.113.7:51820", Since: time.Now().Add(-192 * time.Second)})
	cs := startCtlServer(t, m)

	out, err := runCtl(t, cmdStatus, nil, "--api", cs.api)
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^state:      connected \(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, 3m1[23]s ago\)$`,
		`(?m)^config:     /etc/warren/wg0.conf$`,
		`(?m)^endpoint:   203.0.113.7:51820$`,
		`(?m)^handshake:  4[12]s ago$`,
		`(?m)^traffic:    received 1.2 GB, sent 80.3 MB$`,
		`(?m)^flows:      3 live$`,
		`(?m)^listeners:  socks5 127.0.0.1:1080, dns 127.0.0.1:5353$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("no line matching %s in\n%s", re, out)
		}
	}

	// --json prints the API's JSON; WARREN_API stands for --api.
	out, err = runCtl(t, cmdStatus, map[string]string{"WARREN_API": cs.api, "WARREN_JSON": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, `{"state":"connected",`) || strings.Count(out, "\n") != 1 || !strings.Contains(out, `"bytes_in":1234567890`) {
		t.Errorf("--json: %s", out)
	}
}

func TestCtlFormatStatus(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 49, 44, 0, time.Local)
	since := now.Add(-3*time.Minute - 12*time.Second)
	handshake := now.Add(-41 * time.Second)
	tests := []struct {
		name string
		st   control.Status
		want string
	}{
		{"connected", control.Status{
			State: "connected", Since: since, Config: "/etc/warren/wg0.conf", Endpoint: "203.0.113.7:51820",
			LastHandshake: &handshake, BytesIn: 1_234_567_890, BytesOut: 80_300_000, Flows: 3,
			Listeners: []control.Listener{{Name: "socks5", Addr: "127.0.0.1:1080"}, {Name: "dns", Addr: "127.0.0.1:5353"}},
		}, `state:      connected (since 2026-11-25 10:46:32, 3m12s ago)
config:     /etc/warren/wg0.conf
endpoint:   203.0.113.7:51820
handshake:  41s ago
traffic:    received 1.2 GB, sent 80.3 MB
flows:      3 live
listeners:  socks5 127.0.0.1:1080, dns 127.0.0.1:5353
`},
		{"connecting", control.Status{
			State: "connecting", Since: now.Add(-5 * time.Second), Cause: "handshake-timeout", Detail: "no handshake within 4s",
			Attempt: 2, Config: "wg0.conf", Lockdown: true,
		}, `state:      connecting (since 2026-11-25 10:49:39, 5s ago)
cause:      handshake-timeout: no handshake within 4s
attempt:    2
config:     wg0.conf
handshake:  none yet
flows:      0 live
listeners:  none
lockdown:   on: traffic is blocked while disconnected too
`},
		{"error, blocking failed", control.Status{State: "error", Since: now, Cause: "firewall", BlockFailed: true}, `state:      error (since 2026-11-25 10:49:44, 0s ago)
warning:    blocking failed: traffic may not be blocked
cause:      firewall
flows:      0 live
listeners:  none
`},
		{"disconnecting, then reconnect", control.Status{State: "disconnecting", After: "reconnect", Since: now}, `state:      disconnecting, then reconnect (since 2026-11-25 10:49:44, 0s ago)
flows:      0 live
listeners:  none
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatStatus(tt.st, now); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestCtlHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{
		0: "0 B", 999: "999 B", 1000: "1.0 kB", 80_300_000: "80.3 MB", 999_960: "1.0 MB",
		1_234_567_890: "1.2 GB", 5_000_000_000_000_000: "5000.0 TB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCtlConnectDisconnectReconnect(t *testing.T) {
	m := newCtlMachine(state.Snapshot{State: state.Disconnected})
	cs := startCtlServer(t, m)
	tests := []struct {
		name string
		cmd  func(context.Context, []string, func(string) string, io.Writer, io.Writer) error
		want string
	}{
		{"connect", cmdConnect, "connecting (attempt 0)\n"},
		{"reconnect", cmdReconnect, "disconnecting (then reconnect)\n"},
		{"disconnect", cmdDisconnect, "disconnected\n"},
	}
	for _, tt := range tests {
		out, err := runCtl(t, tt.cmd, nil, "--api", cs.api)
		if err != nil || out != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.name, out, err, tt.want)
		}
	}
	if got := describeStatus(control.Status{State: "connected", Endpoint: "203.0.113.7:51820"}); got != "connected (endpoint 203.0.113.7:51820)" {
		t.Errorf("describeStatus: %q", got)
	}
	if got := describeStatus(control.Status{State: "error", Cause: "firewall", BlockFailed: true}); got != "error (blocking failed, firewall)" {
		t.Errorf("describeStatus: %q", got)
	}
}

func TestCtlHealthcheck(t *testing.T) {
	m := newCtlMachine(state.Snapshot{State: state.Connected, Endpoint: "203.0.113.7:51820"})
	cs := startCtlServer(t, m)
	out, err := runCtl(t, cmdHealthcheck, nil, "--api", cs.api)
	if err != nil || out != "" {
		t.Errorf("connected: %q, %v; want no output and no error", out, err)
	}
	m.publish(state.Snapshot{State: state.Connecting, Cause: state.CauseHandshakeTimeout})
	out, err = runCtl(t, cmdHealthcheck, nil, "--api", cs.api)
	if err == nil || err.Error() != "not ready: tunnel is connecting (handshake-timeout)" || out != "" {
		t.Errorf("connecting: %q, %v", out, err)
	}
	// Through run, as Docker would: exit code 1 and the reason.
	code, stdout, stderr := runCLI(t, map[string]string{"WARREN_API": cs.api}, "healthcheck")
	if code == 2 && strings.Contains(stderr, "unknown command") {
		t.Log("healthcheck is not dispatched by run yet")
	} else if code != 1 || stdout != "" || !strings.Contains(stderr, "not ready: tunnel is connecting (handshake-timeout)") {
		t.Errorf("run healthcheck: %d %q %q", code, stdout, stderr)
	}
}

// With nothing at the socket, every command says so in one line.
func TestCtlNoWarren(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	t.Cleanup(func() { os.Remove(stale) })

	for _, path := range []string{missing, stale} {
		want := `no warren is running at unix:` + path + ` (start one with "warren up", or point --api at it)`
		for name, cmd := range map[string]func(context.Context, []string, func(string) string, io.Writer, io.Writer) error{
			"status": cmdStatus, "connect": cmdConnect, "disconnect": cmdDisconnect, "reconnect": cmdReconnect, "healthcheck": cmdHealthcheck,
		} {
			_, err := runCtl(t, cmd, nil, "--api", "unix:"+path)
			if err == nil || err.Error() != want {
				t.Errorf("%s at %s: %v; want %q", name, filepath.Base(path), err, want)
			}
		}
		if _, err := runCtl(t, cmdStatus, nil, "--api", "unix:"+path, "--watch"); err == nil || err.Error() != want {
			t.Errorf("status --watch: %v", err)
		}
	}
}

// A tcp: address needs a token file, and the right token.
func TestCtlToken(t *testing.T) {
	m := newCtlMachine(state.Snapshot{State: state.Disconnected})
	cs := startCtlServer(t, m)
	api := cs.serveTCP(t, "t0ken")
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	twoLines := filepath.Join(dir, "two")
	os.WriteFile(good, []byte("t0ken\n"), 0o600)
	os.WriteFile(bad, []byte("wrong\n"), 0o600)
	os.WriteFile(twoLines, []byte("t0ken\nmore\n"), 0o600)

	_, err := runCtl(t, cmdStatus, nil, "--api", api)
	if err == nil || !strings.Contains(err.Error(), "needs a token: give --api-token-file FILE (or set WARREN_API_TOKEN_FILE)") {
		t.Errorf("without a token: %v", err)
	}
	_, err = runCtl(t, cmdConnect, nil, "--api", api, "--api-token-file", bad)
	if err == nil || !strings.Contains(err.Error(), "refused the token") {
		t.Errorf("wrong token: %v", err)
	}
	_, err = runCtl(t, cmdHealthcheck, nil, "--api", api, "--api-token-file", bad)
	if err == nil || !strings.Contains(err.Error(), "refused the token") {
		t.Errorf("healthcheck, wrong token: %v", err)
	}
	_, err = runCtl(t, cmdStatus, nil, "--api", api, "--api-token-file", twoLines)
	if err == nil || !strings.Contains(err.Error(), "only line") {
		t.Errorf("two-line token file: %v", err)
	}
	if m.Current().State != state.Disconnected {
		t.Fatalf("a command with a wrong token ran: %v", m.Current())
	}
	out, err := runCtl(t, cmdConnect, map[string]string{"WARREN_API": api, "WARREN_API_TOKEN_FILE": good})
	if err != nil || out != "connecting (attempt 0)\n" {
		t.Errorf("with the token: %q, %v", out, err)
	}
	_, err = runCtl(t, cmdStatus, nil, "--api", "udp:127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), `--api: API address "udp:127.0.0.1:1": want unix:PATH or tcp:HOST:PORT`) {
		t.Errorf("bad --api: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader in two
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitOutput waits until out satisfies ok.
func waitOutput(t *testing.T, out *syncBuffer, what string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := out.String()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s; output:\n%s", what, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startWatch runs warren status --watch with args until the test cancels
// it, and returns its output and the error it returned.
func startWatch(t *testing.T, args ...string) (*syncBuffer, context.CancelFunc, chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	out := new(syncBuffer)
	done := make(chan error, 1)
	go func() {
		var errb bytes.Buffer
		done <- cmdStatus(ctx, append([]string{"--watch"}, args...), ctlEnv(nil), out, &errb)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return out, cancel, done
}

func TestCtlStatusWatchJSON(t *testing.T) {
	m := newCtlMachine(state.Snapshot{State: state.Disconnected})
	cs := startCtlServer(t, m)
	out, cancel, done := startWatch(t, "--json", "--api", cs.api)
	waitOutput(t, out, "the first event", func(s string) bool { return strings.Count(s, "\n") == 1 })
	m.publish(state.Snapshot{State: state.Connecting})
	m.publish(state.Snapshot{State: state.Connected, Endpoint: "203.0.113.7:51820"})
	got := waitOutput(t, out, "two more events", func(s string) bool { return strings.Count(s, "\n") == 3 })
	lines := strings.Split(strings.TrimSpace(got), "\n")
	for i, want := range []string{`{"state":"disconnected",`, `{"state":"connecting",`, `{"state":"connected",`} {
		if !strings.HasPrefix(lines[i], want) {
			t.Errorf("line %d: %s, want it to start %s", i, lines[i], want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after cancel: %v", err)
		}
		done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("status --watch did not end with its context")
	}
	waitFor := time.Now().Add(5 * time.Second)
	for m.subscribers() != 0 && time.Now().Before(waitFor) {
		time.Sleep(10 * time.Millisecond)
	}
	if m.subscribers() != 0 {
		t.Error("the server still streams to the watch that ended")
	}
}

// The screen is drawn on every event, redrawn every 2s, and the watch ends
// with an error when warren stops.
func TestCtlStatusWatchScreen(t *testing.T) {
	m := newCtlMachine(state.Snapshot{State: state.Disconnected})
	cs := startCtlServer(t, m)
	out, _, done := startWatch(t, "--api", cs.api)
	waitOutput(t, out, "the first screen", func(s string) bool { return strings.Contains(s, "state:      disconnected") })
	m.publish(state.Snapshot{State: state.Connected, Endpoint: "203.0.113.7:51820", Since: time.Now()})
	waitOutput(t, out, "the connected screen", func(s string) bool { return strings.Contains(s, "state:      connected") })
	n := strings.Count(out.String(), "state:")
	waitOutput(t, out, "a refresh", func(s string) bool { return strings.Count(s, "state:") > n })
	if s := out.String(); strings.Contains(s, "\x1b[") {
		t.Errorf("escape sequences in output that is not a terminal: %q", s)
	}

	cs.stop(t)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "warren stopped") {
			t.Errorf("after the server stopped: %v", err)
		}
		done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("status --watch did not end when warren stopped")
	}
}
