package main

// The real-peer suite: warren against Debian's wireguard-go (a WireGuard
// implementation nobody on this project wrote), in network namespaces, as
// root. Each test builds its own topology and takes it down, also when it
// fails:
//
//	root namespace (this test)       client namespace              server namespace
//	  SOCKS5 clients ── 10.202.N.1 ── 10.202.N.2 warren ── 10.201.N.2 ── 10.201.N.1 wireguard-go (wgs…)
//	                                  nft: count what leaves        tunnel 10.78.0.1, fd78::1:
//	                                  resolv.conf -> 10.201.N.1      HTTP :80, DNS :53 (web.warren-test)
//	                                                                 underlay 10.201.N.1:53: a DNS
//	                                                                 listener that counts leaks
//
// The client namespace has no IPv6 on its links, so that nothing but warren
// sends there. Its nftables counter takes every packet leaving it except
// loopback, UDP to the peer's endpoint (with the kernel's ICMP errors to
// it), and the SOCKS5 proxy's replies to the test: it must stay 0. The DNS
// listener outside the tunnel must see no query.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
)

// The real peer's tunnel addresses and the name its DNS server answers.
var (
	rpServer4 = netip.MustParseAddr("10.78.0.1")
	rpServer6 = netip.MustParseAddr("fd78::1")
	rpClient4 = netip.MustParseAddr("10.78.0.2")
	rpClient6 = netip.MustParseAddr("fd78::2")
	// rpInternet stands for the internet: outside the tunnel.
	rpInternet  = netip.MustParseAddr("198.51.100.1")
	rpInternet6 = netip.MustParseAddr("2001:db8:100::1")
)

const (
	rpName     = "web.warren-test"
	rpPort     = 51820
	helperEnv  = "WARREN_REALPEER_HELPER" // set: this process is the server helper
	socks5Port = 1080
	httpPort   = 8118
	dnsPort    = 5353
)

// realPeer is one topology.
type realPeer struct {
	t                 *testing.T
	id                string
	cliNS, srvNS      string
	wgName            string
	underSrv, underCl netip.Addr // 10.201.N.1, .2
	ctlHost, ctlCli   netip.Addr // 10.202.N.1, .2
	serverKey         config.PrivateKey
	clientKey         config.PrivateKey
	keyFile           string
	dir               string

	mu     sync.Mutex
	wg     *exec.Cmd // wireguard-go
	helper *exec.Cmd
	leaks  atomic.Int64 // queries seen by the DNS listener outside the tunnel
	// internet are the sources of the requests "the internet" (a web
	// server on rpInternet in the server namespace, outside the tunnel)
	// received: the client's tunnel address, or its underlay one.
	internet []netip.Addr
}

var rpSeq atomic.Int32

// rpNeeds skips the test unless it can run: root, namespaces, the tools.
// Under CI it fails instead, so that the suite cannot quietly not run.
func rpNeeds(t *testing.T) {
	t.Helper()
	missing := func(why string) {
		if os.Getenv("CI") != "" {
			t.Fatalf("real-peer suite cannot run in CI: %s", why)
		}
		t.Skipf("real-peer suite skipped: %s (it needs root, network namespaces, wireguard-go, wg, nft and ip)", why)
	}
	if os.Geteuid() != 0 {
		missing("not root")
	}
	for _, tool := range []string{"ip", "wireguard-go", "wg", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing(tool + " not found")
		}
	}
	ns := fmt.Sprintf("wprobe%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		missing(fmt.Sprintf("network namespaces unavailable: %v: %s", err, out))
	}
	exec.Command("ip", "netns", "del", ns).Run()
}

// run runs a command and fails the test if it fails.
func (rp *realPeer) run(name string, args ...string) string {
	rp.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		rp.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in runs a command in a namespace.
func (rp *realPeer) in(ns string, args ...string) string {
	rp.t.Helper()
	return rp.run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

func newRealPeer(t *testing.T) *realPeer {
	t.Helper()
	rpNeeds(t)
	seq := int(rpSeq.Add(1))
	n := 100 + (os.Getpid()+seq)%150
	rp := &realPeer{
		t:        t,
		id:       fmt.Sprintf("%d%d", os.Getpid()%10000, seq),
		underSrv: netip.AddrFrom4([4]byte{10, 201, byte(n), 1}),
		underCl:  netip.AddrFrom4([4]byte{10, 201, byte(n), 2}),
		ctlHost:  netip.AddrFrom4([4]byte{10, 202, byte(n), 1}),
		ctlCli:   netip.AddrFrom4([4]byte{10, 202, byte(n), 2}),
		dir:      t.TempDir(),
	}
	rp.cliNS, rp.srvNS, rp.wgName = "wcli"+rp.id, "wsrv"+rp.id, "wgs"+rp.id
	t.Cleanup(rp.teardown)

	rp.serverKey, _ = config.NewPrivateKey()
	rp.clientKey, _ = config.NewPrivateKey()
	rp.keyFile = filepath.Join(rp.dir, "server.key")
	rp.writeKey(rp.serverKey)

	rp.run("ip", "netns", "add", rp.cliNS)
	rp.run("ip", "netns", "add", rp.srvNS)
	// No IPv6 on the client's links: nothing but warren sends there.
	rp.in(rp.cliNS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	rp.in(rp.cliNS, "ip", "link", "set", "lo", "up")
	rp.in(rp.srvNS, "ip", "link", "set", "lo", "up")
	// Underlay: client <-> server.
	under, underPeer := "wu"+rp.id, "wv"+rp.id
	rp.run("ip", "link", "add", under, "netns", rp.cliNS, "type", "veth", "peer", "name", underPeer, "netns", rp.srvNS)
	rp.in(rp.cliNS, "ip", "addr", "add", rp.underCl.String()+"/24", "dev", under)
	rp.in(rp.cliNS, "ip", "link", "set", under, "up")
	rp.in(rp.srvNS, "ip", "addr", "add", rp.underSrv.String()+"/24", "dev", underPeer)
	rp.in(rp.srvNS, "ip", "link", "set", underPeer, "up")
	// Control: this test <-> client, for the SOCKS5 proxy.
	ctl, ctlPeer := "wc"+rp.id, "wd"+rp.id
	rp.run("ip", "link", "add", ctl, "type", "veth", "peer", "name", ctlPeer, "netns", rp.cliNS)
	rp.run("ip", "addr", "add", rp.ctlHost.String()+"/24", "dev", ctl)
	rp.run("ip", "link", "set", ctl, "up")
	rp.in(rp.cliNS, "ip", "addr", "add", rp.ctlCli.String()+"/24", "dev", ctlPeer)
	rp.in(rp.cliNS, "ip", "link", "set", ctlPeer, "up")
	// The client namespace's resolver is the leak listener.
	etc := filepath.Join("/etc/netns", rp.cliNS)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), fmt.Appendf(nil, "nameserver %s\n", rp.underSrv), 0o644); err != nil {
		t.Fatal(err)
	}

	// "The internet": an address of the server namespace outside the
	// tunnel, reached by the client's default route (directly) or through
	// the tunnel.
	rp.in(rp.srvNS, "ip", "addr", "add", rpInternet.String()+"/32", "dev", "lo")
	rp.in(rp.srvNS, "ip", "addr", "add", rpInternet6.String()+"/128", "dev", "lo")
	rp.in(rp.cliNS, "ip", "route", "add", "default", "via", rp.underSrv.String())

	rp.startPeer()
	rp.startHelper()
	return rp
}

func (rp *realPeer) writeKey(k config.PrivateKey) {
	rp.t.Helper()
	text := base64Key(k) + "\n"
	if err := os.WriteFile(rp.keyFile, []byte(text), 0o600); err != nil {
		rp.t.Fatal(err)
	}
}

// startPeer starts wireguard-go in the server namespace and configures it
// with wg and ip.
func (rp *realPeer) startPeer() {
	rp.t.Helper()
	sock := filepath.Join("/var/run/wireguard", rp.wgName+".sock")
	os.Remove(sock)
	cmd := exec.Command("ip", "netns", "exec", rp.srvNS, "wireguard-go", "-f", rp.wgName)
	cmd.Env = append(os.Environ(), "LOG_LEVEL=error")
	if err := cmd.Start(); err != nil {
		rp.t.Fatal(err)
	}
	rp.mu.Lock()
	rp.wg = cmd
	rp.mu.Unlock()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 100 {
			rp.t.Fatalf("wireguard-go made no UAPI socket %s", sock)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pub := rp.clientKey.PublicKey()
	rp.in(rp.srvNS, "wg", "set", rp.wgName, "listen-port", strconv.Itoa(rpPort), "private-key", rp.keyFile,
		"peer", pub.String(), "allowed-ips", rpClient4.String()+"/32,"+rpClient6.String()+"/128")
	rp.in(rp.srvNS, "ip", "addr", "add", rpServer4.String()+"/24", "dev", rp.wgName)
	rp.in(rp.srvNS, "ip", "addr", "add", rpServer6.String()+"/64", "dev", rp.wgName, "nodad")
	rp.in(rp.srvNS, "ip", "link", "set", rp.wgName, "mtu", "1420", "up")
}

// stopPeer kills wireguard-go (the process this test started) and waits for
// its interface to go.
func (rp *realPeer) stopPeer() {
	rp.mu.Lock()
	cmd := rp.wg
	rp.wg = nil
	rp.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
}

// startHelper runs this test binary in the server namespace as the peer's
// HTTP and DNS servers, and the DNS listener outside the tunnel.
func (rp *realPeer) startHelper() {
	rp.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", rp.srvNS, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+rp.underSrv.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		rp.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		rp.t.Fatal(err)
	}
	rp.mu.Lock()
	rp.helper = cmd
	rp.mu.Unlock()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			switch line := sc.Text(); {
			case line == "ready":
				close(ready)
			case strings.HasPrefix(line, "leak "):
				rp.leaks.Add(1)
				rp.t.Logf("DNS query outside the tunnel: %s", line)
			case strings.HasPrefix(line, "internet "):
				from, _ := netip.ParseAddrPort(strings.TrimPrefix(line, "internet "))
				rp.mu.Lock()
				rp.internet = append(rp.internet, from.Addr())
				rp.mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(15 * time.Second):
		rp.t.Fatal("the server helper did not start")
	}
}

// setLeakCounter installs the client namespace's nftables counter.
func (rp *realPeer) setLeakCounter() {
	rp.t.Helper()
	rules := fmt.Sprintf(`table inet warrentest {
	counter leaks {}
	chain out {
		type filter hook output priority 0; policy accept;
		oifname "lo" accept
		ip daddr %[1]s udp dport %[2]d accept
		ip daddr %[1]s icmp type destination-unreachable accept
		oifname "wd%[3]s" ip daddr %[4]s tcp sport { %[5]d, %[6]d, %[7]d } accept
		oifname "wd%[3]s" ip daddr %[4]s udp sport %[7]d accept
		counter name leaks
	}
}
`, rp.underSrv, rpPort, rp.id, rp.ctlHost, socks5Port, httpPort, dnsPort)
	path := filepath.Join(rp.dir, "leaks.nft")
	os.WriteFile(path, []byte(rules), 0o600)
	rp.in(rp.cliNS, "nft", "-f", path)
}

var counterRE = regexp.MustCompile(`packets (\d+) bytes (\d+)`)

// leakCounter reads the client namespace's nftables counter.
func (rp *realPeer) leakCounter() int {
	rp.t.Helper()
	out := rp.in(rp.cliNS, "nft", "list", "counter", "inet", "warrentest", "leaks")
	m := counterRE.FindStringSubmatch(out)
	if m == nil {
		rp.t.Fatalf("cannot read the leak counter:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// checkNoLeaks asserts that nothing left the client namespace but what it
// may, and that no DNS query reached the listener outside the tunnel.
func (rp *realPeer) checkNoLeaks() {
	rp.t.Helper()
	if n := rp.leakCounter(); n != 0 {
		rp.t.Errorf("%d packets left the client namespace by another path than the tunnel", n)
	}
	if n := rp.leaks.Load(); n != 0 {
		rp.t.Errorf("%d DNS queries reached the resolver outside the tunnel", n)
	}
}

// blackhole drops the peer's WireGuard traffic in the server namespace, or
// lifts that.
func (rp *realPeer) blackhole(on bool) {
	rp.t.Helper()
	if !on {
		rp.in(rp.srvNS, "nft", "delete", "table", "inet", "blackhole")
		return
	}
	rules := fmt.Sprintf(`table inet blackhole {
	chain in { type filter hook input priority -10; udp dport %[1]d drop; }
	chain out { type filter hook output priority -10; udp sport %[1]d drop; }
}
`, rpPort)
	path := filepath.Join(rp.dir, "blackhole.nft")
	os.WriteFile(path, []byte(rules), 0o600)
	rp.in(rp.srvNS, "nft", "-f", path)
}

func (rp *realPeer) teardown() {
	rp.stopPeer()
	rp.mu.Lock()
	helper := rp.helper
	rp.mu.Unlock()
	if helper != nil {
		helper.Process.Signal(syscall.SIGTERM)
		helper.Wait()
	}
	exec.Command("ip", "netns", "del", rp.cliNS).Run()
	exec.Command("ip", "netns", "del", rp.srvNS).Run()
	exec.Command("ip", "link", "del", "wc"+rp.id).Run() // gone with the namespace, unless that failed
	os.RemoveAll(filepath.Join("/etc/netns", rp.cliNS))
	os.Remove(filepath.Join("/var/run/wireguard", rp.wgName+".sock"))
}

// clientConfig is warren's config for this topology.
func (rp *realPeer) clientConfig() string {
	return fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32, %s/128
DNS = %s

[Peer]
PublicKey = %s
Endpoint = %s:%d
AllowedIPs = 0.0.0.0/0, ::/0
`, base64Key(rp.clientKey), rpClient4, rpClient6, rpServer4, rp.serverKey.PublicKey(), rp.underSrv, rpPort)
}

// startWarren starts warren in the client namespace with the config and
// extra flags, its SOCKS5 proxy (whose address it returns), HTTP proxy and
// DNS server on the control link.
func (rp *realPeer) startWarren(extra ...string) (*process, string) {
	rp.t.Helper()
	conf := filepath.Join(rp.dir, "wg0.conf")
	if err := os.WriteFile(conf, []byte(rp.clientConfig()), 0o600); err != nil {
		rp.t.Fatal(err)
	}
	addr := netip.AddrPortFrom(rp.ctlCli, socks5Port).String()
	// The proxies listen on the control link, not loopback, without
	// credentials: the test's namespaces are all there is on that link.
	args := append([]string{"up", "-c", conf, "--socks5", addr, "--http", rp.httpAddr(), "--dns", rp.dnsAddr(), "--allow-unauthenticated-remote"}, extra...)
	p := startWarrenIn(rp.t, rp.cliNS, args...)
	p.waitLog(rp.t, 10*time.Second, msg("SOCKS5 proxy listening"))
	return p, addr
}

// logTime is the time of a log line.
func (rp *realPeer) httpAddr() string { return netip.AddrPortFrom(rp.ctlCli, httpPort).String() }
func (rp *realPeer) dnsAddr() string  { return netip.AddrPortFrom(rp.ctlCli, dnsPort).String() }

// checkOtherWaysIn uses the HTTP proxy and the DNS server of a connected
// warren.
func (rp *realPeer) checkOtherWaysIn() {
	t := rp.t
	t.Helper()
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  string
	}{
		{rpName, dns.TypeA, dns.RcodeSuccess, rpServer4.String()},
		{rpName, dns.TypeAAAA, dns.RcodeSuccess, rpServer6.String()},
		{"nowhere.warren-test", dns.TypeA, dns.RcodeNameError, ""},
	} {
		for _, network := range []string{"udp", "tcp"} {
			m := query(t, network, rp.dnsAddr(), tc.name, tc.qtype, 0)
			got := ""
			if len(m.Answer) == 1 {
				got = m.Answer[0].String()
			}
			if m.Rcode != tc.rcode || !strings.Contains(got, tc.want) || tc.want == "" && got != "" {
				t.Errorf("DNS %s %s over %s: %s %q, want %s %q", tc.name, dns.TypeToString[tc.qtype], network,
					dns.RcodeToString[m.Rcode], got, dns.RcodeToString[tc.rcode], tc.want)
			}
		}
	}
	page := string(get(t, httpProxyClient(t, rp.httpAddr(), nil), "http://"+rpName+"/"))
	if !strings.Contains(page, rpClient4.String()) {
		t.Errorf("GET through the HTTP proxy: %q", page)
	}
}

// checkOtherWaysRefused expects the HTTP proxy and the DNS server to refuse.
func (rp *realPeer) checkOtherWaysRefused(state string) {
	t := rp.t
	t.Helper()
	if m := query(t, "udp", rp.dnsAddr(), rpName, dns.TypeA, 0); m.Rcode != dns.RcodeRefused {
		t.Errorf("DNS while %s: %s, want REFUSED", state, dns.RcodeToString[m.Rcode])
	}
	resp, err := httpProxyClient(t, rp.httpAddr(), nil).Get("http://" + rpName + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), state) {
		t.Errorf("HTTP proxy while %s: %s %q, want 503 naming the state", state, resp.Status, body)
	}
}

func logTime(t *testing.T, m map[string]any) time.Time {
	t.Helper()
	s, _ := m["time"].(string)
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line without a time: %v", m)
	}
	return tm
}

func toState(st string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["to"] == st }
}

// keepAsking sends requests through the proxy every 200 ms until stopped,
// as an application would; it keeps the tunnel busy.
func keepAsking(t *testing.T, proxyAddr string) (stop func()) {
	c := socksClient(t, proxyAddr)
	c.Timeout = 2 * time.Second
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if resp, err := c.Get("http://" + rpServer4.String() + "/"); err == nil {
				resp.Body.Close()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-stopped
	}
}

// wantRefusedFast checks that CONNECTs through the proxy at addr are
// refused with 0x02 in a median of under 50 ms, and returns the median.
func wantRefusedFast(t *testing.T, addr string) time.Duration {
	t.Helper()
	var took []time.Duration
	for range 21 {
		rep, d := socksConnect(t, addr, netip.AddrPortFrom(rpServer4, 80))
		if rep != 0x02 {
			t.Fatalf("reply %#x, want 0x02", rep)
		}
		took = append(took, d)
	}
	m := median(took)
	if m >= 50*time.Millisecond {
		t.Fatalf("median refusal %v, want under 50ms", m)
	}
	return m
}

// The leak checks can fail: a lookup with the host's resolver in the client
// namespace is seen by both.
func TestRealPeerLeakChecksSeeLeaks(t *testing.T) {
	rp := newRealPeer(t)
	rp.setLeakCounter()
	exec.Command("ip", "netns", "exec", rp.cliNS, "getent", "ahostsv4", "leak.warren-test").Run() // fails: REFUSED
	if n := rp.leakCounter(); n == 0 {
		t.Error("the nftables counter did not see a DNS query sent outside the tunnel")
	}
	deadline := time.Now().Add(5 * time.Second)
	for rp.leaks.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if rp.leaks.Load() == 0 {
		t.Error("the DNS listener outside the tunnel did not see the query")
	}
}

func TestRealPeerTraffic(t *testing.T) {
	rp := newRealPeer(t)
	rp.setLeakCounter()
	p, addr := rp.startWarren()
	connected := p.waitLog(t, 20*time.Second, toState("connected"))
	t.Logf("connected: %v", connected["endpoint"])
	c := socksClient(t, addr)
	for _, url := range []string{"http://" + rpName + "/", "http://10.78.0.1/", "http://[fd78::1]/"} {
		page := string(get(t, c, url))
		if !strings.Contains(page, "Hello") {
			t.Fatalf("GET %s: %q", url, page)
		}
		want := rpClient4.String()
		if strings.Contains(url, "[") {
			want = rpClient6.String()
		}
		if !strings.Contains(page, want) {
			t.Errorf("GET %s: the peer saw us as something other than %s: %q", url, want, page)
		}
	}
	const n = 100 << 20
	begin := time.Now()
	resp, err := c.Get(fmt.Sprintf("http://%s/bytes/%d", rpName, n))
	if err != nil {
		t.Fatal(err)
	}
	got := digest(resp.Body)
	resp.Body.Close()
	took := time.Since(begin)
	if want := digest(demo.Bytes(n)); got != want {
		t.Fatalf("100 MiB: sha256 %s, want %s", got, want)
	}
	t.Logf("100 MiB in %v (%.1f MB/s), digest checked", took, float64(n)/took.Seconds()/1e6)
	if _, err := c.Get("http://nowhere.warren-test/"); err == nil || !strings.Contains(err.Error(), "host unreachable") {
		t.Errorf("an unknown name: %v, want host unreachable", err)
	}
	rp.checkOtherWaysIn()
	rp.checkNoLeaks()
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}
	rp.checkNoLeaks()
}

func TestRealPeerBlackhole(t *testing.T) {
	rp := newRealPeer(t)
	rp.setLeakCounter()
	p, addr := rp.startWarren()
	p.waitLog(t, 20*time.Second, toState("connected"))
	stop := keepAsking(t, addr)
	defer stop()
	time.Sleep(2 * time.Second) // traffic flows up to the blackhole
	rp.blackhole(true)
	silent := time.Now()
	down := p.waitLog(t, 30*time.Second, toState("connecting"))
	detected := logTime(t, down).Sub(silent)
	t.Logf("connecting %v after the blackhole (cause %v: %v)", detected, down["cause"], down["detail"])
	if detected > 20*time.Second {
		t.Errorf("took %v to leave Connected; want under 20s", detected)
	}
	if down["cause"] != "liveness-lost" {
		t.Errorf("cause %v", down["cause"])
	}
	refusal := wantRefusedFast(t, addr)
	t.Logf("median refusal while blackholed: %v", refusal)
	rp.checkOtherWaysRefused("connecting")
	time.Sleep(5 * time.Second) // an attempt or two fail
	rp.blackhole(false)
	lifted := time.Now()
	up := p.waitLog(t, 20*time.Second, toState("connected"))
	back := logTime(t, up).Sub(lifted)
	t.Logf("connected %v after the blackhole was lifted", back)
	if back > 5*time.Second {
		t.Errorf("took %v to reconnect; want under 5s", back)
	}
	stop()
	get(t, socksClient(t, addr), "http://"+rpName+"/")
	rp.checkOtherWaysIn()
	rp.checkNoLeaks()
}

func TestRealPeerRestart(t *testing.T) {
	rp := newRealPeer(t)
	rp.setLeakCounter()
	p, addr := rp.startWarren()
	p.waitLog(t, 20*time.Second, toState("connected"))
	c := socksClient(t, addr)
	get(t, c, "http://"+rpName+"/")

	rp.stopPeer()
	rp.startPeer()
	restarted := time.Now()
	short := socksClient(t, addr)
	short.Timeout = 2 * time.Second
	for {
		resp, err := short.Get("http://" + rpServer4.String() + "/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Since(restarted) > 30*time.Second {
			t.Fatalf("not served %v after the restart: %v", time.Since(restarted), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(restarted)
	t.Logf("served again %v after the peer restarted", took)
	if took > 10*time.Second {
		t.Errorf("took %v; want under 10s", took)
	}
	rp.checkNoLeaks()
}

func TestRealPeerKeyChanged(t *testing.T) {
	rp := newRealPeer(t)
	rp.setLeakCounter()
	p, addr := rp.startWarren()
	p.waitLog(t, 20*time.Second, toState("connected"))
	stop := keepAsking(t, addr)
	defer stop()

	other, _ := config.NewPrivateKey()
	rp.writeKey(other)
	rp.in(rp.srvNS, "wg", "set", rp.wgName, "private-key", rp.keyFile)
	changed := time.Now()
	down := p.waitLog(t, 30*time.Second, toState("connecting"))
	t.Logf("connecting %v after the peer's key changed", logTime(t, down).Sub(changed))
	// It keeps trying, never connects, and refuses at once meanwhile.
	var failures []string
	deadline := time.After(25 * time.Second)
watch:
	for {
		select {
		case m := <-p.lines:
			if m["to"] == "connected" {
				t.Fatalf("connected to a peer whose key changed: %v", m)
			}
			if d, ok := m["detail"].(string); ok && m["to"] == "connecting" {
				failures = append(failures, d)
			}
		case <-deadline:
			break watch
		}
	}
	if len(failures) < 2 {
		t.Fatalf("%d failed attempts in 25s: %v", len(failures), failures)
	}
	t.Logf("%d failed attempts, the last: %s", len(failures), failures[len(failures)-1])
	if !strings.Contains(failures[len(failures)-1], "no answer from the endpoint "+rp.underSrv.String()) {
		t.Errorf("failure reason %q does not say the endpoint did not answer", failures[len(failures)-1])
	}
	t.Logf("median refusal while the key is wrong: %v", wantRefusedFast(t, addr))

	rp.writeKey(rp.serverKey)
	rp.in(rp.srvNS, "wg", "set", rp.wgName, "private-key", rp.keyFile)
	restored := time.Now()
	up := p.waitLog(t, 30*time.Second, toState("connected"))
	t.Logf("connected %v after the key was restored", logTime(t, up).Sub(restored))
	stop()
	get(t, socksClient(t, addr), "http://"+rpName+"/")
	rp.checkOtherWaysIn()
	rp.checkNoLeaks()
}

// Nothing leaks in Disconnected (--no-connect) and in Error either.
func TestRealPeerNoLeakWhenNotConnected(t *testing.T) {
	rp := newRealPeer(t)
	rp.setLeakCounter()

	p, addr := rp.startWarren("--no-connect")
	t.Logf("disconnected: median refusal %v", wantRefusedFast(t, addr))
	c := socksClient(t, addr)
	if _, err := c.Get("http://" + rpName + "/"); err == nil || !strings.Contains(err.Error(), "not allowed by ruleset") {
		t.Errorf("by name while disconnected: %v", err)
	}
	rp.checkOtherWaysRefused("disconnected")
	p.stop(t, syscall.SIGTERM)
	rp.checkNoLeaks()

	// Error: the config's ListenPort is taken, so the device cannot be made.
	conf := filepath.Join(rp.dir, "busy.conf")
	os.WriteFile(conf, []byte(strings.Replace(rp.clientConfig(), "DNS =", "ListenPort = 9\nDNS =", 1)), 0o600)
	holder := rp.holdUDPPort(9)
	defer holder()
	p2 := startWarrenIn(t, rp.cliNS, "up", "-c", conf, "--socks5", addr, "--allow-unauthenticated-remote")
	e := p2.waitLog(t, 20*time.Second, toState("error"))
	t.Logf("error: cause %v: %v", e["cause"], e["detail"])
	if e["cause"] != "tunnel-device" {
		t.Errorf("cause %v", e["cause"])
	}
	t.Logf("error: median refusal %v", wantRefusedFast(t, addr))
	if _, err := c.Get("http://" + rpName + "/"); err == nil {
		t.Error("a request went through in Error")
	}
	p2.stop(t, syscall.SIGTERM)
	rp.checkNoLeaks()
}

// holdUDPPort keeps a UDP port of the client namespace (both families)
// taken, with a process this test starts, until the returned func is called.
func (rp *realPeer) holdUDPPort(port int) func() {
	rp.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", rp.cliNS, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=hold:"+strconv.Itoa(port))
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		rp.t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		rp.t.Fatalf("port holder: %q", line)
	}
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

// realPeerHelper is the server helper's main, in the server namespace: the
// peer's HTTP and DNS servers inside the tunnel, and the listener outside
// it that reports every query it gets. With "hold:PORT" it only holds a UDP
// port. It prints "ready", then serves until killed.
func realPeerHelper(arg string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	if port, ok := strings.CutPrefix(arg, "hold:"); ok {
		c, err := net.ListenPacket("udp", ":"+port)
		if err != nil {
			fail(err)
		}
		defer c.Close()
		fmt.Println("ready")
		select {}
	}
	underlay := arg
	var serve []func() error
	for _, a := range []string{"10.78.0.1:80", "[fd78::1]:80", rpInternet.String() + ":80", "[" + rpInternet6.String() + "]:80"} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			fail(err)
		}
		h := demo.Handler()
		if strings.HasPrefix(a, rpInternet.String()) || strings.Contains(a, rpInternet6.String()) {
			// "The internet": say who came, through the tunnel or not.
			inner := h
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Printf("internet %s\n", r.RemoteAddr)
				inner.ServeHTTP(w, r)
			})
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		serve = append(serve, func() error { return srv.Serve(l) })
	}
	inside := demo.DNSHandler(rpName, rpServer4, rpServer6)
	var leakMu sync.Mutex
	outside := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		leakMu.Lock()
		for _, qq := range q.Question {
			fmt.Printf("leak %s %s from %s\n", qq.Name, dns.TypeToString[qq.Qtype], w.RemoteAddr())
		}
		leakMu.Unlock()
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeRefused)
		w.WriteMsg(m)
	})
	for _, s := range []struct {
		addr string
		h    dns.Handler
	}{{"10.78.0.1:53", inside}, {underlay + ":53", outside}} {
		pc, err := net.ListenPacket("udp", s.addr)
		if err != nil {
			fail(err)
		}
		l, err := net.Listen("tcp", s.addr)
		if err != nil {
			fail(err)
		}
		udp, tcp := &dns.Server{PacketConn: pc, Handler: s.h}, &dns.Server{Listener: l, Handler: s.h}
		serve = append(serve, udp.ActivateAndServe, tcp.ActivateAndServe)
	}
	errc := make(chan error, len(serve))
	for _, f := range serve {
		go func() { errc <- f() }()
	}
	fmt.Println("ready")
	fail(<-errc)
}
