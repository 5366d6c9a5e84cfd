package main

import (
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/proxy"
)

// The limit flags, and their variables, reach the app's options; 0 means
// none, and a bad value is an error that names the flag.
func TestLimitFlags(t *testing.T) {
	defaults := limitOptions{
		maxFlows: 4096, maxFlowsPerClient: 512, handshakeTimeout: 10 * time.Second, udpIdleTimeout: 2 * time.Minute,
		dnsCacheEntries: 10000, dnsCacheBytes: 4 << 20, dnsMaxInFlight: 256,
	}
	with := func(f func(*limitOptions)) limitOptions {
		l := defaults
		f(&l)
		return l
	}
	for _, tt := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    limitOptions
		wantErr string
	}{
		{"defaults", nil, nil, defaults, ""},
		{"flags", []string{"--max-flows", "100", "--max-flows-per-client", "7", "--handshake-timeout", "3s", "--udp-idle-timeout", "30s",
			"--dns-cache-entries", "50", "--dns-cache-size", "1MiB", "--dns-max-inflight", "16", "--allow-unauthenticated-remote"}, nil,
			limitOptions{maxFlows: 100, maxFlowsPerClient: 7, handshakeTimeout: 3 * time.Second, udpIdleTimeout: 30 * time.Second,
				dnsCacheEntries: 50, dnsCacheBytes: 1 << 20, dnsMaxInFlight: 16, allowUnauthenticatedRemote: true}, ""},
		{"zero is none", []string{"--max-flows", "0", "--max-flows-per-client", "0", "--udp-idle-timeout", "0", "--dns-cache-entries", "0", "--dns-cache-size", "0"}, nil,
			with(func(l *limitOptions) {
				l.maxFlows, l.maxFlowsPerClient, l.udpIdleTimeout, l.dnsCacheEntries, l.dnsCacheBytes = -1, -1, -1, -1, -1
			}), ""},
		{"allow-from, repeated and comma-separated", []string{"--allow-from", "10.0.0.0/8, 192.0.2.1", "--allow-from", "fd00::1/8"}, nil,
			with(func(l *limitOptions) {
				l.allowFrom = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("fd00::/8")}
			}), ""},
		{"from the environment", nil, map[string]string{"WARREN_ALLOW_FROM": "127.0.0.1,::1", "WARREN_MAX_FLOWS_PER_CLIENT": "9", "WARREN_DNS_CACHE_SIZE": "512KiB", "WARREN_ALLOW_UNAUTHENTICATED_REMOTE": "true"},
			with(func(l *limitOptions) {
				l.allowFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")}
				l.maxFlowsPerClient, l.dnsCacheBytes, l.allowUnauthenticatedRemote = 9, 512<<10, true
			}), ""},
		{"negative max flows", []string{"--max-flows", "-1"}, nil, limitOptions{}, "--max-flows: -1 is negative; give 0 for no limit"},
		{"negative per client", []string{"--max-flows-per-client", "-5"}, nil, limitOptions{}, "--max-flows-per-client: -5 is negative"},
		{"no handshake timeout", []string{"--handshake-timeout", "0"}, nil, limitOptions{}, "--handshake-timeout: 0s is not a positive duration"},
		{"negative idle timeout", []string{"--udp-idle-timeout", "-1s"}, nil, limitOptions{}, "--udp-idle-timeout: -1s is negative"},
		{"no in-flight queries", []string{"--dns-max-inflight", "0"}, nil, limitOptions{}, "--dns-max-inflight: 0 is less than 1"},
		{"bad cache size", []string{"--dns-cache-size", "4MB"}, nil, limitOptions{}, `"4MB" is not a size`},
		{"bad allow-from", []string{"--allow-from", "10.0.0.0/33"}, nil, limitOptions{}, `"10.0.0.0/33" is not a CIDR prefix`},
		{"bad allow-from variable", nil, map[string]string{"WARREN_ALLOW_FROM": "everyone"}, limitOptions{}, `WARREN_ALLOW_FROM: "everyone" is not a CIDR prefix`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			var out strings.Builder
			fs.SetOutput(&out)
			var pf proxyFlags
			pf.register(fs)
			var o appOptions
			err := parseFlags(fs, tt.args, func(k string) string { return tt.env[k] }, nil)
			if err == nil {
				err = pf.frontends(&o, given(fs), nil, func(string) string { return "" })
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error()+out.String(), tt.wantErr) {
					t.Fatalf("error %v (output %q), want it to say %q", err, out.String(), tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(o.limits, tt.want) {
				t.Errorf("limits\n%+v, want\n%+v", o.limits, tt.want)
			}
		})
	}
}

// With no flags, every listener is on loopback, or off: SOCKS5 and DNS on
// 127.0.0.1, no HTTP proxy, no forward, the API on a unix socket.
func TestListenersLoopbackByDefault(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var pf proxyFlags
	var af apiServeFlags
	pf.register(fs)
	af.register(fs)
	if err := parseFlags(fs, nil, func(string) string { return "" }, nil); err != nil {
		t.Fatal(err)
	}
	var o appOptions
	if err := pf.frontends(&o, given(fs), nil, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if err := af.apply(&o, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if len(o.socks5) != 1 || o.socks5[0].addr != "127.0.0.1:1080" || o.dns != "127.0.0.1:5353" || len(o.http) != 0 || len(o.forwards) != 0 {
		t.Errorf("socks5 %v, http %v, dns %q, forwards %v", o.socks5, o.http, o.dns, o.forwards)
	}
	if len(o.api) != 1 || o.api[0].network != "unix" || o.limits.allowUnauthenticatedRemote {
		t.Errorf("api %v, allow unauthenticated remote %v", o.api, o.limits.allowUnauthenticatedRemote)
	}
}

// A SOCKS5 or HTTP proxy that would listen beyond loopback without a user
// and password does not start, unless --allow-unauthenticated-remote; the
// message says why and how. So for a wireproxy file's sections, and for a
// tcp: API without a token.
func TestUpRefusesOpenProxies(t *testing.T) {
	setDefaultConfig(t, "/nonexistent/wg0.conf")
	srv := startDemo(t, demo.Options{})
	good := writeFile(t, "wg0.conf", wgQuick(srv.ClientConfig()))
	_, port, _ := net.SplitHostPort(freePort(t))
	wireproxy := writeFile(t, "wireproxy.conf", wgQuick(srv.ClientConfig())+"\n[Socks5]\nBindAddress = 0.0.0.0:"+port+"\n")
	why := "it has no authentication and listens beyond loopback, so anyone who can reach it could use the tunnel"
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"SOCKS5 on every IPv4 address", nil, []string{"--socks5", "0.0.0.0:0"},
			[]string{"SOCKS5 proxy on 0.0.0.0:", why, "--socks5-user with --socks5-password-file (or WARREN_SOCKS5_PASSWORD)", "--allow-unauthenticated-remote"}},
		{"SOCKS5 on every address", nil, []string{"--socks5", ":0"}, []string{"SOCKS5 proxy on :0:", why}},
		{"SOCKS5 from the environment", map[string]string{"WARREN_SOCKS5": "0.0.0.0:0"}, nil, []string{"SOCKS5 proxy on 0.0.0.0:", why}},
		{"HTTP", nil, []string{"--http", "0.0.0.0:0"}, []string{"HTTP proxy on 0.0.0.0:", why, "--http-user with --http-password-file (or WARREN_HTTP_PASSWORD)"}},
		{"a user for the other proxy only", map[string]string{"WARREN_SOCKS5_PASSWORD": "pw"}, []string{"--socks5", "0.0.0.0:0", "--socks5-user", "alice", "--http", "0.0.0.0:0"},
			[]string{"HTTP proxy on 0.0.0.0:", why}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"up", "-c", good, "--dns", "off", "--api", "off", "--no-connect"}, tt.args...)
			code, _, stderr := runCLI(t, tt.env, args...)
			if code != 1 {
				t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr)
				}
			}
		})
	}
	t.Run("a wireproxy section", func(t *testing.T) {
		code, _, stderr := runCLI(t, nil, "up", "-c", wireproxy, "--dns", "off", "--api", "off", "--no-connect")
		want := "add Username and Password to the [Socks5] section of " + wireproxy + " (line "
		if code != 1 || !strings.Contains(stderr, want) || !strings.Contains(stderr, why) {
			t.Fatalf("exit %d, stderr:\n%s\nwant it to say %q", code, stderr, want)
		}
	})
	t.Run("a tcp API without a token", func(t *testing.T) {
		code, _, stderr := runCLI(t, nil, "up", "-c", good, "--dns", "off", "--api", "tcp:127.0.0.1:0", "--no-connect")
		if code != 1 || !strings.Contains(stderr, "--api tcp:… needs a token") {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
	})
}

// What may start: loopback, by address or name, without credentials; and
// beyond loopback with credentials, or with --allow-unauthenticated-remote.
func TestOpenProxiesThatStart(t *testing.T) {
	cfg := startDemo(t, demo.Options{}).ClientConfig()
	alice := &proxy.Credentials{User: "alice", Password: "pw"}
	for _, tt := range []struct {
		name  string
		spec  listenSpec
		allow bool
	}{
		{"loopback", listenSpec{addr: "127.0.0.1:0"}, false},
		{"another loopback address", listenSpec{addr: "127.0.0.9:0"}, false},
		{"localhost", listenSpec{addr: "localhost:0"}, false},
		{"every address, with credentials", listenSpec{addr: "0.0.0.0:0", creds: alice}, false},
		{"every address, allowed", listenSpec{addr: "0.0.0.0:0"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			startTestApp(t, cfg, func(o *appOptions) {
				o.socks5 = []listenSpec{tt.spec}
				o.http = []listenSpec{tt.spec}
				o.limits.allowUnauthenticatedRemote = tt.allow
			})
		})
	}
}

// End to end: a client over its limit is refused (SOCKS5 0x02, HTTP 503),
// one that --allow-from does not hold is disconnected (DNS: REFUSED), the
// others are served, and the metrics count each refusal with its reason.
func TestLimitsEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	// The flow that holds a place stays open until warren has stopped: a
	// CONNECT whose client has gone, but whose destination has not yet,
	// would hold up the SOCKS5 server's Shutdown.
	var held net.Conn
	t.Cleanup(func() {
		if held != nil {
			held.Close()
		}
	})
	a := startTestApp(t, srv.ClientConfig(), allFrontends, func(o *appOptions) {
		o.limits.maxFlowsPerClient = 1
		o.limits.allowFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("127.0.0.2/32")}
	})
	connect(t, a)
	to := netip.AddrPortFrom(demo.ServerIPv4, 80)

	// One flow from 127.0.0.1 holds its only place.
	held, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}).Dial("tcp", a.socks5Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep := socks5ConnectOn(t, held, to); rep != 0 {
		t.Fatalf("the first flow: reply %#x", rep)
	}
	if rep := socks5ConnectOn(t, dialFromLoopback(t, "127.0.0.1", a.socks5Addr.String()), to); rep != 0x02 {
		t.Errorf("over the limit: reply %#x, want 0x02", rep)
	}
	resp, body := httpVia(t, "127.0.0.1", a.httpAddr.String(), "http://"+demo.Name+"/")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "too many flows from 127.0.0.1: the limit is 1 per client") {
		t.Errorf("HTTP over the limit: %s %q", resp.Status, body)
	}
	// Another client is served.
	if resp, body := httpVia(t, "127.0.0.2", a.httpAddr.String(), "http://"+demo.Name+"/"); resp.StatusCode != http.StatusOK {
		t.Errorf("another client: %s %q", resp.Status, body)
	}
	// A client not allowed: disconnected, or REFUSED.
	c := dialFromLoopback(t, "127.0.0.3", a.socks5Addr.String())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte{5, 1, 0})
	if b, err := io.ReadAll(c); len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("SOCKS5 from a client not allowed: %v, %v; want it disconnected", b, err)
	}
	dc := &dns.Client{Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}}}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(demo.Name), dns.TypeA)
	if m, _, err := dc.Exchange(q, a.dnsAddr.String()); err != nil || m.Rcode != dns.RcodeRefused {
		t.Errorf("DNS from a client not allowed: %v, %v; want REFUSED", m, err)
	}
	if m := query(t, "udp", a.dnsAddr.String(), demo.Name, dns.TypeA, 0); m.Rcode != dns.RcodeSuccess {
		t.Errorf("DNS from an allowed client: %s", dns.RcodeToString[m.Rcode])
	}

	rec := httptest.NewRecorder()
	a.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		`warren_flows_total{frontend="socks5",outcome="client-limit"} 1`,
		`warren_flows_total{frontend="http",outcome="client-limit"} 1`,
		`warren_flows_total{frontend="socks5",outcome="not-allowed"} 1`,
		`warren_flows_total{frontend="dns",outcome="not-allowed"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("the metrics have no %s", want)
		}
	}
}

// dialFromLoopback connects to addr from the loopback address local
// (Linux routes all of 127.0.0.0/8 to lo).
func dialFromLoopback(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// socks5ConnectOn sends a CONNECT to an IPv4 address on c, without
// authentication, and returns the reply code (0xff if c ended first).
func socks5ConnectOn(t *testing.T, c net.Conn, to netip.AddrPort) byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	ip := to.Addr().As4()
	req := append([]byte{5, 1, 0, 5, 1, 0, 1}, ip[:]...)
	c.Write(append(req, byte(to.Port()>>8), byte(to.Port())))
	reply := make([]byte, 2+10)
	if _, err := io.ReadFull(c, reply); err != nil {
		return 0xff
	}
	return reply[3]
}

// httpVia GETs url through the HTTP proxy at proxyAddr, from the loopback
// address local.
func httpVia(t *testing.T, local, proxyAddr, target string) (*http.Response, string) {
	t.Helper()
	tr := &http.Transport{
		Proxy:             http.ProxyURL(&url.URL{Scheme: "http", Host: proxyAddr}),
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}).DialContext,
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get(target)
	if err != nil {
		t.Fatalf("GET %s via %s from %s: %v", target, proxyAddr, local, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}
