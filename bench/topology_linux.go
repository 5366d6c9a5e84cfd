package main

// The topology (see the package doc): three network namespaces of this
// process's own, the server's wireguard-go and helper, the reference's
// wireguard-go, warren, and the two agents. Every process is started with
// ip netns exec (which execs, so the pid is the program's own), dies with
// this process (Pdeathsig), and is stopped by its pid.

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Addresses. They are only ever configured in the benchmark's own
// namespaces, so they cannot collide with anything outside them.
var (
	tunServer    = netip.MustParseAddr("10.79.0.1") // the server's tunnel address
	tunWarren    = netip.MustParseAddr("10.79.0.2")
	tunReference = netip.MustParseAddr("10.79.0.3")

	// The underlay: one veth pair from the server to each client.
	underWarrenSrv = netip.MustParseAddr("10.80.1.1")
	underWarren    = netip.MustParseAddr("10.80.1.2")
	underRefSrv    = netip.MustParseAddr("10.80.2.1")
	underRef       = netip.MustParseAddr("10.80.2.2")
)

const (
	// nsPrefix starts the name of every namespace, interface and UAPI
	// socket of the benchmark, followed by a letter and the pid.
	nsPrefix  = "wb"
	wgPort    = 51820
	tunnelMTU = 1420
	// serverTxQueueLen is the server TUN's queue (the kernel's default is
	// 500): with 50 streams, the server's TCP fills 500 faster than
	// wireguard-go empties it on a busy machine, and the TUN drops, for
	// both clients alike. The server peer should not be what limits them.
	serverTxQueueLen = 10000

	// Where warren serves, in its namespace.
	warrenSOCKS5 = "127.0.0.1:1080"
	warrenDNS    = "127.0.0.1:5353"

	// How long the topology may take to come up, and to go down.
	startTimeout   = 30 * time.Second
	connectTimeout = 30 * time.Second
	stopGrace      = 10 * time.Second
	// callTimeout bounds one request to an agent (which bounds each op
	// itself by opTimeout).
	callTimeout = opTimeout + time.Minute
)

// preflight checks what the benchmark needs before it changes anything.
func preflight(cfg config) error {
	if os.Geteuid() != 0 {
		return &unavailableError{"not root"}
	}
	tools := []string{"ip", "wg", "nft"}
	if cfg.warren == "" || cfg.wireguardGo == "" {
		if goTool() == "" {
			return &unavailableError{"go not found (give -warren and -wireguard-go, or install Go)"}
		}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return &unavailableError{tool + " not found"}
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return &unavailableError{"no /dev/net/tun"}
	}
	probe := fmt.Sprintf("%sp%d", nsPrefix, os.Getpid())
	exec.Command("ip", "netns", "del", probe).Run() // left by a killed run whose pid was this one
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return &unavailableError{fmt.Sprintf("network namespaces unavailable: %v: %s", err, bytesTrim(out))}
	}
	exec.Command("ip", "netns", "del", probe).Run()
	return nil
}

func bytesTrim(b []byte) string { return strings.TrimSpace(string(b)) }

// goroot is the Go toolchain this binary was built with.
func goroot() string {
	if r := os.Getenv("GOROOT"); r != "" {
		return r
	}
	//lint:ignore SA1019 under sudo PATH may have no go; the toolchain that built the benchmark (go run) is the one wanted
	return runtime.GOROOT()
}

// goTool is the go command: the toolchain this binary was built with, or
// the one on PATH; "" if there is none.
func goTool() string {
	if p := filepath.Join(goroot(), "bin", "go"); goroot() != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, _ := exec.LookPath("go")
	return p
}

// tempPrefix starts the name of a run's directory in the temporary
// directory, followed by the pid and a dash.
const tempPrefix = "warren-bench-"

var (
	staleName = regexp.MustCompile(`^` + nsPrefix + `[swrp]([0-9]+)$`)
	staleDir  = regexp.MustCompile(`^` + tempPrefix + `([0-9]+)-[0-9]+$`)
)

// cleanStale removes what an earlier benchmark that was killed left: its
// namespaces (and any of its processes still in them), its wireguard-go
// UAPI sockets and its directory. It touches only names with the
// benchmark's prefix whose pid is not a living process (or is this one,
// which has made nothing yet).
func cleanStale(logf func(string, ...any)) {
	dead := func(name string) bool {
		m := staleName.FindStringSubmatch(name)
		if m == nil {
			m = staleDir.FindStringSubmatch(name)
		}
		if m == nil {
			return false
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() {
			return true
		}
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return err != nil
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 || !dead(f[0]) {
			continue
		}
		ns := f[0]
		pids, _ := exec.Command("ip", "netns", "pids", ns).Output()
		for _, p := range strings.Fields(string(pids)) {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL) // a process an earlier benchmark started in its own namespace
			}
		}
		if err := exec.Command("ip", "netns", "del", ns).Run(); err == nil {
			logf("removed namespace %s, left by a benchmark that did not finish", ns)
		}
	}
	socks, _ := filepath.Glob("/var/run/wireguard/" + nsPrefix + "*.sock")
	for _, s := range socks {
		if dead(strings.TrimSuffix(filepath.Base(s), ".sock")) {
			os.Remove(s)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, d := range dirs {
		if dead(filepath.Base(d)) {
			os.RemoveAll(d)
		}
	}
}

// proc is a process the benchmark started.
type proc struct {
	name string
	prog string // the program ip netns exec runs
	cmd  *exec.Cmd
	log  string        // the file its stderr goes to
	done chan struct{} // closed once it has ended and been waited for
	// stdin and stdout are pipes, for the helpers; nil otherwise.
	stdin  io.WriteCloser
	stdout io.ReadCloser
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, and SIGKILL if the process has not ended after grace.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.stdin != nil {
		p.stdin.Close()
	}
	if !p.exited() {
		p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.done
}

// tail is the end of its log, for an error message.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return p.name + " log:\n  " + strings.Join(lines, "\n  ")
}

// topology is one run's namespaces and processes.
type topology struct {
	logf func(string, ...any)
	id   string // this process's pid
	dir  string // binaries, configs, keys and logs

	srvNS, warNS, refNS string
	srvWG, refWG        string // wireguard-go's interfaces (and UAPI sockets)
	made                []string

	warrenBin, wireguardGoBin string
	api                       string // warren's API socket

	srvKey, warKey, refKey wgKey

	// procs are the processes started, in order; the named ones are among
	// them.
	procs                       []*proc
	server, srvPeer, refPeer, w *proc
	agents                      map[string]*agentProc
}

func newTopology(dir string, logf func(string, ...any)) *topology {
	id := strconv.Itoa(os.Getpid())
	return &topology{
		logf:   logf,
		id:     id,
		dir:    dir,
		srvNS:  nsPrefix + "s" + id,
		warNS:  nsPrefix + "w" + id,
		refNS:  nsPrefix + "r" + id,
		srvWG:  nsPrefix + "s" + id,
		refWG:  nsPrefix + "r" + id,
		api:    filepath.Join(dir, "warren.sock"),
		agents: map[string]*agentProc{},
	}
}

// wgKey is a WireGuard key pair, base64 as wg writes them.
type wgKey struct{ private, public string }

func newKey() (wgKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return wgKey{}, err
	}
	b64 := base64.StdEncoding.EncodeToString
	return wgKey{private: b64(k.Bytes()), public: b64(k.PublicKey().Bytes())}, nil
}

// runCmd runs a command to its end.
func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytesTrim(out))
	}
	return nil
}

// inNS runs a command in a namespace.
func inNS(ctx context.Context, ns string, args ...string) error {
	return runCmd(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// up builds the topology for the clients of cfg.
func (t *topology) up(ctx context.Context, cfg config) error {
	for _, k := range []*wgKey{&t.srvKey, &t.warKey, &t.refKey} {
		var err error
		if *k, err = newKey(); err != nil {
			return err
		}
	}
	type step struct {
		what string
		do   func(context.Context, config) error
	}
	steps := []step{{"namespaces", t.namespaces}, {"server peer", t.startServerPeer}, {"server helper", t.startServer}}
	if cfg.measures(clientReference) {
		steps = append(steps, step{"reference client", t.startReference})
	}
	if cfg.measures(clientWarren) {
		steps = append(steps, step{"warren", t.startWarren})
	}
	for _, s := range steps {
		t.logf("starting %s", s.what)
		if err := s.do(ctx, cfg); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
	}
	return nil
}

func (t *topology) namespaces(ctx context.Context, _ config) error {
	for _, ns := range []string{t.srvNS, t.warNS, t.refNS} {
		if err := runCmd(ctx, "ip", "netns", "add", ns); err != nil {
			return err
		}
		t.made = append(t.made, ns)
		if err := inNS(ctx, ns, "ip", "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	links := []struct {
		srvIf, cliIf, cliNS string
		srv, cli            netip.Addr
	}{
		{t.id + "ws", t.id + "wc", t.warNS, underWarrenSrv, underWarren},
		{t.id + "rs", t.id + "rc", t.refNS, underRefSrv, underRef},
	}
	for _, l := range links {
		srvIf, cliIf := nsPrefix+l.srvIf, nsPrefix+l.cliIf
		if err := runCmd(ctx, "ip", "link", "add", srvIf, "netns", t.srvNS, "type", "veth", "peer", "name", cliIf, "netns", l.cliNS); err != nil {
			return err
		}
		for _, c := range [][]string{
			{t.srvNS, "ip", "addr", "add", l.srv.String() + "/24", "dev", srvIf},
			{t.srvNS, "ip", "link", "set", srvIf, "up"},
			{l.cliNS, "ip", "addr", "add", l.cli.String() + "/24", "dev", cliIf},
			{l.cliNS, "ip", "link", "set", cliIf, "up"},
		} {
			if err := inNS(ctx, c[0], c[1:]...); err != nil {
				return err
			}
		}
	}
	return nil
}

// start starts a process in a namespace, its stderr to a log file, with
// pipes to its stdin and stdout if asked.
func (t *topology) start(name, ns string, env []string, pipes bool, argv ...string) (*proc, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, prog: argv[0], cmd: cmd, log: filepath.Join(t.dir, name+".log"), done: make(chan struct{})}
	// A process started again (see -fresh) adds to its log.
	logFile, err := os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own copy
	cmd.Stderr = logFile
	if pipes {
		if p.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
		if p.stdout, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	} else {
		cmd.Stdout = logFile
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.procs = append(t.procs, p)
	return p, nil
}

// startWireGuardGo starts the upstream wireguard-go on a kernel TUN named
// ifname in ns, and configures it with wg: wgArgs after "wg set IFNAME",
// then addr, the MTU and the TUN's queue length (0: the kernel's default)
// with ip.
func (t *topology) startWireGuardGo(ctx context.Context, ns, ifname string, key wgKey, addr netip.Prefix, txqueuelen int, wgArgs ...string) (*proc, error) {
	sock := filepath.Join("/var/run/wireguard", ifname+".sock")
	os.Remove(sock)
	p, err := t.start("wireguard-go-"+ifname, ns, []string{"LOG_LEVEL=error", "WG_PROCESS_FOREGROUND=1"}, false, t.wireguardGoBin, "-f", ifname)
	if err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if p.exited() || i == 200 {
			return nil, fmt.Errorf("wireguard-go made no UAPI socket %s\n%s", sock, p.tail())
		}
		time.Sleep(25 * time.Millisecond)
	}
	keyFile := filepath.Join(t.dir, ifname+".key")
	if err := os.WriteFile(keyFile, []byte(key.private+"\n"), 0o600); err != nil {
		return nil, err
	}
	link := []string{"ip", "link", "set", ifname, "mtu", strconv.Itoa(tunnelMTU), "up"}
	if txqueuelen > 0 {
		link = append(link, "txqueuelen", strconv.Itoa(txqueuelen))
	}
	for _, c := range [][]string{
		append([]string{"wg", "set", ifname, "private-key", keyFile}, wgArgs...),
		{"ip", "addr", "add", addr.String(), "dev", ifname},
		link,
	} {
		if err := inNS(ctx, ns, c...); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (t *topology) startServerPeer(ctx context.Context, _ config) (err error) {
	t.srvPeer, err = t.startWireGuardGo(ctx, t.srvNS, t.srvWG, t.srvKey, netip.PrefixFrom(tunServer, 24), serverTxQueueLen,
		"listen-port", strconv.Itoa(wgPort),
		"peer", t.warKey.public, "allowed-ips", netip.PrefixFrom(tunWarren, 32).String(),
		"peer", t.refKey.public, "allowed-ips", netip.PrefixFrom(tunReference, 32).String())
	return err
}

func (t *topology) startReference(ctx context.Context, _ config) (err error) {
	t.refPeer, err = t.startWireGuardGo(ctx, t.refNS, t.refWG, t.refKey, netip.PrefixFrom(tunReference, 24), 0,
		"peer", t.srvKey.public, "endpoint", netip.AddrPortFrom(underRefSrv, wgPort).String(),
		"allowed-ips", netip.PrefixFrom(tunServer, 24).Masked().String())
	return err
}

// exe is this binary, which the helpers run.
func exe() (string, error) { return os.Executable() }

// startServer starts the server helper in the server namespace and waits
// until it listens.
func (t *topology) startServer(ctx context.Context, cfg config) error {
	self, err := exe()
	if err != nil {
		return err
	}
	p, err := t.start("server", t.srvNS, []string{roleEnv + "=server"}, true,
		self, "-addr", tunServer.String(), "-max", strconv.FormatInt(cfg.maxSize(), 10))
	if err != nil {
		return err
	}
	t.server = p
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(p.stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s != "ready" {
			return fmt.Errorf("the server helper said %q\n%s", s, p.tail())
		}
		return nil
	case <-time.After(startTimeout):
		return fmt.Errorf("the server helper did not start in %v\n%s", startTimeout, p.tail())
	}
}

// warrenConfig is warren's wg-quick file.
func (t *topology) warrenConfig() string {
	return fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32
DNS = %s
MTU = %d

[Peer]
PublicKey = %s
Endpoint = %s
AllowedIPs = 0.0.0.0/0
`, t.warKey.private, tunWarren, tunServer, tunnelMTU, t.srvKey.public, netip.AddrPortFrom(underWarrenSrv, wgPort))
}

func (t *topology) startWarren(ctx context.Context, cfg config) error {
	conf := filepath.Join(t.dir, "wg0.conf")
	if err := os.WriteFile(conf, []byte(t.warrenConfig()), 0o600); err != nil {
		return err
	}
	args := []string{t.warrenBin, "up", "-c", conf, "--api", "unix:" + t.api, "--socks5", warrenSOCKS5, "--dns", warrenDNS}
	// The scale phase holds 10,000 connections from one client, beyond
	// warren's default limits on flows; the variables lift them (a warren
	// from before the limits ignores them, and -warren-args still wins).
	env := []string{"WARREN_MAX_FLOWS=0", "WARREN_MAX_FLOWS_PER_CLIENT=0"}
	p, err := t.start("warren", t.warNS, env, false, append(args, cfg.warrenArgs...)...)
	if err != nil {
		return err
	}
	t.w = p
	if err := t.waitWarren(ctx, "connected", connectTimeout); err != nil {
		return fmt.Errorf("%w\n%s", err, p.tail())
	}
	return nil
}

// warrenStatus is what the benchmark reads of `warren status --json`.
type warrenStatus struct {
	State string `json:"state"`
	Flows int    `json:"flows"`
}

func (t *topology) warrenStatus(ctx context.Context) (warrenStatus, error) {
	var st warrenStatus
	out, err := exec.CommandContext(ctx, t.warrenBin, "status", "--json", "--api", "unix:"+t.api).Output()
	if err != nil {
		return st, fmt.Errorf("warren status: %w", err)
	}
	err = json.Unmarshal(out, &st)
	return st, err
}

// waitWarren waits until warren's status says state.
func (t *topology) waitWarren(ctx context.Context, state string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for {
		st, err := t.warrenStatus(ctx)
		if err == nil && st.State == state {
			return nil
		}
		last = st.State
		if err != nil {
			last = err.Error()
		}
		if t.w.exited() {
			return errors.New("warren exited")
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("warren not %s after %v (last: %s)", state, within, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// warrenCommand runs a warren subcommand against its API (connect,
// reconnect, …).
func (t *topology) warrenCommand(ctx context.Context, cmd string) error {
	return runCmd(ctx, t.warrenBin, cmd, "--api", "unix:"+t.api)
}

// blackhole drops, in warren's namespace, all WireGuard traffic to and
// from the server, or lifts that.
func (t *topology) blackhole(ctx context.Context, on bool) error {
	if !on {
		return inNS(ctx, t.warNS, "nft", "delete", "table", "inet", "wbblackhole")
	}
	rules := fmt.Sprintf(`table inet wbblackhole {
	chain out { type filter hook output priority -10; policy accept; udp dport %[1]d drop; }
	chain in { type filter hook input priority -10; policy accept; udp sport %[1]d drop; }
}
`, wgPort)
	path := filepath.Join(t.dir, "blackhole.nft")
	if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
		return err
	}
	return inNS(ctx, t.warNS, "nft", "-f", path)
}

// agentProc is an agent: requests go to its stdin, answers come from its
// stdout.
type agentProc struct {
	*proc
	enc *json.Encoder
	dec *json.Decoder
}

// startAgent starts the agent of a client in ns with the agent's dialer
// flags.
func (t *topology) startAgent(client, ns string, cfg config, dialer ...string) (*agentProc, error) {
	self, err := exe()
	if err != nil {
		return nil, err
	}
	args := append([]string{self, "-max", strconv.FormatInt(cfg.maxSize(), 10)}, dialer...)
	p, err := t.start("agent-"+client, ns, []string{roleEnv + "=agent"}, true, args...)
	if err != nil {
		return nil, err
	}
	a := &agentProc{proc: p, enc: json.NewEncoder(p.stdin), dec: json.NewDecoder(p.stdout)}
	t.agents[client] = a
	return a, nil
}

// call has the agent carry out req, and returns its answer or why there is
// none. An agent that does not answer in time is killed.
func (a *agentProc) call(ctx context.Context, req request) (response, error) {
	if err := a.enc.Encode(req); err != nil {
		return response{}, fmt.Errorf("%s: %w\n%s", a.name, err, a.tail())
	}
	type answer struct {
		resp response
		err  error
	}
	c := make(chan answer, 1)
	go func() {
		var r response
		err := a.dec.Decode(&r)
		c <- answer{r, err}
	}()
	timer := time.NewTimer(callTimeout)
	defer timer.Stop()
	select {
	case ans := <-c:
		switch {
		case ans.err != nil:
			return response{}, fmt.Errorf("%s: %w\n%s", a.name, ans.err, a.tail())
		case ans.resp.Err != "":
			return ans.resp, fmt.Errorf("%s: %s", a.name, ans.resp.Err)
		}
		return ans.resp, nil
	case <-ctx.Done():
		a.cmd.Process.Kill()
		<-c
		return response{}, ctx.Err()
	case <-timer.C:
		a.cmd.Process.Kill()
		<-c
		return response{}, fmt.Errorf("%s: no answer to %s in %v", a.name, req.Op, callTimeout)
	}
}

// close stops every process it started, by pid, and removes its
// namespaces and sockets. It is safe to call twice.
func (t *topology) close() {
	for _, a := range t.agents {
		a.stop(syscall.SIGTERM, 5*time.Second) // closing stdin ends it
	}
	if t.w != nil {
		t.w.stop(syscall.SIGTERM, stopGrace)
	}
	for i := len(t.procs) - 1; i >= 0; i-- {
		t.procs[i].stop(syscall.SIGTERM, stopGrace)
	}
	for _, ns := range t.made {
		if err := exec.Command("ip", "netns", "del", ns).Run(); err != nil {
			t.logf("cannot remove namespace %s: %v", ns, err)
		}
	}
	t.made = nil
	for _, ifname := range []string{t.srvWG, t.refWG} {
		os.Remove(filepath.Join("/var/run/wireguard", ifname+".sock"))
	}
}
