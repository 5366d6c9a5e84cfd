package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Host mode against the real peer: warren runs in the client namespace
// with --mode host; processes there that know nothing of warren (this test
// binary, run as a probe) try to reach the tunnel and "the internet".

// probeEnv makes this test binary a probe: one attempt, one line of output.
const probeEnv = "WARREN_HOSTMODE_PROBE"

// probe is what a probe did: ok, and what it got or why it failed, and how
// long it took.
type probe struct {
	ok   bool
	text string
	took time.Duration
}

// runProbe runs what, e.g. "http:http://198.51.100.1/", "tcp:10.201.1.1:80"
// or "dns:10.78.0.1:53:web.warren-test", in the client namespace.
func (rp *realPeer) probe(what string) probe {
	rp.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", rp.cliNS, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), probeEnv+"="+what)
	out, err := cmd.Output()
	if err != nil {
		rp.t.Fatalf("probe %s: %v\n%s", what, err, out)
	}
	line := strings.TrimSpace(string(out))
	var p probe
	var ms int64
	var status string
	fmt.Sscanf(line, "%s %d", &status, &ms)
	p.ok, p.took = status == "ok", time.Duration(ms)*time.Millisecond
	if _, rest, found := strings.Cut(line, " "); found {
		if _, text, found := strings.Cut(rest, " "); found {
			p.text = text
		}
	}
	return p
}

// probeMain is the probe: it makes one attempt with a 5 s bound and prints
// "ok MS TEXT" or "fail MS ERROR".
func probeMain(what string) {
	kind, arg, _ := strings.Cut(what, ":")
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var text string
	var err error
	switch kind {
	case "http":
		var req *http.Request
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, arg, nil)
		if err == nil {
			var resp *http.Response
			tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
			resp, err = (&http.Client{Transport: tr}).Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				text = strings.ReplaceAll(string(b), "\n", " ")
			}
		}
	case "tcp":
		var c net.Conn
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", arg)
		if err == nil {
			c.Close()
		}
	case "udp":
		// A datagram, then a read: a refused or blocked send fails.
		var c net.Conn
		c, err = (&net.Dialer{}).DialContext(ctx, "udp", arg)
		if err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			_, err = c.Write([]byte("hello"))
			c.Close()
		}
	case "ping":
		// One ICMP echo (as root: a raw socket); anything but its reply
		// within a second is a failure.
		var c *icmp.PacketConn
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			break
		}
		defer c.Close()
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: 1, Data: []byte("warren probe")}}
		b, _ := msg.Marshal(nil)
		if _, err = c.WriteTo(b, &net.IPAddr{IP: net.ParseIP(arg)}); err != nil {
			break
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 1500)
		for {
			var n int
			var from net.Addr
			n, from, err = c.ReadFrom(buf)
			if err != nil {
				break
			}
			m, perr := icmp.ParseMessage(1, buf[:n])
			if perr != nil {
				continue
			}
			if m.Type == ipv4.ICMPTypeEchoReply && from.String() == arg {
				text = "echo reply from " + arg
				break
			}
			if m.Type == ipv4.ICMPTypeDestinationUnreachable {
				err = fmt.Errorf("destination unreachable (code %d) from %v", m.Code, from)
				break
			}
		}
	case "markeddns":
		// A UDP socket with warren's mark, as a process trying to pass
		// for warren would make: setting it needs CAP_NET_ADMIN.
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, 0x5752)
			})
			return serr
		}}
		var c net.Conn
		c, err = d.DialContext(ctx, "udp", arg)
		if err == nil {
			_, err = c.Write([]byte("hello"))
			c.Close()
		}
	case "dns":
		server, name, _ := strings.Cut(arg, "/")
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(name), dns.TypeA)
		var m *dns.Msg
		m, _, err = (&dns.Client{Timeout: 5 * time.Second}).ExchangeContext(ctx, q, server)
		if err == nil {
			text = dns.RcodeToString[m.Rcode]
			for _, rr := range m.Answer {
				text += " " + rr.String()
			}
		}
	case "loop":
		// Keep trying to reach arg (TCP: through the tunnel while it is
		// up) and the DNS server outside (after a comma: never), until
		// stdin closes; then say how many of each got through.
		tcpTo, dnsTo, _ := strings.Cut(arg, ",")
		stop := make(chan struct{})
		go func() {
			io.Copy(io.Discard, os.Stdin)
			close(stop)
		}()
		var tries, tcpOK, dnsOK int
		q := new(dns.Msg)
		q.SetQuestion("loop.warren-test.", dns.TypeA)
		for {
			select {
			case <-stop:
				fmt.Printf("ok %d %d %d %d\n", time.Since(begin).Milliseconds(), tries, tcpOK, dnsOK)
				return
			default:
			}
			tries++
			if c, err := net.DialTimeout("tcp", tcpTo, time.Second); err == nil {
				tcpOK++
				c.Close()
			}
			if _, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(q, dnsTo); err == nil {
				dnsOK++
			}
			time.Sleep(2 * time.Millisecond)
		}
	default:
		err = fmt.Errorf("unknown probe %q", kind)
	}
	ms := time.Since(begin).Milliseconds()
	if err != nil {
		fmt.Printf("fail %d %v\n", ms, err)
		return
	}
	fmt.Printf("ok %d %s\n", ms, text)
}

// hostConfig is the client's config for host mode: everything through the
// tunnel, IPv4 only (the client namespace has no IPv6), the tunnel's DNS.
func (rp *realPeer) hostConfig() string {
	return fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32
DNS = %s

[Peer]
PublicKey = %s
Endpoint = %s:%d
AllowedIPs = 0.0.0.0/0
`, base64Key(rp.clientKey), rpClient4, rpServer4, base64Key(rp.serverKey.PublicKey()), rp.underSrv, rpPort)
}

// startHostWarren starts warren --mode host in the client namespace, with
// its API on a socket in the test's directory.
func (rp *realPeer) startHostWarren(extra ...string) (*process, string) {
	rp.t.Helper()
	return rp.startHostWarrenConf(rp.hostConfig(), extra...)
}

// startHostWarrenConf is startHostWarren with the config text config.
func (rp *realPeer) startHostWarrenConf(config string, extra ...string) (*process, string) {
	rp.t.Helper()
	conf := filepath.Join(rp.dir, "host.conf")
	if err := os.WriteFile(conf, []byte(config), 0o600); err != nil {
		rp.t.Fatal(err)
	}
	// Programs in the namespace resolve with the tunnel's DNS server.
	os.WriteFile(filepath.Join("/etc/netns", rp.cliNS, "resolv.conf"), fmt.Appendf(nil, "nameserver %s\n", rpServer4), 0o644)
	sock := filepath.Join(rp.dir, "api.sock")
	args := append([]string{"up", "-c", conf, "--mode", "host", "--tun", "wt" + rp.id, "--dns", "off", "--api", "unix:" + sock}, extra...)
	p := startWarrenIn(rp.t, rp.cliNS, args...)
	return p, sock
}

// internetSources returns the sources "the internet" saw, and forgets them.
func (rp *realPeer) internetSources() []netip.Addr {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	s := rp.internet
	rp.internet = nil
	return s
}

// wantBlocked checks that direct attempts from the client namespace fail
// at once, and that the outside sees nothing.
func (rp *realPeer) wantBlocked(when string) {
	rp.t.Helper()
	for _, what := range []string{
		"http:http://" + rpInternet.String() + "/",
		"tcp:" + rp.underSrv.String() + ":53", // the DNS listener outside takes TCP too
		"dns:" + rp.underSrv.String() + ":53/leak.warren-test",
		"dns:" + rpServer4.String() + ":53/" + rpName,
		"ping:" + rp.underSrv.String(),
		"ping:" + rpInternet.String(),
	} {
		p := rp.probe(what)
		rp.t.Logf("%s: %s: ok=%v in %v: %s", when, what, p.ok, p.took, p.text)
		if p.ok {
			rp.t.Errorf("%s: %s went through: %s", when, what, p.text)
		} else if p.took > time.Second {
			rp.t.Errorf("%s: %s failed only after %v (%s), want at once", when, what, p.took, p.text)
		}
	}
	if s := rp.internetSources(); len(s) > 0 {
		rp.t.Errorf("%s: the internet saw requests from %v", when, s)
	}
	if n := rp.leaks.Load(); n != 0 {
		rp.t.Errorf("%s: %d DNS queries reached the resolver outside the tunnel", when, n)
	}
}

// setPathCounters counts, in the client namespace, what leaves by the
// underlay other than WireGuard to the peer and the neighbour discovery
// any IPv6 host needs ("direct"), and what leaves by the TUN ("tunnel").
func (rp *realPeer) setPathCounters() {
	rp.t.Helper()
	rules := fmt.Sprintf(`table inet warrenpaths {
	counter direct {}
	counter tunnel {}
	chain post {
		type filter hook postrouting priority 100; policy accept;
		oifname "wu%[1]s" ip daddr %[2]s udp dport %[3]d accept
		oifname "wu%[1]s" icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
		oifname "wu%[1]s" counter name direct
		oifname "wt%[1]s" counter name tunnel
	}
}
`, rp.id, rp.underSrv, rpPort)
	path := filepath.Join(rp.dir, "paths.nft")
	os.WriteFile(path, []byte(rules), 0o600)
	rp.in(rp.cliNS, "nft", "-f", path)
}

// pathCounter reads one of setPathCounters' counters, and zeroes it.
func (rp *realPeer) pathCounter(name string) int {
	rp.t.Helper()
	out := rp.in(rp.cliNS, "nft", "reset", "counter", "inet", "warrenpaths", name)
	m := counterRE.FindStringSubmatch(out)
	if m == nil {
		rp.t.Fatalf("cannot read counter %s:\n%s", name, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// snapshotNS is the namespace's firewall, rules, routes and links, to
// compare before and after.
func (rp *realPeer) snapshotNS() string {
	rp.t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"nft", "-s", "list", "ruleset"}, // -s: without the counters' values
		{"ip", "rule", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-o", "link", "show"},
	} {
		b.WriteString(rp.in(rp.cliNS, args...))
	}
	return b.String()
}

// wantNamespace fails the test if the namespace is not as before, a
// snapshotNS taken before warren started; when says at which point.
func (rp *realPeer) wantNamespace(when, before string) {
	rp.t.Helper()
	if after := rp.snapshotNS(); after != before {
		rp.t.Errorf("%s, the namespace differs:\nbefore:\n%s\nafter:\n%s", when, before, after)
	}
}

// downRestores runs warren down for the test's TUN and checks that it put
// the namespace back as it was before warren started (before, a
// snapshotNS) and that the internet is in reach again. It returns what
// warren down printed.
func (rp *realPeer) downRestores(before string) string {
	rp.t.Helper()
	out := rp.in(rp.cliNS, warrenBinary(rp.t), "down", "--tun", "wt"+rp.id)
	rp.t.Logf("warren down: %s", strings.TrimSpace(out))
	rp.wantNamespace("after warren down", before)
	if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
		rp.t.Errorf("after warren down: the internet: %+v", pr)
	}
	return out
}

func TestHostMode(t *testing.T) {
	rp := newRealPeer(t)
	rp.setPathCounters()
	before := rp.snapshotNS()

	// Without warren, "the internet" is reached directly.
	if p := rp.probe("http:http://" + rpInternet.String() + "/"); !p.ok {
		t.Fatalf("without warren, the internet is unreachable: %s", p.text)
	}
	if s := rp.internetSources(); len(s) != 1 || s[0] != rp.underCl {
		t.Fatalf("without warren, the internet saw %v, want %v", s, rp.underCl)
	}
	if n := rp.pathCounter("direct"); n == 0 {
		t.Fatal("the direct-path counter saw nothing of a direct request: it counts the wrong thing")
	}
	if pr := rp.probe("ping:" + rp.underSrv.String()); !pr.ok {
		t.Fatalf("without warren, ping fails: %+v: the ping probe cannot tell blocked from broken", pr)
	}
	rp.pathCounter("direct")

	p, sock := rp.startHostWarren()
	connected := p.waitLog(t, 20*time.Second, toState("connected"))
	t.Logf("host mode connected: %v", connected["endpoint"])

	// Connected: by name to the tunnel's web server, and "the internet"
	// only through the tunnel.
	if pr := rp.probe("http:http://" + rpName + "/"); !pr.ok || !strings.Contains(pr.text, rpClient4.String()) {
		t.Errorf("by name through the tunnel: %+v", pr)
	}
	if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
		t.Errorf("the internet through the tunnel: %+v", pr)
	}
	if pr := rp.probe("ping:" + rpInternet.String()); !pr.ok {
		t.Errorf("ping to the internet through the tunnel: %+v", pr)
	}
	if s := rp.internetSources(); len(s) != 1 || s[0] != rpClient4 {
		t.Errorf("the internet saw %v, want only the tunnel address %v", s, rpClient4)
	}
	direct, tunnel := rp.pathCounter("direct"), rp.pathCounter("tunnel")
	t.Logf("connected: %d packets by the tunnel, %d directly", tunnel, direct)
	if direct != 0 || tunnel == 0 {
		t.Errorf("connected: %d packets left directly, %d by the tunnel; want 0 and some", direct, tunnel)
	}
	for _, what := range []string{"dns:" + rp.underSrv.String() + ":53/leak.warren-test", "tcp:" + rp.underSrv.String() + ":53"} {
		if pr := rp.probe(what); pr.ok || pr.took > time.Second {
			t.Errorf("connected: %s: %+v, want refused at once", what, pr)
		}
	}
	if n := rp.leaks.Load(); n != 0 {
		t.Errorf("%d DNS queries outside the tunnel", n)
	}

	// Connecting (the peer blackholed): everything blocked.
	rp.blackhole(true)
	down := p.waitLog(t, 30*time.Second, toState("connecting"))
	t.Logf("connecting after the blackhole: %v", down["detail"])
	rp.wantBlocked("connecting")
	if n := rp.pathCounter("direct"); n != 0 {
		t.Errorf("connecting: %d packets left directly", n)
	}
	rp.blackhole(false)
	p.waitLog(t, 20*time.Second, toState("connected"))

	// Disconnected through the API: no table, the namespace as it was.
	var out, errOut strings.Builder
	if code := run(context.Background(), []string{"disconnect", "--api", "unix:" + sock}, func(string) string { return "" }, &out, &errOut); code != 0 {
		t.Fatalf("warren disconnect: %s%s", out.String(), errOut.String())
	}
	p.waitLog(t, 10*time.Second, toState("disconnected"))
	if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
		t.Errorf("disconnected (no lockdown): the internet: %+v", pr)
	}
	rp.internetSources()
	run(context.Background(), []string{"connect", "--api", "unix:" + sock}, func(string) string { return "" }, &out, &errOut)
	p.waitLog(t, 20*time.Second, toState("connected"))
	rp.pathCounter("direct") // what the disconnected probe sent

	// Crash: the namespace stays closed; warren down restores it exactly.
	p.cmd.Process.Signal(syscall.SIGKILL) // the process this test started
	<-p.done
	rp.wantBlocked("after kill -9")
	if n := rp.pathCounter("direct"); n != 0 {
		t.Errorf("after kill -9: %d packets left directly", n)
	}
	rp.downRestores(before)
}

// Without --lockdown, a clean stop removes everything too.
func TestHostModeStopCleansUp(t *testing.T) {
	rp := newRealPeer(t)
	before := rp.snapshotNS()
	p, _ := rp.startHostWarren()
	p.waitLog(t, 20*time.Second, toState("connected"))
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}
	rp.wantNamespace("after a clean stop", before)
}

// Transitions: 50 cycles of connect, reconnect and disconnect (with
// --lockdown, so that Disconnected blocks too) while a process keeps trying
// to reach the internet and a DNS server outside: nothing gets through in
// any gap, and nothing leaves but by the tunnel.
func TestHostModeTransitions(t *testing.T) {
	rp := newRealPeer(t)
	rp.setPathCounters()
	p, sock := rp.startHostWarren("--lockdown", "--no-connect")
	p.waitLog(t, 10*time.Second, msg("control API listening"))
	drained := make(chan struct{})
	defer close(drained)
	go func() {
		for {
			select {
			case <-p.lines:
			case <-drained:
				return
			}
		}
	}()

	loop := exec.Command("ip", "netns", "exec", rp.cliNS, os.Args[0], "-test.run=^$")
	loop.Env = append(os.Environ(), probeEnv+"=loop:"+rpInternet.String()+":80,"+rp.underSrv.String()+":53")
	stdin, _ := loop.StdinPipe()
	var loopOut strings.Builder
	loop.Stdout = &loopOut
	if err := loop.Start(); err != nil {
		t.Fatal(err)
	}
	defer loop.Process.Kill() // the process this test started

	api := unixHTTP(sock)
	wait := func(st string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; {
			if apiStatus(t, api).State == st {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("not %s after 30s: %+v", st, apiStatus(t, api))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	const cycles = 50
	begin := time.Now()
	for i := range cycles {
		for _, step := range []struct{ path, want string }{
			{"/v1/connect", "connected"},
			{"/v1/reconnect", "connected"},
			{"/v1/disconnect", "disconnected"},
		} {
			if code, body := apiDo(t, api, http.MethodPost, step.path); code != 200 {
				t.Fatalf("cycle %d: %s: %d %s", i, step.path, code, body)
			}
			wait(step.want)
		}
	}
	t.Logf("%d cycles in %v", cycles, time.Since(begin))
	stdin.Close()
	loop.Wait()
	var ms, tries, tcpOK, dnsOK int
	fmt.Sscanf(loopOut.String(), "ok %d %d %d %d", &ms, &tries, &tcpOK, &dnsOK)
	t.Logf("the client tried %d times: %d TCP connections to the internet went through the tunnel, %d DNS queries outside were answered", tries, tcpOK, dnsOK)
	if tries == 0 || dnsOK != 0 {
		t.Errorf("the client: %q; want many tries, and no DNS answer from outside", loopOut.String())
	}
	if s := rp.internetSources(); len(s) > 0 {
		t.Errorf("the internet saw %d requests: %v", len(s), s)
	}
	if n := rp.leaks.Load(); n != 0 {
		t.Errorf("%d DNS queries outside the tunnel", n)
	}
	if n := rp.pathCounter("direct"); n != 0 {
		t.Errorf("%d packets left directly", n)
	}
}

// The sidecar: an unprivileged process sharing warren's network namespace
// reaches the tunnel and nothing else, and cannot use warren's mark to get
// past the firewall.
func TestHostModeSidecar(t *testing.T) {
	rp := newRealPeer(t)
	p, _ := rp.startHostWarren()
	p.waitLog(t, 20*time.Second, toState("connected"))

	// A copy of this test binary that the unprivileged user may run.
	dir, err := os.MkdirTemp("", "warren-app")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	app := filepath.Join(dir, "app")
	if out, err := exec.Command("cp", os.Args[0], app).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.Chmod(app, 0o755)
	run := func(what string) probe {
		t.Helper()
		cmd := exec.Command("ip", "netns", "exec", rp.cliNS, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", app, "-test.run=^$")
		cmd.Env = append(os.Environ(), probeEnv+"="+what)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("app %s: %v %s", what, err, out)
		}
		var pr probe
		var status string
		var ms int64
		line := strings.TrimSpace(string(out))
		fmt.Sscanf(line, "%s %d", &status, &ms)
		pr.ok, pr.took, pr.text = status == "ok", time.Duration(ms)*time.Millisecond, line
		return pr
	}
	if pr := run("http:http://" + rpName + "/"); !pr.ok || !strings.Contains(pr.text, rpClient4.String()) {
		t.Errorf("the app, by name through the tunnel: %+v", pr)
	}
	if pr := run("http:http://" + rpInternet.String() + "/"); !pr.ok {
		t.Errorf("the app, the internet through the tunnel: %+v", pr)
	}
	for _, what := range []string{"tcp:" + rp.underSrv.String() + ":53", "dns:" + rp.underSrv.String() + ":53/leak.warren-test", "markeddns:" + rp.underSrv.String() + ":53"} {
		if pr := run(what); pr.ok || pr.took > time.Second {
			t.Errorf("the app: %s: %+v, want refused at once", what, pr)
		}
	}
	if s := rp.internetSources(); len(s) != 1 || s[0] != rpClient4 {
		t.Errorf("the internet saw %v, want only the tunnel address", s)
	}
	if n := rp.leaks.Load(); n != 0 {
		t.Errorf("%d DNS queries outside the tunnel", n)
	}
}

// Disconnected with --lockdown and Error block like Connecting;
// --manage-resolv-conf points the namespace's resolv.conf at warren's DNS
// server while it is wanted, restores it on Disconnected, and after a
// kill -9 warren down restores it.
func TestHostModeLockdownErrorAndResolvConf(t *testing.T) {
	rp := newRealPeer(t)
	resolv := filepath.Join("/etc/netns", rp.cliNS, "resolv.conf")
	orig, err := os.ReadFile(resolv) // names the DNS listener outside the tunnel
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(rp.dir, "host.conf")
	os.WriteFile(conf, []byte(rp.hostConfig()), 0o600)
	sock := filepath.Join(rp.dir, "api.sock")
	p := startWarrenIn(t, rp.cliNS, "up", "-c", conf, "--mode", "host", "--tun", "wt"+rp.id, "--lockdown", "--no-connect",
		"--dns", "127.0.0.1:53", "--manage-resolv-conf", "--resolv-conf", resolv, "--api", "unix:"+sock)
	p.waitLog(t, 10*time.Second, msg("control API listening"))
	rp.wantBlocked("disconnected with --lockdown")
	if got, _ := os.ReadFile(resolv); string(got) != string(orig) {
		t.Errorf("disconnected: resolv.conf changed: %q", got)
	}

	ctl := func(cmd string) {
		t.Helper()
		var out, errOut strings.Builder
		if code := run(context.Background(), []string{cmd, "--api", "unix:" + sock}, func(string) string { return "" }, &out, &errOut); code != 0 {
			t.Fatalf("warren %s: %s%s", cmd, out.String(), errOut.String())
		}
	}
	ctl("connect")
	p.waitLog(t, 20*time.Second, toState("connected"))
	if got, _ := os.ReadFile(resolv); !strings.Contains(string(got), "nameserver 127.0.0.1\n") {
		t.Errorf("connected: resolv.conf %q, want warren's server", got)
	}
	// Names resolve as the namespace's programs resolve them: by
	// resolv.conf, now warren's server, which asks through the tunnel.
	if pr := rp.probe("http:http://" + rpName + "/"); !pr.ok || !strings.Contains(pr.text, rpClient4.String()) {
		t.Errorf("by name with warren's resolv.conf: %+v", pr)
	}
	ctl("disconnect")
	p.waitLog(t, 10*time.Second, toState("disconnected"))
	if got, _ := os.ReadFile(resolv); string(got) != string(orig) {
		t.Errorf("after disconnecting: resolv.conf %q, want the original %q", got, orig)
	}
	if _, err := os.Stat(resolv + ".warren-backup"); !os.IsNotExist(err) {
		t.Errorf("the backup is left after disconnecting: %v", err)
	}
	rp.wantBlocked("disconnected again, with --lockdown")

	ctl("connect")
	p.waitLog(t, 20*time.Second, toState("connected"))
	p.cmd.Process.Signal(syscall.SIGKILL) // the process this test started
	<-p.done
	rp.wantBlocked("after kill -9")
	out := rp.in(rp.cliNS, warrenBinary(t), "down", "--tun", "wt"+rp.id, "--resolv-conf", resolv)
	t.Logf("warren down: %s", strings.TrimSpace(out))
	if got, _ := os.ReadFile(resolv); string(got) != string(orig) {
		t.Errorf("after warren down: resolv.conf %q, want the original %q", got, orig)
	}

	// Error: the config's ListenPort is taken, the device cannot be made.
	holder := rp.holdUDPPort(9)
	defer holder()
	os.WriteFile(conf, []byte(strings.Replace(rp.hostConfig(), "DNS =", "ListenPort = 9\nDNS =", 1)), 0o600)
	p2 := startWarrenIn(t, rp.cliNS, "up", "-c", conf, "--mode", "host", "--tun", "wt"+rp.id, "--dns", "off", "--api", "unix:"+filepath.Join(rp.dir, "api2.sock"))
	e := p2.waitLog(t, 20*time.Second, toState("error"))
	t.Logf("error: %v: %v", e["cause"], e["detail"])
	rp.wantBlocked("error")
	p2.stop(t, syscall.SIGTERM)
}

// Host mode needs CAP_NET_ADMIN in its namespace and nothing else: warren
// run as nobody with only that capability connects, and the namespace's
// traffic goes through the tunnel.
func TestHostModeCapNetAdminOnly(t *testing.T) {
	rp := newRealPeer(t)
	dir, err := os.MkdirTemp("", "warren-nobody")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, conf := filepath.Join(dir, "warren"), filepath.Join(dir, "host.conf")
	if out, err := exec.Command("cp", warrenBinary(t), bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.WriteFile(conf, []byte(rp.hostConfig()), 0o600)
	for _, f := range []string{dir, bin, conf} {
		os.Chown(f, 65534, 65534)
	}
	os.Chmod(dir, 0o755)
	os.Chmod(bin, 0o755)
	os.WriteFile(filepath.Join("/etc/netns", rp.cliNS, "resolv.conf"), fmt.Appendf(nil, "nameserver %s\n", rpServer4), 0o644)
	cmd := exec.Command("ip", "netns", "exec", rp.cliNS, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin",
		bin, "up", "-c", conf, "--mode", "host", "--tun", "wt"+rp.id, "--dns", "off", "--api", "unix:"+filepath.Join(dir, "api.sock"))
	p := startProcess(t, cmd)
	p.waitLog(t, 20*time.Second, toState("connected"))
	// ip netns exec and setpriv exec: the pid is warren's.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	const netAdmin = "0000000000001000" // CAP_NET_ADMIN is bit 12
	if !strings.Contains(string(status), "\nUid:\t65534\t") || !strings.Contains(string(status), "\nCapEff:\t"+netAdmin+"\n") {
		t.Fatalf("warren does not run as nobody with CAP_NET_ADMIN alone:\n%s", status)
	}
	if pr := rp.probe("http:http://" + rpName + "/"); !pr.ok || !strings.Contains(pr.text, rpClient4.String()) {
		t.Errorf("by name through the tunnel: %+v", pr)
	}
	if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
		t.Errorf("the internet through the tunnel: %+v", pr)
	}
	if s := rp.internetSources(); len(s) != 1 || s[0] != rpClient4 {
		t.Errorf("the internet saw %v, want only the tunnel address", s)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}
	if out := rp.in(rp.cliNS, "nft", "list", "tables"); strings.Contains(out, "warren") {
		t.Errorf("after a clean stop: %s", out)
	}
}

// IPv6, in a client namespace that has it: through the tunnel when
// connected (the tunnel carries IPv6), blocked at once while connecting and
// after kill -9, never directly.
func TestHostModeIPv6(t *testing.T) {
	rp := newRealPeer(t)
	n := strings.Split(rp.underSrv.String(), ".")[2]
	srv6, cli6 := "fd79:"+n+"::1", "fd79:"+n+"::2"
	rp.in(rp.cliNS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.wu"+rp.id+".disable_ipv6=0")
	rp.in(rp.cliNS, "ip", "addr", "add", cli6+"/64", "dev", "wu"+rp.id, "nodad")
	rp.in(rp.srvNS, "ip", "addr", "add", srv6+"/64", "dev", "wv"+rp.id, "nodad")
	rp.in(rp.cliNS, "ip", "-6", "route", "add", "default", "via", srv6)
	rp.setPathCounters()
	web6 := "http://[" + rpInternet6.String() + "]/"
	if pr := rp.probe("http:" + web6); !pr.ok {
		t.Fatalf("without warren, the IPv6 internet is unreachable: %+v", pr)
	}
	if s := rp.internetSources(); len(s) != 1 || s[0].String() != cli6 {
		t.Fatalf("without warren, the internet saw %v, want %s", s, cli6)
	}
	rp.pathCounter("direct")

	conf := strings.Replace(rp.hostConfig(), "/32\n", "/32\nAddress = "+rpClient6.String()+"/128\n", 1)
	conf = strings.Replace(conf, "AllowedIPs = 0.0.0.0/0", "AllowedIPs = 0.0.0.0/0, ::/0", 1)
	path := filepath.Join(rp.dir, "host6.conf")
	os.WriteFile(path, []byte(conf), 0o600)
	p := startWarrenIn(t, rp.cliNS, "up", "-c", path, "--mode", "host", "--tun", "wt"+rp.id, "--dns", "off",
		"--api", "unix:"+filepath.Join(rp.dir, "api.sock"))
	p.waitLog(t, 20*time.Second, toState("connected"))
	// What left before warren's table was in (it starts disconnected,
	// with the host's own rules: the kernel's MLD reports, say) is not
	// warren's to stop.
	rp.pathCounter("direct")
	if pr := rp.probe("http:" + web6); !pr.ok {
		t.Errorf("connected: the IPv6 internet through the tunnel: %+v", pr)
	}
	if s := rp.internetSources(); len(s) != 1 || s[0] != rpClient6 {
		t.Errorf("connected: the internet saw %v, want only the tunnel address %v", s, rpClient6)
	}
	if pr := rp.probe("http:http://[" + rpServer6.String() + "]/"); !pr.ok || !strings.Contains(pr.text, rpClient6.String()) {
		t.Errorf("connected: the tunnel's web server over IPv6: %+v", pr)
	}
	if n := rp.pathCounter("direct"); n != 0 {
		t.Errorf("connected: %d packets left directly", n)
	}
	blocked := func(when string) {
		t.Helper()
		for _, what := range []string{"http:" + web6, "tcp:[" + srv6 + "]:53", "dns:[" + srv6 + "]:53/leak.warren-test"} {
			pr := rp.probe(what)
			t.Logf("%s: %s: ok=%v in %v: %s", when, what, pr.ok, pr.took, pr.text)
			if pr.ok || pr.took > time.Second {
				t.Errorf("%s: %s: %+v, want refused at once", when, what, pr)
			}
		}
		if s := rp.internetSources(); len(s) > 0 {
			t.Errorf("%s: the internet saw %v", when, s)
		}
		if n := rp.pathCounter("direct"); n != 0 {
			t.Errorf("%s: %d packets left directly", when, n)
		}
	}
	rp.blackhole(true)
	p.waitLog(t, 30*time.Second, toState("connecting"))
	blocked("connecting")
	rp.blackhole(false)
	p.waitLog(t, 20*time.Second, toState("connected"))
	p.cmd.Process.Signal(syscall.SIGKILL) // the process this test started
	<-p.done
	blocked("after kill -9")
	rp.in(rp.cliNS, warrenBinary(t), "down", "--tun", "wt"+rp.id)
	if pr := rp.probe("http:" + web6); !pr.ok {
		t.Errorf("after warren down: %+v", pr)
	}
}

// A new warren replaces what a killed one left: it connects, and a clean
// stop then leaves the namespace as it was before either.
func TestHostModeRestartAfterCrash(t *testing.T) {
	rp := newRealPeer(t)
	before := rp.snapshotNS()
	p, _ := rp.startHostWarren()
	p.waitLog(t, 20*time.Second, toState("connected"))
	p.cmd.Process.Signal(syscall.SIGKILL) // the process this test started
	<-p.done
	if after := rp.snapshotNS(); !strings.Contains(after, "table inet warren") {
		t.Fatalf("after kill -9 the table is gone:\n%s", after)
	}
	p2, _ := rp.startHostWarren()
	p2.waitLog(t, 20*time.Second, toState("connected"))
	if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
		t.Errorf("the second warren: the internet: %+v", pr)
	}
	if s := rp.internetSources(); len(s) != 1 || s[0] != rpClient4 {
		t.Errorf("the internet saw %v, want only the tunnel address", s)
	}
	if code := p2.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}
	rp.wantNamespace("after the second warren stopped", before)
}

// With --lockdown, a clean stop (SIGTERM: an orchestrator restarting the
// sidecar, say) leaves the namespace closed, as kill -9 does: the table
// stays, the routes, rules and TUN go; warren says so, and warren down
// opens the namespace again.
func TestHostModeLockdownStopStaysClosed(t *testing.T) {
	rp := newRealPeer(t)
	rp.setPathCounters()
	before := rp.snapshotNS()
	p, _ := rp.startHostWarren("--lockdown")
	p.waitLog(t, 20*time.Second, toState("connected"))
	if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
		t.Errorf("connected: the internet through the tunnel: %+v", pr)
	}
	rp.internetSources()
	rp.pathCounter("direct")
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}
	if out := p.output(); !strings.Contains(out, "the kill switch stays") || !strings.Contains(out, "warren down") {
		t.Errorf("no log line says the kill switch stays and how to remove it:\n%s", out)
	}
	after := rp.snapshotNS()
	if !strings.Contains(after, "table inet warren") {
		t.Errorf("after a clean stop with --lockdown, the table is gone:\n%s", after)
	}
	for _, left := range []string{"lookup 51820", "table 51820"} {
		if strings.Contains(after, left) {
			t.Errorf("after a clean stop with --lockdown, %q is left:\n%s", left, after)
		}
	}
	if links := rp.in(rp.cliNS, "ip", "-o", "link", "show"); strings.Contains(links, "wt"+rp.id) {
		t.Errorf("after a clean stop with --lockdown, the TUN is left:\n%s", links)
	}
	rp.wantBlocked("after a clean stop with --lockdown")
	if n := rp.pathCounter("direct"); n != 0 {
		t.Errorf("after a clean stop with --lockdown: %d packets left directly", n)
	}
	if out := rp.downRestores(before); !strings.Contains(out, "table inet warren") {
		t.Errorf("warren down did not find the table: %s", out)
	}
}

// Strict reverse-path filtering (rp_filter=1, which hardened hosts and
// some distributions set) with an endpoint that only the default route
// reaches, as on the internet. The endpoint's replies come in on the
// uplink; checked without warren's mark, their source would route into
// warren's table, whose default route is the TUN, and the kernel would
// drop them once connected. wg-quick's answer, which warren follows:
// src_valid_mark=1, and the mark restored on the replies from conntrack.
func TestHostModeStrictReversePath(t *testing.T) {
	rp := newRealPeer(t)
	endpoint := netip.MustParseAddr("192.0.2.1") // off the client's link
	rp.in(rp.srvNS, "ip", "addr", "add", endpoint.String()+"/32", "dev", "lo")
	rp.in(rp.cliNS, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.wu"+rp.id+".rp_filter=1")
	if v := strings.TrimSpace(rp.in(rp.cliNS, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark")); v != "0" {
		t.Fatalf("net.ipv4.conf.all.src_valid_mark is %s before warren, want 0", v)
	}
	conf := strings.Replace(rp.hostConfig(), "Endpoint = "+rp.underSrv.String()+":", "Endpoint = "+endpoint.String()+":", 1)
	p, _ := rp.startHostWarrenConf(conf)
	p.waitLog(t, 20*time.Second, toState("connected"))
	for i := range 3 {
		if pr := rp.probe("http:http://" + rpName + "/"); !pr.ok || !strings.Contains(pr.text, rpClient4.String()) {
			t.Errorf("%d: by name through the tunnel: %+v", i, pr)
		}
		if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
			t.Errorf("%d: the internet through the tunnel: %+v", i, pr)
		}
	}
	if s := rp.internetSources(); len(s) != 3 || s[0] != rpClient4 || s[1] != rpClient4 || s[2] != rpClient4 {
		t.Errorf("the internet saw %v, want the tunnel address 3 times", s)
	}
	if n := rp.leaks.Load(); n != 0 {
		t.Errorf("%d DNS queries outside the tunnel", n)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}
	// As wg-quick does, warren leaves src_valid_mark set (see README).
	if v := strings.TrimSpace(rp.in(rp.cliNS, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark")); v != "1" {
		t.Errorf("net.ipv4.conf.all.src_valid_mark is %s after warren, want 1", v)
	}
}

// A namespace with IPv6 disabled (Docker's default for a container on a
// network without IPv6) and a config with IPv4 and IPv6 addresses: warren
// says that IPv6 is off and brings the tunnel up with IPv4 alone. A config
// with IPv6 addresses alone is an error that says why.
func TestHostModeIPv6Disabled(t *testing.T) {
	rp := newRealPeer(t) // its client namespace has net.ipv6.conf.all.disable_ipv6=1
	conf := strings.Replace(rp.hostConfig(), "/32\n", "/32, "+rpClient6.String()+"/128\n", 1)
	conf = strings.Replace(conf, "AllowedIPs = 0.0.0.0/0", "AllowedIPs = 0.0.0.0/0, ::/0", 1)
	p, _ := rp.startHostWarrenConf(conf)
	m := p.waitLog(t, 20*time.Second, func(m map[string]any) bool {
		text, _ := m["msg"].(string)
		return strings.Contains(text, "IPv6 is off") || m["to"] == "error"
	})
	if m["to"] == "error" {
		t.Fatalf("error: %v: %v", m["cause"], m["detail"])
	}
	t.Logf("warren: %v", m["msg"])
	p.waitLog(t, 20*time.Second, toState("connected"))
	if pr := rp.probe("http:http://" + rpName + "/"); !pr.ok || !strings.Contains(pr.text, rpClient4.String()) {
		t.Errorf("by name through the tunnel: %+v", pr)
	}
	if pr := rp.probe("http:http://" + rpInternet.String() + "/"); !pr.ok {
		t.Errorf("the internet through the tunnel: %+v", pr)
	}
	if s := rp.internetSources(); len(s) != 1 || s[0] != rpClient4 {
		t.Errorf("the internet saw %v, want only the tunnel address", s)
	}
	// An empty table does not exist, as ip sees it.
	if out, _ := exec.Command("ip", "netns", "exec", rp.cliNS, "ip", "-6", "route", "show", "table", "51820").CombinedOutput(); strings.TrimSpace(string(out)) != "" && !strings.Contains(string(out), "does not exist") {
		t.Errorf("IPv6 routes in warren's table:\n%s", out)
	}
	if out := rp.in(rp.cliNS, "ip", "-4", "route", "show", "table", "51820"); !strings.Contains(out, "default dev wt"+rp.id) {
		t.Errorf("no IPv4 default route in warren's table:\n%s", out)
	}
	if out := rp.in(rp.cliNS, "ip", "addr", "show", "dev", "wt"+rp.id); strings.Contains(out, "inet6") {
		t.Errorf("the TUN has an IPv6 address:\n%s", out)
	}
	if strings.Count(p.output(), "IPv6 is off") != 1 {
		t.Errorf("want one log line saying IPv6 is off:\n%s", p.output())
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d", code)
	}

	conf = strings.Replace(conf, rpClient4.String()+"/32, ", "", 1)
	p, _ = rp.startHostWarrenConf(conf)
	e := p.waitLog(t, 20*time.Second, func(m map[string]any) bool { return m["to"] == "error" || m["to"] == "connected" })
	detail, _ := e["detail"].(string)
	if e["to"] != "error" || !strings.Contains(detail, "IPv6") {
		t.Errorf("a config with IPv6 addresses only: %v, %v: %s; want an error that names IPv6", e["to"], e["cause"], detail)
	}
	p.stop(t, syscall.SIGTERM)
}
