package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	xproxy "golang.org/x/net/proxy"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/state"
)

func TestMain(m *testing.M) {
	if arg := os.Getenv(helperEnv); arg != "" {
		realPeerHelper(arg) // this process is a helper of the real-peer suite
		return
	}
	if what := os.Getenv(probeEnv); what != "" {
		probeMain(what) // this process is a probe of the host-mode suite
		return
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		removeWarrenBinary()
		os.Exit(code)
	}))
}

// testLogger logs to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startTestApp starts warren (as `warren up` wires it) for cfg, with the
// SOCKS5 proxy on a free loopback port (and whatever configure adds), and
// stops it at the end of the test.
func startTestApp(t *testing.T, cfg *config.Config, configure ...func(*appOptions)) *app {
	t.Helper()
	o := appOptions{configs: []*config.Config{cfg}, socks5: []listenSpec{{addr: "127.0.0.1:0"}}, log: testLogger(t)}
	for _, f := range configure {
		f(&o)
	}
	a, err := startApp(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return a
}

func startDemo(t *testing.T, opts demo.Options) *demo.Server {
	t.Helper()
	s, err := demo.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func waitState(t *testing.T, a *app, within time.Duration, ok func(state.Snapshot) bool) state.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	s, err := a.machine.Wait(ctx, ok)
	if err != nil {
		t.Fatalf("waited %v; state is %v: %v", within, s, err)
	}
	return s
}

func is(st state.State) func(state.Snapshot) bool {
	return func(s state.Snapshot) bool { return s.State == st }
}

// socksClient is an HTTP client that goes through the SOCKS5 proxy at addr,
// sending names to the proxy unresolved (like curl --socks5-hostname).
func socksClient(t *testing.T, addr string) *http.Client {
	t.Helper()
	d, err := xproxy.SOCKS5("tcp", addr, nil, &net.Dialer{})
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DialContext: d.(xproxy.ContextDialer).DialContext, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func get(t *testing.T, c *http.Client, url string) []byte {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b
}

func digest(r io.Reader) string {
	h := sha256.New()
	io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil))
}

// socksConnect sends a SOCKS5 CONNECT for an IPv4 address by hand and
// returns the reply code and how long the answer took.
func socksConnect(t *testing.T, proxyAddr string, to netip.AddrPort) (byte, time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	ip := to.Addr().As4()
	req := append([]byte{5, 1, 0, 5, 1, 0, 1}, ip[:]...)
	req = append(req, byte(to.Port()>>8), byte(to.Port()))
	begin := time.Now()
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2+4)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return reply[3], time.Since(begin)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// wantRefusedAtOnce checks that SOCKS5 CONNECTs are answered 0x02, in a
// median of under 50 ms (a refusal on loopback takes well under 1 ms; the
// margin is for a loaded machine).
func wantRefusedAtOnce(t *testing.T, a *app, when string) {
	t.Helper()
	var took []time.Duration
	for range 5 {
		rep, d := socksConnect(t, a.socks5Addr.String(), netip.AddrPortFrom(demo.ServerIPv4, 80))
		if rep != 0x02 {
			t.Fatalf("%s: reply %#x, want 0x02", when, rep)
		}
		took = append(took, d)
	}
	t.Logf("refusals %s: %v", when, took)
	if m := median(took); m >= 50*time.Millisecond {
		t.Fatalf("%s: median refusal took %v, want under 50ms", when, m)
	}
}

// connectedApp starts a demo peer and warren, connects, and returns warren
// with an HTTP client that goes through its SOCKS5 proxy.
func connectedApp(t *testing.T) (*app, *http.Client) {
	t.Helper()
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig())
	a.machine.Connect(context.Background())
	waitState(t, a, 10*time.Second, is(state.Connected))
	return a, socksClient(t, a.socks5Addr.String())
}

// startDownload starts an endless download and reads its first MiB.
func startDownload(t *testing.T, c *http.Client) io.ReadCloser {
	t.Helper()
	resp, err := c.Get("http://demo.warren/bytes/4294967296")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	return resp.Body
}

// wantCut checks that the rest of a download fails, and soon.
func wantCut(t *testing.T, body io.Reader) {
	t.Helper()
	done := make(chan error, 1)
	var n int64
	go func() {
		var err error
		n, err = io.Copy(io.Discard, body)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("the download ended cleanly after %d more bytes; want it cut", n)
		}
		t.Logf("download cut after %d more bytes: %v", n, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the download still runs 10s after the tunnel went down")
	}
}

func TestEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig())
	if rep, _ := socksConnect(t, a.socks5Addr.String(), netip.AddrPortFrom(demo.ServerIPv4, 80)); rep != 0x02 {
		t.Fatalf("before Connect: reply %#x, want 0x02", rep)
	}
	begin := time.Now()
	a.machine.Connect(context.Background())
	s := waitState(t, a, 10*time.Second, is(state.Connected))
	t.Logf("connected in %v to %s", time.Since(begin), s.Endpoint)
	c := socksClient(t, a.socks5Addr.String())

	t.Run("page by name", func(t *testing.T) {
		page := string(get(t, c, "http://demo.warren/"))
		if !strings.Contains(page, demo.ClientIPv4.String()) {
			t.Fatalf("page does not show our tunnel address: %q", page)
		}
	})
	t.Run("page over IPv6", func(t *testing.T) {
		page := string(get(t, c, "http://[fd77::1]/"))
		if !strings.Contains(page, demo.ClientIPv6.String()) {
			t.Fatalf("page does not show our tunnel address: %q", page)
		}
	})
	for _, tc := range []struct {
		name string
		url  string
		n    int64
	}{
		{"2 MiB by name", "http://demo.warren/bytes/2097152", 2 << 20},
		{"1 MiB+1 by IP", "http://10.77.0.1/bytes/1048577", 1<<20 + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			begin := time.Now()
			body := get(t, c, tc.url)
			took := time.Since(begin)
			if int64(len(body)) != tc.n {
				t.Fatalf("got %d bytes, want %d", len(body), tc.n)
			}
			if got, want := digest(strings.NewReader(string(body))), digest(demo.Bytes(tc.n)); got != want {
				t.Fatalf("sha256 %s, want %s", got, want)
			}
			t.Logf("%d bytes in %v", tc.n, took)
		})
	}
	t.Run("unknown name", func(t *testing.T) {
		_, err := c.Get("http://nowhere.warren/")
		if err == nil || !strings.Contains(err.Error(), "host unreachable") {
			t.Fatalf("GET of an unknown name: %v, want host unreachable", err)
		}
	})

	// After Disconnect every CONNECT is refused with 0x02, at once.
	a.machine.Disconnect(context.Background())
	waitState(t, a, 5*time.Second, is(state.Disconnected))
	wantRefusedAtOnce(t, a, "after Disconnect")
}

// A download in progress when the tunnel goes down is cut, not left hanging.
func TestDownloadCutWhenTunnelGoesDown(t *testing.T) {
	a, c := connectedApp(t)
	body := startDownload(t, c)
	go a.machine.Disconnect(context.Background())
	wantCut(t, body)
}

// A peer that never answers keeps warren in Connecting, with growing attempt
// numbers, refusing flows at once; when the peer comes back, warren connects.
func TestPeerNeverAnswersThenComesBack(t *testing.T) {
	serverKey, _ := config.NewPrivateKey()
	clientKey, _ := config.NewPrivateKey()
	first := startDemo(t, demo.Options{ServerKey: serverKey, ClientKey: clientKey})
	cfg, port := first.ClientConfig(), first.Port()
	first.Close() // nothing answers at the endpoint any more

	a := startTestApp(t, cfg)
	a.machine.Connect(context.Background())
	s := waitState(t, a, 30*time.Second, func(s state.Snapshot) bool { return s.State == state.Connecting && s.Attempt >= 2 })
	if s.Cause != state.CauseHandshakeTimeout {
		t.Errorf("cause %q, want %q", s.Cause, state.CauseHandshakeTimeout)
	}
	wantRefusedAtOnce(t, a, "while connecting")
	if cur := a.machine.Current(); cur.State != state.Connecting {
		t.Fatalf("left Connecting without a peer: %v", cur)
	}

	startDemo(t, demo.Options{ServerKey: serverKey, ClientKey: clientKey, ListenPort: port})
	begin := time.Now()
	waitState(t, a, 30*time.Second, is(state.Connected))
	t.Logf("connected %v after the peer came back", time.Since(begin))
	c := socksClient(t, a.socks5Addr.String())
	if page := string(get(t, c, "http://demo.warren/")); !strings.Contains(page, "Hello") {
		t.Fatalf("page %q", page)
	}
}

// Reconnecting cuts the flows of the old tunnel and serves new ones.
func TestReconnect(t *testing.T) {
	a, c := connectedApp(t)
	body := startDownload(t, c)
	before := a.machine.Current().Seq
	a.machine.Reconnect(context.Background())
	wantCut(t, body)
	waitState(t, a, 10*time.Second, func(s state.Snapshot) bool { return s.State == state.Connected && s.Seq > before })
	if page := string(get(t, c, "http://demo.warren/")); !strings.Contains(page, "Hello") {
		t.Fatalf("page %q", page)
	}
}

// A peer that falls silent takes warren from Connected to Connecting within
// 20 s, refusing at once from then on; when the peer is back, warren
// reconnects by itself within 5 s.
func TestBlackholeAndBack(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig())
	a.machine.Connect(context.Background())
	waitState(t, a, 10*time.Second, is(state.Connected))
	c := socksClient(t, a.socks5Addr.String())
	get(t, c, "http://demo.warren/")

	srv.SetBlackhole(true)
	silent := time.Now()
	// An application keeps trying; its requests go unanswered.
	short := socksClient(t, a.socks5Addr.String())
	short.Timeout = 2 * time.Second
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if resp, err := short.Get("http://demo.warren/"); err == nil {
				resp.Body.Close()
			}
		}
	}()
	defer func() {
		close(stop)
		<-stopped
	}()
	s := waitState(t, a, 25*time.Second, func(s state.Snapshot) bool { return s.State == state.Connecting })
	detected := time.Since(silent)
	t.Logf("connecting %v after the peer fell silent (cause %s: %s)", detected, s.Cause, s.Detail)
	if detected > 20*time.Second {
		t.Errorf("took %v to notice; want under 20s", detected)
	}
	if s.Cause != state.CauseLivenessLost {
		t.Errorf("cause %q, want %q", s.Cause, state.CauseLivenessLost)
	}
	wantRefusedAtOnce(t, a, "with the peer silent")

	time.Sleep(3 * time.Second) // let an attempt or two fail
	srv.SetBlackhole(false)
	back := time.Now()
	waitState(t, a, 20*time.Second, is(state.Connected))
	t.Logf("connected %v after the peer was back", time.Since(back))
	if d := time.Since(back); d > 5*time.Second {
		t.Errorf("took %v to reconnect; want under 5s", d)
	}
	get(t, c, "http://demo.warren/")
}

// With two configs, a failed attempt with the first moves to the second,
// and the state says which one is in use.
func TestFailoverToSecondConfig(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	good := srv.ClientConfig()
	good.Path = "b.conf"
	dead := srv.ClientConfig()
	dead.Path = "a.conf"
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // a port where nothing will answer
	if err != nil {
		t.Fatal(err)
	}
	dead.Peers[0].Endpoint.Port = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close()

	a, err := startApp(appOptions{configs: []*config.Config{dead, good}, socks5: []listenSpec{{addr: "127.0.0.1:0"}}, log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.shutdown(context.Background())
	s, _ := a.machine.Connect(context.Background())
	if s.Config != "a.conf" {
		t.Fatalf("first attempt with %q", s.Config)
	}
	s = waitState(t, a, 15*time.Second, is(state.Connected))
	if s.Config != "b.conf" {
		t.Fatalf("connected with %q, want b.conf", s.Config)
	}
	c := socksClient(t, a.socks5Addr.String())
	get(t, c, "http://demo.warren/")
}
