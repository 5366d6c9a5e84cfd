package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/proxy"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/state"
)

// No private key, preshared key, password or token appears in any log line
// (at debug level) or any API answer, whatever warren is asked: traffic
// with good and bad credentials, clients refused by the limits and by
// --allow-from, every API path, a reload with a broken config, a SIGHUP,
// and the CLI.
func TestNoSecretsInLogsOrAPI(t *testing.T) {
	var psk config.PresharedKey
	copy(psk[:], bytes.Repeat([]byte{0x5a, 0xc3}, 16))
	srv := startDemo(t, demo.Options{PresharedKey: psk})
	cfg := srv.ClientConfig()
	const (
		socksPassword = "socks-secret-Kq81"
		httpPassword  = "http-secret-Vz27"
		token         = "api-token-Jd55Xw"
	)
	dir := t.TempDir()
	conf := filepath.Join(dir, "wg0.conf")
	good := wgQuick(cfg)
	rewrite(t, conf, good)
	socksPass := filepath.Join(dir, "socks5.pass")
	rewrite(t, socksPass, socksPassword+"\n")
	tokenFile := filepath.Join(dir, "token")
	rewrite(t, tokenFile, token+"\n")
	socksAddr, httpAddr, apiAddr, fwdAddr, dnsAddr := freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	sock := filepath.Join(dir, "warren.sock")

	secrets := map[string]string{
		"private key":         base64Key(cfg.Interface.PrivateKey),
		"private key (hex)":   hex.EncodeToString(cfg.Interface.PrivateKey[:]),
		"preshared key":       base64Key(psk),
		"preshared key (hex)": hex.EncodeToString(psk[:]),
		"SOCKS5 password":     socksPassword,
		"HTTP password":       httpPassword,
		"API token":           token,
	}
	t.Setenv("WARREN_HTTP_PASSWORD", httpPassword)
	p := startWarren(t, "up", "-c", conf, "--log-level", "debug",
		"--socks5", socksAddr, "--socks5-user", "alice", "--socks5-password-file", socksPass,
		"--http", httpAddr, "--http-user", "bob", "--dns", dnsAddr,
		"--forward", "tcp:"+fwdAddr+"="+demo.Name+":80",
		"--max-flows-per-client", "3", "--allow-from", "127.0.0.1/32,127.0.0.2/32",
		"--api", "unix:"+sock, "--api", "tcp:"+apiAddr, "--api-token-file", tokenFile)
	p.waitLog(t, 15*time.Second, msg("tunnel connected"))
	drained := make(chan struct{})
	defer close(drained)
	go func() { // the test reads output(), not the channel, from here on
		for {
			select {
			case <-p.lines:
			case <-drained:
				return
			}
		}
	}()

	var answers strings.Builder
	// Traffic, with good and bad credentials.
	for _, pass := range []string{socksPassword, "wrong"} {
		d, _ := proxy.SOCKS5("tcp", socksAddr, &proxy.Auth{User: "alice", Password: pass}, proxy.Direct)
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext}}
		if resp, err := c.Get("http://" + demo.Name + "/"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	for _, pass := range []string{httpPassword, "wrong"} {
		resp, err := httpProxyClient(t, httpAddr, url.UserPassword("bob", pass)).Get("http://" + demo.Name + "/")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers.Write(body)
		}
	}

	// Refusals: 127.0.0.2 fills its places with flows, and is refused by
	// every front-end; 127.0.0.3 is not allowed.
	socksFrom := func(from string) proxy.Dialer {
		d, _ := proxy.SOCKS5("tcp", socksAddr, &proxy.Auth{User: "alice", Password: socksPassword},
			&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}})
		return d
	}
	for range 3 {
		c, err := socksFrom("127.0.0.2").Dial("tcp", demo.Name+":80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	for _, from := range []string{"127.0.0.2", "127.0.0.3"} {
		if c, err := socksFrom(from).Dial("tcp", demo.Name+":80"); err == nil {
			c.Close()
			t.Errorf("SOCKS5 from %s: through, want refused", from)
		}
		tr := &http.Transport{
			Proxy:       http.ProxyURL(&url.URL{Scheme: "http", Host: httpAddr, User: url.UserPassword("bob", httpPassword)}),
			DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext,
		}
		if resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + demo.Name + "/"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers.Write(body)
		}
		tr.CloseIdleConnections()
		// The forward resets the connection, maybe before Dial returns.
		if c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).Dial("tcp", fwdAddr); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c)
			c.Close()
		}
		dc := &dns.Client{Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(from)}}}
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(demo.Name), dns.TypeA)
		q.SetEdns0(1232, false)
		if m, _, err := dc.Exchange(q, dnsAddr); err == nil {
			answers.WriteString(m.String())
		}
	}

	// Every API path, on the socket and on TCP (with and without the token).
	c := unixHTTP(sock)
	for _, path := range []string{"/v1/status", "/healthz", "/readyz", "/metrics"} {
		_, body := apiDo(t, c, http.MethodGet, path)
		answers.Write(body)
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer " + token} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+apiAddr+"/v1/status", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answers.Write(body)
	}
	events := readEventsFor(t, c, time.Second)
	answers.WriteString(events)

	// A broken config: the key written twice, and a bad preshared key.
	rewrite(t, conf, strings.Replace(good, "[Peer]\n", "[Peer]\nPresharedKey = "+base64Key(psk)[:20]+"\n", 1)+
		"\n[Interface]\nPrivateKey = "+base64Key(cfg.Interface.PrivateKey)+"\n")
	code, body := apiDo(t, c, http.MethodPost, "/v1/reload")
	if code != http.StatusUnprocessableEntity {
		t.Errorf("reload of a broken config: %d %s", code, body)
	}
	answers.Write(body)
	var out, errOut bytes.Buffer
	run(context.Background(), []string{"reload", "--api", "unix:" + sock}, func(string) string { return "" }, &out, &errOut)
	run(context.Background(), []string{"status", "--json", "--api", "tcp:" + apiAddr, "--api-token-file", tokenFile}, func(string) string { return "" }, &out, &errOut)
	answers.WriteString(out.String() + errOut.String())
	rewrite(t, conf, good)
	p.cmd.Process.Signal(syscall.SIGHUP)
	code, body = apiDo(t, c, http.MethodPost, "/v1/reload")
	if code != 200 {
		t.Errorf("reload of the good config: %d %s", code, body)
	}
	answers.Write(body)

	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Errorf("exit code %d", code)
	}
	logs := p.output()
	if !strings.Contains(answers.String(), "too many flows from 127.0.0.2") || !strings.Contains(answers.String(), `outcome="not-allowed"`) ||
		!strings.Contains(answers.String(), `outcome="client-limit"`) || !strings.Contains(answers.String(), "client not allowed") {
		t.Error("the answers have no refusal by a limit or by --allow-from: the test did not exercise what it says")
	}
	for _, want := range []string{"authentication failed", "rejected", "config re-read", `"level":"DEBUG"`,
		"the client has reached the limit of flows per client", "client not allowed; disconnected", "connect refused",
		`"msg":"effective configuration"`, `"msg":"effective WireGuard config"`, cfg.Peers[0].Endpoint.String(), `"preshared_key":"(redacted)"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log has no %q: the test did not exercise what it says", want)
		}
	}
	for what, secret := range secrets {
		if strings.Contains(logs, secret) {
			t.Errorf("the %s appears in the log", what)
		}
		if strings.Contains(answers.String(), secret) {
			t.Errorf("the %s appears in an API or proxy answer", what)
		}
	}
	t.Logf("checked %d bytes of log and %d bytes of answers for %d secrets", len(logs), answers.Len(), len(secrets))
}

// readEventsFor reads the event stream for a while.
func readEventsFor(t *testing.T, c *http.Client, d time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://warren/v1/events", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	io.Copy(&b, resp.Body) // until the context ends it
	if !strings.Contains(b.String(), "event: state") {
		t.Errorf("events: %q", b.String())
	}
	return b.String()
}

// The private key is read once, at start (and again only by a reload):
// every later connection attempt uses what was read, even with the file
// gone.
func TestPrivateKeyReadOnce(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	path := writeFile(t, "wg0.conf", wgQuick(srv.ClientConfig()))
	configs, err := loadConfigs([]string{path}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	a := startTestApp(t, configs[0], func(o *appOptions) {
		o.load = func() ([]*config.Config, error) { return loadConfigs([]string{path}, o.log) }
	})
	connect(t, a)
	rewrite(t, path, "[Interface]\nPrivateKey = not a key\n")
	for i := range 3 {
		snap, err := a.machine.Reconnect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		waitState(t, a, 20*time.Second, func(s state.Snapshot) bool { return s.State == state.Connected && s.Seq > snap.Seq })
		get(t, socksClient(t, a.socks5Addr.String()), "http://"+demo.Name+"/")
		t.Logf("attempt %d: connected with the key read at start", i+1)
	}
	if _, err := a.reload(context.Background()); err == nil || !strings.Contains(err.Error(), "PrivateKey") {
		t.Errorf("a reload reads the file again: %v, want its error", err)
	}
}
